"""Training a factorization on a problem: the loop as `lax.scan` (a `lax.while_loop` that ends
once every run has stopped, with ``stop_loss``), `metrics` every ``log_every`` steps.

The loop is a pure function of its inputs, so a sweep over the axes that keep shapes (seed, init
scale, step size, noise) is `jax.jit(jax.vmap(...))` of it; runs that share a problem instance
vmap with the problem unbatched, and the measurement operator then acts on all runs at once as
one matrix-matrix product.

`train` runs from a model to the end; `advance` continues a `TrainState` by some steps, so that
a long run can be cut into pieces and checkpointed between them with the same result.

Two methods compute the same iterates:

- ``"factors"``: autodiff through ``model.to_dense()``, any factorization, any optax optimizer;
- ``"lifted"``: plain gradient descent on the symmetric tubal factorization ``X = U * U^T``
  (`SymmetricTubalLowRank`). Its update ``U <- U - mu (M + M^T) * U`` with ``M = grad L(X)`` is
  a left t-multiplication by a tensor that depends on ``X = U * U^T`` only. Writing
  ``U_0 = L_0 * Q`` with ``L_0`` of shape ``(n, min(n, R), k)`` and ``Q`` with orthonormal
  rows, every iterate is ``U_t = L_t * Q`` where ``L_t`` takes the same steps: a step costs
  the same for any width ``R`` (the factors are rebuilt once, at the end). It reads the
  gradient through `AbstractProblem.symmetric_grad`, which `TubalSensing.with_gram` makes
  cheap.
"""

from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import Array

from factorjax import _lapack, tubal
from factorjax._checks import check_choice, check_positive_int
from factorjax.dynamics.metrics import metrics, reference_bases
from factorjax.dynamics.problems import AbstractProblem
from factorjax.factorizations import AbstractFactorization, SymmetricTubalLowRank
from factorjax.factorizations.tubal_lowrank import _map_slices

__all__ = ["TrainState", "advance", "train"]


def _all_finite(tree) -> Array:
    leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree) if eqx.is_array(x)]
    return jnp.all(jnp.stack(leaves))


class TrainState(eqx.Module):
    """Where a training run stands: everything `advance` needs to go on.

    Fields:
        model: the current iterate.
        opt_state: the optax state (``None`` for the ``"lifted"`` method and plain gradient
            descent, which keep none).
        step: the number of updates done (an integer array).
        diverged: whether an update made the parameters non-finite; the model then stays at
            its last finite value.
        diverged_at: the first such update, or -1.
    """

    model: AbstractFactorization
    opt_state: Any
    step: Array
    diverged: Array
    diverged_at: Array

    @classmethod
    def create(
        cls,
        model: AbstractFactorization,
        *,
        optimizer: optax.GradientTransformation | None = None,
    ) -> "TrainState":
        """A fresh state at ``model``; give the optimizer that `advance` will use, if any."""
        params = eqx.filter(model, eqx.is_array)
        opt_state = None if optimizer is None else optimizer.init(params)
        return cls(model, opt_state, jnp.asarray(0), jnp.asarray(False), jnp.asarray(-1))


def _check_method(method: Any, model: Any, step_size: Any, optimizer: Any) -> str:
    if not isinstance(model, AbstractFactorization):
        raise TypeError(
            f"`model` must be a factorization of factorjax; got {type(model).__name__}."
        )
    if (step_size is None) == (optimizer is None):
        raise ValueError(
            "pass exactly one of `step_size` (plain gradient descent) and `optimizer` (optax); "
            f"got step_size={step_size!r}, optimizer={optimizer!r}."
        )
    method = check_choice("method", method, ("auto", "factors", "lifted"))
    liftable = isinstance(model, SymmetricTubalLowRank) and optimizer is None
    if method == "lifted" and not liftable:
        raise ValueError(
            "`method='lifted'` needs plain gradient descent (`step_size`) on a "
            f"SymmetricTubalLowRank; got a {type(model).__name__} with "
            f"{'step_size' if optimizer is None else 'an optax optimizer'}. Use 'factors'."
        )
    if method == "auto":
        method = "lifted" if liftable else "factors"
    return method


