"""Tests of the sparse top-k mixture of experts (`SparseMoE`, `sparse_moe`, `route`) against a
naive reference written from the definition: per token, the softmax over the top-k logits
(chosen with NumPy's argsort), each chosen expert's dense weight applied, the sum; with a
capacity, the same first-come rule (slot-major queue) applied in a Python loop."""

import functools
import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from jax.test_util import check_grads

from factorjax.factorizations._registry import FORMATS
from factorjax.moe._routing import route
from factorjax.moe._sparse import SparseMoE, expert_capacity, sparse_moe
from factorjax.nnx._moe_sparse import SparseMoE as NNXSparseMoE

D_IN, D_OUT, E, K = 8, 6, 4, 2
EPS32 = float(np.finfo(np.float32).eps)
RANKS = {"dense": None, "lowrank": 3, "tt": 2, "cp": 3}

# jitted entry points: one compile per input shape instead of one per small op (eager)
call = eqx.filter_jit(lambda m, x: m(x, return_aux=True))
moe = eqx.filter_jit(sparse_moe)


@functools.cache
def _layer(fmt: str) -> SparseMoE:
    """A float32 layer with every leaf random (router N(0, 1): well-separated logits; a
    nonzero bias), built once per format (in one compiled program: eager construction
    compiles every small op)."""

    def build(key):
        layer = SparseMoE(
            D_IN, D_OUT, E, top_k=K, expert_format=fmt, expert_rank=RANKS[fmt], key=key
        )  # fmt: skip
        k_router, k_bias = jax.random.split(jax.random.fold_in(key, 1))
        layer = eqx.tree_at(lambda m: m.router, layer, jax.random.normal(k_router, (D_IN, E)))
        return eqx.tree_at(lambda m: m.bias, layer, jax.random.normal(k_bias, (E, D_OUT)))

    layer = eqx.filter_jit(build)(jax.random.key(0))
    # float32 whoever calls first: under a test's `jax.enable_x64` the random leaves would be
    # float64, and the cache would hand them to the float32 tests
    return jax.tree.map(lambda a: a.astype(jnp.float32) if eqx.is_inexact_array(a) else a, layer)


def _as_float64(layer: SparseMoE) -> SparseMoE:
    """The layer with float64 leaves (under `jax.enable_x64`), converted on the host."""
    return jax.tree.map(lambda a: jnp.asarray(np.asarray(a, np.float64)), layer)


_to_matrix = eqx.filter_jit(lambda op: op.to_matrix())  # one expert's dense weight


def expert_weights(layer, transform=None) -> np.ndarray:
    """The experts' dense weights (E, d_out, d_in) in float64, expert by expert (each sliced
    on the host from the stacked factors, ``transform`` applied to its factors)."""
    host = jax.tree.map(lambda a: np.asarray(a, np.float64), layer.experts)
    transform = transform or (lambda a: a)
    if layer.expert_format == "dense":
        return transform(host)
    return np.stack(
        [
            np.asarray(_to_matrix(jax.tree.map(lambda a, e=e: transform(a[e]), host)), np.float64)
            for e in range(layer.num_experts)
        ]
    )


def abs_expert_weights(layer) -> np.ndarray:
    """The experts rebuilt from the absolute values of their factors: the sum of |terms| of
    any contraction order of the factors, which bounds the rounding error."""
    return expert_weights(layer, np.abs)


def reference(layer, x, capacity=None):
    """Per token: logits, the top-k by argsort, softmax over them, the chosen experts' dense
    weights applied and summed. With ``capacity``, the assignments are queued slot-major
    (every token's first choice in token order, then every second choice, ...) and one whose
    expert already holds ``capacity`` tokens is dropped.

    Returns ``(y, tol, kept)``: the output, a float32 error bound per output (derived in the
    body) and the (T, k) mask of kept assignments."""
    x = np.asarray(x, np.float64)
    lead = x.shape[:-1]
    X = x.reshape(-1, D_IN)
    R = np.asarray(layer.router, np.float64)
    W, W_abs = expert_weights(layer), abs_expert_weights(layer)
    b = np.zeros((E, D_OUT)) if layer.bias is None else np.asarray(layer.bias, np.float64)
    T = len(X)
    logits = X @ R
    order = np.argsort(-logits, axis=1, kind="stable")[:, :K]
    kept = np.ones((T, K), bool)
    if capacity is not None:
        count = np.zeros(E, int)
        for j in range(K):
            for t in range(T):
                e = order[t, j]
                kept[t, j] = count[e] < capacity
                count[e] += 1
    y = np.zeros((T, D_OUT))
    tol = np.zeros((T, D_OUT))
    for t in range(T):
        z = logits[t, order[t]]
        p = np.exp(z - z.max()) / np.exp(z - z.max()).sum()
        # float32 logit error <= (d_in + 1) eps sum_i |x_i R_ie|; it moves each softmax
        # weight by at most 2 p_j max|dl| (plus a few eps for exp and the division)
        dl = (D_IN + 1) * EPS32 * np.max(np.abs(X[t]) @ np.abs(R)) + 4 * EPS32
        for j in range(K):
            if kept[t, j]:
                e = order[t, j]
                out = W[e] @ X[t] + b[e]
                y[t] += p[j] * out
                # an expert output sums d_in products after the factor chain (rank axes of
                # at most 2 d_in in all); then k terms: gamma_n bound on the |terms|
                bound = W_abs[e] @ np.abs(X[t]) + np.abs(b[e])
                tol[t] += p[j] * ((3 * D_IN + K + 2) * EPS32 * bound + 2 * dl * np.abs(out))
    return y.reshape(*lead, D_OUT), tol.reshape(*lead, D_OUT), kept


