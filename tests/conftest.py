"""Fixtures shared by the test files."""

import zlib

import jax
import numpy as np
import pytest


@pytest.fixture
def rng(request):
    """A NumPy generator seeded from the test's name, so that a failure is reproducible."""
    return np.random.default_rng(zlib.crc32(request.node.name.encode()))


@pytest.fixture
def x64():
    """Enable float64 for one test only; the library never flips it globally."""
    with jax.enable_x64(True):  # a config context manager on jax 0.10 and 0.12
        yield
