"""Sweeps of gradient descent on the symmetric tubal factorization, from tubal sensing data.

The engine behind the tubal implicit-regularization experiments. A sweep is the grid
``widths x measurements x alphas x seeds``:

- ``(width R, measurements m)`` change shapes: one group each, compiled once;
- ``(alpha, seed)`` keep them: one batched program per group. Each seed draws its own problem
  (ground truth, measurement tensors) and its own init direction; the runs of one seed at
  different ``alpha`` share the problem, so they are vmapped with the problem unbatched and its
  operator acts on all of them as one matrix-matrix product;
- the batch is split over all local devices and all processes (`map_runs`);
- the steps are cut into chunks of ``checkpoint_every``; after each chunk the group's state is
  checkpointed atomically, so a killed sweep resumes from its last chunk and redoes no finished
  run (`run_sweep`).

Training is plain gradient descent with the ``"lifted"`` method of `factorjax.dynamics.train`
on problems with their Gram matrix precomputed (`TubalSensing.with_gram`): a step costs the
same for every width ``R``.
"""

import dataclasses
import functools
import hashlib
import math
import platform
import time
from pathlib import Path
from typing import Any, Literal

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from factorjax import SymmetricTubalLowRank
from factorjax.dynamics import RunStore, TrainState, TubalSensing, advance, metrics, run_id
from factorjax.dynamics.metrics import reference_bases
from factorjax.dynamics.parallel import is_writer, map_runs
from factorjax.dynamics.sweep import run_sweep
from factorjax.experiments._common import require_float64

__all__ = ["SensingSweepConfig", "run_sensing_sweep"]


@dataclasses.dataclass(frozen=True)
class SensingSweepConfig:
    """A sweep of gradient descent on ``X = U * U^T`` from tubal sensing measurements.

    Fields:
        n, k: the ground truth is ``(n, n, k)``.
        rank: its tubal rank ``r``.
        widths: the widths ``R`` of ``U`` (``(n, R, k)``).
        measurements: the numbers ``m`` of measurements.
        alphas: init scales: ``U_0`` has i.i.d. ``N(0, alpha^2 / R)`` entries.
        seeds: the number of independent runs per setting (fresh problem and init each).
        steps: gradient steps per run.
        log_every: metrics are recorded every ``log_every`` steps.
        nu: the step size of the authors' update ``U <- U - nu sum_j res_j (G_j + G_j^T) * U``
            on unnormalised measurements; the run uses step ``m * nu`` on the ``"paper"``
            scale and ``nu`` on the ``"authors"`` one, the same iterates.
        symmetric: measurement tensors ``G_j + G_j^T`` (the authors' Figs 3-4) or ``G_j``.
        scale: ``"paper"`` (``A_j = G_j / sqrt(m)``) or ``"authors"`` (``A_j = G_j``).
        noise: standard deviation of the noise on each measurement.
        float64: compute in float64 (the command applies it before anything is traced).
        checkpoint_every: steps between checkpoints of a group (a multiple of ``log_every``).
        seed_offset: the first seed (runs use seeds ``seed_offset .. seed_offset + seeds - 1``).
    """

    n: int = 10
    k: int = 4
    rank: int = 3
    widths: tuple[int, ...] = (200,)
    measurements: tuple[int, ...] = (285,)
    alphas: tuple[float, ...] = (1e-7,)
    seeds: int = 20
    steps: int = 4000
    log_every: int = 40
    nu: float = 1e-5
    symmetric: bool = True
    scale: Literal["paper", "authors"] = "paper"
    noise: float = 0.0
    float64: bool = True
    checkpoint_every: int = 2000
    seed_offset: int = 0

    def __post_init__(self):
        for name in ("n", "k", "rank", "seeds", "steps", "log_every", "checkpoint_every"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"`{name}` must be an int >= 1; got {value!r}.")
        if self.rank > self.n:
            raise ValueError(f"`rank` must be <= n = {self.n}; got {self.rank}.")
        for name in ("widths", "measurements"):
            values = getattr(self, name)
            if not values or any(
                isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in values
            ):
                raise ValueError(
                    f"`{name}` must be a non-empty tuple of ints >= 1; got {values!r}."
                )
            if len(set(values)) != len(values):
                raise ValueError(f"`{name}` has a repeated value: {values!r}.")
        if not self.alphas or any(not (a > 0 and math.isfinite(a)) for a in self.alphas):
            raise ValueError(
                f"`alphas` must be a non-empty tuple of finite floats > 0; got {self.alphas!r}."
            )
        if len(set(self.alphas)) != len(self.alphas):
            raise ValueError(f"`alphas` has a repeated value: {self.alphas!r}.")
        if not (self.nu > 0 and math.isfinite(self.nu)):
            raise ValueError(f"`nu` must be a finite float > 0; got {self.nu!r}.")
        if not (self.noise >= 0 and math.isfinite(self.noise)):
            raise ValueError(f"`noise` must be a finite float >= 0; got {self.noise!r}.")
        if self.scale not in ("paper", "authors"):
            raise ValueError(f"`scale` must be 'paper' or 'authors'; got {self.scale!r}.")
        for name in ("steps", "checkpoint_every"):
            if getattr(self, name) % self.log_every:
                raise ValueError(
                    f"`{name}` must be a multiple of `log_every` = {self.log_every}; got "
                    f"{getattr(self, name)}."
                )

    def step_size(self, m: int) -> float:
        """The gradient step on this config's scale that reproduces the authors' ``nu``."""
        return m * self.nu if self.scale == "paper" else self.nu

    def settings(self) -> list[dict]:
        """One dict per run: ``width, m, alpha, seed``; seed-major within a group."""
        return [
            {"width": R, "m": m, "alpha": float(a), "seed": self.seed_offset + s}
            for R in self.widths
            for m in self.measurements
            for s in range(self.seeds)
            for a in self.alphas
        ]


