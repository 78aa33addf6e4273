"""Minimum nuclear norm recovery: the convex baseline of matrix completion and sensing.

`min_nuclear_norm` solves

    minimize ||X||_*   subject to   A(X) = y

for a matrix problem of `factorjax.dynamics.problems` (completion or sensing), by the
alternating direction method of multipliers (ADMM) on the split ``X = Z``, in scaled form
(Boyd, Parikh, Chu, Peleato and Eckstein 2011, section 3.1.1):

    X <- P(Z - U)                  P: the orthogonal projection onto {A(X) = y}
    Z <- SVT(X + U, 1 / rho)       SVT: singular value soft-thresholding (the prox of ||.||_*)
    U <- U + X - Z

``P(W) = W - A*((A A*)^-1 (A(W) - y))``; for completion of distinct entries ``A A* = I`` and
``P`` writes the observed values into ``W``; for sensing ``A A*`` is the Gram matrix of the
measurement matrices, factored once (Cholesky). The penalty ``rho`` adapts by residual
balancing (after section 3.4.1 of the same text): it doubles when the primal residual
``||X - Z||`` is ten times the change ``||Z - Z_prev||`` (the dual residual over ``rho``), and
halves in the opposite case. The loop
stops when ``||X - Z||`` and ``||Z - Z_prev||``, relative to ``||X||``, are both below ``tol``,
or after ``max_iters``.
The whole solve is one ``lax.while_loop``: it jits and vmaps (over problem instances).

Example:
    >>> import jax
    >>> from factorjax.dynamics import MatrixCompletion
    >>> from factorjax.dynamics.nuclear import min_nuclear_norm
    >>> p = MatrixCompletion.make(20, 20, 2, 200, key=jax.random.key(0))
    >>> X, info = min_nuclear_norm(p)
"""

from typing import Any

import jax
import jax.numpy as jnp
from jax import Array
from jaxtyping import Float

from factorjax import _lapack
from factorjax._checks import check_positive_int
from factorjax.dynamics._completion import AbstractCompletion
from factorjax.dynamics._problem import AbstractProblem

__all__ = ["min_nuclear_norm", "singular_value_threshold"]


def singular_value_threshold(X: Float[Array, "n1 n2"], tau: Any) -> Float[Array, "n1 n2"]:
    """``U diag(max(s - tau, 0)) V^T`` for ``X = U diag(s) V^T``: the proximal operator of
    ``tau ||.||_*``.

    Arguments:
        X: a matrix ``(n1, n2)``.
        tau: the threshold, a scalar >= 0 (may be traced).

    Returns:
        The thresholded matrix, ``(n1, n2)``.
    """
    u, s, vt = _lapack.svd(X, full_matrices=False)
    return (u * jnp.maximum(s - tau, 0.0)) @ vt


def _projector(problem: AbstractProblem):
    """``P(W)``: the orthogonal projection onto ``{A(X) = y}``."""
    if isinstance(problem, AbstractCompletion):
        # Distinct observed entries: A A* = I.
        return lambda W: W - problem.adjoint(problem.measure(W) - problem.y)
    m = problem.num_measurements
    eye = jnp.eye(m, dtype=problem.y.dtype)
    gram = jax.vmap(lambda e: problem.measure(problem.adjoint(e)))(eye)
    chol = jax.scipy.linalg.cho_factor(gram, lower=True)
    return lambda W: (
        W - problem.adjoint(jax.scipy.linalg.cho_solve(chol, problem.measure(W) - problem.y))
    )


# `problem` is annotated `Any` and validated here, so that a wrong argument gets the clear
# error below rather than the runtime type checker's.
def min_nuclear_norm(
    problem: Any,
    *,
    max_iters: Any = 3000,
    tol: Any = 1e-6,
    rho: Any = None,
) -> tuple[Float[Array, "n1 n2"], dict[str, Array]]:
    """The matrix of least nuclear norm that fits the observations of ``problem`` exactly.

    Arguments:
        problem: a matrix problem (`MatrixCompletion`, `MatrixSensing`, or any
            `AbstractProblem` of a 2-D shape whose ``A A*`` is invertible).
        max_iters: the most ADMM iterations, an int >= 1.
        tol: stop when ``||X - Z||_F`` and ``||Z - Z_prev||_F`` relative to ``||X||_F`` are both
            below it, a float > 0.
        rho: the initial ADMM penalty (> 0); default ``10 / ||A*(y)||_2``, which makes the
            first threshold a tenth of the largest singular value of ``A*(y)``.

    Returns:
        ``(X, info)``: ``X`` satisfies ``A(X) = y`` to rounding (it is the last projection);
        ``info`` holds ``iters`` (iterations done), ``primal`` and ``dual`` (the last relative
        residuals) and ``nuclear_norm`` (of ``X``).
    """
    if not isinstance(problem, AbstractProblem) or len(problem.shape) != 2:
        shape = f" of shape {problem.shape}" if isinstance(problem, AbstractProblem) else ""
        raise TypeError(
            "`problem` must be a matrix problem of factorjax.dynamics; got "
            f"{type(problem).__name__}{shape}."
        )
    max_iters = check_positive_int("max_iters", max_iters)
    for name, value in (("tol", tol), ("rho", rho)):
        if value is None and name == "rho":
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
            raise ValueError(f"`{name}` must be a float > 0; got {value!r}.")
    project = _projector(problem)
    dtype = problem.y.dtype
    start = problem.adjoint(problem.y)
    if rho is None:
        top = _lapack.svd(start, compute_uv=False)[0]
        rho = 10.0 / jnp.maximum(top, jnp.finfo(dtype).tiny)
    rho = jnp.asarray(rho, dtype)

    def cond(carry):
        it, _, _, _, _, primal, dual = carry
        return (it < max_iters) & ((primal > tol) | (dual > tol))

    def body(carry):
        it, X, Z, U, rho, _, _ = carry
        X = project(Z - U)
        Z_new = singular_value_threshold(X + U, 1.0 / rho)
        U = U + X - Z_new
        scale = jnp.maximum(jnp.linalg.norm(X), jnp.finfo(dtype).tiny)
        r = jnp.linalg.norm(X - Z_new)
        dz = jnp.linalg.norm(Z_new - Z)
        factor = jnp.where(r > 10 * dz, 2.0, jnp.where(dz > 10 * r, 0.5, 1.0)).astype(dtype)
        return (it + 1, X, Z_new, U / factor, rho * factor, r / scale, dz / scale)

    zero = jnp.zeros_like(start)
    inf = jnp.asarray(jnp.inf, dtype)
    init = (jnp.asarray(0), project(zero), start, zero, rho, inf, inf)
    it, X, _, _, _, primal, dual = jax.lax.while_loop(cond, body, init)
    info = {
        "iters": it,
        "primal": primal,
        "dual": dual,
        "nuclear_norm": jnp.sum(_lapack.svd(X, compute_uv=False)),
    }
    return X, info
