"""Gates of a mixture of experts: maps from logits to probability vectors on the simplex.

- ``"softmax"``: ``p = exp(z) / sum(exp(z))``, dense.
- ``"sparsemax"`` (Martins & Astudillo, ICML 2016): the Euclidean projection of ``z`` onto the
  simplex, ``p = argmin_{p in simplex} ||p - z||^2 = max(z - tau, 0)``, sparse.
- ``"entmax15"`` (Peters, Niculae & Martins, ACL 2019): 1.5-entmax,
  ``p_i = max(z_i / 2 - tau, 0)^2`` with ``tau`` such that ``sum(p) = 1``; sparse, between the
  two above.
- ``"topk"``: the softmax over the ``top_k`` largest logits, zeros elsewhere (exactly ``top_k``
  nonzeros, ties broken by position as `jax.lax.top_k` does).

The thresholds ``tau`` of sparsemax and 1.5-entmax come from the exact sort-based algorithms;
their derivatives are the closed forms (a `jax.custom_jvp`): with ``s`` the support of ``p``,
``dp = s * (dz - <s, dz> / |s|)`` for sparsemax and, with ``g = sqrt(p)``,
``dp = g * dz - g <g, dz> / sum(g)`` for 1.5-entmax. All gates `jit`, `vmap` and differentiate
(forward and reverse mode).
"""

from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import Array
from jax.typing import ArrayLike
from jaxtyping import Float

from factorjax._checks import as_real_array, check_choice, describe

__all__ = ["GATES", "check_gate", "entmax15", "gate", "sparsemax", "topk_softmax"]

GATES = ("softmax", "entmax15", "sparsemax", "topk")


def check_gate(kind: Any, top_k: Any, num_experts: Any) -> tuple[str, int | None]:
    """Check a gate's name and ``top_k`` against the number of experts it chooses among.

    Arguments:
        kind: one of `GATES`.
        top_k: for ``"topk"``, an int in ``[1, num_experts]``; must be None otherwise.
        num_experts: the length of the probability vector (an int, or a tuple of the lengths
            of several gates that share ``kind`` and ``top_k``: ``top_k`` must fit each).

    Returns:
        ``(kind, top_k)``, with ``top_k`` a Python int or None.
    """
    check_choice("gate", kind, GATES)
    sizes = tuple(num_experts) if isinstance(num_experts, tuple | list) else (num_experts,)
    if kind != "topk":
        if top_k is not None:
            raise ValueError(f"`top_k` is only used with gate='topk'; got gate={kind!r}.")
        return kind, None
    if top_k is None:
        raise ValueError("gate='topk' needs `top_k`, the number of experts kept; got None.")
    if isinstance(top_k, bool) or not isinstance(top_k, int | np.integer):
        raise TypeError(f"`top_k` must be a Python int; got {describe(top_k)}.")
    top_k = int(top_k)
    if not 1 <= top_k <= min(sizes):
        raise ValueError(
            f"`top_k` must be an int in [1, {min(sizes)}] (the number of experts"
            f"{' per level' if len(sizes) > 1 else ''}: {sizes if len(sizes) > 1 else sizes[0]}); "
            f"got {top_k}."
        )
    return kind, top_k


def _last(f, z: Array, axis: int) -> Array:
    """Apply ``f`` (a map along the last axis) along ``axis``."""
    return jnp.moveaxis(f(jnp.moveaxis(z, axis, -1)), -1, axis)


@jax.custom_jvp
def _sparsemax(z: Array) -> Array:
    z = z - jnp.max(z, axis=-1, keepdims=True)  # shift-invariant; keeps the sums O(1)
    s = jnp.flip(jnp.sort(z, axis=-1), axis=-1)  # descending
    k = jnp.arange(1, z.shape[-1] + 1, dtype=z.dtype)
    cs = jnp.cumsum(s, axis=-1)
    # the support is {1..k*}: the k with 1 + k s_k > sum_{j <= k} s_j (a prefix of the sort)
    support = jnp.sum(1 + k * s > cs, axis=-1, keepdims=True)
    tau = (jnp.take_along_axis(cs, support - 1, axis=-1) - 1) / support.astype(z.dtype)
    return jnp.maximum(z - tau, 0)


@_sparsemax.defjvp
def _sparsemax_jvp(primals, tangents):
    (z,), (dz,) = primals, tangents
    p = _sparsemax(z)
    s = (p > 0).astype(z.dtype)
    dp = s * (dz - jnp.sum(s * dz, axis=-1, keepdims=True) / jnp.sum(s, axis=-1, keepdims=True))
    return p, dp


