"""Recovery problems: low-rank sensing and completion of matrices and tubal tensors.

A problem is a pytree (a final `eqx.Module` under `AbstractProblem`) generated from a key:
its ground truth ``X*``, its observations ``y = A(X*) + noise``, and the linear measurement
operator ``A`` with its adjoint ``A*``, both explicit. Every problem minimises the squared
residual

    L(X) = 1/2 ||A(X) - y||^2,          grad L(X) = A*(A(X) - y),

with the factor ``1/2`` stated: ``grad`` is exact, not an autodiff approximation.

Batching. ``measure`` takes ``(..., *shape)`` and ``adjoint`` takes ``(..., m)``: runs that share
one problem instance are measured together, and a dense operator then acts as one matrix-matrix
product ``X.reshape(runs, -1) @ G.T``. A batch of problem instances comes from
``jax.vmap`` over keys (``make`` is traceable; its sizes are static), and is used under
``jax.vmap`` too.

Precision. The dense operators multiply with ``Precision.HIGHEST``: the residual of a run that
converges is many orders below ``y``, and the bfloat16 / tf32 passes that TPUs and recent GPUs
otherwise use for float32 would swamp it (and would make ``A*`` differ from the transpose of the
``A`` actually applied). No-op on CPU.

Example:
    >>> import jax
    >>> from factorjax.dynamics import TubalSensing
    >>> p = TubalSensing.make(10, 4, 2, 254, key=jax.random.key(0))
    >>> p.shape, p.rank, p.y.shape
    ((10, 10, 4), 2, (254,))
    >>> float(p.loss(p.ground_truth))
    0.0
    >>> batch = jax.vmap(lambda key: TubalSensing.make(10, 4, 2, 254, key=key))(
    ...     jax.random.split(jax.random.key(1), 3))
    >>> batch.G.shape
    (3, 254, 400)
"""

import abc
import math
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax import Array
from jax.typing import ArrayLike
from jaxtyping import Float, Int, PRNGKeyArray

from factorjax import tubal
from factorjax._checks import (
    as_real_array,
    check_choice,
    check_positive_int,
    check_rank,
    check_tolerance,
    describe,
)
from factorjax.dynamics.gram import SymmetricGram

# Scalar arguments validated here (sizes, ranks, `scale`, `symmetric`, `noise`) are annotated
# `Any`, as in `factorjax.tubal`: a narrow hint would let the runtime type checker reject valid
# `np.int64` sizes and pre-empt the clear errors of `factorjax._checks`.

__all__ = [
    "AbstractProblem",
    "MatrixCompletion",
    "MatrixSensing",
    "TensorCompletion",
    "TubalSensing",
]

_HIGHEST = jax.lax.Precision.HIGHEST


# ---------------------------------------------------------------------------------------------
# The abstract problem
# ---------------------------------------------------------------------------------------------


