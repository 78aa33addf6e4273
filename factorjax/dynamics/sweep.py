"""A sweep driver: many runs, grouped by shape, one batched call per group, resumable.

A sweep is a list of *settings*, one dict of JSON-able scalars per run, e.g.
``{"width": 50, "alpha": 1e-7, "seed": 3, "lr": 0.1}``. Its axes are of two kinds:

- *group keys* change shapes (width, number of measurements...): runs that differ in them
  cannot share one compiled program;
- the other keys keep shapes (seed, init scale, step size, noise...): the runs of a group are
  stacked along a leading axis and run as one batched call, typically
  ``jax.jit(jax.vmap(one_run))``.

`run_sweep` skips the runs already recorded in the `RunStore`, groups the others by the values
of the group keys, calls ``run_group`` once per group, and records every run of the group before
moving to the next.

Granularity of a restart. Runs are recorded group by group, in the order in which their groups
first appear in ``settings``. A process killed at any moment loses at most the part of the
group in flight since its last checkpoint: ``run_group`` may checkpoint its own progress with
`RunStore.save_checkpoint` (`factorjax.experiments.sensing_sweep` saves the training state
every ``checkpoint_every`` steps, under a name derived from the group and its runs, and resumes
from it). Every run recorded before the kill is kept, and a restarted sweep redoes no finished
run. A group interrupted part-way through recording is resumed with only its unrecorded runs,
so a restart may call ``run_group`` with a smaller batch than the first start did.

Compilation. ``run_group`` is called once per group, with arrays whose leading size is the
number of runs of the group still to do. Build the jitted function once per group shape and
cache it (for example in a dict keyed by the group settings, or with `functools.lru_cache`),
with the shape-changing values closed over or static: ``jax.jit`` then compiles once per group
shape and batch size. Groups of equal batch size reuse one compilation when the jitted function
is shared; a resumed group of a new batch size compiles anew.

Example:
    >>> import functools, jax
    >>> from factorjax import SymmetricTubalLowRank
    >>> from factorjax.dynamics import RunStore, TubalSensing, train
    >>> @functools.cache        # one compiled function per group shape
    ... def batched(width):
    ...     def one_run(alpha, seed, lr):
    ...         key = jax.random.key(seed)
    ...         problem = TubalSensing.make(4, 2, 1, 20, key=key)
    ...         model = SymmetricTubalLowRank.init(
    ...             4, 2, width, key=jax.random.fold_in(key, 1), init="small", alpha=alpha)
    ...         return train(problem, model, steps=20, log_every=10, step_size=lr)[1]
    ...     return jax.jit(jax.vmap(one_run))
    >>> def run_group(group, batch):
    ...     return batched(group["width"])(batch["alpha"], batch["seed"], batch["lr"])
    >>> grid = [{"width": w, "alpha": 1e-2, "seed": s, "lr": 0.1}
    ...         for w in (3, 4) for s in range(3)]
    >>> records = run_sweep(RunStore(out_dir), grid, run_group,
    ...                     group_keys=("width",))                      # doctest: +SKIP
"""

from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np
from jax.experimental import multihost_utils

from factorjax.dynamics.parallel import is_writer
from factorjax.dynamics.storage import RunStore, run_id

__all__ = ["run_sweep"]

# Keys that `run_sweep` (or the store) adds to a record; a setting may not use them.
_RESERVED = ("status", "diverged_at", "final", "run_id", "trajectory")
_SCALARS = (bool, int, float, str, np.bool_, np.integer, np.floating)


