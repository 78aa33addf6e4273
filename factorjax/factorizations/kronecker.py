"""Sums of Kronecker products ``W = sum_{i=1}^R A_i (x) B_i``."""

import functools
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import Array
from jax.typing import ArrayLike
from jaxtyping import Float, PRNGKeyArray

from factorjax import _lapack, linalg
from factorjax._checks import (
    as_real_array,
    check_positive_int,
    check_rank,
    describe,
)
from factorjax.factorizations._init import small_std, target_variance
from factorjax.factorizations._operator import (
    AbstractOperator,
    Candidate,
    Network,
    Order,
    dense_candidate,
    network_candidates,
)
from factorjax.factorizations._tensorize import balanced_modes, check_modes, factor_std
from factorjax.factorizations.lowrank import lowrank_svd

# Scalar arguments validated by `factorjax._checks` are annotated `Any` (see lowrank.py); the
# docstrings state the contract.

__all__ = ["Kronecker"]

# from_dense with `rtol` runs eagerly (its rank comes from singular values): one compiled SVD
# per shape, reused across calls.
_svd = jax.jit(functools.partial(_lapack.svd, full_matrices=False))


def _resolve_shapes(shapes: Any, d_out: int, d_in: int) -> tuple[tuple[int, int], ...]:
    """``((p1, q1), (p2, q2))`` with ``p1 p2 = d_out`` and ``q1 q2 = d_in``; default balanced."""
    if shapes is None:
        (p1, p2), (q1, q2) = balanced_modes(d_out, 2), balanced_modes(d_in, 2)
        return ((p1, q1), (p2, q2))
    try:
        (p1, q1), (p2, q2) = shapes
    except (TypeError, ValueError):
        raise ValueError(
            f"`shapes` must be ((p1, q1), (p2, q2)), the shapes of A_i and B_i; got {shapes!r}."
        ) from None
    p1, p2 = check_modes("shapes (p1, p2)", (p1, p2), d_out)
    q1, q2 = check_modes("shapes (q1, q2)", (q1, q2), d_in)
    return ((p1, q1), (p2, q2))


def _rearrange(w: Array, p1: int, q1: int, p2: int, q2: int) -> Array:
    """Van Loan - Pitsianis: ``R(W)[(i1, j1), (i2, j2)] = W[i1 p2 + i2, j1 q2 + j2]``, so that
    ``R(A (x) B) = vec(A) vec(B)^T`` (row-major vec)."""
    return w.reshape(p1, p2, q1, q2).transpose(0, 2, 1, 3).reshape(p1 * q1, p2 * q2)


