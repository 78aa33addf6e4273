"""Sensing problems of `factorjax.dynamics.problems`: tubal tensors and matrices measured by
dense Gaussian operators."""

# Scalar arguments are annotated `Any` and checked by name: see `_problem.py`.

from typing import Any

import equinox as eqx
import jax
from jax import Array
from jax.typing import ArrayLike
from jaxtyping import Float, PRNGKeyArray

from factorjax import tubal
from factorjax._checks import check_choice, check_rank
from factorjax.dynamics._problem import (
    AbstractProblem,
    _check_bool,
    _check_input,
    _check_sizes,
    _check_unbatched,
    _dense_adjoint,
    _dense_measure,
    _float_dtype,
    _inv_sqrt,
    _matrix_truth,
    _noise_level,
    _observe,
    _tubal_truth,
)
from factorjax.dynamics.gram import SymmetricGram


class TubalSensing(AbstractProblem):
    """Tubal tensor sensing (Karnik, Veselovska, Iwen and Krahmer, ICML 2025).

    ``X*`` is ``(n, n, k)``, t-symmetric positive semidefinite of tubal rank ``r``:
    ``X* = Ubar * Ubar^T`` with ``Ubar = U[:, :r, :]`` from the t-SVD of a Gaussian tensor, so
    that every non-zero Fourier singular value of ``X*`` is 1. The measurements are
    ``A(X)_j = <A_j, X>`` for ``j < m``, with Gaussian tensors ``G_j`` of i.i.d. ``N(0, 1)``
    entries (``G_j + G_j^T``, t-transpose, with ``symmetric=True``: the authors' Figs 3-4) and
    ``A_j = G_j / sqrt(m)`` (``scale="paper"``, entries ``N(0, 1/m)``) or ``A_j = G_j``
    (``scale="authors"``, the authors' MATLAB code).

    Step sizes of the two scales. For the factorization ``X = U * U^T``, the gradient of
    ``L = 1/2 ||A(U * U^T) - y||^2`` in ``U`` is ``(M + M^T) * U`` with ``M = A*(res)``: the
    differential ``<M, dU * U^T + U * dU^T>`` equals ``<(M + M^T) * U, dU>`` since the
    t-transpose is the adjoint of the t-product. The authors' update
    ``U <- U - nu sum_j res_j (G_j + G_j^T) * U``, residuals and tensors unnormalised, is thus
    plain gradient descent with step ``nu`` on the ``"authors"`` problem. Dividing the ``A_j``
    by ``sqrt(m)`` divides the residuals by ``sqrt(m)`` and the loss by ``m``, so step ``mu``
    on the ``"paper"`` problem is step ``mu / m`` on the ``"authors"`` one: ``mu = m nu``, for
    either value of ``symmetric``. Constant factors enter with other conventions: measured
    against a loss ``1/4 ||.||^2`` the equivalent step doubles (``2 m nu``, Fig 2,
    unsymmetrised); if moreover the symmetrised tensors are normalised as ``(G_j + G_j^T) / 2``
    (half of the authors' ``G_j + G_j^T``, a quarter of the loss), it is ``8 m nu`` (Figs 3-4).

    Fields:
        ground_truth: ``X*``, ``(n, n, k)``.
        y: the observations ``A(X*) + noise * N(0, 1)``, ``(m,)``.
        G: the operator as a matrix ``(m, n * n * k)``: row ``j`` is ``A_j`` flattened
            (row-major), scale included.
        noise: the noise level (a scalar array).
        r: the tubal rank of ``X*`` (static).
        scale, symmetric: how ``G`` was drawn (static).
        gram: the normal equations on t-symmetric tensors (`with_gram`), or ``None``.
    """

    ground_truth: Float[Array, "n n k"]
    y: Float[Array, " m"]
    G: Float[Array, "m N"]
    noise: Float[Array, ""]
    r: int = eqx.field(static=True)
    scale: str = eqx.field(static=True)
    symmetric: bool = eqx.field(static=True)
    gram: SymmetricGram | None = None

    @classmethod
    def make(
        cls,
        n: Any,
        k: Any,
        r: Any,
        m: Any,
        *,
        key: PRNGKeyArray,
        symmetric: Any = False,
        scale: Any = "paper",
        noise: Any = 0.0,
        dtype: Any = None,
    ) -> "TubalSensing":
        """Draw a problem.

        Arguments:
            n, k: ``X*`` is ``(n, n, k)``.
            r: its tubal rank, ``1 <= r <= n``.
            m: the number of measurements, ``>= 1``.
            key: a JAX PRNG key; the ground truth, the tensors and the noise come from three
                independent subkeys, so problems that differ only in ``noise`` or ``scale``
                share ``X*`` and the ``G_j``.
            symmetric: replace every ``G_j`` by ``G_j + G_j^T``.
            scale: ``"paper"`` (``A_j = G_j / sqrt(m)``) or ``"authors"`` (``A_j = G_j``).
            noise: standard deviation of the Gaussian noise on each measurement, ``>= 0``; may
                be a (traced) scalar array, whose value is then not checked.
            dtype: floating dtype (default: JAX's default float).

        Returns:
            A `TubalSensing`.
        """
        n, k, m = _check_sizes(n=n, k=k, m=m)
        r = check_rank("r", r, n)
        symmetric = _check_bool("symmetric", symmetric)
        scale = check_choice("scale", scale, ("paper", "authors"))
        dtype = _float_dtype(dtype)
        noise = _noise_level(noise, dtype)
        k_truth, k_meas, k_noise = jax.random.split(key, 3)
        truth = _tubal_truth(k_truth, n, k, r, dtype)
        g = jax.random.normal(k_meas, (m, n, n, k), dtype)
        if symmetric:
            g = g + tubal.ttranspose(g)
        g = g.reshape(m, n * n * k)
        if scale == "paper":
            g = g * _inv_sqrt(m)
        clean = _dense_measure(g, truth, (n, n, k))
        return cls(
            ground_truth=truth,
            y=_observe(clean, noise, k_noise),
            G=g,
            noise=noise,
            r=r,
            scale=scale,
            symmetric=symmetric,
        )

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.ground_truth.shape[-3:])

    @property
    def rank(self) -> int:
        return self.r

    def with_gram(self) -> "TubalSensing":
        """This problem with its normal equations on t-symmetric tensors precomputed.

        A symmetric factorization ``U * U^T`` only ever produces t-symmetric iterates, whose
        ``N`` entries hold ``N_s = n (n k + c) / 2`` free values (``c`` the number of real
        Fourier slices, 1 or 2): 210 of 400 for ``n = 10, k = 4``. `symmetric_grad` then costs
        one ``N_s x N_s`` matrix-vector product instead of two ``m x N`` ones, and a batch of
        runs streams ``N_s^2`` instead of ``2 m N`` numbers per step (3.5 MB against 18 MB in
        float64 for 20 problems of the paper's Fig 3). Only `symmetric_grad` uses the Gram
        matrix; the loss and the metrics keep the residual, which stays exact near convergence
        where the expanded quadratic form would cancel. Traceable; ``jax.vmap`` it over a
        batch of problems.
        """
        _check_unbatched(self.G, 2)
        return eqx.tree_at(
            lambda p: p.gram,
            self,
            SymmetricGram.from_operator(self.G, self.y, self.shape),
            is_leaf=lambda x: x is None,
        )

    def symmetric_grad(self, X: ArrayLike) -> Float[Array, "*batch n n k"]:
        """``(M + M^T) / 2`` with ``M = grad(X)``; exact for a t-symmetric ``X`` only when the
        Gram matrix of `with_gram` is present (it then assumes ``X`` t-symmetric), for any
        ``X`` otherwise."""
        if self.gram is None:
            return super().symmetric_grad(X)
        return self.gram.symmetric_grad(_check_input("X", X, self.shape))

    def measure(self, X: ArrayLike) -> Float[Array, "*batch m"]:
        """``A(X)_j = <A_j, X>``: ``(..., n, n, k)`` to ``(..., m)``, one matmul."""
        return _dense_measure(self.G, X, self.shape)

    def adjoint(self, y: ArrayLike) -> Float[Array, "*batch n n k"]:
        """``A*(y) = sum_j y_j A_j``: ``(..., m)`` to ``(..., n, n, k)``, one matmul."""
        return _dense_adjoint(self.G, y, self.shape)