class AbstractProblem(eqx.Module):
    """A linear inverse problem ``y = A(X*) + noise`` with the squared residual loss.

    Final subclasses hold the ground truth, the observations and the operator, and implement
    `shape`, `rank`, `measure` (``A``) and `adjoint` (``A*``); the loss, its
    gradient and the metrics follow from those here.
    """

    ground_truth: eqx.AbstractVar[Array]
    y: eqx.AbstractVar[Array]

    @property
    @abc.abstractmethod
    def shape(self) -> tuple[int, ...]:
        """The shape of ``X*`` (of one problem, also when the pytree holds a batch)."""

    @property
    @abc.abstractmethod
    def rank(self) -> int:
        """The true rank ``r`` of ``X*`` (matrix rank, or tubal rank)."""

    @abc.abstractmethod
    def measure(self, X: ArrayLike) -> Array:
        """``A(X)``: ``(..., *shape)`` to ``(..., m)``."""

    @abc.abstractmethod
    def adjoint(self, y: ArrayLike) -> Array:
        """``A*(y)``: ``(..., m)`` to ``(..., *shape)``; ``<A(X), y> = <X, A*(y)>``."""

    @property
    def num_measurements(self) -> int:
        """The number ``m`` of observations."""
        return self.y.shape[-1]

    def residual(self, X: ArrayLike) -> Array:
        """``A(X) - y``, of shape ``(..., m)`` for ``X`` of shape ``(..., *shape)``."""
        return self.measure(X) - self.y

    def loss(self, X: ArrayLike) -> Array:
        """``1/2 ||A(X) - y||^2`` (note the ``1/2``), of shape ``(...)``."""
        res = self.residual(X)
        return 0.5 * jnp.sum(res * res, axis=-1)

    def grad(self, X: ArrayLike) -> Array:
        """The exact gradient of `loss` in ``X``: ``A*(A(X) - y)``, shape ``(..., *shape)``."""
        return self.adjoint(self.residual(X))

    def symmetric_grad(self, X: ArrayLike) -> Array:
        """The symmetric part of `grad`, ``(M + M^T) / 2`` with ``M = grad(X)``.

        A symmetric factorization ``X = U U^T`` (or ``U * U^T``, t-transpose) feels only this
        part: its gradient in ``U`` is ``(M + M^T) U = 2 symmetric_grad(X) U``. For a square
        matrix ``X`` the transpose is the matrix one; for a tubal tensor ``(n, n, k)`` it is
        the t-transpose. Problems may compute it faster than `grad` (see
        `TubalSensing.with_gram`).
        """
        M = self.grad(X)
        Mt = tubal.ttranspose(M) if len(self.shape) == 3 else jnp.swapaxes(M, -1, -2)
        return 0.5 * (M + Mt)

    @property
    def symmetric_truth(self) -> bool:
        """Whether ``X*`` is symmetric positive semidefinite (t-symmetric for tubal tensors),
        the setting of symmetric factorizations ``U U^T``; tubal problems are."""
        return len(self.shape) == 3

    def spectral_init_target(self) -> Array:
        """``A*(y)``, which is ``A*A(X*)`` without noise: the reference matrix or tensor of
        spectral initialisation, whose leading subspace approximates that of ``X*``."""
        return self.adjoint(self.y)

    def test_error(self, X: ArrayLike) -> Array:
        """Relative recovery error ``||X - X*||_F / ||X*||_F`` over the last ``len(shape)``
        axes; shape ``(...)``."""
        X = _check_input("X", X, self.shape)
        axes = tuple(range(-len(self.shape), 0))
        diff = X - self.ground_truth
        return jnp.sqrt(jnp.sum(diff * diff, axis=axes)) / jnp.sqrt(
            jnp.sum(self.ground_truth * self.ground_truth, axis=axes)
        )


# ---------------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------------


def _check_input(name: str, X: Any, shape: tuple[int, ...]) -> Array:
    X = as_real_array(name, X, min_ndim=len(shape))
    if X.shape[X.ndim - len(shape) :] != tuple(shape):
        raise ValueError(
            f"`{name}` must have shape (..., {', '.join(map(str, shape))}); got {describe(X)}."
        )
    return X


def _check_observations(name: str, z: Any, m: int) -> Array:
    z = as_real_array(name, z, min_ndim=1)
    if z.shape[-1] != m:
        raise ValueError(f"`{name}` must have shape (..., m) with m = {m}; got {describe(z)}.")
    return z


def _check_unbatched(leaf: Array, ndim: int) -> None:
    if leaf.ndim != ndim:
        raise ValueError(
            "this problem holds a batch of instances (its operator has shape "
            f"{leaf.shape}); apply its methods under `jax.vmap`, one instance at a time."
        )


def _dense_measure(G: Array, X: Any, shape: tuple[int, ...]) -> Array:
    """``X.reshape(..., N) @ G.T`` for ``G`` of shape ``(m, N)``."""
    _check_unbatched(G, 2)
    X = _check_input("X", X, shape)
    flat = X.reshape(*X.shape[: X.ndim - len(shape)], math.prod(shape))
    dtype = jnp.result_type(flat, G)
    # Contract with G's rows as stored: no transposed copy of G inside a training loop
    # (measured 2.1x faster for gradient descent through the factors).
    return jax.lax.dot_general(
        flat.astype(dtype),
        G.astype(dtype),
        (((flat.ndim - 1,), (1,)), ((), ())),
        precision=_HIGHEST,
    )


def _dense_adjoint(G: Array, z: Any, shape: tuple[int, ...]) -> Array:
    """``(z @ G).reshape(..., *shape)`` for ``G`` of shape ``(m, N)``."""
    _check_unbatched(G, 2)
    z = _check_observations("y", z, G.shape[0])
    return jnp.matmul(z, G, precision=_HIGHEST).reshape(*z.shape[:-1], *shape)


def _gather_measure(idx: Array, X: Any, shape: tuple[int, ...]) -> Array:
    _check_unbatched(idx, 1)
    X = _check_input("X", X, shape)
    return X.reshape(*X.shape[: X.ndim - len(shape)], math.prod(shape))[..., idx]


def _scatter_adjoint(idx: Array, z: Any, shape: tuple[int, ...]) -> Array:
    # Scatter-add is the adjoint of the gather for any indices; for distinct ones, as drawn
    # by `make`, it equals writing `z` into the observed places.
    _check_unbatched(idx, 1)
    z = _check_observations("y", z, idx.shape[0])
    flat = jnp.zeros((*z.shape[:-1], math.prod(shape)), z.dtype).at[..., idx].add(z)
    return flat.reshape(*z.shape[:-1], *shape)


