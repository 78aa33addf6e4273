"""Deep matrix factorizations ``W = W_N ... W_2 W_1``."""

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
from jax import Array
from jax.typing import ArrayLike
from jaxtyping import Float, PRNGKeyArray

from factorjax import _lapack
from factorjax._checks import as_real_array, check_positive_int, check_rank, describe
from factorjax.factorizations._init import small_std, target_variance
from factorjax.factorizations._operator import (
    AbstractOperator,
    Candidate,
    Order,
    dense_candidate,
    matmul_t,
)
from factorjax.factorizations.lowrank import lowrank_svd, resolve_rank


def _chain(mats: Sequence[Array]) -> Array:
    """Product of a chain of matrices in the cheapest order (dynamic programming)."""
    return mats[0] if len(mats) == 1 else jnp.linalg.multi_dot(list(mats))


def _balanced(U: Array, s: Array, Vh: Array, depth: int) -> tuple[Array, ...]:
    """Split ``U diag(s) Vh`` into ``depth`` balanced factors, first-applied first."""
    root = s ** (1.0 / depth)
    if depth == 1:
        return ((U * s) @ Vh,)
    first = root[:, None] * Vh
    middle = [jnp.diag(root) for _ in range(depth - 2)]
    last = U * root
    return (first, *middle, last)


