"""Tests of `MultilinearMoE` (μMoE, Oldfield et al. 2024) against the mixture written from its
definition.

The reference builds every expert's weight from the factors by the formulas (CP: the sum over
the rank of the products of the factor rows; TR: the trace of the product of the core slices,
in explicit loops), then computes ``y = sum_n a_1[n_1] ... a_L[n_L] W[n] [x, 1]`` example by
example and expert by expert in float64 NumPy, with the layer's gate probabilities (checked
separately against 1.5-entmax, solved by bisection, of the layer-normalized logits). The factors
and gate matrices are random (not the init, whose later levels are ones), so that every level
matters.

Tolerance of the float32 fast path: the layer computes the same multilinear sum in another
order; every rounded operation adds a relative error of at most ``eps = 2^-24`` to a partial sum
of terms of the full expansion, and a term passes through at most ``n_ops`` operations, with
``n_ops`` the number of factors and summed indices along a term's path
(``d_in + 1 + sum(E_l) + (L + 2) R^2`` bounds it for both formats). So
``|y - y_ref| <= n_ops * eps * y_abs`` with ``y_abs`` the same sum over the absolute values of
every factor, gate and input (the error bound of a sum of products, without cancellation).

The tests build layers of few shapes and compile few programs: the file runs in seconds.
"""

import itertools
import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.test_util import check_grads

from factorjax.moe import MultilinearMoE

EPS32 = 2.0**-24
D_IN, D_OUT, R = 5, 4, 3

CASES = [
    ("cp", None, 6),
    ("cp", (2, 3), 6),
    ("tr", None, 6),
    ("tr", (3, 2), 6),
    ("tr", (2, 1, 3), 6),
]


def make(fmt, levels, num_experts, rng, *, dtype=np.float32, **kwargs):
    """A layer of the given layout with every array (gate matrices included) drawn N(0, 1) from
    ``rng``: the layout comes from the constructor traced abstractly (nothing compiled)."""
    abstract = eqx.filter_eval_shape(
        MultilinearMoE, D_IN, D_OUT, num_experts, R, format=fmt, levels=levels, dtype=dtype,
        key=jax.random.key(0), **kwargs,
    )  # fmt: skip
    return jax.tree.map(lambda s: jnp.asarray(rng.standard_normal(s.shape), s.dtype), abstract)


def bisect_tau(f, lo, hi):
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if f(mid) > 0 else (lo, mid)
    return (lo + hi) / 2


def ref_entmax15(z):
    """1.5-entmax of each row: max(z/2 - tau, 0)^2 with tau (bisection) making the sum 1."""
    out = []
    for row in np.asarray(z, np.float64) / 2:
        tau = bisect_tau(lambda t, r=row: (np.maximum(r - t, 0) ** 2).sum() - 1, row.max() - 1,
                         row.max())  # fmt: skip
        out.append(np.maximum(row - tau, 0) ** 2)
    return np.stack(out)


def ref_weights(layer, absolute=False):
    """The expert weights (E_1, ..., E_L, d_out, d_z) in float64, from the formulas."""
    f = (lambda a: np.abs(np.asarray(a, np.float64))) if absolute else np.asarray
    factors = [f(u).astype(np.float64) for u in layer.expert_factors]
    u_in, u_out = f(layer.in_factor).astype(np.float64), f(layer.out_factor).astype(np.float64)
    levels = layer.levels
    d_z = u_in.shape[0] if layer.format == "cp" else u_in.shape[1]
    w = np.zeros((*levels, D_OUT, d_z))
    for n in itertools.product(*(range(e) for e in levels)):
        for o in range(D_OUT):
            for i in range(d_z):
                if layer.format == "cp":
                    # sum_r U_1[n_1, r] ... U_L[n_L, r] U_out[o, r] U_in[i, r]
                    prod = u_out[o] * u_in[i]
                    for u, nl in zip(factors, n, strict=True):
                        prod = prod * u[nl]
                    w[(*n, o, i)] = prod.sum()
                else:
                    # trace(G_out[:, o, :] G_1[:, n_1, :] ... G_L[:, n_L, :] G_in[:, i, :])
                    m = u_out[:, o, :]
                    for g, nl in zip(factors, n, strict=True):
                        m = m @ g[:, nl, :]
                    w[(*n, o, i)] = np.trace(m @ u_in[:, i, :])
    return w


