"""Low-rank matrices ``W = U V^T``."""

from typing import Any

import jax
import jax.numpy as jnp
from jax import Array
from jax.typing import ArrayLike
from jaxtyping import Float, PRNGKeyArray

from factorjax import _lapack, linalg
from factorjax._checks import as_real_array, check_positive_int, check_rank, describe
from factorjax.factorizations._init import small_std, target_variance
from factorjax.factorizations._operator import (
    AbstractOperator,
    Candidate,
    Order,
    dense_candidate,
    matmul_t,
)

# Scalar arguments validated by `factorjax._checks` (ranks, sizes, tolerances, scales, the
# scheme) are annotated `Any`, as in `factorjax.tubal`: a narrower hint (`int`, `float`) would
# let a runtime type checker reject a valid `np.int64` rank or an int `rtol = 0`, and pre-empt
# the clear error of `factorjax._checks` with its own. The docstrings state the contract.


def balanced_from_svd(U: Array, s: Array, Vh: Array) -> tuple[Array, Array]:
    """Split ``U diag(s) Vh`` into balanced factors ``(U sqrt(s), V sqrt(s))``."""
    root = jnp.sqrt(s)
    return U * root, jnp.swapaxes(Vh, -1, -2) * root


def lowrank_svd(P: Array, Q: Array, rank: int) -> tuple[Array, Array, Array]:
    """Leading ``rank`` singular triplets of ``P Q^T`` without forming it (QR of both sides)."""
    Qp, Rp = _lapack.qr(P)
    Qq, Rq = _lapack.qr(Q)
    Uc, s, Vhc = _lapack.svd(Rp @ Rq.T, full_matrices=False)
    return Qp @ Uc[:, :rank], s[:rank], Vhc[:rank] @ Qq.T


