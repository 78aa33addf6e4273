"""Training a factorization on a problem: the loop as `lax.scan`, metrics every `log_every` steps.

The loop is a pure function of its inputs, so a sweep over the axes that keep shapes (seed, init
scale, step size, noise) is `jax.jit(jax.vmap(...))` of it; runs that share a problem instance
vmap with the problem unbatched, and the measurement operator then acts on all runs at once as
one matrix-matrix product.
"""

from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import optax
from jax import Array

from factorjax import linalg, tubal
from factorjax._checks import check_positive_int
from factorjax.dynamics.problems import AbstractProblem
from factorjax.factorizations import AbstractFactorization

__all__ = ["metrics", "top_subspace", "train"]


def top_subspace(X: Array, r: int) -> Array:
    """Orthonormal basis of the top-``r`` left singular subspace.

    For a matrix ``(n1, n2)``: ``(n1, r)``. For a tubal tensor ``(n1, n2, k)``: the basis of
    every slice of the half spectrum, ``(k // 2 + 1, n1, r)`` (complex).
    """
    M = tubal.to_fourier(X) if X.ndim == 3 else X
    return jnp.linalg.svd(M, full_matrices=False)[0][..., :r]


def _sin_largest_angle(Qa: Array, Qb: Array) -> Array:
    """Sine of the largest principal angle between equal-dimensional orthonormal bases,
    maximised over any leading (Fourier slice) axis: ``max ||(I - Qa Qa^H) Qb||_2``."""
    return jnp.max(jnp.sin(linalg._angles_between(Qa, Qb)[..., -1]))


def metrics(problem: AbstractProblem, X: Array, *, rank_rtol: float = 1e-3) -> dict[str, Array]:
    """The quantities the implicit-regularization literature tracks, for one iterate ``X``.

    Returns:
        ``train_loss`` (the problem's loss), ``test_error`` (``||X - X*||_F / ||X*||_F``),
        ``singular_values`` (of ``X``; per Fourier slice for tubal tensors), ``angle_spectral``
        and ``angle_truth`` (sine of the largest principal angle between the top-``r`` subspace
        of ``X`` and that of ``A*A(X*)``, resp. of ``X*``; the largest over Fourier slices for
        tubal tensors), and ``rank`` (the matrix or tubal rank with relative tolerance
        ``rank_rtol``).
    """
    r = problem.rank
    Q = top_subspace(X, r)
    if X.ndim == 3:
        sv = tubal.fourier_singular_values(X)
        rank = tubal.tubal_rank(X, rtol=rank_rtol)
    else:
        sv = linalg.singular_values(X)
        rank = jnp.sum(sv > rank_rtol * sv[0])
    return {
        "train_loss": problem.loss(X),
        "test_error": problem.test_error(X),
        "singular_values": sv,
        "angle_spectral": _sin_largest_angle(top_subspace(problem.spectral_init_target(), r), Q),
        "angle_truth": _sin_largest_angle(top_subspace(problem.ground_truth, r), Q),
        "rank": rank,
    }


def _all_finite(tree) -> Array:
    leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree) if eqx.is_array(x)]
    return jnp.all(jnp.stack(leaves))


def train(
    problem: AbstractProblem,
    model: AbstractFactorization,
    *,
    steps: Any,
    log_every: Any,
    step_size: Any = None,
    optimizer: optax.GradientTransformation | None = None,
    rank_rtol: float = 1e-3,
) -> tuple[AbstractFactorization, dict[str, Array]]:
    """Minimise ``problem.loss(model.to_dense())`` from ``model``.

    Arguments:
        problem: the problem (its loss, ground truth and measurement operator).
        model: the initial factorization; its array leaves are trained.
        steps: number of updates, a multiple of ``log_every``.
        log_every: metrics are recorded at step 0 and after every ``log_every`` updates.
        step_size: plain gradient descent ``params <- params - step_size * grad`` (may be a
            traced scalar, to vmap over step sizes). Exactly one of ``step_size`` and
            ``optimizer`` is given.
        optimizer: any optax transformation, instead of ``step_size``.
        rank_rtol: relative tolerance of the rank metric.

    Returns:
        ``(final_model, history)``: ``history`` maps each name of `metrics` and ``step`` to
        an array with a leading axis of ``steps // log_every + 1`` records, and holds
        ``diverged`` (bool) and ``diverged_at`` (the first update that made the parameters
        non-finite, or -1; a loss that overflows first is caught one update later). A
        diverged run stops changing: its parameters stay at the last finite value, and its
        later records repeat that iterate.
    """
    steps = check_positive_int("steps", steps)
    log_every = check_positive_int("log_every", log_every)
    if steps % log_every:
        raise ValueError(
            f"`steps` must be a multiple of `log_every`; got steps={steps}, log_every={log_every}."
        )
    if (step_size is None) == (optimizer is None):
        raise ValueError(
            "pass exactly one of `step_size` (plain gradient descent) and `optimizer` (optax); "
            f"got step_size={step_size!r}, optimizer={optimizer!r}."
        )
    if optimizer is None:
        optimizer = optax.sgd(step_size)
    params, static = eqx.partition(model, eqx.is_array)

    def loss_fn(p):
        return problem.loss(eqx.combine(p, static).to_dense())

    def update(carry, t):
        p, opt_state, diverged, diverged_at = carry
        g = jax.grad(loss_fn)(p)
        upd, new_state = optimizer.update(g, opt_state, p)
        new_p = optax.apply_updates(p, upd)
        # Parameters only: a non-finite loss makes the next gradient, hence the next
        # parameters, non-finite, so no extra forward pass is needed in the hot loop.
        bad = ~_all_finite(new_p)
        now = bad & ~diverged
        keep = diverged | bad
        p = jax.tree.map(lambda new, old: jnp.where(keep, old, new), new_p, p)
        opt_state = jax.tree.map(lambda new, old: jnp.where(keep, old, new), new_state, opt_state)
        diverged_at = jnp.where(now, t, diverged_at)
        return (p, opt_state, keep, diverged_at), None

    def record(p):
        return metrics(problem, eqx.combine(p, static).to_dense(), rank_rtol=rank_rtol)

    def block(carry, b):
        ts = b * log_every + jnp.arange(1, log_every + 1)
        carry, _ = jax.lax.scan(update, carry, ts)
        return carry, record(carry[0])

    init = (params, optimizer.init(params), jnp.asarray(False), jnp.asarray(-1))
    first = record(params)
    carry, history = jax.lax.scan(block, init, jnp.arange(steps // log_every))
    history = jax.tree.map(lambda a, b: jnp.concatenate([a[None], b]), first, history)
    history["step"] = jnp.arange(0, steps + 1, log_every)
    history["diverged"] = carry[2]
    history["diverged_at"] = carry[3]
    return eqx.combine(carry[0], static), history
