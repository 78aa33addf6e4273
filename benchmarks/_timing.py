"""Timing helpers shared by the benchmark scripts.

- `time_rounds`: the best time of each implementation over interleaved rounds (the order reversed
  every other round), with a pause before each timed block: BLAS worker threads spin for up to
  0.2 s after a call and would steal a core from the next one. After the pause, untimed calls
  warm the implementation up again (`WARM_S`).
- `OtherLoad`: how many cores other processes kept busy while a part ran, so that a reader can
  tell a quiet measurement from a loaded one.
- `machine`: what the numbers were measured on.
"""

import importlib.metadata
import os
import platform
import time

import jax
import numpy as np

PAUSE_S = 0.3
# After a pause, calls run back to back for this long before the timing starts: right after an
# idle pause, chains of small XLA kernels run up to 2x slower, for 100 to 250 ms (CP d=256,
# r=16, B=1, einsum-optimal: 0.075 ms a call in the first 100 ms, 0.041 ms from then on;
# Tucker d=256, r=16, B=1: 0.155 ms in the first 150 ms, 0.114 ms from then on), while a
# training loop calls them back to back. (Pausing only where PyTorch's block and JAX's meet was
# tried on part of a grid, to save time: it treats the two libraries differently, and TT d=4096
# r=16 B=64 moved from 0.96x PyTorch to 0.70x. Every block pauses, as before.)
WARM_S = 0.3


def _busy_seconds():
    """(CPU seconds used by the whole machine, by this process), or None off Linux."""
    try:
        with open("/proc/stat") as fh:
            v = [int(x) for x in fh.readline().split()[1:]]
        t = os.times()
        return (sum(v) - v[3] - v[4]) / os.sysconf("SC_CLK_TCK"), t.user + t.system
    except (OSError, ValueError, IndexError):
        return None


class OtherLoad:
    """Context manager: how many cores other processes kept busy meanwhile (``.cores``)."""

    def __enter__(self):
        self.t0, self.before, self.cores = time.perf_counter(), _busy_seconds(), None
        return self

    def __exit__(self, *exc):
        after, wall = _busy_seconds(), time.perf_counter() - self.t0
        if self.before is not None and after is not None and wall > 0:
            mine = after[1] - self.before[1]
            self.cores = max(0.0, (after[0] - self.before[0]) - mine) / wall
        return False


def _load(cores):
    return "n/a" if cores is None else f"{cores:.2f} cores"


def _ready(out):
    return jax.block_until_ready(out)


def time_rounds(fns, rounds, min_block_s=0.0):
    """Best time per call of each ``name: thunk`` over interleaved rounds (the order reversed
    every other round). With ``min_block_s``, a round calls a thunk back to back until the
    block lasts that long and counts the mean per call: calls of a millisecond are otherwise
    at the mercy of one scheduler hiccup."""
    times = {name: [] for name in fns}
    for i in range(rounds):
        for name in list(fns) if i % 2 == 0 else list(fns)[::-1]:
            time.sleep(PAUSE_S)
            t0 = time.perf_counter()  # warm up again after the pause: see WARM_S
            while True:
                _ready(fns[name]())
                if time.perf_counter() - t0 >= WARM_S:
                    break
            calls, t0 = 0, time.perf_counter()
            while True:
                _ready(fns[name]())
                calls += 1
                elapsed = time.perf_counter() - t0
                if elapsed >= min_block_s:
                    break
            times[name].append(elapsed / calls)
    return {name: min(v) for name, v in times.items()}, times


def _version(package):
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "?"


def machine():
    model = "?"
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {
        "platform": platform.platform(),
        "processor": platform.processor(),
        "cpu_model": model,
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "jax": jax.__version__,
        "jaxlib": _version("jaxlib"),
        "numpy": np.__version__,
        "devices": [str(d) for d in jax.devices()],
        # how large buffers get their pages: fresh 64 MB outputs of XLA on CPU were written 3x
        # faster with huge pages (docs/benchmarks.md, "Huge pages")
        "glibc_tunables": os.environ.get("GLIBC_TUNABLES", ""),
        "transparent_hugepage": _read("/sys/kernel/mm/transparent_hugepage/enabled"),
    }


def _read(path):
    try:
        with open(path) as fh:
            return fh.read().strip()
    except OSError:
        return "?"