def ref_mixture(w, gates, x, use_bias=True):
    """y_b = sum_n a_1[b, n_1] ... a_L[b, n_L] W[n] z_b, one example and one expert at a time."""
    x = np.asarray(x, np.float64)
    levels = w.shape[:-2]
    y = np.zeros((x.shape[0], w.shape[-2]))
    for b in range(x.shape[0]):
        z = np.append(x[b], 1.0) if use_bias else x[b]
        for n in itertools.product(*(range(e) for e in levels)):
            coef = math.prod(float(a[b, nl]) for a, nl in zip(gates, n, strict=True))
            y[b] += coef * (w[n] @ z)
    return y


def layer_norm(v):
    return (v - v.mean(-1, keepdims=True)) / np.sqrt(v.var(-1, keepdims=True) + 1e-5)


@pytest.mark.parametrize(("fmt", "levels", "num_experts"), CASES)
def test_matches_explicit_mixture(rng, fmt, levels, num_experts):
    layer = make(fmt, levels, num_experts, rng)
    x = rng.standard_normal((4, D_IN)).astype(np.float32)
    y, gates, w_layer = eqx.filter_jit(lambda m, x: (m(x), m.gates(x), m.expert_weights()))(
        layer, x
    )
    gates = [np.asarray(a, np.float64) for a in gates]
    # the gates: entmax15 of the layer-normalized logits x G_l, level by level
    assert len(gates) == len(layer.levels)
    logits = [
        layer_norm(np.asarray(x, np.float64) @ np.asarray(g, np.float64))
        for g in layer.gate_weights
    ]
    for a, v in zip(gates, logits, strict=True):
        # float32 logits to a few ulps of O(1); entmax15 is 1-Lipschitz (its Jacobian
        # diag(g) - g g^T / sum(g), g = sqrt(p) <= 1)
        np.testing.assert_allclose(a, ref_entmax15(v), atol=1e-5)
    # the weights: the layer's explicit tensor is the formula's
    w = ref_weights(layer)
    np.testing.assert_allclose(np.asarray(w_layer), w, rtol=1e-5, atol=1e-6)
    y_ref = ref_mixture(w, gates, x)
    y_abs = ref_mixture(ref_weights(layer, absolute=True), gates, np.abs(x))
    n_ops = D_IN + 1 + sum(layer.levels) + (len(layer.levels) + 2) * R * R
    y = np.asarray(y)
    assert y.shape == (4, D_OUT)
    assert np.all(np.abs(y - y_ref) <= n_ops * EPS32 * y_abs + 1e-30), np.max(np.abs(y - y_ref))


@pytest.mark.slow  # compile-heavy: over 5 s on 2 cores (the default run's budget)
def test_eager_jit_vmap_agree(rng):
    layer = make("tr", (3, 2), 6, rng)
    x = rng.standard_normal((2, 3, D_IN)).astype(np.float32)  # two batch axes
    y = np.asarray(layer(x))  # eager
    assert y.shape == (2, 3, D_OUT)
    y_jv = jax.jit(jax.vmap(jax.vmap(layer)))(x)  # one example at a time, compiled
    np.testing.assert_allclose(np.asarray(y_jv), y, rtol=1e-6, atol=1e-7)


def test_no_bias_and_softmax_gate(rng):
    layer = make("tr", (2, 2), 4, rng, use_bias=False, gate="softmax", normalize=False)
    x = rng.standard_normal((3, D_IN)).astype(np.float32)
    gates = [np.asarray(a, np.float64) for a in layer.gates(x)]
    for a, g in zip(gates, layer.gate_weights, strict=True):
        v = np.asarray(x, np.float64) @ np.asarray(g, np.float64)
        np.testing.assert_allclose(a, np.exp(v) / np.exp(v).sum(-1, keepdims=True), rtol=1e-5)
    w = ref_weights(layer)
    assert w.shape == (2, 2, D_OUT, D_IN)
    y = np.asarray(eqx.filter_jit(layer)(x))
    np.testing.assert_allclose(y, ref_mixture(w, gates, x, use_bias=False), rtol=1e-4, atol=1e-5)


