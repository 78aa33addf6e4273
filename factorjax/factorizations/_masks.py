"""Masks over rank components: truncation, tensor dropout and nested dropout that `jit` once.

A matrix format has *rank axes*: the columns of a low-rank factor, the hidden widths of a deep
factorization, the bonds of a tensor train or ring, the components of a CP or Kronecker sum,
the mode ranks of a Tucker core. `mask_ranks` multiplies one mask per rank axis into the
factors, which is the factorization with those components scaled (0: removed). Since a mask
is an array, not a shape, a rank sweep pads every run to the largest rank and masks the rest
(`leading_mask`), and vmaps; dropout over rank components draws its masks per call.

Example:
    >>> import jax
    >>> from factorjax import LowRank
    >>> from factorjax.factorizations._masks import leading_mask, mask_ranks
    >>> W = LowRank.init(64, 32, 16, key=jax.random.key(0))
    >>> W8 = mask_ranks(W, [leading_mask(16, 8)])   # the first 8 components kept, 8 zeroed
    >>> W8.rank, int(jax.numpy.linalg.matrix_rank(W8.to_dense()))
    (16, 8)
"""

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
from jax import Array
from jaxtyping import PRNGKeyArray

from factorjax._checks import describe
from factorjax.factorizations.cp import CP
from factorjax.factorizations.deep_lowrank import DeepLowRank
from factorjax.factorizations.kronecker import Kronecker
from factorjax.factorizations.lowrank import LowRank
from factorjax.factorizations.tensor_ring import TensorRing
from factorjax.factorizations.tt_matrix import TTMatrix
from factorjax.factorizations.tucker import Tucker

__all__ = [
    "leading_mask",
    "mask_ranks",
    "nested_dropout_mask",
    "rank_axes",
    "tensor_dropout_mask",
]


def rank_axes(w: Any) -> tuple[int, ...]:
    """The size of each rank axis of ``w``, in the order `mask_ranks` takes its masks."""
    if isinstance(w, LowRank):
        return (w.rank,)
    if isinstance(w, DeepLowRank):
        return tuple(f.shape[0] for f in w.factors[:-1])
    if isinstance(w, TTMatrix):
        return tuple(c.shape[-1] for c in w.cores[:-1])
    if isinstance(w, TensorRing):
        return tuple(c.shape[-1] for c in w.cores)
    if isinstance(w, CP):
        return (w.weights.shape[0],)
    if isinstance(w, Tucker):
        return tuple(w.core.shape)
    if isinstance(w, Kronecker):
        return (w.a.shape[0],)
    raise TypeError(
        f"rank masks apply to LowRank, DeepLowRank, TTMatrix, TensorRing, CP, Tucker and "
        f"Kronecker weights; got {type(w).__name__}."
    )


def mask_ranks(w: Any, masks: Sequence[Array]) -> Any:
    """``w`` with ``masks[j]`` (shape ``(rank_axes(w)[j],)``) multiplied into rank axis ``j``.

    ``None`` in place of a mask leaves that axis alone. The result has the same shapes as
    ``w`` (masked components are zero, not removed), so it traces once for every mask value.
    """
    sizes = rank_axes(w)
    masks = tuple(masks)
    if len(masks) != len(sizes):
        raise ValueError(
            f"`masks` must hold one mask per rank axis of the {type(w).__name__} "
            f"({len(sizes)}, sizes {sizes}); got {len(masks)}."
        )
    for j, (m, n) in enumerate(zip(masks, sizes, strict=True)):
        if m is not None and jnp.shape(m) != (n,):
            raise ValueError(f"`masks[{j}]` must have shape ({n},); got {describe(m)}.")
    m = [None if v is None else jnp.asarray(v, w.dtype) for v in masks]

    def last(a, v):  # scale the last axis
        return a if v is None else a * v

    if isinstance(w, LowRank):
        return LowRank(last(w.u, m[0]), w.v)
    if isinstance(w, DeepLowRank):
        f = list(w.factors)
        for i, v in enumerate(m):
            f[i] = f[i] if v is None else f[i] * v[:, None]
        return DeepLowRank(tuple(f))
    if isinstance(w, TTMatrix):
        return TTMatrix(tuple(last(c, v) for c, v in zip(w.cores, [*m, None], strict=True)))
    if isinstance(w, TensorRing):
        return TensorRing(tuple(last(c, v) for c, v in zip(w.cores, m, strict=True)), w.n_out)
    if isinstance(w, CP):
        return CP(last(w.weights, m[0]), w.factors, w.n_out)
    if isinstance(w, Tucker):
        return Tucker(w.core, tuple(last(f, v) for f, v in zip(w.factors, m, strict=True)), w.n_out)
    v = m[0]  # Kronecker: one scale per term of the sum
    return Kronecker(w.a if v is None else w.a * v[:, None, None], w.b)


def leading_mask(size: int, rank: Any, dtype: Any = jnp.float32) -> Array:
    """``1`` on the first ``rank`` of ``size`` components, ``0`` after: a truncation that
    ``rank`` may be a traced int for (pad to ``size``, vmap over ``rank``)."""
    return (jnp.arange(size) < rank).astype(dtype)


def tensor_dropout_mask(key: PRNGKeyArray, size: int, rate: Any, dtype: Any = jnp.float32):
    """Tensor dropout (Kolbeinsson et al. 2021): each component is kept with probability
    ``1 - rate`` and scaled by ``1 / (1 - rate)``, so the expected weight is unchanged."""
    if not 0.0 <= rate < 1.0:
        raise ValueError(f"`rate` must be in [0, 1); got {rate!r}.")
    keep = jax.random.bernoulli(key, 1.0 - rate, (size,))
    return keep.astype(dtype) / (1.0 - rate)


def nested_dropout_mask(key: PRNGKeyArray, size: int, rate: Any, dtype: Any = jnp.float32):
    """Nested (ordered) dropout (Rippel et al. 2014): keep the first ``b`` components and drop
    the rest, where after each kept component the rest are dropped with probability ``rate``:
    ``P(b) = rate (1 - rate)^(b - 1)``, truncated at ``size``. ``rate = 0`` keeps every
    component. The leading components are kept most often, so they learn the most important
    directions, and truncating after training loses little."""
    if not 0.0 <= rate < 1.0:
        raise ValueError(f"`rate` must be in [0, 1); got {rate!r}.")
    if rate == 0.0:
        return jnp.ones((size,), dtype)
    u = jax.random.uniform(key, (), minval=jnp.finfo(jnp.float32).tiny)
    b = 1 + jnp.floor(jnp.log(u) / jnp.log1p(-rate))
    return leading_mask(size, jnp.minimum(b, size), dtype)
