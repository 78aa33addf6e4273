"""Low-tubal-rank tensors ``X = U * V^T`` and ``X = U * U^T`` (t-product factorizations)."""

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import Array
from jax.typing import ArrayLike
from jaxtyping import Float, PRNGKeyArray

from factorjax import _lapack, tubal
from factorjax._checks import as_real_array, check_positive_int, check_rank, describe
from factorjax.factorizations._base import AbstractFactorization
from factorjax.factorizations._init import small_std, target_variance
from factorjax.factorizations.lowrank import resolve_rank


def _map_slices(fn: Callable[..., tuple[Array, ...]], k: int, *hats: Array) -> tuple[Array, ...]:
    """Apply a matrix function to every slice of half spectra ``(..., f, a, b)``.

    The zero-frequency slice (and the Nyquist slice for even ``k``) of a real tensor is real;
    ``fn`` gets those as real matrices, so that its results stay real there and the tubes they
    map back to are real. ``fn`` returns a tuple of stacks of matrices.
    """
    f = hats[0].shape[-3]
    real = tubal._real_slices(k)
    cplx = [j for j in range(f) if j not in real]
    out_r = fn(*(jnp.real(h[..., real, :, :]) for h in hats))
    if not cplx:
        return tuple(o.astype(hats[0].dtype) for o in out_r)
    out_c = fn(*(h[..., cplx, :, :] for h in hats))
    perm = np.argsort(real + cplx)
    return tuple(
        jnp.concatenate([r.astype(c.dtype), c], axis=-3)[..., perm, :, :]
        for r, c in zip(out_r, out_c, strict=True)
    )


def _check_tube_input(x: ArrayLike, n: int, k: int) -> Array:
    x = as_real_array("x", x)
    if x.shape != (n, k):
        raise ValueError(
            f"`x` must be one unbatched t-vector of shape (n, k) = ({n}, {k}); got "
            f"{describe(x)}. Batch with jax.vmap."
        )
    return x


def _tensor_arg(x: ArrayLike) -> Array:
    x = as_real_array("x", x)
    if x.ndim != 3:
        raise ValueError(f"`x` must be a tensor (n1, n2, k); got {describe(x)}.")
    return x


def _draw(key, shapes, scale, dtype):
    keys = jax.random.split(key, len(shapes))
    return [scale * jax.random.normal(kk, s, dtype) for kk, s in zip(keys, shapes, strict=True)]


def _scale(init, std, alpha, rank, k, fan_in, fan_out):
    if init == "small":
        if std is not None:
            raise ValueError("`std` is only used with init='std'; got init='small'.")
        return small_std(alpha, rank)
    var = target_variance(init, fan_in=fan_in, fan_out=fan_out, std=std, alpha=alpha)
    return (var / (rank * k)) ** 0.25  # Var(X_ijt) = R k scale^4


def _sqrt_split(q: Array, root: Array) -> Array:
    return q * root[..., None, :].astype(q.dtype)