def _float_dtype(dtype: Any) -> np.dtype:
    if dtype is None:
        return jnp.dtype(jnp.result_type(float))
    try:
        dt = jnp.dtype(dtype)
    except TypeError:
        raise TypeError(f"`dtype` must be a floating dtype; got {dtype!r}.") from None
    if not jnp.issubdtype(dt, jnp.floating):
        raise TypeError(f"`dtype` must be a floating dtype; got {dt}.")
    return dt


def _check_bool(name: str, value: Any) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"`{name}` must be a bool; got {describe(value)}.")
    return bool(value)


def _noise_level(noise: Any, dtype: np.dtype) -> Array:
    """A Python number is checked (finite, >= 0); an array (maybe traced, so that noise levels
    can be vmapped) only for being a scalar."""
    if isinstance(noise, (jax.Array, np.ndarray)):
        if noise.ndim != 0:
            raise ValueError(f"`noise` must be a scalar; got {describe(noise)}.")
        return jnp.asarray(noise).astype(dtype)
    return jnp.asarray(check_tolerance("noise", noise), dtype)


def _observe(clean: Array, noise: Array, key: PRNGKeyArray) -> Array:
    """``clean + noise * N(0, 1)`` per measurement (exactly ``clean`` for ``noise = 0``)."""
    return clean + noise * jax.random.normal(key, clean.shape, clean.dtype)


def _tubal_truth(key: PRNGKeyArray, n: int, k: int, r: int, dtype) -> Array:
    """``Ubar * Ubar^T`` with ``Ubar`` the first ``r`` columns of the t-SVD factor ``U`` of a
    Gaussian ``(n, n, k)`` tensor: t-symmetric, tubal rank ``r``, and every Fourier slice an
    orthogonal projection of rank ``r`` (all its non-zero singular values are 1)."""
    u, _, _ = tubal.tsvd(jax.random.normal(key, (n, n, k), dtype), rank=r)
    return tubal.tprod(u, tubal.ttranspose(u))


def _matrix_truth(key: PRNGKeyArray, n1: int, n2: int, r: int, symmetric: bool, dtype) -> Array:
    """``U V^T`` (or ``U U^T``) from Gaussian factors, scaled to unit Frobenius norm."""
    ku, kv = jax.random.split(key)
    u = jax.random.normal(ku, (n1, r), dtype)
    v = u if symmetric else jax.random.normal(kv, (n2, r), dtype)
    x = jnp.matmul(u, v.T, precision=_HIGHEST)
    return x / jnp.sqrt(jnp.sum(x * x))


def _inv_sqrt(m: int) -> float:
    # A Python constant: eager and jitted `make` then scale by the same rounded factor (XLA
    # rewrites a division by a constant into a multiplication).
    return float(1.0 / np.sqrt(m))


def _check_sizes(**sizes: Any) -> list[int]:
    return [check_positive_int(name, value) for name, value in sizes.items()]


# ---------------------------------------------------------------------------------------------
# Sensing
# ---------------------------------------------------------------------------------------------


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


# ---------------------------------------------------------------------------------------------
# Completion
# ---------------------------------------------------------------------------------------------


def _draw_indices(key: PRNGKeyArray, total: int, m: int) -> Array:
    """``m`` distinct flat indices in ``[0, total)``, uniform without replacement, sorted."""
    return jnp.sort(jax.random.choice(key, total, (m,), replace=False))


def _check_observed(m: int, total: int, shape: tuple[int, ...]) -> None:
    if m > total:
        raise ValueError(
            f"`m` must be at most the number of entries of X*, {total} for shape {shape} (m "
            f"distinct entries are observed); got m = {m}."
        )


class AbstractCompletion(AbstractProblem):
    """Completion problems: ``m`` distinct entries of ``X*`` observed, chosen uniformly
    without replacement. ``A(X) = X.flat[idx]`` (row-major) and ``A*`` writes ``m`` values back
    into zeros."""

    idx: eqx.AbstractVar[Int[Array, " m"]]
    noise: eqx.AbstractVar[Float[Array, ""]]
    r: eqx.AbstractVar[int]

    @property
    def rank(self) -> int:
        return self.r

    def measure(self, X: ArrayLike) -> Float[Array, "*batch m"]:
        """The observed entries ``X.flat[idx]``: ``(..., *shape)`` to ``(..., m)``."""
        return _gather_measure(self.idx, X, self.shape)

    def adjoint(self, y: ArrayLike) -> Float[Array, "..."]:
        """``y`` written at the observed places of zeros: ``(..., m)`` to ``(..., *shape)``."""
        return _scatter_adjoint(self.idx, y, self.shape)