def _check_inputs(
    store: Any, settings: Any, run_group: Any, group_keys: Any
) -> tuple[list[dict], tuple[str, ...], list[str]]:
    """Validate the arguments of `run_sweep`; returns settings, group keys and run ids."""
    if not isinstance(store, RunStore):
        raise TypeError(f"`store` must be a RunStore; got {type(store).__name__}.")
    if not callable(run_group):
        raise TypeError(f"`run_group` must be callable; got {type(run_group).__name__}.")
    if isinstance(group_keys, str) or not isinstance(group_keys, Sequence):
        raise TypeError(
            f"`group_keys` must be a tuple of setting names, e.g. ('width',); got {group_keys!r}."
        )
    group_keys = tuple(group_keys)
    for g in group_keys:
        if not isinstance(g, str):
            raise TypeError(f"`group_keys` must hold strings; got {g!r}.")
    if len(set(group_keys)) != len(group_keys):
        raise ValueError(f"`group_keys` has a repeated name: {group_keys!r}.")
    if isinstance(settings, dict) or not isinstance(settings, Sequence):
        raise TypeError(
            f"`settings` must be a list of dicts, one per run; got {type(settings).__name__}."
        )
    settings = list(settings)
    if not settings:
        return settings, group_keys, []
    keys0 = None
    for i, s in enumerate(settings):
        if not isinstance(s, dict):
            raise TypeError(f"`settings[{i}]` must be a dict; got {type(s).__name__}.")
        for k, v in s.items():
            if not isinstance(k, str):
                raise ValueError(f"`settings[{i}]` has a non-string key {k!r}.")
            if k in _RESERVED:
                raise ValueError(
                    f"`settings[{i}]` uses the reserved key {k!r}; the names {_RESERVED} are "
                    "added to each record by the sweep and the store."
                )
            if not isinstance(v, _SCALARS):
                raise ValueError(
                    f"`settings[{i}][{k!r}]` must be a JSON-able scalar (bool, int, float or "
                    f"str); got {type(v).__name__} {v!r}."
                )
        if keys0 is None:
            keys0 = set(s)
        elif set(s) != keys0:
            missing = sorted(keys0 - set(s))
            extra = sorted(set(s) - keys0)
            raise ValueError(
                f"`settings` must all have the same keys: settings[{i}] differs from "
                f"settings[0] (missing {missing}, extra {extra})."
            )
        for g in group_keys:
            if g not in s:
                raise ValueError(
                    f"`group_keys` names {g!r}, which settings[{i}] lacks; its keys are "
                    f"{sorted(s)}."
                )
    if keys0 <= set(group_keys):
        raise ValueError(
            f"`group_keys` {group_keys!r} covers every key of the settings: no axis is left to "
            "batch (a group needs at least one shape-keeping key, such as a seed)."
        )
    ids = [run_id(s) for s in settings]
    first: dict[str, int] = {}
    for i, rid in enumerate(ids):
        if rid in first:
            raise ValueError(
                f"`settings` has duplicate runs: settings[{first[rid]}] and settings[{i}] are "
                f"both {settings[i]!r} (run id {rid!r})."
            )
        first[rid] = i
    return settings, group_keys, ids


def _split_history(history: Any, size: int) -> tuple[dict, dict]:
    """The batched history as NumPy, split into per-run scalars and per-record arrays."""
    if not isinstance(history, dict):
        raise TypeError(
            f"`run_group` must return a dict of arrays (a batched history); got "
            f"{type(history).__name__}."
        )
    history = jax.device_get(history)
    per_run, per_record = {}, {}
    for name, value in history.items():
        a = np.asarray(value)
        if a.ndim == 0 or a.shape[0] != size:
            raise ValueError(
                f"`run_group` returned {name!r} of shape {a.shape}; every entry of the history "
                f"must have a leading axis of {size}, the number of runs in the group."
            )
        (per_run if a.ndim == 1 else per_record)[name] = a
    for name in ("diverged", "diverged_at"):
        if name not in per_run:
            raise ValueError(
                f"`run_group` must return {name!r}, one value per run (as `train` does); got "
                f"keys {sorted(history)}."
            )
    return per_run, per_record