@jax.custom_jvp
def _entmax15(z: Array) -> Array:
    # shift-invariant: subtract the max so that the cumulated squares below stay O(1)
    z = (z - jnp.max(z, axis=-1, keepdims=True)) / 2
    s = jnp.flip(jnp.sort(z, axis=-1), axis=-1)  # descending
    k = jnp.arange(1, z.shape[-1] + 1, dtype=z.dtype)
    mean = jnp.cumsum(s, axis=-1) / k
    mean_sq = jnp.cumsum(s * s, axis=-1) / k
    # tau_k solves sum_{j <= k} (s_j - tau)^2 = 1 (the smaller root); the support is the
    # largest k with tau_k <= s_k
    delta = (1 - k * (mean_sq - mean * mean)) / k
    tau = mean - jnp.sqrt(jnp.maximum(delta, 0))
    support = jnp.sum(tau <= s, axis=-1, keepdims=True)
    tau = jnp.take_along_axis(tau, support - 1, axis=-1)
    return jnp.maximum(z - tau, 0) ** 2


@_entmax15.defjvp
def _entmax15_jvp(primals, tangents):
    (z,), (dz,) = primals, tangents
    p = _entmax15(z)
    g = jnp.sqrt(p)
    dp = g * dz - g * jnp.sum(g * dz, axis=-1, keepdims=True) / jnp.sum(g, axis=-1, keepdims=True)
    return p, dp


def sparsemax(logits: ArrayLike, *, axis: int = -1) -> Float[Array, "..."]:
    """Sparsemax: the Euclidean projection of ``logits`` onto the probability simplex along
    ``axis`` (Martins & Astudillo, 2016)."""
    z = as_real_array("logits", logits, min_ndim=1)
    return _last(_sparsemax, z, axis)


def entmax15(logits: ArrayLike, *, axis: int = -1) -> Float[Array, "..."]:
    """1.5-entmax along ``axis`` (Peters, Niculae & Martins, 2019):
    ``p_i = max(z_i / 2 - tau, 0)^2`` with ``sum_i p_i = 1``, by the exact sort-based
    algorithm."""
    z = as_real_array("logits", logits, min_ndim=1)
    return _last(_entmax15, z, axis)


def _topk(z: Array, k: int) -> Array:
    _, idx = jax.lax.top_k(jax.lax.stop_gradient(z), k)
    mask = jnp.any(idx[..., :, None] == jnp.arange(z.shape[-1]), axis=-2)
    m = jnp.max(jnp.where(mask, z, -jnp.inf), axis=-1, keepdims=True)
    e = jnp.where(mask, jnp.exp(jnp.where(mask, z - m, 0)), 0)
    return e / jnp.sum(e, axis=-1, keepdims=True)


def topk_softmax(logits: ArrayLike, top_k: Any, *, axis: int = -1) -> Float[Array, "..."]:
    """The softmax over the ``top_k`` largest entries of ``logits`` along ``axis``, zeros
    elsewhere (renormalized over the kept entries)."""
    z = as_real_array("logits", logits, min_ndim=1)
    _, top_k = check_gate("topk", top_k, z.shape[axis])
    return _last(partial(_topk, k=top_k), z, axis)


def gate(logits: ArrayLike, kind: Any, *, top_k: Any = None, axis: int = -1) -> Array:
    """Probabilities on the simplex along ``axis`` from ``logits``.

    Arguments:
        logits: an array with at least one axis (any batch shape).
        kind: ``"softmax"``, ``"entmax15"``, ``"sparsemax"`` or ``"topk"`` (see the module
            docstring).
        top_k: the number of experts kept by ``"topk"`` (None for the others).
        axis: the experts' axis.

    Returns:
        An array of the shape of ``logits``, nonnegative, summing to 1 along ``axis``.

    Example:
        >>> import jax.numpy as jnp
        >>> from factorjax.moe import gate
        >>> gate(jnp.array([2.0, 1.0, -1.0]), "sparsemax")
        Array([1., 0., 0.], dtype=float32)
    """
    z = as_real_array("logits", logits, min_ndim=1)
    if not -z.ndim <= axis < z.ndim:
        raise ValueError(f"`axis` must be in [{-z.ndim}, {z.ndim}) for {describe(z)}; got {axis}.")
    kind, top_k = check_gate(kind, top_k, z.shape[axis])
    if kind == "softmax":
        return jax.nn.softmax(z, axis=axis)
    if kind == "sparsemax":
        return _last(_sparsemax, z, axis)
    if kind == "entmax15":
        return _last(_entmax15, z, axis)
    return _last(partial(_topk, k=top_k), z, axis)