class TubalLowRank(AbstractFactorization):
    """A tensor of low tubal rank ``X = U * V^T`` (t-product, see [`factorjax.tubal`][]).

    ``U`` is ``(n1, R, k)`` and ``V`` is ``(n2, R, k)``; ``X`` is ``(n1, n2, k)``. As an operator
    it maps t-vectors ``(n2, k)`` to ``(n1, k)``: ``bcirc(X)`` is an ``(n1 k) x (n2 k)`` matrix,
    so its fans are ``n2 k`` and ``n1 k``.
    """

    u: Float[Array, "n1 R k"]
    v: Float[Array, "n2 R k"]

    def __check_init__(self):
        if self.u.ndim != 3 or self.v.ndim != 3 or self.u.shape[1:] != self.v.shape[1:]:
            raise ValueError(
                "`u` (n1, R, k) and `v` (n2, R, k) must be tensors with the same R and k; got "
                f"u {describe(self.u)} and v {describe(self.v)}."
            )

    @classmethod
    def init(
        cls,
        n1: Any,
        n2: Any,
        k: Any,
        rank: Any,
        *,
        key: PRNGKeyArray,
        init: Any = "glorot",
        std: Any = None,
        alpha: Any = None,
        dtype=None,
    ) -> "TubalLowRank":
        """Random factors.

        Arguments:
            n1, n2, k: the shape of ``X``.
            rank: the width ``R`` of the factors (``R > min(n1, n2)`` overparametrizes).
            key: a JAX PRNG key.
            init: ``"glorot"``, ``"he"``, ``"lecun"``, ``"std"`` target the variance of the
                entries of ``X`` (fans ``n2 k`` and ``n1 k``; ``Var(X) = R k s^4`` for factor
                entry std ``s``); ``"small"``: entries ``N(0, alpha^2 / R)``.
            std: the target standard deviation of ``X`` for ``init="std"``.
            alpha: the scale for ``init="small"``.
            dtype: floating dtype of the factors.

        Returns:
            A `TubalLowRank`.
        """
        n1, n2, k, rank = (
            check_positive_int(name, v)
            for name, v in (("n1", n1), ("n2", n2), ("k", k), ("rank", rank))
        )
        dtype = jnp.result_type(float) if dtype is None else dtype
        scale = _scale(init, std, alpha, rank, k, fan_in=n2 * k, fan_out=n1 * k)
        return cls(*_draw(key, [(n1, rank, k), (n2, rank, k)], scale, dtype))

    @classmethod
    def from_dense(cls, x: ArrayLike, rank: Any = None, *, rtol: Any = None) -> "TubalLowRank":
        """Truncated t-SVD, split into balanced factors ``U = U_r * S_r^(1/2)``.

        Arguments:
            x: real tensor ``(n1, n2, k)``.
            rank: tubal rank kept, ``1 <= rank <= min(n1, n2)``: the best approximation of that
                tubal rank in Frobenius norm.
            rtol: instead of ``rank``: the smallest tubal rank with relative Frobenius error
                at most ``rtol`` (needs concrete values). With neither, ``min(n1, n2)``.

        Returns:
            A `TubalLowRank`.
        """
        x = _tensor_arg(x)
        k = x.shape[-1]
        u_hat, s, vh_hat = tubal._fourier_svd(tubal.to_fourier(x), k)
        r = resolve_rank(rank, rtol, s, min(x.shape[:2]), weights=tubal.freq_weights(k))
        root = jnp.sqrt(s[..., :r])
        u = tubal.from_fourier(_sqrt_split(u_hat[..., :r], root), k)
        v_hat = jnp.conj(jnp.swapaxes(vh_hat[..., :r, :], -1, -2))
        return cls(u, tubal.from_fourier(_sqrt_split(v_hat, root), k))

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.u.shape[0], self.v.shape[0], self.u.shape[2])

    @property
    def rank(self) -> int:
        """The width ``R``: an upper bound on the tubal rank of ``X``."""
        return self.u.shape[1]

    def to_dense(self) -> Float[Array, "n1 n2 k"]:
        return tubal.tprod(self.u, tubal.ttranspose(self.v))

    def truncate(self, rank: Any) -> "TubalLowRank":
        """Best approximation of tubal rank ``rank``: per Fourier slice, QR of both factors and
        an ``R x R`` SVD; no ``n1 x n2`` slice is formed."""
        rank = check_rank("rank", rank, min(self.rank, *self.shape[:2]))
        k = self.shape[2]

        def step(uh, vh):
            qu, ru = _lapack.qr(uh)
            qv, rv = _lapack.qr(vh)
            w, s, zh = _lapack.svd(ru @ jnp.conj(jnp.swapaxes(rv, -1, -2)))
            root = jnp.sqrt(s[..., :rank])
            z = jnp.conj(jnp.swapaxes(zh[..., :rank, :], -1, -2))
            return _sqrt_split(qu @ w[..., :rank], root), _sqrt_split(qv @ z, root)

        u_hat, v_hat = _map_slices(step, k, tubal.to_fourier(self.u), tubal.to_fourier(self.v))
        return TubalLowRank(tubal.from_fourier(u_hat, k), tubal.from_fourier(v_hat, k))

    def __call__(self, x: ArrayLike) -> Float[Array, "n1 k"]:
        """``X * x`` for a t-vector ``x`` of shape ``(n2, k)``, as ``U * (V^T * x)``."""
        _, n2, k = self.shape
        x = _check_tube_input(x, n2, k)[:, None, :]
        return tubal.tprod(self.u, tubal.tprod(tubal.ttranspose(self.v), x))[:, 0, :]


