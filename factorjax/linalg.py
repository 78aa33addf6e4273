"""Spectral measures of matrices and of tubal tensors.

Matrix functions act on the last two axes and broadcast over leading batch axes. Their tubal
counterparts act on tensors ``(..., n1, n2, k)`` slice by slice in the Fourier domain (see
[`factorjax.tubal`][factorjax.tubal]) and return one value per slice of the half spectrum,
shape ``(..., k // 2 + 1)``: the quantities that the theory of tubal factorizations tracks
frequency by frequency. Slice ``k - j`` of the full spectrum has the same value as slice ``j``.
"""

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import Array
from jax.typing import ArrayLike
from jaxtyping import Float

from factorjax import _lapack, tubal
from factorjax._checks import as_real_array, check_rank, check_tolerance, describe

# Scalar arguments validated by `factorjax._checks` (ranks, sizes, tolerances, scales, the
# scheme) are annotated `Any`, as in `factorjax.tubal`: a narrower hint (`int`, `float`) would
# let a runtime type checker reject a valid `np.int64` rank or an int `rtol = 0`, and pre-empt
# the clear error of `factorjax._checks` with its own. The docstrings state the contract.

__all__ = [
    "effective_rank",
    "principal_angles",
    "rank_for_tolerance",
    "singular_values",
    "stable_rank",
    "truncated_svd",
    "tubal_effective_rank",
    "tubal_principal_angles",
    "tubal_stable_rank",
]


def _as_matrix(name: str, x: ArrayLike) -> Array:
    return as_real_array(name, x, min_ndim=2)


def singular_values(W: ArrayLike) -> Float[Array, "*batch r"]:
    """Singular values of a matrix, in descending order.

    Arguments:
        W: real array of shape ``(..., m, n)``.

    Returns:
        Array of shape ``(..., min(m, n))``.
    """
    return _lapack.svd(_as_matrix("W", W), compute_uv=False)


def truncated_svd(
    W: ArrayLike, rank: Any = None
) -> tuple[Float[Array, "*batch m r"], Float[Array, "*batch r"], Float[Array, "*batch r n"]]:
    """The leading ``rank`` singular triplets of a matrix: the best rank-``rank`` approximation.

    Arguments:
        W: real array of shape ``(..., m, n)``.
        rank: number of triplets kept, ``1 <= rank <= min(m, n)``; ``None`` keeps all.

    Returns:
        ``(U, s, Vh)`` of shapes ``(..., m, r)``, ``(..., r)``, ``(..., r, n)`` with
        ``W ~= U @ diag(s) @ Vh``.
    """
    W = _as_matrix("W", W)
    r = min(W.shape[-2:]) if rank is None else check_rank("rank", rank, min(W.shape[-2:]))
    U, s, Vh = _lapack.svd(W, full_matrices=False)
    return U[..., :r], s[..., :r], Vh[..., :r, :]


def rank_for_tolerance(s: ArrayLike, rtol: Any, weights: ArrayLike | None = None) -> int:
    """The smallest rank whose truncation has relative Frobenius error at most ``rtol``.

    With singular values ``s`` sorted descending along the last axis (several rows of them for
    tubal tensors: one per Fourier slice, counted with ``weights``), returns the smallest ``r``
    with ``sqrt(sum_{i >= r} w s_i^2) <= rtol * sqrt(sum_i w s_i^2)``, and at least 1. The rank
    sets the shape of the factors, so ``s`` must be concrete (not traced under ``jit``).

    Arguments:
        s: singular values, shape ``(r,)`` or ``(f, r)``.
        rtol: relative Frobenius error, finite and ``>= 0``.
        weights: multiplicity of each row of ``s`` (shape ``(f,)``); default 1.

    Returns:
        A Python int in ``[1, r]``.
    """
    rtol = check_tolerance("rtol", rtol)
    if isinstance(s, jax.core.Tracer):
        raise ValueError(
            "`rtol` chooses the rank from the singular values, and the rank sets the shapes of "
            "the factors, so it needs concrete values; under `jax.jit` pass `rank=` instead."
        )
    s = np.atleast_2d(np.asarray(s, dtype=np.float64))
    w = np.ones(s.shape[0]) if weights is None else np.asarray(weights, dtype=np.float64)
    energy = (w[:, None] * s**2).sum(axis=0)  # energy carried by the i-th triplets
    tail = np.concatenate([np.cumsum(energy[::-1])[::-1], [0.0]])  # tail[r] = sum_{i >= r}
    total = tail[0]
    ok = np.nonzero(tail <= rtol**2 * total)[0]
    return int(max(1, ok[0]))


def effective_rank(W: ArrayLike) -> Float[Array, "*batch"]:
    """Effective rank of Roy and Vetterli (2007): ``exp(H(p))`` with ``p = s / sum(s)``.

    ``H`` is the Shannon entropy (natural log, ``0 log 0 = 0``). It lies in ``[1, min(m, n)]``
    for a non-zero matrix, equals the rank when the non-zero singular values are equal, and
    is 1 for the zero matrix by convention here.

    Arguments:
        W: real array of shape ``(..., m, n)``.

    Returns:
        Array of shape ``(...)``.
    """
    return _effective_rank_of(singular_values(W))