def _check_stop_loss(stop_loss: Any, method: str) -> Any:
    if stop_loss is None:
        return None
    if method == "lifted":
        raise ValueError(
            "`stop_loss` needs method='factors' (the lifted method never forms the loss in its "
            "loop); pass method='factors', or stop_loss=None."
        )
    if isinstance(stop_loss, (int, float)) and not isinstance(stop_loss, bool):
        if not stop_loss >= 0:
            raise ValueError(f"`stop_loss` must be a float >= 0 or None; got {stop_loss!r}.")
    return stop_loss  # a float, or a traced scalar to vmap over


def _freeze(keep: Array, new: Any, old: Any) -> Any:
    return jax.tree.map(lambda a, b: jnp.where(keep, b, a), new, old)


def _factor_steps(problem, state, ts, step_size, optimizer, stop_loss=None):
    """``len(ts)`` updates of the factors by autodiff; returns the new state. With
    ``stop_loss``, an update is skipped where the loss is at or below it (and so every later
    one: the parameters no longer change), and the loop ends early once every run has stopped
    or diverged (a ``lax.while_loop``: under ``vmap`` it runs until the last run of the batch
    stops)."""
    params, static = eqx.partition(state.model, eqx.is_array)
    stateless = optimizer is None  # plain gradient descent keeps no optimizer state
    if stateless:
        optimizer = optax.sgd(step_size)
    opt_state = optimizer.init(params) if stateless else state.opt_state

    def loss_fn(p):
        return problem.loss(eqx.combine(p, static).to_dense())

    def update(carry, t):
        p, opt_state, diverged, diverged_at, _ = carry
        loss, g = jax.value_and_grad(loss_fn)(p)
        upd, new_state = optimizer.update(g, opt_state, p)
        new_p = optax.apply_updates(p, upd)
        # Parameters only: a non-finite loss makes the next gradient, hence the next
        # parameters, non-finite, so no extra forward pass is needed in the hot loop.
        bad = ~_all_finite(new_p)
        done = jnp.asarray(False) if stop_loss is None else loss <= stop_loss
        keep = diverged | bad | done
        return (
            _freeze(keep, new_p, p),
            _freeze(keep, new_state, opt_state),
            diverged | (bad & ~done),
            jnp.where(bad & ~diverged & ~done, t, diverged_at),
            done,
        )

    init = (params, opt_state, state.diverged, state.diverged_at, jnp.asarray(False))
    if stop_loss is None:
        carry, _ = jax.lax.scan(lambda c, t: (update(c, t), None), init, ts)
    else:

        def running(ic):  # updates left, and the run neither diverged nor stopped
            i, (_, _, diverged, _, done) = ic
            return (i < ts.shape[0]) & ~(diverged | done)

        _, carry = jax.lax.while_loop(
            running,
            lambda ic: (ic[0] + 1, update(ic[1], ts[0] + ic[0])),
            (jnp.asarray(0, ts.dtype), init),
        )
    params, opt_state, diverged, diverged_at, _ = carry
    return TrainState(
        eqx.combine(params, static),
        state.opt_state if stateless else opt_state,
        state.step + ts.shape[0],
        diverged,
        diverged_at,
    )


def _lq(u: Array) -> tuple[Array, Array]:
    """``u = l * q`` (t-product) for ``u`` of shape ``(n, R, k)`` with ``R > n``: ``l`` is
    ``(n, n, k)`` and ``q`` ``(n, R, k)`` has orthonormal rows (``q * q^T = I``); one QR of
    every Fourier slice's conjugate transpose."""
    k = u.shape[-1]

    def step(uh):
        q, r = _lapack.qr(jnp.conj(jnp.swapaxes(uh, -1, -2)))
        return jnp.conj(jnp.swapaxes(r, -1, -2)), jnp.conj(jnp.swapaxes(q, -1, -2))

    l_hat, q_hat = _map_slices(step, k, tubal.to_fourier(u))
    return tubal.from_fourier(l_hat, k), tubal.from_fourier(q_hat, k)