def test_zero_init_gates_are_uniform(rng):
    x = rng.standard_normal((3, D_IN)).astype(np.float32)
    # (softmax and sparsemax at zero logits: tests/test_moe_gates.py)
    for kind in ("entmax15", "topk"):
        top_k = 2 if kind == "topk" else None
        layer = MultilinearMoE(
            D_IN, D_OUT, 6, R, levels=(2, 3), gate=kind, top_k=top_k, key=jax.random.key(1)
        )
        y, (a1, a2) = eqx.filter_jit(lambda m, x: (m(x), m.gates(x)))(layer, x)
        a1, a2 = np.asarray(a1), np.asarray(a2)
        if kind == "topk":  # all logits tie: top_k of them, equally weighted
            assert np.all((a1 > 0).sum(-1) == 2) and np.all((a2 > 0).sum(-1) == 2)
            assert np.allclose(a1[a1 > 0], 0.5) and np.allclose(a2[a2 > 0], 0.5)
            continue
        np.testing.assert_allclose(a1, 1 / 2, atol=1e-6)
        np.testing.assert_allclose(a2, 1 / 3, atol=1e-6)
        # the output is the mean expert's map
        w = ref_weights(layer)
        z = np.concatenate([x, np.ones((3, 1), np.float32)], 1).astype(np.float64)
        np.testing.assert_allclose(np.asarray(y), z @ w.mean(axis=(0, 1)).T, rtol=1e-4, atol=1e-5)


def test_forward_never_builds_the_expert_tensor():
    """No intermediate of the forward pass is as large as the (E, d_out, d_in + 1) weight
    tensor (64 * 16 * 17 entries here; the largest legit one has E_l d_in or R^2 d_in)."""
    for fmt in ("cp", "tr"):
        layer = eqx.filter_eval_shape(
            MultilinearMoE, 16, 16, 64, 2, format=fmt, levels=(8, 8), key=jax.random.key(0)
        )
        w = jax.eval_shape(lambda m: m.expert_weights(), layer)
        assert w.shape == (8, 8, 16, 17)
        jaxpr = jax.make_jaxpr(lambda m, x: m(x))(layer, jax.ShapeDtypeStruct((2, 16), jnp.float32))
        sizes = [math.prod(v.aval.shape) for e in jaxpr.eqns for v in e.outvars]
        assert 0 < max(sizes) < 64 * 16, max(sizes)


def test_gradients(x64, rng):
    # TR with two softmax levels (reverse mode); CP with two entmax15 levels (forward mode
    # through the custom JVP of entmax15, and reverse mode) at a generic point, where no gate
    # entry sits at its threshold
    for fmt, levels, kind in (("tr", (2, 2), "softmax"), ("cp", (2, 3), "entmax15")):
        layer = make(fmt, levels, math.prod(levels), rng, dtype=np.float64, gate=kind,
                     normalize=kind == "softmax")  # fmt: skip
        params, static = eqx.partition(layer, eqx.is_array)
        x = rng.standard_normal((2, D_IN))

        @jax.jit
        def f(p, x, static=static):
            return eqx.combine(p, static)(x)

        if kind == "entmax15":
            for g in layer.gate_weights:
                v = x @ np.asarray(g) / 2
                a = ref_entmax15(2 * v)
                top = np.argmax(v, axis=1)[:, None]  # always in the support
                tau = np.take_along_axis(v - np.sqrt(a), top, axis=1)  # p = (v - tau)^2 there
                assert np.min(np.abs(v - tau)) > 1e-3
            assert np.any(a == 0)  # sparse: the threshold matters
        check_grads(f, (params, x), order=1, modes=("fwd", "rev") if kind == "entmax15" else "rev")


def test_expert_axes_and_counts():
    cp = MultilinearMoE(D_IN, D_OUT, 6, R, levels=(2, 3), key=jax.random.key(0))
    tr = eqx.filter_eval_shape(
        MultilinearMoE, D_IN, D_OUT, 6, R, format="tr", levels=(3, 2), key=jax.random.key(0)
    )  # the layout only (abstract leaves)
    for layer, leaves, levels, ax in (
        (cp, jax.tree.leaves(eqx.filter(cp, eqx.is_array)), (2, 3), 0),
        (tr, jax.tree.leaves(tr), (3, 2), 1),
    ):
        axes = layer.expert_axes()
        assert len(axes) == len(leaves) == 6
        assert axes == [1, 1, ax, ax, None, None]
        per_level = [leaf.shape[a] for leaf, a in zip(leaves, axes, strict=True) if a is not None]
        assert per_level == [*levels, *levels]
        assert layer.num_params == sum(math.prod(leaf.shape) for leaf in leaves)
        assert (layer.num_experts, layer.in_features, layer.out_features) == (6, D_IN, D_OUT)
    # gates (d_in, 2) and (d_in, 3); factors (2, R), (3, R), (d_in + 1, R), (d_out, R)
    assert cp.num_params == D_IN * 5 + R * (5 + D_IN + 1 + D_OUT)
    assert tr.num_params == D_IN * 5 + R * R * (5 + D_IN + 1 + D_OUT)