def _effective_rank_of(s: Array) -> Array:
    total = jnp.sum(s, axis=-1, keepdims=True)
    p = s / jnp.where(total > 0, total, 1.0)
    plogp = jnp.where(p > 0, p * jnp.log(jnp.where(p > 0, p, 1.0)), 0.0)
    return jnp.exp(-jnp.sum(plogp, axis=-1))


def stable_rank(W: ArrayLike) -> Float[Array, "*batch"]:
    """Stable rank ``||W||_F^2 / ||W||_2^2``, in ``[1, rank(W)]`` (0 for the zero matrix).

    Arguments:
        W: real array of shape ``(..., m, n)``.

    Returns:
        Array of shape ``(...)``.
    """
    return _stable_rank_of(singular_values(W))


def _stable_rank_of(s: Array) -> Array:
    top = s[..., 0] ** 2
    return jnp.sum(s**2, axis=-1) / jnp.where(top > 0, top, 1.0)


def _orthonormal_basis(X: Array) -> Array:
    return _lapack.qr(X, mode="reduced")[0]


def _angles_between(Qa: Array, Qb: Array) -> Array:
    """Principal angles between the spans of orthonormal ``Qa (m, p)`` and ``Qb (m, q)``, p >= q.

    Uses cosines for the large angles and sines for the small ones (Bjorck and Golub, 1973), so
    that angles near 0 are accurate.
    """
    M = jnp.conj(jnp.swapaxes(Qa, -1, -2)) @ Qb  # (p, q)
    cos = _lapack.svd(M, compute_uv=False)  # descending
    sin = _lapack.svd(Qb - Qa @ M, compute_uv=False)  # descending
    sin = jnp.flip(sin, axis=-1)  # ascending: pairs with descending cosines
    return jnp.arctan2(jnp.clip(sin, 0.0, 1.0), jnp.clip(cos, 0.0, 1.0))


def principal_angles(A: ArrayLike, B: ArrayLike) -> Float[Array, "*batch r"]:
    """Principal angles between the column spaces of ``A`` and ``B``, in radians, ascending.

    Both must have full column rank. The sine of the largest angle is the distance
    ``||P_A - P_B||_2`` between the subspaces when they have the same dimension.

    Arguments:
        A: real array of shape ``(..., m, p)``.
        B: real array of shape ``(..., m, q)``.

    Returns:
        Array of shape ``(..., min(p, q))`` of angles in ``[0, pi / 2]``.
    """
    A = _as_matrix("A", A)
    B = _as_matrix("B", B)
    if A.shape[-2] != B.shape[-2]:
        raise ValueError(
            "`A` and `B` must have the same number of rows (their columns live in the same "
            f"space); got A.shape = {A.shape} and B.shape = {B.shape}."
        )
    Qa, Qb = _orthonormal_basis(A), _orthonormal_basis(B)
    if Qa.shape[-1] < Qb.shape[-1]:
        Qa, Qb = Qb, Qa
    return _angles_between(Qa, Qb)


# ---------------------------------------------------------------------------------------------
# Tubal counterparts: one value per slice of the half spectrum
# ---------------------------------------------------------------------------------------------


def tubal_effective_rank(A: ArrayLike) -> Float[Array, "*batch f"]:
    """Effective rank of every Fourier slice of a tubal tensor.

    Arguments:
        A: real tensor of shape ``(..., n1, n2, k)``.

    Returns:
        Array of shape ``(..., k // 2 + 1)``.
    """
    return _effective_rank_of(tubal.fourier_singular_values(A))


def tubal_stable_rank(A: ArrayLike) -> Float[Array, "*batch f"]:
    """Stable rank of every Fourier slice of a tubal tensor.

    Arguments:
        A: real tensor of shape ``(..., n1, n2, k)``.

    Returns:
        Array of shape ``(..., k // 2 + 1)``.
    """
    return _stable_rank_of(tubal.fourier_singular_values(A))


def tubal_principal_angles(A: ArrayLike, B: ArrayLike) -> Float[Array, "*batch f r"]:
    """Principal angles between the t-column spaces of ``A`` and ``B``, slice by slice.

    In the Fourier domain the t-column space of ``A`` is, in every slice ``j``, the column
    space of the complex matrix ``A_hat[j]``; this returns the principal angles between those
    of ``A`` and ``B`` for every slice of the half spectrum. Every slice of both must have full
    column rank.

    Arguments:
        A: real tensor of shape ``(..., n, p, k)``.
        B: real tensor of shape ``(..., n, q, k)``.

    Returns:
        Array of shape ``(..., k // 2 + 1, min(p, q))`` of angles in ``[0, pi / 2]``, ascending
        within each slice.
    """
    A = as_real_array("A", A, min_ndim=3)
    B = as_real_array("B", B, min_ndim=3)
    if A.shape[-3] != B.shape[-3] or A.shape[-1] != B.shape[-1]:
        raise ValueError(
            "`A` (..., n, p, k) and `B` (..., n, q, k) must agree in n and k; got "
            f"{describe(A)} and {describe(B)}."
        )
    Qa, Qb = _orthonormal_basis(tubal.to_fourier(A)), _orthonormal_basis(tubal.to_fourier(B))
    if Qa.shape[-1] < Qb.shape[-1]:
        Qa, Qb = Qb, Qa
    return _angles_between(Qa, Qb)