def _completion_parts(key, truth: Array, m: int, noise, dtype) -> dict:
    """Observed indices and data of a completion problem with ground truth ``truth``."""
    shape = tuple(truth.shape)
    noise = _noise_level(noise, dtype)
    k_idx, k_noise = jax.random.split(key)
    idx = _draw_indices(k_idx, math.prod(shape), m)
    y = _observe(_gather_measure(idx, truth, shape), noise, k_noise)
    return {"ground_truth": truth, "y": y, "idx": idx, "noise": noise}


class MatrixCompletion(AbstractCompletion):
    """Low-rank matrix completion: ``m`` distinct entries of ``X*`` observed.

    ``X*`` is drawn as in `MatrixSensing` (rank ``r``, unit Frobenius norm).

    Fields:
        ground_truth: ``X*``, ``(n1, n2)``.
        y: ``X*.flat[idx] + noise * N(0, 1)``, ``(m,)``.
        idx: the observed flat (row-major) indices, distinct and sorted, ``(m,)``.
        noise: the noise level (a scalar array).
        r: the rank of ``X*`` (static).
    """

    ground_truth: Float[Array, "n1 n2"]
    y: Float[Array, " m"]
    idx: Int[Array, " m"]
    noise: Float[Array, ""]
    r: int = eqx.field(static=True)

    @classmethod
    def make(
        cls,
        n1: Any,
        n2: Any,
        r: Any,
        m: Any,
        *,
        key: PRNGKeyArray,
        noise: Any = 0.0,
        dtype: Any = None,
    ) -> "MatrixCompletion":
        """Draw a problem.

        Arguments:
            n1, n2: ``X*`` is ``(n1, n2)``.
            r: its rank, ``1 <= r <= min(n1, n2)``.
            m: the number of observed entries, ``1 <= m <= n1 * n2``.
            key: a JAX PRNG key (independent subkeys for ``X*``, the entries and the noise).
            noise: standard deviation of the noise on each observation, ``>= 0``, or a
                (traced) scalar array.
            dtype: floating dtype (default: JAX's default float).

        Returns:
            A `MatrixCompletion`.
        """
        n1, n2, m = _check_sizes(n1=n1, n2=n2, m=m)
        r = check_rank("r", r, min(n1, n2))
        _check_observed(m, n1 * n2, (n1, n2))
        dtype = _float_dtype(dtype)
        k_truth, k_obs = jax.random.split(key)
        truth = _matrix_truth(k_truth, n1, n2, r, False, dtype)
        return cls(**_completion_parts(k_obs, truth, m, noise, dtype), r=r)

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.ground_truth.shape[-2:])


class TensorCompletion(AbstractCompletion):
    """Low-tubal-rank tensor completion: ``m`` distinct entries of ``X*`` observed.

    ``X*`` is ``(n, n, k)``, drawn as in `TubalSensing` (t-symmetric positive semidefinite,
    tubal rank ``r``, all non-zero Fourier singular values 1).

    Fields:
        ground_truth: ``X*``, ``(n, n, k)``.
        y: ``X*.flat[idx] + noise * N(0, 1)``, ``(m,)``.
        idx: the observed flat (row-major) indices, distinct and sorted, ``(m,)``.
        noise: the noise level (a scalar array).
        r: the tubal rank of ``X*`` (static).
    """

    ground_truth: Float[Array, "n n k"]
    y: Float[Array, " m"]
    idx: Int[Array, " m"]
    noise: Float[Array, ""]
    r: int = eqx.field(static=True)

    @classmethod
    def make(
        cls,
        n: Any,
        k: Any,
        r: Any,
        m: Any,
        *,
        key: PRNGKeyArray,
        noise: Any = 0.0,
        dtype: Any = None,
    ) -> "TensorCompletion":
        """Draw a problem.

        Arguments:
            n, k: ``X*`` is ``(n, n, k)``.
            r: its tubal rank, ``1 <= r <= n``.
            m: the number of observed entries, ``1 <= m <= n * n * k``.
            key: a JAX PRNG key (independent subkeys for ``X*``, the entries and the noise).
            noise: standard deviation of the noise on each observation, ``>= 0``, or a
                (traced) scalar array.
            dtype: floating dtype (default: JAX's default float).

        Returns:
            A `TensorCompletion`.
        """
        n, k, m = _check_sizes(n=n, k=k, m=m)
        r = check_rank("r", r, n)
        _check_observed(m, n * n * k, (n, n, k))
        dtype = _float_dtype(dtype)
        k_truth, k_obs = jax.random.split(key)
        truth = _tubal_truth(k_truth, n, k, r, dtype)
        return cls(**_completion_parts(k_obs, truth, m, noise, dtype), r=r)

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.ground_truth.shape[-3:])