def assert_matches(y, ref, tol):
    err = np.abs(np.asarray(y, np.float64) - ref)
    assert np.all(err <= tol + 1e-30), (err.max(), tol.max())


# --------------------------------------------------------------------------- forward


@pytest.mark.parametrize("fmt", ["dense", "lowrank", "tt", "cp"])
def test_matches_reference(fmt, rng):
    layer = _layer(fmt)
    for shape in [(D_IN,), (2, D_IN), (2, 3, D_IN)]:
        # (D_IN,) and (2, D_IN): T k <= E, per-token gather; the others: all experts
        x = rng.normal(size=shape).astype(np.float32)
        y, _ = call(layer, x)
        assert y.shape == (*shape[:-1], D_OUT)
        ref, tol, _ = reference(layer, x)
        assert_matches(y, ref, tol)
    # with a capacity: C = ceil(1.0 * 5 * 2 / 4) = 3 tokens per expert, some dropped
    x = rng.normal(size=(5, D_IN)).astype(np.float32)
    x[:, 0] += 3.0  # push most tokens to the same experts
    y, aux = moe(x, layer.router, layer.experts, layer.bias, top_k=K, capacity_factor=1.0)
    ref, tol, kept = reference(layer, x, capacity=3)
    assert_matches(y, ref, tol)
    np.testing.assert_allclose(aux["dropped_fraction"], 1 - kept.mean(), rtol=1e-6)


def test_explicit_factor_formulas():
    """to_matrix (used by the reference) against the formats' formulas written out."""
    lr = _layer("lowrank")
    W = expert_weights(lr)
    for e in range(E):
        u, v = np.asarray(lr.experts.u, np.float64)[e], np.asarray(lr.experts.v, np.float64)[e]
        manual = np.array([[sum(u[o, r] * v[i, r] for r in range(3)) for i in range(D_IN)]
                           for o in range(D_OUT)])  # fmt: skip
        np.testing.assert_allclose(W[e], manual, rtol=1e-6, atol=1e-7)
    tt = _layer("tt")
    W = expert_weights(tt)
    for e in range(E):
        g1, g2, g3 = (np.asarray(c, np.float64)[e] for c in tt.experts.cores)
        full = np.einsum("aoib,bpjc,cqkd->opqijk", g1, g2, g3)  # W[(o p q), (i j k)]
        np.testing.assert_allclose(W[e], full.reshape(D_OUT, D_IN), rtol=1e-6, atol=1e-7)


def test_capacity_one_token_per_expert(rng):
    # top-1, C = ceil(0.8 * 5 / 4) = 1, every token's top-1 is expert 0: only token 0 is kept
    assert expert_capacity(0.8, 5, 1, E) == 1
    router = rng.normal(size=(D_IN, E)).astype(np.float32)
    router[0, 0] = 20.0

    def build(router, key):
        layer = SparseMoE(D_IN, D_OUT, E, top_k=1, capacity_factor=0.8, key=key)
        layer = eqx.tree_at(lambda m: m.router, layer, router)
        return eqx.tree_at(lambda m: m.bias, layer, jnp.ones((E, D_OUT)))

    layer = eqx.filter_jit(build)(router, jax.random.key(0))
    x = rng.normal(size=(5, D_IN)).astype(np.float32)
    x[:, 0] = np.abs(x[:, 0]) + 2.0
    y, aux = call(layer, x)
    np.testing.assert_array_equal(y[1:], 0.0)  # dropped: no expert output, no bias
    assert np.all(np.abs(y[0]) > 0)
    np.testing.assert_allclose(aux["dropped_fraction"], 4 / 5, rtol=1e-6)
    # top-2 at C = 1 (capacity_factor 0.4): slot-major first come, against the reference
    assert expert_capacity(0.4, 5, 2, E) == 1
    two = _layer("dense")
    x = rng.normal(size=(5, D_IN)).astype(np.float32)
    y, aux = moe(x, two.router, two.experts, two.bias, top_k=2, capacity_factor=0.4)
    ref, tol, kept = reference(two, x, capacity=1)
    assert kept.sum() <= E and not kept.all()
    assert_matches(y, ref, tol)
    np.testing.assert_allclose(aux["dropped_fraction"], 1 - kept.mean(), rtol=1e-6)


