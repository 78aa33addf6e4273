"""A factorized model saves and restores, before and after training, in both frameworks.

Equinox: ``eqx.tree_serialise_leaves`` into a file, ``eqx.tree_deserialise_leaves`` into a
skeleton built the same way (the same constructor arguments, other random weights, factorized
with the same settings). Flax NNX: the state as a pure dict
(``nnx.to_pure_dict(nnx.state(model))``) through Flax's msgpack serialization, back with
``nnx.replace_by_pure_dict`` and ``nnx.update``; and Orbax's ``StandardCheckpointer`` where
it is installed. Every test first checks that the skeleton differs from the saved model, so
that a restore that did nothing would fail.
"""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx, serialization

import factorjax.nn as fnn
import factorjax.nnx as fnnx


def tt_conv(path, layer):
    """Per-layer settings: the convolution as a tensor train, the rest at the common rank."""
    return {"format": "tt", "rank": 2} if path == "conv" else None


SETTINGS = {"rank": 2, "config": tt_conv}


def assert_same_leaves(a, b):
    la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
    assert jax.tree.structure(a) == jax.tree.structure(b) and len(la) == len(lb)
    for x, y in zip(la, lb, strict=True):
        np.testing.assert_array_equal(x, y)


def differ(a, b) -> bool:
    """Whether two like-structured trees differ in some leaf."""
    la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
    return any(not np.array_equal(x, y) for x, y in zip(la, lb, strict=True))


# --- Equinox --------------------------------------------------------------------------------


class EqxModel(eqx.Module):
    conv: eqx.nn.Conv2d
    mlp: eqx.nn.MLP

    def __init__(self, key):
        k1, k2 = jax.random.split(key)
        self.conv = eqx.nn.Conv2d(3, 4, 3, padding=1, key=k1)
        self.mlp = eqx.nn.MLP(4, 2, 6, depth=2, key=k2)

    def __call__(self, x):  # (3, H, W) -> (2,)
        return self.mlp(jax.nn.relu(self.conv(x)).mean((1, 2)))


def eqx_factorized(seed: int):
    model, reports = fnn.factorize(EqxModel(jax.random.key(seed)), **SETTINGS)
    assert [r.path for r in reports] == ["conv", "mlp.layers.0", "mlp.layers.1", "mlp.layers.2"]
    return model


X = jax.random.normal(jax.random.key(7), (5, 3, 6, 6))
Y = jax.random.normal(jax.random.key(8), (5, 2))


def test_equinox_round_trip(tmp_path):
    model, skeleton = eqx_factorized(0), eqx_factorized(1)
    assert isinstance(model.conv, fnn.FactorizedConv) and differ(model, skeleton)
    eqx.tree_serialise_leaves(tmp_path / "model.eqx", model)
    restored = eqx.tree_deserialise_leaves(tmp_path / "model.eqx", skeleton)
    assert_same_leaves(restored, model)
    np.testing.assert_array_equal(jax.vmap(restored)(X), jax.vmap(model)(X))


@pytest.mark.slow  # trains before saving
def test_equinox_round_trip_after_training(tmp_path):
    model = eqx_factorized(0)
    optim = optax.adam(1e-2)
    opt_state = optim.init(eqx.filter(model, eqx.is_inexact_array))

    @eqx.filter_jit
    def step(model, opt_state):
        loss, grads = eqx.filter_value_and_grad(lambda m: jnp.mean((jax.vmap(m)(X) - Y) ** 2))(
            model
        )
        updates, opt_state = optim.update(grads, opt_state, eqx.filter(model, eqx.is_array))
        return eqx.apply_updates(model, updates), opt_state, loss

    start = model
    losses = []
    for _ in range(5):
        model, opt_state, loss = step(model, opt_state)
        losses.append(float(loss))
    assert differ(model, start) and losses[-1] < losses[0]
    eqx.tree_serialise_leaves(tmp_path / "model.eqx", (model, opt_state))
    skeleton = eqx_factorized(1)
    like = (skeleton, optim.init(eqx.filter(skeleton, eqx.is_inexact_array)))
    restored, restored_state = eqx.tree_deserialise_leaves(tmp_path / "model.eqx", like)
    assert_same_leaves(restored, model)
    assert_same_leaves(restored_state, opt_state)
    np.testing.assert_array_equal(jax.vmap(restored)(X), jax.vmap(model)(X))