# ---------------------------------------------------------------------------------------------
# Init: the variance of the entries of the expert weights (as tests/test_init.py)
# ---------------------------------------------------------------------------------------------

Z, B = 5.0, 256


def assert_mean_within(values, target, *, power=0.3):
    values = np.asarray(values, np.float64)
    mean, se = values.mean(), values.std(ddof=1) / np.sqrt(len(values))
    assert Z * se <= power * target, (Z * se, target)  # the check tells 2/9 from 1 (and 1/2)
    assert abs(mean - target) <= Z * se, (mean, target, se)


INIT_CASES = [
    (fmt, init, levels)
    for fmt in ("cp", "tr")
    for init, levels in (("mumoe", (2, 3)), ("lecun", None))
]


@pytest.mark.slow  # statistics over many random draws
def test_init_variance():
    """The mean square of each draw's expert-weight entries, averaged over B independent draws,
    is ``2 / (9 d_in)`` (init="mumoe") or ``1 / d_in`` (init="lecun"); the first level's expert
    factor is N(1, 1), the later ones ones (CP) or identity slices (TR), the gates zero."""
    d_in, d_out, rank = 12, 8, 4

    @eqx.filter_jit
    @eqx.filter_vmap
    def draw(key):  # all four cases in one compiled program
        out = []
        for k, (fmt, init, levels) in zip(jax.random.split(key, 4), INIT_CASES, strict=True):
            layer = MultilinearMoE(
                d_in, d_out, 6, rank, format=fmt, levels=levels, init=init, key=k
            )
            out.append((jnp.mean(layer.expert_weights() ** 2), layer))
        return out

    for (fmt, init, levels), (ms, layers) in zip(
        INIT_CASES, draw(jax.random.split(jax.random.key(0), B)), strict=True
    ):
        assert_mean_within(ms, 2 / (9 * d_in) if init == "mumoe" else 1 / d_in)
        assert all(np.all(np.asarray(g) == 0) for g in layers.gate_weights)
        first = np.asarray(layers.expert_factors[0])
        if fmt == "tr":  # diagonal slices: the off-diagonal entries are 0
            diag = np.einsum("...ana->...na", first)
            assert np.sum(first**2) == pytest.approx(np.sum(diag**2))
            first = diag
        assert abs(first.mean() - 1) < 0.05 and abs(first.var() - 1) < 0.1
        if levels is not None:
            later = np.asarray(layers.expert_factors[1])
            want = np.ones_like(later) if fmt == "cp" else np.broadcast_to(
                np.eye(rank)[:, None, :], later.shape
            )  # fmt: skip
            np.testing.assert_array_equal(later, want)


# ---------------------------------------------------------------------------------------------
# NNX twin
# ---------------------------------------------------------------------------------------------