def test_route(rng):
    z = rng.normal(size=(3, 5)).astype(np.float32)
    w, idx = jax.jit(route, static_argnums=1)(z, 2)
    order = np.argsort(-z, axis=1, kind="stable")[:, :2]
    np.testing.assert_array_equal(idx, order)
    for t in range(3):
        p = np.exp(z[t, order[t]]) / np.exp(z[t, order[t]]).sum()
        np.testing.assert_allclose(w[t, order[t]], p, rtol=1e-6)
        assert np.count_nonzero(w[t]) == 2
    np.testing.assert_allclose(np.sum(w, axis=-1), 1.0, rtol=1e-6)


# --------------------------------------------------------------------------- aux losses


def test_aux_losses(rng):
    layer = _layer("dense")
    x = rng.normal(size=(5, D_IN)).astype(np.float32)
    _, aux = call(layer, x)
    logits = x.astype(np.float64) @ np.asarray(layer.router, np.float64)
    top = np.argsort(-logits, axis=1, kind="stable")[:, :K]
    f = np.array([np.sum(top == e) for e in range(E)]) / (5 * K)
    probs = np.exp(logits - logits.max(1, keepdims=True))
    probs /= probs.sum(1, keepdims=True)
    lse = np.log(np.exp(logits).sum(1))
    np.testing.assert_allclose(aux["load_balancing"], E * np.sum(f * probs.mean(0)), rtol=1e-5)
    np.testing.assert_allclose(aux["router_z"], np.mean(lse**2), rtol=1e-5)
    assert float(aux["dropped_fraction"]) == 0.0
    # perfectly uniform: token t sees the logits c shifted by t, so every expert gets the same
    # share of the assignments (f = 1/E) and of the probability (P = 1/E): the loss is 1
    c = np.array([3.0, 2.0, 1.0, 0.0], np.float32)
    circ = np.stack([np.roll(c, t) for t in range(E)])  # router[t] = c shifted by t
    experts = np.asarray(layer.experts)[..., :E]  # d_in = E
    _, aux = moe(np.eye(E, dtype=np.float32), circ, experts, top_k=K)
    np.testing.assert_allclose(aux["load_balancing"], 1.0, rtol=1e-6)


# --------------------------------------------------------------------------- transforms


@pytest.mark.parametrize("fmt", ["dense", "lowrank"])
def test_gradients(fmt, rng, x64):
    layer = _as_float64(_layer(fmt))
    xs = (
        rng.normal(size=(1, D_IN)),  # T k <= E: per-token gather
        rng.normal(size=(3, D_IN)),  # every expert on the batch
        rng.normal(size=(3, D_IN)),  # capacity C = ceil(1.0 * 3 * 2 / 4) = 2
    )
    for x in xs:
        logits = np.sort(x @ np.asarray(layer.router), axis=1)
        # the top-k choice and the queue are locally constant: the k-th and (k+1)-th logits
        # are far apart compared with the finite-difference step
        assert np.min(logits[:, -K] - logits[:, -K - 1]) > 1e-2

    @jax.jit
    def f(router, experts, bias, xs):
        out = []
        for x, cf in zip(xs, (None, None, 1.0), strict=True):  # the three dispatch paths
            y, aux = sparse_moe(x, router, experts, bias, top_k=K, capacity_factor=cf)
            out += [y, aux["load_balancing"], aux["router_z"]]
        return out

    args = (layer.router, layer.experts, layer.bias, tuple(jnp.asarray(x) for x in xs))
    check_grads(f, args, order=1, modes=("rev",))


@pytest.mark.slow  # compile-heavy: over 5 s on 2 cores (the default run's budget)
def test_jit_and_vmap(rng):
    x = rng.normal(size=(5, D_IN)).astype(np.float32)
    lr = _layer("lowrank")
    y, aux = lr(x, return_aux=True)  # eager
    yj, auxj = call(lr, x)
    np.testing.assert_allclose(yj, y, rtol=1e-5, atol=1e-6)
    for name in ("load_balancing", "router_z", "dropped_fraction"):
        np.testing.assert_allclose(auxj[name], aux[name], rtol=1e-6)
    # one example at a time (per-token gather of the TT cores) equals the batch (every
    # expert on the batch)
    tt = _layer("tt")
    vmapped = eqx.filter_jit(lambda m, x: jax.vmap(m)(x))(tt, x)
    np.testing.assert_allclose(vmapped, call(tt, x)[0], rtol=1e-5, atol=1e-6)