class Kronecker(AbstractOperator):
    """A sum of ``R`` Kronecker products ``W = sum_i A_i (x) B_i`` (``np.kron`` convention).

    ``a`` is ``(R, p1, q1)`` and ``b`` is ``(R, p2, q2)``; ``W`` is ``(p1 p2, q1 q2)`` with
    ``W[i1 p2 + i2, j1 q2 + j2] = sum_r a[r, i1, j1] b[r, i2, j2]``. Applied to ``x (d_in,)``
    viewed row-major as ``X (q1, q2)``: ``W x = vec(sum_i A_i X B_i^T)``.

    Example:
        >>> import jax
        >>> from factorjax.factorizations.kronecker import Kronecker
        >>> W = Kronecker.init(64, 32, 2, key=jax.random.key(0))
        >>> W.shape, W.shapes, W.rank
        ((64, 32), ((8, 4), (8, 8)), 2)
    """

    a: Float[Array, "R p1 q1"]
    b: Float[Array, "R p2 q2"]

    def __check_init__(self):
        if self.a.ndim != 3 or self.b.ndim != 3 or self.a.shape[0] != self.b.shape[0]:
            raise ValueError(
                "`a` (R, p1, q1) and `b` (R, p2, q2) must be 3-D with the same number R of "
                f"terms; got a {describe(self.a)} and b {describe(self.b)}."
            )

    @classmethod
    def init(
        cls,
        d_out: Any,
        d_in: Any,
        rank: Any,
        *,
        key: PRNGKeyArray,
        shapes: Any = None,
        init: Any = "glorot",
        std: Any = None,
        alpha: Any = None,
        dtype=None,
    ) -> "Kronecker":
        """Random factors.

        Arguments:
            d_out, d_in: the shape of ``W``.
            rank: the number ``R >= 1`` of Kronecker terms.
            key: a JAX PRNG key.
            shapes: ``((p1, q1), (p2, q2))`` with ``p1 p2 = d_out`` and ``q1 q2 = d_in``;
                default: ``(p1, p2) = balanced_modes(d_out, 2)``, same for ``d_in``.
            init: ``"glorot"``, ``"he"``, ``"lecun"`` or ``"std"`` target the variance of the
                entries of ``W``: both factors get entry std ``s`` with ``Var = R s^4``.
                ``"small"``: both have entries ``N(0, alpha^2 / R)``.
            std: the target standard deviation of ``W`` for ``init="std"``.
            alpha: the scale for ``init="small"``.
            dtype: floating dtype of the factors.

        Returns:
            A `Kronecker`.
        """
        d_out = check_positive_int("d_out", d_out)
        d_in = check_positive_int("d_in", d_in)
        rank = check_positive_int("rank", rank)
        (p1, q1), (p2, q2) = _resolve_shapes(shapes, d_out, d_in)
        dtype = jnp.result_type(float) if dtype is None else dtype
        if init == "small":
            if std is not None:
                raise ValueError("`std` is only used with init='std'; got init='small'.")
            scale = small_std(alpha, rank)
        else:
            var = target_variance(init, fan_in=d_in, fan_out=d_out, std=std, alpha=alpha)
            scale = factor_std(var, rank, 2)
        # One draw for both factors (one PRNG kernel to compile), cut in two.
        flat = scale * jax.random.normal(key, (rank * (p1 * q1 + p2 * q2),), dtype)
        a = flat[: rank * p1 * q1].reshape(rank, p1, q1)
        b = flat[rank * p1 * q1 :].reshape(rank, p2, q2)
        return cls(a, b)

    @classmethod
    def from_dense(
        cls, w: ArrayLike, rank: Any = None, *, rtol: Any = None, shapes: Any = None
    ) -> "Kronecker":
        """The best Frobenius approximation by ``R`` Kronecker terms (Van Loan and Pitsianis,
        1993): the truncated SVD of the rearrangement ``R(W) = sum_i vec(A_i) vec(B_i)^T``,
        ``A_i = sqrt(s_i) U_i`` and ``B_i = sqrt(s_i) V_i`` (balanced). Its error is the tail
        ``sqrt(sum_{i > R} s_i^2)`` of the singular values of ``R(W)``.

        Arguments:
            w: real matrix ``(d_out, d_in)``.
            rank: ``1 <= R <= min(p1 q1, p2 q2)`` (jittable). With neither ``rank`` nor
                ``rtol``: ``min(p1 q1, p2 q2)``, exact.
            rtol: instead of ``rank``: the smallest ``R`` with relative Frobenius error
                ``<= rtol`` (a float ``> 0``; needs concrete values, not under ``jit``).
            shapes: ``((p1, q1), (p2, q2))`` as in `init`.

        Returns:
            A `Kronecker`.
        """
        w = as_real_array("w", w)
        if w.ndim != 2:
            raise ValueError(f"`w` must be a matrix (d_out, d_in); got {describe(w)}.")
        (p1, q1), (p2, q2) = _resolve_shapes(shapes, *w.shape)
        if rank is not None and rtol is not None:
            raise ValueError(
                f"pass at most one of `rank` and `rtol`; got rank={rank}, rtol={rtol}."
            )
        U, s, Vh = _svd(_rearrange(w, p1, q1, p2, q2))
        if rtol is not None:
            if (
                isinstance(rtol, bool)
                or not isinstance(rtol, (int, float, np.integer, np.floating))
                or not (math.isfinite(rtol) and rtol > 0)
            ):
                raise ValueError(
                    f"`rtol` must be a finite float > 0; got {rtol!r}. For the exact "
                    "decomposition pass neither `rank` nor `rtol`."
                )
            r = linalg.rank_for_tolerance(s, rtol)
        else:
            r = s.shape[0] if rank is None else check_rank("rank", rank, s.shape[0])
        return cls(*_factors(U[:, :r], s[:r], Vh[:r], p1, q1, p2, q2))

    @property
    def shapes(self) -> tuple[tuple[int, int], tuple[int, int]]:
        """``((p1, q1), (p2, q2))``: the shapes of ``A_i`` and ``B_i``."""
        return (tuple(self.a.shape[1:]), tuple(self.b.shape[1:]))

    @property
    def shape(self) -> tuple[int, int]:
        return (self.a.shape[1] * self.b.shape[1], self.a.shape[2] * self.b.shape[2])

    @property
    def rank(self) -> int:
        """The number ``R`` of Kronecker terms."""
        return self.a.shape[0]

    @property
    def out_features(self) -> int:
        return self.shape[0]

    @property
    def in_features(self) -> int:
        return self.shape[1]

    def to_dense(self) -> Float[Array, "d_out d_in"]:
        """``sum_i kron(A_i, B_i)``."""
        return jnp.einsum("rac,rbd->abcd", self.a, self.b).reshape(self.shape)

    def to_matrix(self) -> Float[Array, "d_out d_in"]:
        return self.to_dense()

    def reconstruction_flops(self) -> int:
        """``2 R d_out d_in``."""
        return 2 * self.rank * self.shape[0] * self.shape[1]

    def truncate(self, rank: Any) -> "Kronecker":
        """The best approximation by ``rank`` Kronecker terms, from the factors: QR of the
        stacked ``vec(A_i)`` and ``vec(B_i)``, then the SVD of the small ``R x R`` core (no
        dense ``W``).

        Arguments:
            rank: ``1 <= rank <= min(R, p1 q1, p2 q2)``.

        Returns:
            A balanced `Kronecker` with ``rank`` terms.
        """
        (p1, q1), (p2, q2) = self.shapes
        rank = check_rank("rank", rank, min(self.rank, p1 * q1, p2 * q2))
        P = self.a.reshape(self.rank, p1 * q1).T
        Q = self.b.reshape(self.rank, p2 * q2).T
        return Kronecker(*_factors(*lowrank_svd(P, Q, rank), p1, q1, p2, q2))

    def network(self) -> Network:
        """``x W^T`` as one tensor network: ``X (B, q1, q2)`` with ``A (R, p1, q1)`` and
        ``B (R, p2, q2)``."""
        (_, q1), (_, q2) = self.shapes
        return Network("zjk,rij,rlk->zil", (self.a, self.b), (q1, q2))

    def candidates(self, batch: int) -> tuple[Candidate, ...]:
        """Orders of ``x W^T`` for ``x (batch, d_in)`` viewed as ``X (batch, q1, q2)``:
        ``"a-first"`` (``A_i X``, contracting ``q1``, then ``B_i`` on ``q2``), ``"b-first"``
        (``X B_i^T`` first: ``q2`` is ``x``'s trailing axis, one matmul without transposes) and
        ``"dense"``."""
        (p1, q1), (p2, q2) = self.shapes
        R, B = self.rank, batch
        item = jnp.dtype(self.dtype).itemsize
        a, b = self.a, self.b

        def a_first(x):
            t = jnp.einsum("bjk,rij->brik", x.reshape(-1, q1, q2), a)
            return jnp.einsum("brik,rlk->bil", t, b).reshape(x.shape[0], -1)

        def b_first(x):
            t = jnp.einsum("bjk,rlk->bjrl", x.reshape(-1, q1, q2), b)
            return jnp.einsum("bjrl,rij->bil", t, a).reshape(x.shape[0], -1)

        fa = 2 * B * q1 * q2 * R * p1 + 2 * B * R * p1 * q2 * p2
        fb = 2 * B * q1 * q2 * R * p2 + 2 * B * q1 * R * p2 * p1
        return (
            Candidate(Order("a-first", fa, B * R * p1 * q2 * item), a_first),
            Candidate(Order("b-first", fb, B * q1 * R * p2 * item), b_first),
            *network_candidates(self.network(), batch, self.dtype),
            dense_candidate(self, batch),
        )


def _factors(U, s, Vh, p1, q1, p2, q2) -> tuple[Array, Array]:
    """Balanced ``(A, B)`` from the SVD ``U diag(s) Vh`` of a rearranged ``W``."""
    root = jnp.sqrt(s)
    a = (U * root).T.reshape(-1, p1, q1)
    b = (root[:, None] * Vh).reshape(-1, p2, q2)
    return a, b
