"""`group_rmsprop` against its formula, written out step by step in NumPy."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from factorjax.dynamics.optim import group_rmsprop


def test_updates_follow_the_formula(rng):
    lr, decay, eps = 0.05, 0.9, 1e-3
    opt = group_rmsprop(lr, decay=decay, eps=eps)
    params = {"a": jnp.zeros((3, 2)), "b": (jnp.zeros(4),)}
    state = opt.init(params)
    v = 0.0
    for t in range(1, 6):
        g = {"a": rng.standard_normal((3, 2)) * t, "b": (rng.standard_normal(4) / t,)}
        gj = jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), g)
        upd, state = jax.jit(opt.update)(gj, state)
        norm2 = np.sum(g["a"] ** 2) + np.sum(g["b"][0] ** 2)
        v = decay * v + (1 - decay) * norm2
        step = lr / (np.sqrt(v / (1 - decay**t)) + eps)
        np.testing.assert_allclose(upd["a"], -step * g["a"], rtol=2e-6)
        np.testing.assert_allclose(upd["b"][0], -step * g["b"][0], rtol=2e-6)
        assert int(state.count) == t


def test_first_step_is_normalized_and_direction_is_kept(rng):
    opt = group_rmsprop(0.1, eps=0.0)
    g = {"w": jnp.asarray(rng.standard_normal(5), jnp.float32)}
    upd, _ = opt.update(g, opt.init(g))
    # bias-corrected: the first update has norm lr, along -g
    np.testing.assert_allclose(np.linalg.norm(upd["w"]), 0.1, rtol=1e-6)
    np.testing.assert_allclose(
        upd["w"] / np.linalg.norm(upd["w"]), -g["w"] / np.linalg.norm(g["w"]), rtol=1e-5
    )


def test_schedule_and_float64_state():
    sched = optax.constant_schedule(0.2)
    opt = group_rmsprop(sched, eps=0.0)
    with jax.enable_x64(True):
        g = {"w": jnp.ones(4, jnp.float64)}
        state = opt.init(g)
        assert state.square_avg.dtype == jnp.float64
        upd, state = opt.update(g, state)
        np.testing.assert_allclose(upd["w"], -0.2 * np.ones(4) / 2.0, rtol=1e-12)


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"learning_rate": -1.0}, "learning_rate"),
        ({"learning_rate": 0.1, "decay": 1.0}, "decay"),
        ({"learning_rate": 0.1, "decay": -0.1}, "decay"),
        ({"learning_rate": 0.1, "eps": -1e-8}, "eps"),
        ({"learning_rate": "fast"}, "learning_rate"),
    ],
)
def test_bad_arguments_are_named(kwargs, name):
    with pytest.raises(ValueError, match=f"`{name}` must be"):
        group_rmsprop(**kwargs)
