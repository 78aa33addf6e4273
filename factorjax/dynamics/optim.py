"""Optimizers of the implicit-regularization literature, as optax transformations.

`group_rmsprop` is gradient descent with one global adaptive step: the step is divided by the
root of a running average of the squared norm of the *whole* gradient (every parameter
together), so all coordinates keep the direction of plain gradient descent while the step
adapts to the gradient's scale. Arora, Cohen, Hu and Luo (NeurIPS 2019) call it GroupRMSprop
and use it to reach losses of 1e-6 and below in deep matrix factorization without a tuned
schedule; Razin, Maman and Cohen (ICML 2021) use it for tensor factorization.

Example:
    >>> import jax.numpy as jnp, optax
    >>> from factorjax.dynamics.optim import group_rmsprop
    >>> opt = group_rmsprop(1e-2)
    >>> params = {"w": jnp.ones(3)}
    >>> state = opt.init(params)
    >>> updates, state = opt.update({"w": jnp.ones(3)}, state)
"""

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from jax import Array

from factorjax._checks import describe

__all__ = ["GroupRMSpropState", "group_rmsprop"]


class GroupRMSpropState(NamedTuple):
    """The state of `group_rmsprop`: the number of updates and the running average of the
    squared gradient norm (one scalar for all parameters)."""

    count: Array
    square_avg: Array


def _check_scalar(name: str, value: Any, low: float, high: float | None = None) -> float:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    ok = ok and value >= low and (high is None or value < high)
    if not ok:
        allowed = f">= {low}" if high is None else f"in [{low}, {high})"
        raise ValueError(f"`{name}` must be a float {allowed}; got {describe(value)}.")
    return float(value)


def group_rmsprop(
    learning_rate: Any, decay: Any = 0.99, eps: Any = 1e-6
) -> optax.GradientTransformation:
    """Gradient descent with one global RMS-adapted step (GroupRMSprop).

    With ``g_t`` the whole gradient at update ``t = 1, 2, ...``:

        v_t = decay v_(t-1) + (1 - decay) ||g_t||^2          (v_0 = 0; the norm over all leaves)
        update_t = -learning_rate g_t / (sqrt(v_t / (1 - decay^t)) + eps)

    The division by ``1 - decay^t`` removes the bias of the zero start, so the first update is
    ``-learning_rate g_1 / (||g_1|| + eps)``.

    Arguments:
        learning_rate: the step, a float >= 0 or an optax schedule of the update count.
            (Scalars are annotated ``Any`` and validated here, with errors that name them.)
        decay: the averaging factor of the squared norm, in [0, 1).
        eps: added to the root, >= 0.

    Returns:
        An optax transformation; its state is `GroupRMSpropState`.
    """
    if not callable(learning_rate):
        _check_scalar("learning_rate", learning_rate, 0.0)
    decay = _check_scalar("decay", decay, 0.0, 1.0)
    eps = _check_scalar("eps", eps, 0.0)

    def init(params):
        leaves = jax.tree.leaves(params)
        dtype = jnp.result_type(*leaves) if leaves else jnp.float32
        return GroupRMSpropState(jnp.zeros((), jnp.int32), jnp.zeros((), dtype))

    def update(updates, state, params=None):
        del params
        leaves = jax.tree.leaves(updates)
        dtype = jnp.result_type(*leaves) if leaves else jnp.float32
        sq = sum((jnp.sum(jnp.square(g)) for g in leaves), jnp.zeros((), dtype))
        count = state.count + 1
        square_avg = decay * state.square_avg.astype(dtype) + (1 - decay) * sq
        scale = jnp.sqrt(square_avg / (1 - decay ** count.astype(dtype))) + eps
        lr = learning_rate(state.count) if callable(learning_rate) else learning_rate
        new = jax.tree.map(lambda g: (-lr / scale * g).astype(g.dtype), updates)
        return new, GroupRMSpropState(count, square_avg.astype(state.square_avg.dtype))

    return optax.GradientTransformation(init, update)