def _spectral_conj_transpose(p: Array, k: int) -> Array:
    """The spectral rows of ``A^T`` (t-transpose) from those of ``A``: every slice's conjugate
    transpose."""
    f = tubal.num_freqs(k)
    sign = jnp.asarray(np.where(np.arange(k) < f, 1.0, -1.0), p.dtype)
    return sign[:, None, None] * jnp.swapaxes(p, -1, -2)


def _lifted_advance(problem, state, blocks, log_every, step_size, rank_rtol):
    """`advance` for the ``"lifted"`` method: gradient steps on ``X = U * U^T`` at a cost
    independent of the width ``R``.

    Write ``U_0 = L_0 * Q`` with ``L_0`` of shape ``(n, min(n, R), k)`` and ``Q`` with
    orthonormal rows (no ``Q`` for ``R <= n``). Every update multiplies ``U`` on the left by
    ``I - 2 mu S(X)``, ``S`` the symmetric gradient, so ``U_t = L_t * Q`` where ``L_t`` follows
    the same update, ``L <- L - 2 mu S(L * L^T) * L``, and ``X_t = L_t * L_t^T``. The loop keeps
    ``L`` in spectral rows (`factorjax.tubal`): two slice-wise products, one inverse and one
    forward transform per step; ``U`` is rebuilt once, at the end.
    """
    n, R, k = state.model.u.shape
    bases = reference_bases(problem)
    L, Q = _lq(state.model.u) if R > n else (state.model.u, None)

    def dense(Ls):
        return tubal._inverse(tubal._spectral_matmul(Ls, _spectral_conj_transpose(Ls, k)))

    def update(carry, t):
        Ls, diverged, diverged_at = carry
        S = problem.symmetric_grad(dense(Ls))
        new = Ls - (2 * step_size) * tubal._spectral_matmul(tubal._forward(S), Ls)
        bad = ~jnp.all(jnp.isfinite(new))
        keep = diverged | bad
        return (jnp.where(keep, Ls, new), keep, jnp.where(bad & ~diverged, t, diverged_at)), None

    def block(carry, b):
        ts = state.step + b * log_every + jnp.arange(1, log_every + 1)
        carry, _ = jax.lax.scan(update, carry, ts)
        record = metrics(problem, dense(carry[0]), rank_rtol=rank_rtol, bases=bases)
        record["step"] = ts[-1]
        return carry, record

    init = (tubal._forward(L), state.diverged, state.diverged_at)
    (Ls, diverged, diverged_at), history = jax.lax.scan(block, init, jnp.arange(blocks))
    L = tubal._inverse(Ls)
    model = eqx.tree_at(lambda m: m.u, state.model, L if Q is None else tubal.tprod(L, Q))
    steps = blocks * log_every
    return TrainState(model, state.opt_state, state.step + steps, diverged, diverged_at), history