# --- Flax NNX -------------------------------------------------------------------------------


class NnxModel(nnx.Module):
    def __init__(self, rngs):
        self.conv = nnx.Conv(3, 4, (3, 3), rngs=rngs)
        self.mlp = nnx.Sequential(
            nnx.Linear(4, 6, rngs=rngs), nnx.relu, nnx.Linear(6, 2, rngs=rngs)
        )

    def __call__(self, x):  # (B, H, W, 3) -> (B, 2)
        return self.mlp(jax.nn.relu(self.conv(x)).mean((-3, -2)))


XL = jnp.moveaxis(X, 1, -1)  # channels last


def nnx_factorized(seed: int):
    model, reports = fnnx.factorize(NnxModel(nnx.Rngs(seed)), **SETTINGS)
    assert [r.path for r in reports] == ["conv", "mlp.layers.0", "mlp.layers.2"]
    return model


def save_pure(path, model):
    path.write_bytes(serialization.msgpack_serialize(nnx.to_pure_dict(nnx.state(model))))


def load_pure(path, skeleton):
    state = nnx.state(skeleton)
    nnx.replace_by_pure_dict(state, serialization.msgpack_restore(path.read_bytes()))
    nnx.update(skeleton, state)
    return skeleton


def test_nnx_round_trip(tmp_path):
    model, skeleton = nnx_factorized(0), nnx_factorized(1)
    assert isinstance(model.conv, fnnx.FactorizedConv)
    assert differ(nnx.state(model), nnx.state(skeleton))
    save_pure(tmp_path / "model.msgpack", model)
    restored = load_pure(tmp_path / "model.msgpack", skeleton)
    assert_same_leaves(nnx.state(restored), nnx.state(model))
    np.testing.assert_array_equal(restored(XL), model(XL))


@pytest.mark.slow  # trains before saving
def test_nnx_round_trip_after_training(tmp_path):
    model = nnx_factorized(0)
    start = nnx.clone(model)
    optimizer = nnx.Optimizer(model, optax.adam(1e-2), wrt=nnx.Param)

    @nnx.jit
    def step(model, optimizer):
        loss, grads = nnx.value_and_grad(lambda m: jnp.mean((m(XL) - Y) ** 2))(model)
        optimizer.update(model, grads)
        return loss

    losses = [float(step(model, optimizer)) for _ in range(5)]
    assert differ(nnx.state(model), nnx.state(start)) and losses[-1] < losses[0]
    save_pure(tmp_path / "model.msgpack", model)
    restored = load_pure(tmp_path / "model.msgpack", nnx_factorized(1))
    assert_same_leaves(nnx.state(restored), nnx.state(model))
    np.testing.assert_array_equal(restored(XL), model(XL))


@pytest.mark.slow  # compile-heavy: over 5 s on 2 cores (the default run's budget)
def test_nnx_orbax_round_trip(tmp_path):
    ocp = pytest.importorskip("orbax.checkpoint")
    model, skeleton = nnx_factorized(0), nnx_factorized(1)
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(tmp_path.absolute() / "ckpt", nnx.state(model))
    checkpointer.wait_until_finished()
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, nnx.state(skeleton))
    nnx.update(skeleton, checkpointer.restore(tmp_path.absolute() / "ckpt", abstract))
    assert_same_leaves(nnx.state(skeleton), nnx.state(model))
    np.testing.assert_array_equal(skeleton(XL), model(XL))