# `settings` and `group_keys` are annotated `Any`, as validated scalars are elsewhere in
# factorjax: a narrow hint would let the runtime type checker pre-empt the clear errors below.
def run_sweep(
    store: RunStore,
    settings: Any,
    run_group: Callable[[dict, dict[str, np.ndarray]], dict],
    *,
    group_keys: Any,
) -> list[dict]:
    """Run every setting not yet recorded in ``store``, one batched call per group.

    Arguments:
        store: where finished runs are recorded; a run whose `run_id` is already in
            ``store.finished()`` is skipped.
        settings: the full sweep, a list with one dict of JSON-able scalars per run, all with
            the same keys, no two equal, none named ``status``, ``diverged_at``, ``final``,
            ``run_id`` or ``trajectory``.
        run_group: ``run_group(group_settings, batch) -> history``, called once per group of
            unfinished runs, in the order in which groups first appear in ``settings``.
            ``group_settings`` maps each group key to the group's value; ``batch`` maps each
            other key to a NumPy array of the group's values, one per run, in ``settings``
            order. It returns the batched history of `train`: a dict of arrays whose leading
            axis is the number of runs, with ``diverged`` and ``diverged_at`` (one value per
            run) and per-record arrays (leading axes ``(runs, records, ...)``). Typically
            ``jax.jit(jax.vmap(one_run))`` applied to the arrays of ``batch``, compiled once
            per group shape (see the module docstring on caching it).
        group_keys: a tuple of the names of the axes that change shapes; at least one key of the
            settings must be left out of it.

    Each run of a group is recorded as ``store.record(run_id(setting), record, trajectory)``
    with ``record = {**setting, "status": "diverged" | "ok", "diverged_at": int, "final":
    {name: last value}}``, where ``final`` holds the last record of every per-record scalar
    metric (``step`` excepted) and every other per-run scalar of the history, and
    ``trajectory`` holds the run's per-record arrays. A killed sweep loses at most the group in
    flight. In a multi-host job every process calls `run_sweep` with the same arguments,
    ``run_group`` computes on all of them (see `factorjax.dynamics.parallel.map_runs`), and
    process 0 alone writes.

    Returns:
        The records of all settings (those finished before and those run now), in ``settings``
        order, as `RunStore.finished` gives them (with ``run_id`` and ``trajectory``).

    Raises:
        ValueError: duplicate settings, settings with differing keys, a group key missing from a
            setting, or a history from ``run_group`` of the wrong form.
    """
    settings, group_keys, ids = _check_inputs(store, settings, run_group, group_keys)
    done = store.finished()
    groups: dict[str, list[int]] = {}
    for i, (s, rid) in enumerate(zip(settings, ids, strict=True)):
        if rid not in done:
            groups.setdefault(run_id({g: s[g] for g in group_keys}), []).append(i)
    for members in groups.values():
        first = settings[members[0]]
        group_settings = {g: first[g] for g in group_keys}
        batch = {
            k: np.asarray([settings[i][k] for i in members]) for k in first if k not in group_keys
        }
        per_run, per_record = _split_history(run_group(group_settings, batch), len(members))
        for j, i in enumerate(members):
            final = {
                name: a[j, -1].item()
                for name, a in per_record.items()
                if a.ndim == 2 and name != "step"
            }
            final.update(
                {
                    name: a[j].item()
                    for name, a in per_run.items()
                    if name not in ("diverged", "diverged_at")
                }
            )
            diverged = bool(per_run["diverged"][j])
            record = {
                **settings[i],
                "status": "diverged" if diverged else "ok",
                "diverged_at": int(per_run["diverged_at"][j]),
                "final": final,
            }
            if is_writer():
                store.record(ids[i], record, {name: a[j] for name, a in per_record.items()})
    if jax.process_count() > 1:  # let process 0 finish writing before anyone reads back
        multihost_utils.sync_global_devices("factorjax.run_sweep")
    finished = store.finished()
    return [finished[rid] for rid in ids]