class SymmetricTubalLowRank(AbstractFactorization):
    """A t-symmetric positive semidefinite tensor ``X = U * U^T`` of low tubal rank.

    ``U`` is ``(n, R, k)``; ``X`` is ``(n, n, k)`` with ``X^T = X`` and every Fourier slice
    Hermitian positive semidefinite. The model of Karnik, Veselovska, Iwen and Krahmer,
    "Implicit Regularization for Tubal Tensor Factorizations via Gradient Descent" (ICML 2025),
    trained from the small init ``init="small"``.
    """

    u: Float[Array, "n R k"]

    def __check_init__(self):
        if self.u.ndim != 3:
            raise ValueError(f"`u` must be a tensor (n, R, k); got {describe(self.u)}.")

    @classmethod
    def init(
        cls,
        n: Any,
        k: Any,
        rank: Any,
        *,
        key: PRNGKeyArray,
        init: Any = "glorot",
        std: Any = None,
        alpha: Any = None,
        dtype=None,
    ) -> "SymmetricTubalLowRank":
        """Random factor.

        Arguments:
            n, k: ``X`` is ``(n, n, k)``.
            rank: the width ``R`` of ``U``.
            key: a JAX PRNG key.
            init: ``"small"``: entries ``N(0, alpha^2 / R)``, the init of the paper.
                ``"glorot"``, ``"he"``, ``"lecun"``, ``"std"`` target the variance of the
                off-diagonal entries of ``X`` (fans ``n k``), ``Var = R k s^4``; the diagonal
                ``X[i, i, 0]`` has mean ``R k s^2`` since ``X`` is positive semidefinite.
            std: the target standard deviation for ``init="std"``.
            alpha: the scale for ``init="small"``.
            dtype: floating dtype of the factor.

        Returns:
            A `SymmetricTubalLowRank`.
        """
        n, k, rank = (
            check_positive_int(name, v) for name, v in (("n", n), ("k", k), ("rank", rank))
        )
        dtype = jnp.result_type(float) if dtype is None else dtype
        scale = _scale(init, std, alpha, rank, k, fan_in=n * k, fan_out=n * k)
        return cls(*_draw(key, [(n, rank, k)], scale, dtype))

    @classmethod
    def from_dense(
        cls, x: ArrayLike, rank: Any = None, *, rtol: Any = None
    ) -> "SymmetricTubalLowRank":
        """Truncated t-eigendecomposition of the t-symmetric part of ``x``.

        Every Fourier slice of ``(x + x^T) / 2`` is Hermitian; its leading ``rank``
        eigenpairs, with negative eigenvalues clipped to 0, give ``U = Q * Lambda^(1/2)``: the
        best tubal-rank-``rank`` positive semidefinite approximation.

        Arguments:
            x: real tensor ``(n, n, k)``.
            rank: the width kept, ``1 <= rank <= n``.
            rtol: instead of ``rank``: smallest rank with relative error at most ``rtol``.

        Returns:
            A `SymmetricTubalLowRank`.
        """
        x = _tensor_arg(x)
        n, n2, k = x.shape
        if n != n2:
            raise ValueError(f"`x` must have square frontal slices (n, n, k); got {describe(x)}.")
        sym = (x + tubal.ttranspose(x)) / 2

        def step(h):
            lam, q = _lapack.eigh(h)
            return (jnp.flip(q, axis=-1), jnp.flip(lam, axis=-1)[..., None, :])

        q_hat, lam = _map_slices(step, k, tubal.to_fourier(sym))
        lam = jnp.maximum(jnp.real(lam[..., 0, :]), 0.0)  # (f, n), descending
        r = resolve_rank(rank, rtol, lam, n, weights=tubal.freq_weights(k))
        return cls(tubal.from_fourier(_sqrt_split(q_hat[..., :r], jnp.sqrt(lam[..., :r])), k))

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.u.shape[0], self.u.shape[0], self.u.shape[2])

    @property
    def rank(self) -> int:
        """The width ``R``: an upper bound on the tubal rank of ``X``."""
        return self.u.shape[1]

    def to_dense(self) -> Float[Array, "n n k"]:
        return tubal.tprod(self.u, tubal.ttranspose(self.u))

    def truncate(self, rank: Any) -> "SymmetricTubalLowRank":
        """Best positive semidefinite approximation of tubal rank ``rank``, from a QR of each
        Fourier slice of ``U`` and an ``R x R`` SVD."""
        rank = check_rank("rank", rank, min(self.rank, self.shape[0]))
        k = self.shape[2]

        def step(uh):
            q, r = _lapack.qr(uh)
            w, s, _ = _lapack.svd(r)
            return (_sqrt_split(q @ w[..., :rank], s[..., :rank]),)

        (u_hat,) = _map_slices(step, k, tubal.to_fourier(self.u))
        return SymmetricTubalLowRank(tubal.from_fourier(u_hat, k))

    def __call__(self, x: ArrayLike) -> Float[Array, "n k"]:
        """``X * x`` for a t-vector ``x`` of shape ``(n, k)``, as ``U * (U^T * x)``."""
        n, _, k = self.shape
        x = _check_tube_input(x, n, k)[:, None, :]
        return tubal.tprod(self.u, tubal.tprod(tubal.ttranspose(self.u), x))[:, 0, :]


__all__ = ["SymmetricTubalLowRank", "TubalLowRank"]
