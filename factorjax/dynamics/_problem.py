"""The base of `factorjax.dynamics.problems`: `AbstractProblem` and the checks, operators and
ground truths that the sensing and completion problems share."""

import abc
import math
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax import Array
from jax.typing import ArrayLike
from jaxtyping import PRNGKeyArray

from factorjax import tubal
from factorjax._checks import (
    as_real_array,
    check_positive_int,
    check_tolerance,
    describe,
)

# Scalar arguments validated here (sizes, ranks, `scale`, `symmetric`, `noise`) are annotated
# `Any`, as in `factorjax.tubal`: a narrow hint would let the runtime type checker reject valid
# `np.int64` sizes and pre-empt the clear errors of `factorjax._checks`.


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
