"""The metrics of the implicit-regularization literature for one iterate of a recovery
problem: the loss, the test error, the singular values and the rank, and the principal angles
to the spectral initialization's subspace and to the ground truth's. `factorjax.dynamics.train`
records them every ``log_every`` steps.
"""

import jax.numpy as jnp
from jax import Array

from factorjax import _lapack, tubal
from factorjax.dynamics.problems import AbstractProblem

__all__ = ["metrics", "reference_bases", "top_eigen_subspace", "top_subspace"]


def top_subspace(X: Array, r: int) -> Array:
    """Orthonormal basis of the top-``r`` left singular subspace.

    For a matrix ``(n1, n2)``: ``(n1, r)``. For a tubal tensor ``(n1, n2, k)``: the basis of
    every slice of the half spectrum, ``(k // 2 + 1, n1, r)`` (complex).
    """
    M = tubal.to_fourier(X) if X.ndim == 3 else X
    return _lapack.svd(M, full_matrices=False)[0][..., :r]


def _sin_largest_angle(Qa: Array, Qb: Array) -> Array:
    """Sine of the largest principal angle between equal-dimensional orthonormal bases,
    maximised over any leading (Fourier slice) axis: ``max ||(I - Qa Qa^H) Qb||_2``, accurate
    for small angles as well as large."""
    resid = Qb - Qa @ (jnp.conj(jnp.swapaxes(Qa, -1, -2)) @ Qb)
    return jnp.clip(jnp.max(_lapack.svd(resid, compute_uv=False)), 0.0, 1.0)


def top_eigen_subspace(M: Array, r: int) -> Array:
    """Orthonormal basis of the eigenvectors of the ``r`` largest eigenvalues of the symmetric
    part of ``M``: ``(n, r)`` for a matrix, ``(k // 2 + 1, n, r)`` (complex, per Fourier slice)
    for a tubal tensor ``(n, n, k)``."""
    H = tubal.to_fourier(M) if M.ndim == 3 else M
    H = 0.5 * (H + jnp.conj(jnp.swapaxes(H, -1, -2)))
    return _lapack.eigh(H)[1][..., ::-1][..., :r]


def reference_bases(problem: AbstractProblem) -> tuple[Array, Array]:
    """The top-``r`` subspaces of ``A*(y)`` (``A*A(X*)`` without noise) and of ``X*`` that
    `metrics` measures angles to; compute them once per problem and pass them to `metrics`.

    For a symmetric ground truth (`AbstractProblem.symmetric_truth`) the first is the top
    eigen-subspace of the symmetric part of ``A*(y)``: gradient descent on ``U U^T`` from a
    small init starts as the power method ``U <- (I + mu (M + M^T)) U`` with ``M = A*(y)``,
    and aligns with it; otherwise the top left singular subspace of ``A*(y)``.
    """
    r = problem.rank
    target = problem.spectral_init_target()
    if problem.symmetric_truth:
        spectral = top_eigen_subspace(target, r)
    else:
        spectral = top_subspace(target, r)
    return spectral, top_subspace(problem.ground_truth, r)


def metrics(
    problem: AbstractProblem,
    X: Array,
    *,
    rank_rtol: float = 1e-3,
    bases: tuple[Array, Array] | None = None,
) -> dict[str, Array]:
    """The quantities the implicit-regularization literature tracks, for one iterate ``X``.

    Returns:
        ``train_loss`` (the problem's loss), ``test_error`` (``||X - X*||_F / ||X*||_F``),
        ``singular_values`` (of ``X``; per Fourier slice for tubal tensors), ``angle_spectral``
        and ``angle_truth`` (sine of the largest principal angle between the top-``r`` subspace
        of ``X`` and that of ``A*A(X*)``, resp. of ``X*``; the largest over Fourier slices for
        tubal tensors), and ``rank`` (the matrix or tubal rank with relative tolerance
        ``rank_rtol``). ``bases``: `reference_bases` of the problem, if already computed.
    """
    r = problem.rank
    spectral, truth = reference_bases(problem) if bases is None else bases
    # One SVD of X (of its Fourier slices) gives the singular values, the rank and the top-r
    # subspace.
    U, sv, _ = _lapack.svd(tubal.to_fourier(X) if X.ndim == 3 else X, full_matrices=False)
    Q = U[..., :r]
    top = jnp.max(sv)
    counts = jnp.sum(sv > rank_rtol * top, axis=-1)
    return {
        "train_loss": problem.loss(X),
        "test_error": problem.test_error(X),
        "singular_values": sv,
        "angle_spectral": _sin_largest_angle(spectral, Q),
        "angle_truth": _sin_largest_angle(truth, Q),
        "rank": jnp.max(counts),
    }
