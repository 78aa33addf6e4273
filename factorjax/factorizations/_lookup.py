"""Rows of a factorized matrix from its factors: ``W[idx, :]`` without building ``W``.

An embedding table is a matrix ``W (num_embeddings, embedding_size)``; looking up a batch of
``N`` indices needs ``N`` rows, which every matrix format computes from its factors at a cost
that grows with ``N`` and the rank, never with ``num_embeddings``:

- `LowRank` ``W = U V^T``: ``U[idx] V^T``.
- `DeepLowRank` ``W = W_N ... W_1``: the rows ``W_N[idx]``, then the chain.
- `TTMatrix`: ``idx`` split into its row-major out-mode digits ``(o_1, ..., o_d)``; the row is the
  chain of the slices ``G_k[:, o_k, :, :]`` contracted over the ranks, its in-modes row-major.
- `CP`, `Tucker`, `TensorRing` (matrix view: ``n_out`` out modes, then the in modes): the
  out-mode factor rows (CP, Tucker) or core slices (ring) picked by the digits, then the in
  modes expanded.
- `Kronecker` ``W = sum_i A_i (x) B_i``: row ``o = o_1 p_2 + o_2`` is
  ``sum_i kron(A_i[o_1], B_i[o_2])``.

Example:
    >>> import jax, jax.numpy as jnp
    >>> from factorjax import TTMatrix
    >>> from factorjax.factorizations._lookup import lookup
    >>> W = TTMatrix.init(1000, 64, 8, key=jax.random.key(0))
    >>> lookup(W, jnp.array([[3, 7], [999, 0]])).shape
    (2, 2, 64)
"""

import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import Array

from factorjax._checks import describe
from factorjax.factorizations.cp import CP
from factorjax.factorizations.deep_lowrank import DeepLowRank
from factorjax.factorizations.kronecker import Kronecker
from factorjax.factorizations.lowrank import LowRank
from factorjax.factorizations.tensor_ring import TensorRing, _merge
from factorjax.factorizations.tt_matrix import TTMatrix
from factorjax.factorizations.tucker import Tucker

__all__ = ["check_indices", "lookup"]


def check_indices(name: str, x: Any, num_rows: int) -> Array:
    """``x`` as an integer JAX array of row indices into ``num_rows`` rows.

    Refuses non-integer input (floats, bools, complex) with a `TypeError`, and, when the values
    are on the host (Python ints, NumPy arrays), indices outside ``[-num_rows, num_rows)`` with a
    `ValueError`. Traced or device indices are not read back: out of range they are wrapped
    once and clamped, as JAX indexing does.
    """
    allowed = (
        f"an integer index or an integer array of indices into {num_rows} rows "
        f"(in [-{num_rows}, {num_rows}))"
    )
    if isinstance(x, bool | np.bool_) or not (
        hasattr(x, "dtype") or isinstance(x, int | np.integer | list | tuple)
    ):
        raise TypeError(f"`{name}` must be {allowed}; got {describe(x)}.")
    host = not isinstance(x, jax.Array)
    if not hasattr(x, "dtype"):
        x = np.asarray(x)
    if not jnp.issubdtype(x.dtype, jnp.integer):
        raise TypeError(f"`{name}` must be {allowed}; got {describe(x)}.")
    if host:
        values = np.asarray(x)
        if values.size and (values.min() < -num_rows or values.max() >= num_rows):
            raise ValueError(
                f"`{name}` must hold indices in [-{num_rows}, {num_rows}); got values from "
                f"{values.min()} to {values.max()}."
            )
    x = jnp.asarray(x)
    return x.astype(x.dtype)  # strongly typed: a Python int and an int array share a program


def lookup(weight: Any, idx: Any) -> Array:
    """The rows ``W[idx, :]`` of a matrix format, computed from its factors.

    Arguments:
        weight: a `LowRank`, `DeepLowRank`, `TTMatrix`, `CP`, `Tucker`, `TensorRing` (with a
            matrix view, ``n_out`` set) or `Kronecker` of shape ``(d_out, d_in)``.
        idx: integer row indices of any shape; negative ones count from the end.

    Returns:
        ``(*idx.shape, d_in)``, in the dtype of the factors. Equal (to rounding) to
        ``weight.to_matrix()[idx]``; ``W`` is never built.
    """
    _row_function(weight)  # refuse what is not a matrix format before touching `idx`
    idx = check_indices("idx", idx, weight.out_features)
    if idx.size == 0:
        return jnp.zeros((*idx.shape, weight.in_features), weight.dtype)
    rows = _rows(weight, jnp.reshape(idx, (-1,)))
    return rows.reshape(*idx.shape, weight.in_features)