class LowRank(AbstractOperator):
    """A low-rank matrix ``W = U V^T``, the weight of a factorized linear map ``d_in -> d_out``.

    Example:
        >>> import jax
        >>> from factorjax import LowRank
        >>> W = LowRank.init(64, 32, 4, key=jax.random.key(0))
        >>> W.shape, W.rank, W.num_params
        ((64, 32), 4, 384)
        >>> W(jax.numpy.ones(32)).shape
        (64,)
    """

    u: Float[Array, "d_out r"]
    v: Float[Array, "d_in r"]

    def __check_init__(self):
        if self.u.ndim != 2 or self.v.ndim != 2 or self.u.shape[1] != self.v.shape[1]:
            raise ValueError(
                "`u` (d_out, r) and `v` (d_in, r) must be matrices with the same number of "
                f"columns; got u {describe(self.u)} and v {describe(self.v)}."
            )

    @classmethod
    def init(
        cls,
        d_out: Any,
        d_in: Any,
        rank: Any,
        *,
        key: PRNGKeyArray,
        init: Any = "glorot",
        std: Any = None,
        alpha: Any = None,
        dtype=None,
    ) -> "LowRank":
        """Random factors.

        Arguments:
            d_out, d_in: the shape of ``W``.
            rank: the inner dimension ``r`` (any ``r >= 1``; ``r > min(d_out, d_in)`` is the
                overparametrized regime).
            key: a JAX PRNG key.
            init: ``"glorot"``, ``"he"``, ``"lecun"`` or ``"std"`` target the variance of the
                entries of ``W`` (fans ``d_in``, ``d_out``); ``"small"`` draws both factors
                with entries ``N(0, alpha^2 / r)``.
            std: the target standard deviation of ``W`` for ``init="std"``.
            alpha: the scale for ``init="small"``.
            dtype: floating dtype of the factors (default: JAX's default float).

        Returns:
            A `LowRank`.
        """
        d_out = check_positive_int("d_out", d_out)
        d_in = check_positive_int("d_in", d_in)
        rank = check_positive_int("rank", rank)
        dtype = jnp.result_type(float) if dtype is None else dtype
        if init == "small":
            if std is not None:
                raise ValueError("`std` is only used with init='std'; got init='small'.")
            scale = small_std(alpha, rank)
        else:
            var = target_variance(init, fan_in=d_in, fan_out=d_out, std=std, alpha=alpha)
            scale = (var / rank) ** 0.25  # Var(W_ij) = r * scale^4
        ku, kv = jax.random.split(key)
        u = scale * jax.random.normal(ku, (d_out, rank), dtype)
        v = scale * jax.random.normal(kv, (d_in, rank), dtype)
        return cls(u, v)

    @classmethod
    def from_dense(cls, w: ArrayLike, rank: Any = None, *, rtol: Any = None) -> "LowRank":
        """Truncated SVD of a dense matrix, split into balanced factors.

        Arguments:
            w: real matrix ``(d_out, d_in)``.
            rank: keep this many singular triplets (``1 <= rank <= min(d_out, d_in)``).
            rtol: instead of ``rank``: the smallest rank whose relative Frobenius error is at
                most ``rtol`` (needs concrete values: not under ``jit``). With neither, full
                rank ``min(d_out, d_in)``.

        Returns:
            A `LowRank` with ``U = U_r sqrt(S_r)`` and ``V = V_r sqrt(S_r)``.
        """
        w = as_real_array("w", w)
        if w.ndim != 2:
            raise ValueError(f"`w` must be a matrix (d_out, d_in); got {describe(w)}.")
        U, s, Vh = _lapack.svd(w, full_matrices=False)
        r = resolve_rank(rank, rtol, s, min(w.shape))
        return cls(*balanced_from_svd(U[:, :r], s[:r], Vh[:r]))

    @property
    def shape(self) -> tuple[int, int]:
        return (self.u.shape[0], self.v.shape[0])

    @property
    def rank(self) -> int:
        return self.u.shape[1]

    def to_dense(self) -> Float[Array, "d_out d_in"]:
        return self.u @ self.v.T

    def truncate(self, rank: Any) -> "LowRank":
        """Best approximation of rank ``rank``, from QR of the factors (no dense ``W``).

        Arguments:
            rank: ``1 <= rank <= min(self.rank, d_out, d_in)``.

        Returns:
            A balanced `LowRank` of rank ``rank``.
        """
        rank = check_rank("rank", rank, min(self.rank, *self.shape))
        return LowRank(*balanced_from_svd(*lowrank_svd(self.u, self.v, rank)))

    @property
    def in_features(self) -> int:
        return self.v.shape[0]

    @property
    def out_features(self) -> int:
        return self.u.shape[0]

    def to_matrix(self) -> Float[Array, "d_out d_in"]:
        return self.to_dense()

    def reconstruction_flops(self) -> int:
        return 2 * self.u.shape[0] * self.v.shape[0] * self.rank

    def candidates(self, batch: int) -> tuple[Candidate, ...]:
        """``"factored"`` (``(x V) U^T``: ``2 B r (d_in + d_out)`` FLOPs) and ``"dense"``."""
        (d_out, d_in), r = self.shape, self.rank
        item = jnp.dtype(self.dtype).itemsize
        flops = 2 * batch * r * (d_in + d_out)
        factored = Order("factored", flops, batch * r * item, flops)  # two matmuls
        return (
            Candidate(factored, lambda x: matmul_t(x @ self.v, self.u)),
            dense_candidate(self, batch),
        )


def resolve_rank(rank: Any, rtol: Any, s: Array, max_rank: int, weights=None) -> int:
    """The rank asked for by ``rank=`` or ``rtol=`` (at most one of them)."""
    if rank is not None and rtol is not None:
        raise ValueError(f"pass at most one of `rank` and `rtol`; got rank={rank}, rtol={rtol}.")
    if rtol is not None:
        return linalg.rank_for_tolerance(s, rtol, weights)
    return max_rank if rank is None else check_rank("rank", rank, max_rank)


__all__ = ["LowRank"]
