"""Input validation at the public boundary.

Every check here runs at trace time, on shapes and dtypes only, so it costs nothing in a
compiled program. Each error names the argument, what was given and what is allowed.
"""

import math
from typing import Any

import jax.numpy as jnp
import numpy as np
from jax import Array


def describe(x: Any) -> str:
    """A short description of a value for an error message."""
    shape = getattr(x, "shape", None)
    dtype = getattr(x, "dtype", None)
    if shape is not None and dtype is not None:
        return f"an array of shape {tuple(shape)} and dtype {dtype}"
    return f"{type(x).__name__} {x!r}"


def as_real_array(name: str, x: Any, *, min_ndim: int = 0) -> Array:
    """Convert ``x`` to a real floating JAX array, refusing complex and non-numeric input.

    Integer and boolean input is promoted to the default floating dtype.
    """
    if not hasattr(x, "dtype"):
        if isinstance(x, (list, tuple, int, float, np.number)):
            x = np.asarray(x)
        else:
            raise TypeError(f"`{name}` must be a real array; got {describe(x)}.")
    dtype = np.dtype(x.dtype)
    if jnp.issubdtype(dtype, jnp.complexfloating):
        raise TypeError(
            f"`{name}` must be real (a floating, integer or boolean dtype); got complex dtype "
            f"{dtype}. Use `to_fourier`/`from_fourier` to move between real tensors and their "
            "complex spectra."
        )
    if not (jnp.issubdtype(dtype, jnp.number) or dtype == np.bool_):
        raise TypeError(f"`{name}` must be a real numeric array; got dtype {dtype}.")
    x = jnp.asarray(x)
    if not jnp.issubdtype(x.dtype, jnp.floating):
        x = x.astype(jnp.result_type(float))
    if x.ndim < min_ndim:
        raise ValueError(
            f"`{name}` must have at least {min_ndim} axes; got {describe(x)}."
            + (" A tubal tensor is (n1, n2, k) with the tube axis last." if min_ndim == 3 else "")
        )
    return x


def check_rank(name: str, rank: Any, max_rank: int) -> int:
    """Check a static rank: an integer in ``[1, max_rank]``."""
    if isinstance(rank, bool) or not isinstance(rank, (int, np.integer)):
        raise TypeError(f"`{name}` must be a Python int; got {describe(rank)}.")
    rank = int(rank)
    if not 1 <= rank <= max_rank:
        raise ValueError(f"`{name}` must be an int in [1, {max_rank}]; got {rank}.")
    return rank


def check_tolerance(name: str, tol: Any) -> float:
    """Check a static tolerance: a finite, non-negative float."""
    if isinstance(tol, bool) or not isinstance(tol, (int, float, np.floating, np.integer)):
        raise TypeError(f"`{name}` must be a float; got {describe(tol)}.")
    tol = float(tol)
    if not math.isfinite(tol) or tol < 0:
        raise ValueError(f"`{name}` must be a finite float >= 0; got {tol}.")
    return tol


def check_positive_int(name: str, value: Any) -> int:
    """Check a static positive integer (a size or a width)."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"`{name}` must be a Python int; got {describe(value)}.")
    if value < 1:
        raise ValueError(f"`{name}` must be an int >= 1; got {value}.")
    return int(value)


def check_choice(name: str, value: Any, allowed: tuple[str, ...]) -> str:
    """Check that ``value`` is one of a fixed set of strings."""
    if value not in allowed:
        raise ValueError(f"`{name}` must be one of {allowed}; got {value!r}.")
    return value
