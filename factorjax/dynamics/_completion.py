"""Completion problems of `factorjax.dynamics.problems`: matrices and tensors observed on a
random subset of their entries."""

# Scalar arguments are annotated `Any` and checked by name: see `_problem.py`.

import math
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
from jax import Array
from jax.typing import ArrayLike
from jaxtyping import Float, Int, PRNGKeyArray

from factorjax._checks import check_rank
from factorjax.dynamics._problem import (
    AbstractProblem,
    _check_sizes,
    _float_dtype,
    _gather_measure,
    _matrix_truth,
    _noise_level,
    _observe,
    _scatter_adjoint,
    _tubal_truth,
)


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