def advance(
    problem: AbstractProblem,
    state: TrainState,
    *,
    steps: Any,
    log_every: Any,
    step_size: Any = None,
    optimizer: optax.GradientTransformation | None = None,
    rank_rtol: float = 1e-3,
    method: Any = "auto",
    stop_loss: Any = None,
) -> tuple[TrainState, dict[str, Array]]:
    """Continue ``state`` by ``steps`` updates, recording metrics after every ``log_every``.

    Arguments are those of `train`. Cutting a run into pieces changes nothing: ``advance`` by
    ``a`` then by ``b`` steps gives the iterates and records of ``advance`` by ``a + b``, when
    ``a`` and ``b`` are multiples of ``log_every``. (The ``"lifted"`` method factors ``U = L * Q``
    anew at each piece; in floating point its iterates then agree to rounding.)

    Returns:
        ``(state, history)``: ``history`` maps each name of `metrics` and ``step`` (the update
        count of each record, continuing ``state.step``) to arrays with a leading axis of
        ``steps // log_every`` records, the first taken after ``log_every`` updates.
    """
    steps = check_positive_int("steps", steps)
    log_every = check_positive_int("log_every", log_every)
    if steps % log_every:
        raise ValueError(
            f"`steps` must be a multiple of `log_every`; got steps={steps}, log_every={log_every}."
        )
    if not isinstance(state, TrainState):
        raise TypeError(
            f"`state` must be a TrainState (TrainState.create(model)); got {type(state).__name__}."
        )
    method = _check_method(method, state.model, step_size, optimizer)
    stop_loss = _check_stop_loss(stop_loss, method)
    if optimizer is not None and state.opt_state is None:
        state = eqx.tree_at(
            lambda s: s.opt_state,
            state,
            optimizer.init(eqx.filter(state.model, eqx.is_array)),
            is_leaf=lambda x: x is None,
        )

    if method == "lifted":
        return _lifted_advance(problem, state, steps // log_every, log_every, step_size, rank_rtol)

    bases = reference_bases(problem)

    def block(state, b):
        ts = state.step + jnp.arange(1, log_every + 1)
        state = _factor_steps(problem, state, ts, step_size, optimizer, stop_loss)
        record = metrics(problem, state.model.to_dense(), rank_rtol=rank_rtol, bases=bases)
        record["step"] = state.step
        return state, record

    return jax.lax.scan(block, state, jnp.arange(steps // log_every))


def train(
    problem: AbstractProblem,
    model: AbstractFactorization,
    *,
    steps: Any,
    log_every: Any,
    step_size: Any = None,
    optimizer: optax.GradientTransformation | None = None,
    rank_rtol: float = 1e-3,
    method: Any = "auto",
    stop_loss: Any = None,
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
        method: ``"factors"`` (autodiff through the factors), ``"lifted"`` (plain gradient
            descent on a `SymmetricTubalLowRank`, at a cost per step independent of its width;
            see the module docstring) or ``"auto"`` (``"lifted"`` where it applies).
        stop_loss: stop a run once its loss is at or below this (a float >= 0, or a traced
            scalar; ``"factors"`` method only): every later update is skipped, so the run's
            parameters, and its later records, stay as they were. The step where a run
            stopped is the first record whose ``train_loss`` is at or below ``stop_loss``, to
            ``log_every`` steps. The update loop ends once the run (under ``vmap``: every run
            of the batch) has stopped, so a generous ``steps`` costs only the later records;
            that loop is a ``lax.while_loop``, which ``jax.grad`` cannot differentiate through
            (differentiate a run with ``stop_loss=None``). ``None`` (default): run every step.

    Returns:
        ``(final_model, history)``: ``history`` maps each name of `metrics` and ``step`` to
        an array with a leading axis of ``steps // log_every + 1`` records, and holds
        ``diverged`` (bool) and ``diverged_at`` (the first update that made the parameters
        non-finite, or -1; a loss that overflows first is caught one update later). A
        diverged run stops changing: its parameters stay at the last finite value, and its
        later records repeat that iterate.
    """
    _check_method(method, model, step_size, optimizer)
    state = TrainState.create(model, optimizer=optimizer)
    first = metrics(problem, model.to_dense(), rank_rtol=rank_rtol)
    first["step"] = state.step
    state, history = advance(
        problem,
        state,
        steps=steps,
        log_every=log_every,
        step_size=step_size,
        optimizer=optimizer,
        rank_rtol=rank_rtol,
        method=method,
        stop_loss=stop_loss,
    )
    history = jax.tree.map(lambda a, b: jnp.concatenate([a[None], b]), first, history)
    history["diverged"] = state.diverged
    history["diverged_at"] = state.diverged_at
    return state.model, history
