"""Fixtures shared by the test files."""

import zlib

import jax
import numpy as np
import pytest

# The tests check algorithms against references written from their definitions, to float32 or
# float64 rounding. On GPUs JAX's default float32 matmul precision is TF32 (about 1e-3
# relative), a speed choice that is the user's to make (`jax_default_matmul_precision`), not
# the library's: the tests run at full precision on every backend. (No effect on CPU.)
jax.config.update("jax_default_matmul_precision", "highest")


@pytest.fixture
def rng(request):
    """A NumPy generator seeded from the test's name, so that a failure is reproducible."""
    return np.random.default_rng(zlib.crc32(request.node.name.encode()))


@pytest.fixture
def x64():
    """Enable float64 for one test only; the library never flips it globally."""
    with jax.enable_x64(True):  # a config context manager on jax 0.10 and 0.12
        yield
