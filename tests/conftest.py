"""Fixtures shared by the test files, and the compiler setting of the default run."""

import importlib.metadata
import importlib.util
import os
import subprocess
import sys
import zlib

import jax
import numpy as np
import pytest

# The tests check algorithms against references written from their definitions, to float32 or
# float64 rounding. On GPUs JAX's default float32 matmul precision is TF32 (about 1e-3
# relative), a speed choice that is the user's to make (`jax_default_matmul_precision`), not
# the library's: the tests run at full precision on every backend. (No effect on CPU.)
jax.config.update("jax_default_matmul_precision", "highest")


FUSION_OFF = "--xla_cpu_use_fusion_emitters=false"


def _xla_knows(flag: str) -> bool:
    """Whether this jaxlib's XLA accepts ``flag`` (an unknown flag in ``XLA_FLAGS`` aborts the
    process): a probe in a subprocess, about a second."""
    env = {**os.environ, "XLA_FLAGS": flag, "JAX_PLATFORMS": "cpu"}
    probe = [sys.executable, "-c", "import jax; jax.devices()"]
    return subprocess.run(probe, env=env, capture_output=True, check=False).returncode == 0


def pytest_configure(config):
    """The default (fast) set compiles about 9,000 small programs and runs each a few times,
    so on the CPU it compiles them the cheap way: LLVM at -O0 and, where jaxlib's XLA still
    has them (jax 0.10), the older loop emitters in place of the fusion emitters. Measured
    with all 882 tests on the 2-core CPU (jax 0.10): XLA's backend compile took 577 of 816 s of
    test time at the default settings, 363 of 609 s at -O0, 196 of 478 s with both (4 min 18 s
    on two workers, against 7 min 6 s). The arithmetic is the same (neither changes
    floating-point semantics; XLA's CPU backend does no fast math). The slow set runs long
    loops and keeps the defaults, as does a run on an accelerator or one whose ``XLA_FLAGS``
    set an optimization level. Set here, before the first compile, and inherited by the xdist
    workers and the tests' subprocesses."""
    fast_set = config.option.markexpr.replace(" ", "") == "notslow"
    accelerator = importlib.metadata.entry_points(group="jax_plugins") or importlib.util.find_spec(
        "libtpu"
    )
    flags = os.environ.get("XLA_FLAGS", "")
    if not fast_set or accelerator or "xla_backend_optimization_level" in flags:
        return
    cheap = ["--xla_backend_optimization_level=0"]
    if "xla_cpu_use_fusion_emitters" not in flags and _xla_knows(FUSION_OFF):
        cheap.append(FUSION_OFF)
    os.environ["XLA_FLAGS"] = " ".join([*flags.split(), *cheap])


@pytest.fixture
def rng(request):
    """A NumPy generator seeded from the test's name, so that a failure is reproducible."""
    return np.random.default_rng(zlib.crc32(request.node.name.encode()))


@pytest.fixture
def x64():
    """Enable float64 for one test only; the library never flips it globally."""
    with jax.enable_x64(True):  # a config context manager on jax 0.10 and 0.12
        yield