class MatrixSensing(AbstractProblem):
    """Low-rank matrix sensing with Gaussian measurements.

    ``X* = U V^T / ||U V^T||_F`` (``U U^T / ||U U^T||_F``, positive semidefinite, with
    ``symmetric=True``) from Gaussian factors ``(n1, r)`` and ``(n2, r)``: rank ``r`` and unit
    Frobenius norm. ``A(X)_j = <A_j, X>`` with i.i.d. ``N(0, 1/m)`` entries in every ``A_j``.

    Fields:
        ground_truth: ``X*``, ``(n1, n2)``.
        y: ``A(X*) + noise * N(0, 1)``, ``(m,)``.
        G: the operator ``(m, n1 * n2)``: row ``j`` is ``A_j`` flattened.
        noise: the noise level (a scalar array).
        r: the rank of ``X*`` (static).
        symmetric: whether ``X*`` is positive semidefinite (static).
    """

    ground_truth: Float[Array, "n1 n2"]
    y: Float[Array, " m"]
    G: Float[Array, "m N"]
    noise: Float[Array, ""]
    r: int = eqx.field(static=True)
    symmetric: bool = eqx.field(static=True)

    @classmethod
    def make(
        cls,
        n1: Any,
        n2: Any,
        r: Any,
        m: Any,
        *,
        key: PRNGKeyArray,
        symmetric: Any = False,
        noise: Any = 0.0,
        dtype: Any = None,
    ) -> "MatrixSensing":
        """Draw a problem.

        Arguments:
            n1, n2: ``X*`` is ``(n1, n2)``.
            r: its rank, ``1 <= r <= min(n1, n2)``.
            m: the number of measurements, ``>= 1``.
            key: a JAX PRNG key (independent subkeys for ``X*``, the ``A_j`` and the noise).
            symmetric: a positive semidefinite ``X* = U U^T`` (needs ``n1 == n2``).
            noise: standard deviation of the noise on each measurement, ``>= 0``, or a
                (traced) scalar array.
            dtype: floating dtype (default: JAX's default float).

        Returns:
            A `MatrixSensing`.
        """
        n1, n2, m = _check_sizes(n1=n1, n2=n2, m=m)
        r = check_rank("r", r, min(n1, n2))
        symmetric = _check_bool("symmetric", symmetric)
        if symmetric and n1 != n2:
            raise ValueError(
                f"`symmetric=True` needs a square X* (n1 == n2); got n1 = {n1} and n2 = {n2}."
            )
        dtype = _float_dtype(dtype)
        noise = _noise_level(noise, dtype)
        k_truth, k_meas, k_noise = jax.random.split(key, 3)
        truth = _matrix_truth(k_truth, n1, n2, r, symmetric, dtype)
        g = jax.random.normal(k_meas, (m, n1 * n2), dtype) * _inv_sqrt(m)
        clean = _dense_measure(g, truth, (n1, n2))
        return cls(
            ground_truth=truth,
            y=_observe(clean, noise, k_noise),
            G=g,
            noise=noise,
            r=r,
            symmetric=symmetric,
        )

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.ground_truth.shape[-2:])

    @property
    def rank(self) -> int:
        return self.r

    @property
    def symmetric_truth(self) -> bool:
        return self.symmetric

    def measure(self, X: ArrayLike) -> Float[Array, "*batch m"]:
        """``A(X)_j = <A_j, X>``: ``(..., n1, n2)`` to ``(..., m)``."""
        return _dense_measure(self.G, X, self.shape)

    def adjoint(self, y: ArrayLike) -> Float[Array, "*batch n1 n2"]:
        """``A*(y) = sum_j y_j A_j``: ``(..., m)`` to ``(..., n1, n2)``."""
        return _dense_adjoint(self.G, y, self.shape)