class DeepLowRank(AbstractOperator):
    """A deep matrix factorization ``W = W_N ... W_2 W_1`` of any depth and hidden widths.

    ``factors[i]`` is ``W_{i+1}`` of shape ``(h_{i+1}, h_i)``, with ``h_0 = d_in`` and
    ``h_N = d_out``: the first factor applied to an input comes first. The model of deep matrix
    factorization studied by Arora et al. (NeurIPS 2019).

    Example:
        >>> import jax
        >>> from factorjax import DeepLowRank
        >>> W = DeepLowRank.init(20, 10, (8, 8), key=jax.random.key(0))
        >>> W.shape, W.depth, W.rank
        ((20, 10), 3, 8)
    """

    # Each factor has its own shape: `_`-prefixed names are not bound across the tuple.
    factors: tuple[Float[Array, "_h_out _h_in"], ...]

    def __check_init__(self):
        if len(self.factors) == 0:
            raise ValueError("`factors` must hold at least one matrix; got none.")
        for i, f in enumerate(self.factors):
            if f.ndim != 2:
                raise ValueError(f"`factors[{i}]` must be a matrix; got {describe(f)}.")
            if i > 0 and self.factors[i - 1].shape[0] != f.shape[1]:
                raise ValueError(
                    f"`factors[{i}]` of shape {f.shape} does not chain after `factors[{i - 1}]` "
                    f"of shape {self.factors[i - 1].shape}: factors[i] is (h_{{i+1}}, h_i)."
                )

    @classmethod
    def init(
        cls,
        d_out: Any,
        d_in: Any,
        widths: Any,
        *,
        key: PRNGKeyArray,
        init: Any = "glorot",
        std: Any = None,
        alpha: Any = None,
        dtype=None,
    ) -> "DeepLowRank":
        """Random factors.

        Arguments:
            d_out, d_in: the shape of ``W``.
            widths: the hidden widths ``(h_1, ..., h_{N-1})``; the depth is ``N = len + 1``.
            key: a JAX PRNG key.
            init: ``"glorot"``, ``"he"``, ``"lecun"`` or ``"std"`` target the variance of the
                entries of the product ``W``: every factor gets the same entry std ``s`` with
                ``Var(W_ij) = s^(2N) h_1 ... h_{N-1}``. ``"small"``: factor ``i`` has entries
                ``N(0, alpha^2 / h_i)`` with ``h_i`` its input width.
            std: the target standard deviation of ``W`` for ``init="std"``.
            alpha: the scale for ``init="small"``.
            dtype: floating dtype of the factors.

        Returns:
            A `DeepLowRank` of depth ``len(widths) + 1``.
        """
        d_out = check_positive_int("d_out", d_out)
        d_in = check_positive_int("d_in", d_in)
        if isinstance(widths, int) or not isinstance(widths, Sequence):
            raise TypeError(
                f"`widths` must be a sequence of hidden widths (h_1, ..., h_(N-1)); got "
                f"{describe(widths)}. Use (h,) * (depth - 1) for a constant width."
            )
        hidden = [check_positive_int(f"widths[{i}]", h) for i, h in enumerate(widths)]
        dims = [d_in, *hidden, d_out]
        depth = len(dims) - 1
        dtype = jnp.result_type(float) if dtype is None else dtype
        if init == "small":
            if std is not None:
                raise ValueError("`std` is only used with init='std'; got init='small'.")
            scales = [small_std(alpha, dims[i]) for i in range(depth)]
        else:
            var = target_variance(init, fan_in=d_in, fan_out=d_out, std=std, alpha=alpha)
            inner = 1
            for h in hidden:
                inner *= h
            scales = [(var / inner) ** (1.0 / (2 * depth))] * depth
        keys = jax.random.split(key, depth)
        factors = tuple(
            scales[i] * jax.random.normal(keys[i], (dims[i + 1], dims[i]), dtype)
            for i in range(depth)
        )
        return cls(factors)

    @classmethod
    def from_dense(
        cls,
        w: ArrayLike,
        rank: Any = None,
        *,
        depth: Any = 2,
        rtol: Any = None,
    ) -> "DeepLowRank":
        """Truncated SVD split into ``depth`` balanced factors of hidden width ``rank``.

        ``W_1 = S^(1/N) V^T``, ``W_i = S^(1/N)`` for the middle factors and
        ``W_N = U S^(1/N)``: balanced, ``W_{i+1}^T W_{i+1} = W_i W_i^T``, the invariant that
        gradient flow on a deep factorization preserves.

        Arguments:
            w: real matrix ``(d_out, d_in)``.
            rank: hidden width and rank, ``1 <= rank <= min(d_out, d_in)``.
            depth: number of factors ``N >= 1``.
            rtol: instead of ``rank``: smallest rank with relative Frobenius error ``<= rtol``.

        Returns:
            A `DeepLowRank`.
        """
        w = as_real_array("w", w)
        if w.ndim != 2:
            raise ValueError(f"`w` must be a matrix (d_out, d_in); got {describe(w)}.")
        depth = check_positive_int("depth", depth)
        U, s, Vh = _lapack.svd(w, full_matrices=False)
        r = resolve_rank(rank, rtol, s, min(w.shape))
        return cls(_balanced(U[:, :r], s[:r], Vh[:r], depth))

    @property
    def depth(self) -> int:
        """Number of factors ``N``."""
        return len(self.factors)

    @property
    def widths(self) -> tuple[int, ...]:
        """Hidden widths ``(h_1, ..., h_{N-1})``."""
        return tuple(f.shape[0] for f in self.factors[:-1])

    @property
    def shape(self) -> tuple[int, int]:
        return (self.factors[-1].shape[0], self.factors[0].shape[1])

    @property
    def rank(self) -> int:
        """The narrowest width of the chain: an upper bound on the rank of ``W``."""
        return min(min(f.shape) for f in self.factors)

    def to_dense(self) -> Float[Array, "d_out d_in"]:
        """The product, multiplied in the order of least flops."""
        return _chain(self.factors[::-1])

    def truncate(self, rank: Any) -> "DeepLowRank":
        """Best approximation of rank ``rank``, rebalanced into the same depth.

        Reduces the chain to ``W = P Q^T`` with ``P = W_N`` and ``Q^T = W_{N-1} ... W_1`` and
        takes the SVD through QR of both, so no ``d_out x d_in`` matrix is built. Hidden widths
        become ``rank``.
        """
        rank = check_rank("rank", rank, min(self.rank, *self.shape))
        if self.depth == 1:
            U, s, Vh = _lapack.svd(self.factors[0], full_matrices=False)
            return DeepLowRank(_balanced(U[:, :rank], s[:rank], Vh[:rank], 1))
        P = self.factors[-1]
        Qt = _chain(self.factors[-2::-1])
        return DeepLowRank(_balanced(*lowrank_svd(P, Qt.T, rank), self.depth))

    @property
    def in_features(self) -> int:
        return self.factors[0].shape[1]

    @property
    def out_features(self) -> int:
        return self.factors[-1].shape[0]

    def to_matrix(self) -> Float[Array, "d_out d_in"]:
        return self.to_dense()

    def reconstruction_flops(self) -> int:
        # the chain W_N ... W_1 from the input side (the order `to_dense` takes is at most this)
        h = [self.in_features, *(f.shape[0] for f in self.factors)]
        return sum(2 * h[0] * h[i] * h[i + 1] for i in range(1, len(h) - 1))

    def candidates(self, batch: int) -> tuple[Candidate, ...]:
        """``"factored"`` (factor by factor from the input: ``2 B sum_i h_i h_{i+1}`` FLOPs)
        and ``"dense"``."""
        h = [self.in_features, *(f.shape[0] for f in self.factors)]
        item = jnp.dtype(self.dtype).itemsize
        flops = sum(2 * batch * h[i] * h[i + 1] for i in range(len(h) - 1))

        def factored(x):
            for f in self.factors:
                x = matmul_t(x, f)
            return x

        peak = max((batch * w for w in h[1:-1]), default=0) * item
        factored_order = Order("factored", flops, peak, flops)  # matmuls only
        return (Candidate(factored_order, factored), dense_candidate(self, batch))


__all__ = ["DeepLowRank"]