# ---------------------------------------------------------------------------------------------
# One group: the batched, chunked, checkpointed computation
# ---------------------------------------------------------------------------------------------


def _problem(cfg: SensingSweepConfig, m: int, seed) -> TubalSensing:
    dtype = jnp.float64 if cfg.float64 else jnp.float32
    key = jax.random.fold_in(jax.random.key(0), seed)
    problem = TubalSensing.make(
        cfg.n,
        cfg.k,
        cfg.rank,
        m,
        key=key,
        symmetric=cfg.symmetric,
        scale=cfg.scale,
        noise=cfg.noise,
        dtype=dtype,
    )
    return problem.with_gram()


def _init(cfg: SensingSweepConfig, width: int, seed, alpha) -> SymmetricTubalLowRank:
    dtype = jnp.float64 if cfg.float64 else jnp.float32
    key = jax.random.fold_in(jax.random.fold_in(jax.random.key(1), seed), width)
    # The same direction for every alpha of a seed: runs that differ in alpha only differ in
    # the scale of U_0, a paired design.
    return SymmetricTubalLowRank.init(
        cfg.n, cfg.k, width, key=key, init="small", alpha=alpha, dtype=dtype
    )


@functools.cache
def _problems_function(cfg: SensingSweepConfig, m: int):
    """Batched over seeds: the problems, with their Gram matrices. One compilation per ``m``
    (drawing Gaussian tensors compiles slowly), shared by the groups of every width."""
    return jax.vmap(lambda row: _problem(cfg, m, row["seed"]))


@functools.cache
def _run_functions(cfg: SensingSweepConfig, width: int, m: int, grid: bool):
    """The batched ``start`` and ``chunk`` functions of one group (cached: the same function
    objects for every call, so that `map_runs` compiles each once).

    A row of the batch holds a problem and its seed with all its alphas (``grid``: the problem
    is shared by the inner vmap over alphas), or a problem, seed and alpha of a single run.
    """
    step_size = cfg.step_size(m)
    chunk = cfg.checkpoint_every

    def start_one(problem, seed, alpha):
        model = _init(cfg, width, seed, alpha)
        record = metrics(problem, model.to_dense(), bases=reference_bases(problem))
        record["step"] = jnp.asarray(0)
        return TrainState.create(model), record

    def chunk_one(problem, state, steps):
        return advance(
            problem,
            state,
            steps=steps,
            log_every=cfg.log_every,
            step_size=step_size,
            method="lifted",
        )

    def row_start(row):
        if grid:
            return jax.vmap(lambda a: start_one(row["problem"], row["seed"], a))(row["alpha"])
        return start_one(row["problem"], row["seed"], row["alpha"])

    def row_chunk(row, steps):
        if grid:
            return jax.vmap(lambda s: chunk_one(row["problem"], s, steps))(row["state"])
        return chunk_one(row["problem"], row["state"], steps)

    start = jax.vmap(row_start)
    chunks = {
        s: jax.vmap(functools.partial(row_chunk, steps=s))
        for s in {min(chunk, cfg.steps), cfg.steps % chunk or chunk}
    }
    return start, chunks


def _grid(batch: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray] | None:
    """The seeds and alphas if ``batch`` is their full product, seed-major; else None."""
    seeds = list(dict.fromkeys(batch["seed"].tolist()))
    alphas = list(dict.fromkeys(batch["alpha"].tolist()))
    expected = [(s, a) for s in seeds for a in alphas]
    got = list(zip(batch["seed"].tolist(), batch["alpha"].tolist(), strict=True))
    if got != expected:
        return None
    return np.asarray(seeds), np.asarray(alphas)


def _flatten_state(tree: Any) -> dict[str, np.ndarray]:
    return {f"leaf{i}": np.asarray(a) for i, a in enumerate(jax.tree.leaves(tree))}


def _unflatten_state(like: Any, arrays: dict[str, np.ndarray]) -> Any:
    leaves, treedef = jax.tree.flatten(like)
    return jax.tree.unflatten(treedef, [arrays[f"leaf{i}"] for i in range(len(leaves))])