@pytest.mark.slow  # compile-heavy: over 5 s on 2 cores (the default run's budget)
def test_nnx_parity_and_one_step(rng):
    nnx = pytest.importorskip("flax.nnx")
    from factorjax.nnx._moe_multilinear import MultilinearMoE as NNXMoE

    x = rng.standard_normal((4, D_IN)).astype(np.float32)
    y_target = rng.standard_normal((4, D_OUT)).astype(np.float32)

    @nnx.jit
    def both(twin, layer, x):
        return twin(x), layer(x), twin.gates(x), layer.gates(x), twin.expert_weights()

    for fmt, levels in (("tr", None), ("cp", (2, 3))):
        layer = make(fmt, levels, 6, rng)
        twin = NNXMoE.from_equinox(layer)
        y_twin, y, a_twin, a, w_twin = both(twin, layer, x)
        np.testing.assert_array_equal(np.asarray(y_twin), np.asarray(y))
        for u, v in zip(a_twin, a, strict=True):
            np.testing.assert_array_equal(np.asarray(u), np.asarray(v))
        np.testing.assert_array_equal(np.asarray(w_twin), np.asarray(layer.expert_weights()))
        assert twin.num_params == layer.num_params and twin.expert_axes() == layer.expert_axes()
        params = jax.tree.leaves(nnx.state(twin, nnx.Param))
        assert sum(p.size for p in params) == layer.num_params
    # built directly from rngs: the same layout as the Equinox layer
    fresh = NNXMoE(D_IN, D_OUT, 6, R, levels=(2, 3), rngs=nnx.Rngs(0))
    assert fresh.num_params == layer.num_params
    assert fresh.levels == (2, 3) and fresh.gate == "entmax15"

    # one optax step (CP, two levels) lowers the loss and moves the parameters
    @nnx.jit
    def step(m, opt):
        loss, grads = nnx.value_and_grad(lambda m: jnp.mean((m(x) - y_target) ** 2))(m)
        opt.update(m, grads)
        return loss

    opt = nnx.Optimizer(twin, optax.sgd(1e-2), wrt=nnx.Param)
    before = float(step(twin, opt))
    assert not np.array_equal(np.asarray(twin.in_factor[...]), np.asarray(layer.in_factor))
    assert float(step(twin, opt)) < before  # the loss after the first step
    with pytest.raises(TypeError, match=r"`layer` must be a factorjax\.moe\.MultilinearMoE"):
        NNXMoE.from_equinox(object())


def test_bad_input():
    key = jax.random.key(0)
    with pytest.raises(ValueError, match=r"`levels` must multiply to num_experts = 6"):
        MultilinearMoE(D_IN, D_OUT, 6, R, levels=(2, 2), key=key)
    with pytest.raises(ValueError, match="`levels` must be an int >= 1"):
        MultilinearMoE(D_IN, D_OUT, 6, R, levels=(6, 0), key=key)
    with pytest.raises(TypeError, match="`levels` must be None or a non-empty tuple"):
        MultilinearMoE(D_IN, D_OUT, 6, R, levels=6, key=key)
    with pytest.raises(ValueError, match=r"`gate` must be one of \('softmax'"):
        MultilinearMoE(D_IN, D_OUT, 6, R, gate="relu", key=key)
    with pytest.raises(ValueError, match=r"`top_k` must be an int in \[1, 6\].*got 7"):
        MultilinearMoE(D_IN, D_OUT, 6, R, gate="topk", top_k=7, key=key)
    with pytest.raises(ValueError, match=r"`top_k` must be an int in \[1, 2\].*per level"):
        MultilinearMoE(D_IN, D_OUT, 6, R, levels=(2, 3), gate="topk", top_k=3, key=key)
    with pytest.raises(ValueError, match="gate='topk' needs `top_k`"):
        MultilinearMoE(D_IN, D_OUT, 6, R, gate="topk", key=key)
    with pytest.raises(ValueError, match=r"`format` must be one of \('cp', 'tr'\); got 'tt'"):
        MultilinearMoE(D_IN, D_OUT, 6, R, format="tt", key=key)
    with pytest.raises(ValueError, match="`rank` must be an int >= 1; got 0"):
        MultilinearMoE(D_IN, D_OUT, 6, 0, key=key)
    with pytest.raises(ValueError, match="`num_experts` must be an int >= 1"):
        MultilinearMoE(D_IN, D_OUT, 0, R, key=key)
    with pytest.raises(ValueError, match=r"`init` must be one of \('mumoe', 'lecun'\)"):
        MultilinearMoE(D_IN, D_OUT, 6, R, init="glorot", key=key)
    with pytest.raises(TypeError, match="`normalize` must be a bool"):
        MultilinearMoE(D_IN, D_OUT, 6, R, normalize="ln", key=key)
    with pytest.raises(TypeError, match="`dtype` must be a floating dtype"):
        MultilinearMoE(D_IN, D_OUT, 6, R, dtype=jnp.int32, key=key)
    layer = MultilinearMoE(D_IN, D_OUT, 6, R, key=key)
    with pytest.raises(ValueError, match=r"`x` must have in_features = 5 on its last axis"):
        layer(jnp.ones((2, D_IN + 1)))
    with pytest.raises(ValueError, match="`x` must have at least 1 axes"):
        layer(jnp.float32(1.0))
    with pytest.raises(ValueError, match=r"`x` must have in_features = 5"):
        layer.gates(jnp.ones(3))
