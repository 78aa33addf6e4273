"""Ordering LAPACK calls in one compiled program.

The CPU runtime of jax 0.10 runs independent operations of a program concurrently, and two
LAPACK QR factorizations running at once can deadlock it (seen with batches of a few tall
matrices, e.g. ``(40, 400, 10)``; jax 0.12 is not affected). `after` gives an operand a data
dependency on earlier results, so that the QR that consumes it starts only once they exist.
"""

import jax.numpy as jnp
from jax import Array

__all__ = ["after"]


def after(x: Array, *deps: Array) -> Array:
    """``x`` unchanged in value, but computed after every array of ``deps``.

    Adds ``0 * (first entry of each dep)``: XLA does not fold a floating-point ``0 * y`` (it is
    NaN for infinite ``y``), so the dependency survives compilation. A non-finite first entry
    would make ``x`` NaN; the factors passed here (``R`` of a QR of finite data) are finite.
    """
    if not deps:
        return x
    z = sum(jnp.real(jnp.ravel(d)[0]) for d in deps) * 0
    return x + z.astype(x.dtype)