@jax.jit
def _rows(weight: Any, flat: Array) -> Array:
    """The rows of the flat indices ``flat (N,)``, negative ones wrapped, then clamped (as
    JAX indexing does). Jitted, so that an eager lookup runs one cached program per shape."""
    n = weight.out_features
    flat = jnp.clip(jnp.where(flat < 0, flat + n, flat), 0, n - 1)
    return _row_function(weight)(weight, flat)


def _digits(idx: Array, modes: tuple[int, ...]) -> list[Array]:
    """The row-major multi-index ``(o_1, ..., o_d)`` of ``idx`` over ``modes``."""
    strides = [math.prod(modes[k + 1 :]) for k in range(len(modes))]
    return [(idx // s) % m for s, m in zip(strides, modes, strict=True)]


def _take(a: Array, idx: Array, axis: int) -> Array:
    """``a`` indexed by ``idx`` along ``axis``, the new ``N`` axis first."""
    return jnp.moveaxis(jnp.take(a, idx, axis=axis), axis, 0)


def _lowrank_rows(w: LowRank, idx: Array) -> Array:
    return w.u[idx] @ w.v.T


def _deep_rows(w: DeepLowRank, idx: Array) -> Array:
    z = w.factors[-1][idx]  # (N, h_{N-1})
    for f in w.factors[-2::-1]:
        z = z @ f
    return z


def _tt_rows(w: TTMatrix, idx: Array) -> Array:
    # state (N, i_1 ... i_k, r_k): one batched contraction over r_k per core.
    digits = _digits(idx, w.out_modes)
    z = _take(w.cores[0], digits[0], 1)[:, 0]  # (N, i_1, r_1)
    for core, o in zip(w.cores[1:], digits[1:], strict=True):
        g = _take(core, o, 1)  # (N, r, i_k, r')
        z = jnp.einsum("nar,nrbs->nabs", z, g).reshape(idx.shape[0], -1, g.shape[-1])
    return z[..., 0]


def _cp_rows(w: CP, idx: Array) -> Array:
    p = w.n_out
    coef = jnp.broadcast_to(w.weights, (idx.shape[0], w.rank))
    for f, o in zip(w.factors[:p], _digits(idx, w.out_modes), strict=True):
        coef = coef * f[o]
    kr = w.factors[p]  # Khatri-Rao of the in-mode factors, row-major: (d_in, R)
    for f in w.factors[p + 1 :]:
        kr = (kr[:, None, :] * f[None, :, :]).reshape(-1, w.rank)
    return coef @ kr.T


def _tucker_rows(w: Tucker, idx: Array) -> Array:
    p, fs = w.n_out, w.factors
    digits = _digits(idx, w.out_modes)
    z = jnp.tensordot(fs[0][digits[0]], w.core, axes=(1, 0))  # (N, r_2, ..., r_d)
    for f, o in zip(fs[1:p], digits[1:], strict=True):
        z = jnp.einsum("nr...,nr->n...", z, f[o])
    for f in fs[p:]:  # each in mode: contract r_k (axis 1), n_k goes last
        z = jnp.tensordot(z, f, axes=(1, 1))
    return z.reshape(idx.shape[0], -1)


def _ring_rows(w: TensorRing, idx: Array) -> Array:
    p = w.n_out
    digits = _digits(idx, w.out_modes)
    m = _take(w.cores[0], digits[0], 1)  # (N, r_0, r_1)
    for core, o in zip(w.cores[1:p], digits[1:], strict=True):
        m = m @ _take(core, o, 1)
    t = _merge(w.cores[p:])  # (r_p, d_in, r_0)
    return jnp.einsum("nab,bma->nm", m, t)


def _kronecker_rows(w: Kronecker, idx: Array) -> Array:
    p2 = w.b.shape[1]
    a = jnp.take(w.a, idx // p2, axis=1)  # (R, N, q1)
    b = jnp.take(w.b, idx % p2, axis=1)  # (R, N, q2)
    return jnp.einsum("rnj,rnk->njk", a, b).reshape(idx.shape[0], -1)


_ROWS: dict[type, Callable[[Any, Array], Array]] = {
    LowRank: _lowrank_rows,
    DeepLowRank: _deep_rows,
    TTMatrix: _tt_rows,
    CP: _cp_rows,
    Tucker: _tucker_rows,
    TensorRing: _ring_rows,
    Kronecker: _kronecker_rows,
}


def _row_function(weight: Any) -> Callable[[Any, Array], Array]:
    for cls in type(weight).__mro__:
        if cls in _ROWS:
            return _ROWS[cls]
    names = ", ".join(c.__name__ for c in _ROWS)
    raise TypeError(
        f"`weight` must be a matrix factorization ({names}); got {type(weight).__name__}."
    )