def test_structure():
    for fmt in ("dense", "lowrank", "tt"):
        layer = _layer(fmt)
        leaves = jax.tree.leaves(eqx.filter(layer, eqx.is_array))
        axes = layer.expert_axes()
        assert len(axes) == len(leaves) and axes[0] == 1 and set(axes[1:]) == {0}
        assert all(leaf.shape[a] == E for leaf, a in zip(leaves, axes, strict=True))
        assert layer.num_params == sum(leaf.size for leaf in leaves)
        assert layer.expert_matrices().shape == (E, D_OUT, D_IN)
        assert (layer.num_experts, layer.in_features, layer.out_features) == (E, D_IN, D_OUT)
    # the router starts small (std sqrt(0.1 / d_in)), nonzero
    fresh = eqx.filter_jit(lambda k: SparseMoE(16, 4, 8, use_bias=False, key=k))(jax.random.key(3))
    std = float(jnp.std(fresh.router))
    assert 0.3 * math.sqrt(0.1 / 16) < std < 3 * math.sqrt(0.1 / 16)
    assert fresh.bias is None


# --------------------------------------------------------------------------- NNX


@pytest.mark.slow  # compile-heavy: over 5 s on 2 cores (the default run's budget)
def test_nnx_parity_and_training(rng):
    layer = _layer("tt")
    twin = NNXSparseMoE.from_equinox(layer)
    x = rng.normal(size=(5, D_IN)).astype(np.float32)
    y, aux = call(layer, x)
    yn, auxn = nnx.jit(lambda m, x: m(x, return_aux=True))(twin, x)
    np.testing.assert_allclose(yn, y, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(auxn["load_balancing"], aux["load_balancing"], rtol=1e-6)
    assert twin.num_params == layer.num_params and twin.num_experts == E

    model = NNXSparseMoE(D_IN, D_OUT, E, top_k=K, expert_format="lowrank", expert_rank=2,
                         rngs=nnx.Rngs(0))  # fmt: skip
    target = rng.normal(size=(5, D_OUT)).astype(np.float32)
    opt = nnx.Optimizer(model, optax.sgd(0.1), wrt=nnx.Param)

    def loss(m):
        y, aux = m(x, return_aux=True)
        return jnp.mean((y - target) ** 2) + 0.01 * aux["load_balancing"]

    @nnx.jit
    def step(m, opt):
        value, grads = nnx.value_and_grad(loss)(m)
        opt.update(m, grads)
        return value

    router = np.asarray(model.router[...])
    before = step(model, opt)
    assert float(nnx.jit(loss)(model)) < float(before)
    assert not np.allclose(model.router[...], router)  # the router is trained too


# --------------------------------------------------------------------------- bad input


def test_bad_input():
    key = jax.random.key(0)
    with pytest.raises(ValueError, match=r"`top_k` must be an int in \[1, 4\]"):
        SparseMoE(D_IN, D_OUT, 4, top_k=5, key=key)
    with pytest.raises(ValueError, match=r"`expert_format` must be one of 'dense', 'lowrank'"):
        SparseMoE(D_IN, D_OUT, 4, expert_format="sparse", key=key)
    assert all(f in str(_bad_format()) for f in FORMATS)
    for bad in (0.0, -1.0, float("inf")):
        with pytest.raises(ValueError, match=r"`capacity_factor` must be None or a float > 0"):
            SparseMoE(D_IN, D_OUT, 4, capacity_factor=bad, key=key)
    with pytest.raises(ValueError, match=r"`expert_rank` is only used with factorized experts"):
        SparseMoE(D_IN, D_OUT, 4, expert_rank=2, key=key)
    layer = _layer("dense")
    with pytest.raises(ValueError, match=r"`x` must have in_features = 8 on its last axis"):
        layer(jnp.ones((2, 5)))
    with pytest.raises(ValueError, match=r"`router` must be \(d_in, E\)"):
        sparse_moe(jnp.ones((2, 5)), layer.router, layer.experts, top_k=2)
    with pytest.raises(TypeError, match=r"`layer` must be a factorjax.moe.SparseMoE"):
        NNXSparseMoE.from_equinox(eqx.nn.Linear(2, 2, key=key))


def _bad_format():
    try:
        SparseMoE(D_IN, D_OUT, 4, expert_format="nope", key=jax.random.key(0))
    except ValueError as e:
        return e
    raise AssertionError("no error")