def _group_runner(cfg: SensingSweepConfig, store: RunStore, progress, todo: int):
    """The ``run_group`` of `run_sweep` for this config."""
    finished_runs = [0]

    def run_group(group: dict, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        width, m = group["width"], group["m"]
        grid = _grid(batch)
        if grid is not None:
            rows = {"seed": grid[0], "alpha": np.tile(grid[1], (len(grid[0]), 1))}
        else:
            rows = {"seed": batch["seed"], "alpha": batch["alpha"]}
        rows["problem"] = map_runs(_problems_function(cfg, m), {"seed": rows["seed"]})
        start, chunks = _run_functions(cfg, width, m, grid is not None)
        runs = len(batch["seed"])
        members = hashlib.sha256(
            repr(sorted(zip(batch["seed"].tolist(), batch["alpha"].tolist(), strict=True))).encode()
        ).hexdigest()[:12]
        name = f"group-{run_id(group)}-{members}"

        state, first = map_runs(start, rows)
        history = [jax.tree.map(lambda a: np.expand_dims(a, 2 if grid is not None else 1), first)]
        done = 0
        saved = store.load_checkpoint(name)
        if saved is not None:
            done = int(saved["done"])
            state = _unflatten_state(
                state, {k[6:]: v for k, v in saved.items() if k.startswith("state.")}
            )
            history = [{k[5:]: v for k, v in saved.items() if k.startswith("hist.")}]
            progress.update(runs * done)
        while done < cfg.steps:
            steps = min(cfg.checkpoint_every, cfg.steps - done)
            state, chunk_hist = map_runs(chunks[steps], {**rows, "state": state})
            history.append(chunk_hist)
            done += steps
            progress.update(runs * steps)
            if done < cfg.steps and is_writer():
                joined = _join(history, grid is not None)
                history = [joined]
                store.save_checkpoint(
                    name,
                    done=np.asarray(done),
                    **{f"state.{k}": v for k, v in _flatten_state(state).items()},
                    **{f"hist.{k}": v for k, v in joined.items()},
                )
        out = _join(history, grid is not None)
        out["diverged"] = np.asarray(state.diverged)
        out["diverged_at"] = np.asarray(state.diverged_at)
        if grid is not None:  # (seeds, alphas, ...) -> runs, in batch order (seed-major)
            out = {k: v.reshape(runs, *v.shape[2:]) for k, v in out.items()}
        if is_writer():
            store.clear_checkpoint(name)
        finished_runs[0] += runs
        progress.set_postfix_str(f"runs done {finished_runs[0]}/{todo}")
        return out

    return run_group


def _join(history: list[dict], grid: bool) -> dict[str, np.ndarray]:
    axis = 2 if grid else 1
    return {k: np.concatenate([h[k] for h in history], axis=axis) for k in history[0]}


# ---------------------------------------------------------------------------------------------
# The whole sweep
# ---------------------------------------------------------------------------------------------


def _environment() -> dict:
    return {
        "versions": {
            "python": platform.python_version(),
            "jax": jax.__version__,
            "numpy": np.__version__,
            "equinox": eqx.__version__ if hasattr(eqx, "__version__") else "unknown",
        },
        "devices": {
            "process_count": jax.process_count(),
            "local": [str(d) for d in jax.local_devices()],
            "platform": jax.default_backend(),
        },
    }


def run_sensing_sweep(
    name: str, cfg: SensingSweepConfig, out_dir: Path, *, quiet: bool | None = None
) -> list[dict]:
    """Run (or resume) the sweep of ``cfg`` into ``out_dir``; returns the run records.

    Writes ``config.json`` (experiment name, resolved config, versions and devices; a resumed
    sweep must have the same config), ``runs.jsonl`` and ``trajectories/``. Process 0 writes;
    every process computes its share of each group. A progress bar (runs, steps, time left)
    shows on a terminal (``quiet=None``), never with ``quiet=True``.
    """
    from tqdm.auto import tqdm

    require_float64(cfg.float64)
    out_dir = Path(out_dir)
    store = RunStore(out_dir)
    if is_writer():
        store.write_config(
            {"experiment": name, "config": dataclasses.asdict(cfg), **_environment()},
            volatile=("versions", "devices"),
        )
    settings = cfg.settings()
    finished = store.finished()
    todo = sum(run_id(s) not in finished for s in settings)
    # tqdm's disable=None: shown on a terminal only.
    disable = True if quiet or not is_writer() else (None if quiet is None else False)
    t0 = time.perf_counter()
    with tqdm(
        total=todo * cfg.steps,
        unit="step",
        unit_scale=True,
        disable=disable,
        desc=name,
    ) as progress:
        records = run_sweep(
            store, settings, _group_runner(cfg, store, progress, todo), group_keys=("width", "m")
        )
    if is_writer() and todo:
        elapsed = time.perf_counter() - t0
        print(f"{name}: {todo} runs in {elapsed:.1f} s (compile included)", flush=True)
    return records
