"""Fixtures shared by the test files, and the compiler setting of the default run."""

import importlib.metadata
import importlib.util
import os
import zlib

import jax
import numpy as np
import pytest

# The tests check algorithms against references written from their definitions, to float32 or
# float64 rounding. On GPUs JAX's default float32 matmul precision is TF32 (about 1e-3
# relative), a speed choice that is the user's to make (`jax_default_matmul_precision`), not
# the library's: the tests run at full precision on every backend. (No effect on CPU.)
jax.config.update("jax_default_matmul_precision", "highest")


def pytest_configure(config):
    """The default (fast) set compiles about 9,000 small programs and runs each a few times. On
    the CPU most of its time went to LLVM's optimization passes (measured with all 882 tests:
    577 of 816 s of test time in XLA's backend compile), so it compiles at -O0 (363 of 609 s).
    The arithmetic is the same: the passes keep floating-point semantics (XLA's CPU backend
    does no fast math). The slow set runs long loops and keeps the default level, as does a
    run on an accelerator or one whose ``XLA_FLAGS`` set a level. Set here, before the first
    compile, and inherited by the tests' subprocesses."""
    fast_set = config.option.markexpr.replace(" ", "") == "notslow"
    accelerator = importlib.metadata.entry_points(group="jax_plugins") or importlib.util.find_spec(
        "libtpu"
    )
    flags = os.environ.get("XLA_FLAGS", "")
    if fast_set and not accelerator and "xla_backend_optimization_level" not in flags:
        os.environ["XLA_FLAGS"] = f"{flags} --xla_backend_optimization_level=0".strip()


@pytest.fixture
def rng(request):
    """A NumPy generator seeded from the test's name, so that a failure is reproducible."""
    return np.random.default_rng(zlib.crc32(request.node.name.encode()))


@pytest.fixture
def x64():
    """Enable float64 for one test only; the library never flips it globally."""
    with jax.enable_x64(True):  # a config context manager on jax 0.10 and 0.12
        yield
