"""Running a batch of independent runs over all devices and hosts.

A batch is a pytree of arrays whose leading axis indexes runs (seeds, init scales, step
sizes...), and a batched function maps it to a pytree of arrays with the same leading axis,
typically ``jax.vmap`` of one run. `map_runs` applies such a function

- over the local devices: the batch is padded to a multiple of the local device count and
  split along its leading axis with `jax.shard_map` over a one-axis mesh, so that every device
  runs its own runs and no run waits for another (no collective inside);
- over the processes of a multi-host job started with `jax.distributed.initialize` (the
  runtime of TPU pods and multi-node GPU jobs): every process takes a contiguous share of the
  runs, computes it on its own devices, and the shares are all-gathered so that every process
  ends with the whole result (and process 0, by convention, writes it).

A run's result does not depend on where it ran: runs are independent and their arithmetic is
the same on every device, so the sharded results equal the single-device ones up to the
rounding differences of the backend's batched kernels (bitwise on one CPU host in the tests;
the tests allow 1e-12 relative in float64).
"""

import functools
import math
from collections.abc import Callable
from typing import Any

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, PartitionSpec

__all__ = ["is_writer", "map_runs", "process_share"]


def is_writer() -> bool:
    """Whether this process writes results: process 0 of a multi-host job (or the only one)."""
    return jax.process_index() == 0


def process_share(size: int, *, index: int | None = None, count: int | None = None) -> slice:
    """The contiguous share of ``size`` runs that process ``index`` of ``count`` computes.

    Shares are ``ceil(size / count)`` long (the last ones shorter or empty); by default the
    current process of the current job.
    """
    index = jax.process_index() if index is None else index
    count = jax.process_count() if count is None else count
    per = math.ceil(size / count) if size else 0
    return slice(min(index * per, size), min((index + 1) * per, size))


def _pad_rows(tree: Any, size: int) -> Any:
    """Pad every leaf's leading axis to ``size`` by repeating its last row (a valid run)."""

    def pad(a):
        a = np.asarray(a)
        if a.shape[0] == size:
            return a
        if a.shape[0] == 0:
            raise ValueError("cannot pad an empty batch")
        return np.concatenate([a, np.repeat(a[-1:], size - a.shape[0], axis=0)])

    return jax.tree.map(pad, tree)


def _leading_size(tree: Any) -> int:
    sizes = {np.shape(a)[0] if np.ndim(a) else None for a in jax.tree.leaves(tree)}
    if len(sizes) != 1 or None in sizes:
        raise ValueError(
            "every leaf of `batch` must be an array with the same leading (runs) axis; got "
            f"leading sizes {sorted(s for s in sizes if s is not None)}"
            + (" and a scalar" if None in sizes else "")
            + "."
        )
    return sizes.pop()


@functools.lru_cache(maxsize=64)
def _sharded(fn: Callable, devices: tuple) -> Callable:
    """``fn`` jitted and split over ``devices`` along the leading axis; cached, so that calling
    `map_runs` again with the same function (the next chunk of a run) compiles nothing."""
    spec = PartitionSpec("runs")
    mesh = Mesh(np.asarray(devices), ("runs",))
    # The runs are independent and ``fn`` uses no collectives, so the per-device body need not
    # track which values vary across devices (``check_vma``): a run that starts from constants
    # (a fresh ``diverged = False``) would otherwise be refused as a scan carry.
    return jax.jit(jax.shard_map(fn, mesh=mesh, in_specs=spec, out_specs=spec, check_vma=False))


def map_runs(fn: Callable[[Any], Any], batch: Any, *, devices: Any = None) -> Any:
    """``fn(batch)`` computed over all local devices and all processes.

    Arguments:
        fn: a batched function, ``fn(batch) -> out`` with ``out`` a pytree of arrays whose
            leading axis has the batch size (``jax.vmap`` of one run). Runs must be
            independent: ``fn`` applied to any subset of rows gives those rows of the result.
            It is jitted here, once per function and device set (pass the same function object
            to compute the next chunk of the same runs); close over static values.
        batch: a pytree of arrays (NumPy or JAX) with a common leading axis of runs; the same
            on every process.
        devices: the local devices to shard over (default: all of `jax.local_devices`).

    Returns:
        ``out`` as NumPy arrays, on every process, for all runs of ``batch`` in order.
    """
    size = _leading_size(batch)
    share = process_share(size)
    per_process = math.ceil(size / jax.process_count())
    local = jax.tree.map(lambda a: np.asarray(a)[share], batch)
    devices = list(jax.local_devices() if devices is None else devices)
    n_dev = len(devices)
    per_device = max(1, math.ceil(per_process / n_dev))
    if share.stop > share.start:
        padded = _pad_rows(local, per_device * n_dev)
    else:  # a process with nothing to do still takes part in the gather below
        padded = _pad_rows(jax.tree.map(lambda a: np.asarray(a)[-1:], batch), per_device * n_dev)
    out = jax.device_get(_sharded(fn, tuple(devices))(padded))
    out = jax.tree.map(lambda a: a[:per_process], out)
    if jax.process_count() > 1:
        gathered = multihost_utils.process_allgather(out, tiled=False)
        out = jax.tree.map(lambda a: np.asarray(a).reshape(-1, *a.shape[2:])[:size], gathered)
    else:
        out = jax.tree.map(lambda a: np.asarray(a)[: share.stop - share.start], out)
    return out
