"""Tests of `SharedMPOStack` (Equinox and NNX) against references written from the definitions.

References (float64 NumPy on the values the module holds, never the module itself): every
entry of every layer's weight as the product of its core slices
``G_1[:, o_1, i_1, :] ... G_d[:, o_d, i_d, :]`` with the shared core in place ``center``
(explicit loops over the multi-indices), the stack as those dense weights applied layer by
layer, and gradients of a stack written with one copy of the centre per layer (einsum from the
definition), summed over the copies.

Tolerances (float32 ``eps = 2^-23`` unless a test runs in float64):

- a sum of products of ``k`` factors, each term through at most ``h`` additions, is within
  ``(h + k) eps sum |terms|`` (Higham 3.1-3.5); ``sum |terms|`` is the same computation on the
  absolute values. For ``W x`` with a TT-matrix the additions are those of the contracted
  indices, at most ``d_in + sum_k (i_k r_k + r_k)`` in any contraction order; through a stack
  the error of layer ``l`` is ``|W_l| e_(l-1) + gamma (|W_l| |h_(l-1)| + |b_l|)`` entrywise (a
  1-Lipschitz activation adds one rounding);
- exact recovery by `from_dense` runs backward-stable factorizations (SVD, QR, eigh) of
  matrices with at most ``d_out d_in`` entries, whose errors are amplified by the condition
  numbers ``kappa_L, kappa_R`` of the interfaces at the centre's bonds: ``kappa_L kappa_R
  d_out d_in eps`` relative;
- an empirical mean over ``n`` independent draws is within 5 standard errors of its
  expectation (the CLT; a false alarm has probability below 1e-6).
"""

import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from jax.test_util import check_grads

import factorjax.nnx as fnnx
from factorjax.factorizations import TTMatrix
from factorjax.nn import SharedMPOStack
from factorjax.nn._mpo import SharedMPOReport

EPS32 = float(np.finfo(np.float32).eps)
EPS64 = float(np.finfo(np.float64).eps)

# ---------------------------------------------------------------------------------------------
# References
# ---------------------------------------------------------------------------------------------


def f64(x):
    return np.asarray(x, np.float64)


def layer_cores_np(stack, layer):
    """Layer ``layer``'s cores from the stack's arrays, the shared core at ``center``."""
    aux = [f64(a[layer]) for a in stack.aux]
    return [*aux[: stack.center], f64(stack.shared), *aux[stack.center :]]


def ref_ttm(cores):
    """``W[(o_1 ... o_d), (i_1 ... i_d)] = G_1[:, o_1, i_1, :] ... G_d[:, o_d, i_d, :]``,
    row-major multi-indices, entry by entry."""
    out_modes = tuple(c.shape[1] for c in cores)
    in_modes = tuple(c.shape[2] for c in cores)
    W = np.empty((math.prod(out_modes), math.prod(in_modes)))
    for o in np.ndindex(*out_modes):
        for i in np.ndindex(*in_modes):
            m = np.ones((1, 1))
            for c, ok, ik in zip(cores, o, i, strict=True):
                m = m @ c[:, ok, ik, :]
            W[np.ravel_multi_index(o, out_modes), np.ravel_multi_index(i, in_modes)] = m[0, 0]
    return W


def ref_weights(stack, absolute=False):
    """Every layer's dense weight from the explicit sums (of ``|cores|`` with ``absolute``)."""
    fix = np.abs if absolute else (lambda c: c)
    return [ref_ttm([fix(c) for c in layer_cores_np(stack, li)]) for li in range(stack.num_layers)]


def ref_forward(Ws, bs, x, act):
    """``h -> act(W_l h + b_l)``, no activation after the last layer; ``x`` is ``(B, d_in)``."""
    h = f64(x)
    for li, (W, b) in enumerate(zip(Ws, bs, strict=True)):
        h = h @ W.T + b
        if li < len(Ws) - 1:
            h = act(h)
    return h


def gamma(stack, eps):
    """``(h + k) eps`` for one layer ``W x + b`` (module docstring)."""
    w = stack.layer_weight(0)
    adds = stack.in_features + sum(
        i * r + r for i, r in zip(w.in_modes, (*w.ranks, 1), strict=True)
    )
    return (adds + len(w.cores) + 3) * eps


def forward_bound(stack, x, biases, eps):
    """Entrywise error bound of the float stack against the exact one (1-Lipschitz act)."""
    g = gamma(stack, eps)
    h, e = np.abs(f64(x)), np.zeros(np.shape(x))
    for A, b in zip(ref_weights(stack, absolute=True), biases, strict=True):
        e = e @ A.T + g * (h @ A.T + np.abs(b))
        h = h @ A.T + np.abs(b)  # |act(y)| <= |y| for tanh, relu, identity
    return e


def make(num_layers=3, n=24, rank=3, *, dtype=jnp.float32, seed=0, **kw):
    return SharedMPOStack(num_layers, n, n, rank, dtype=dtype, key=jax.random.key(seed), **kw)


def with_bias(stack, rng):
    b = rng.normal(size=stack.bias.shape).astype(stack.bias.dtype) * 0.1
    return eqx.tree_at(lambda s: s.bias, stack, jnp.asarray(b))


# ---------------------------------------------------------------------------------------------
# Structure and weights
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "n, order, center, rank", [(24, 3, None, 3), (24, 3, 0, 4), (24, 3, 2, 2), (32, 5, 3, 3)]
)
def test_layer_weights_are_the_explicit_sums(n, order, center, rank):
    s = make(3, n, rank, tensor_order=order, center=center, init="std", std=0.5)
    c = order // 2 if center is None else center
    assert s.center == c and len(s.aux) == order - 1
    assert all(a.shape[0] == 3 for a in s.aux)
    ref, ref_abs = ref_weights(s), ref_weights(s, absolute=True)
    tol = (order + sum(s.ranks)) * EPS32
    dense = s.to_dense()
    for li in range(3):
        w = s.layer_weight(li)
        assert isinstance(w, TTMatrix) and w.cores[c] is s.shared and w.shape == (n, n)
        for got in (w.to_matrix(), dense[li], s.layer_weight(li - 3).to_matrix()):
            assert np.all(np.abs(f64(got) - ref[li]) <= tol * ref_abs[li] + 1e-30)
    # a traced layer index (vmap over layers)
    np.testing.assert_array_equal(
        jax.vmap(lambda li: s.layer_weight(li).to_matrix())(jnp.arange(3)), dense
    )
    # the layers differ (their own auxiliary cores) but hold one shared core
    assert not np.allclose(ref[0], ref[1])


def test_num_params():
    s = make(5, 64, 8)  # modes (4, 4, 4), ranks (8, 8)
    shared, aux = 8 * 4 * 4 * 8, 1 * 4 * 4 * 8 + 8 * 4 * 4 * 1
    assert s.num_params == shared + 5 * aux + 5 * 64
    assert s.num_params_unshared == 5 * (shared + aux) + 5 * 64
    assert s.num_params_dense == 5 * (64 * 64 + 64)
    assert s.num_params == sum(x.size for x in jax.tree.leaves(s))
    t = make(5, 64, 8, use_bias=False)
    assert t.bias is None and t.num_params == shared + 5 * aux


# ---------------------------------------------------------------------------------------------
# The forward pass
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "act, np_act, order",
    [
        (None, lambda h: h, 3),
        # the activations and order 4 compile more programs: slow
        pytest.param(jnp.tanh, np.tanh, 3, marks=pytest.mark.slow),
        pytest.param(jax.nn.relu, lambda h: np.maximum(h, 0), 4, marks=pytest.mark.slow),
    ],
)
def test_stack_is_the_dense_layers_in_sequence(act, np_act, order, rng):
    s = with_bias(make(4, 24, 3, tensor_order=order, activation=act, init="lecun"), rng)
    x = rng.normal(size=(5, 24)).astype(np.float32)
    Ws, bs = ref_weights(s), f64(s.bias)
    bound = forward_bound(s, x, bs, EPS32)
    y = s(x)
    assert y.shape == (5, 24) and np.all(np.abs(f64(y) - ref_forward(Ws, bs, x, np_act)) <= bound)
    # one unbatched example, and each layer on its own (no activation)
    assert np.all(np.abs(f64(s(x[0])) - ref_forward(Ws, bs, x[:1], np_act)[0]) <= bound[0])
    for li in range(4):
        one = ref_forward([Ws[li]], [bs[li]], x, np_act)
        got = f64(s.apply_layer(li, x))
        assert np.all(np.abs(got - one) <= gamma(s, EPS32) * (np.abs(x) @ np.abs(Ws[li]).T + 1))
    # a single layer may change the width
    r = SharedMPOStack(1, 24, 12, 2, key=jax.random.key(1))
    W, A = ref_weights(r)[0], ref_weights(r, absolute=True)[0]
    assert np.all(np.abs(f64(r(x)) - f64(x) @ W.T) <= gamma(r, EPS32) * (np.abs(x) @ A.T))


@pytest.mark.slow  # every order under jit and vmap: many compilations
def test_jit_vmap_and_forced_orders(rng):
    s = with_bias(make(3, 24, 3, activation=jnp.tanh), rng)
    x = rng.normal(size=(6, 24)).astype(np.float32)
    bound = forward_bound(s, x, f64(s.bias), EPS32)
    y = s(x)
    assert np.all(np.abs(f64(jax.jit(lambda v: s(v))(x)) - f64(y)) <= 2 * bound)
    assert np.all(np.abs(f64(jax.vmap(s)(x)) - f64(y)) <= 2 * bound)
    assert np.all(np.abs(f64(eqx.filter_jit(lambda m, v: m(v))(s, x)) - f64(y)) <= 2 * bound)
    for order in ("left-to-right", "right-to-left", "dense"):
        f = SharedMPOStack.from_cores(s.shared, s.aux, s.bias, center=s.center,
                                      activation=jnp.tanh, order=order)  # fmt: skip
        assert f.order == order and np.all(np.abs(f64(f(x)) - f64(y)) <= 2 * bound)
    # vmap over stacks (a sweep over initializations)
    keys = jax.random.split(jax.random.key(0), 3)
    ys = jax.vmap(lambda k: SharedMPOStack(2, 24, 24, 3, key=k)(x))(keys)
    one = SharedMPOStack(2, 24, 24, 3, key=keys[1])
    bound = forward_bound(one, x, f64(one.bias), EPS32)
    assert np.all(np.abs(f64(ys[1]) - f64(one(x))) <= 2 * bound)


# ---------------------------------------------------------------------------------------------
# Gradients
# ---------------------------------------------------------------------------------------------


def untied_output(centers, aux, bias, x, center):
    """The linear stack with one copy of the centre per layer; ``W_l`` by one einsum from the
    definition ``W[(o), (i)] = G_1[:, o_1, i_1, :] ... G_d[:, o_d, i_d, :]``."""
    h = x
    for li, c in enumerate(centers):
        cores = [a[li] for a in aux]
        cores = [*cores[:center], c, *cores[center:]]
        d = len(cores)
        ops = []
        for k, g in enumerate(cores):  # bonds 0..d, outputs d+1.., inputs 2d+1..
            ops += [g, [k, d + 1 + k, 2 * d + 1 + k, k + 1]]
        W = jnp.einsum(*ops, [0, *range(d + 1, 2 * d + 1), *range(2 * d + 1, 3 * d + 1), d])
        h = h @ W.reshape(math.prod(W.shape[: d + 1]), -1).T + bias[li]
    return h


@pytest.mark.slow  # float64 gradients of a deep stack
def test_shared_gradient_is_the_sum_over_layers(x64, rng):
    s = with_bias(make(4, 24, 3, dtype=jnp.float64, init="std", std=0.3), rng)
    x, c = rng.normal(size=(3, 24)), rng.normal(size=(3, 24))
    g = jax.grad(lambda m: jnp.sum(c * m(x)))(s)
    centers = [s.shared] * 4
    gu = jax.grad(lambda cs, a, b: jnp.sum(c * untied_output(cs, a, b, x, s.center)),
                  argnums=(0, 1, 2))(centers, s.aux, s.bias)  # fmt: skip
    # the same sums on absolute values bound every term (the stack is multilinear)
    abs_args = ([jnp.abs(s.shared)] * 4, jax.tree.map(jnp.abs, s.aux), jnp.abs(s.bias))
    ga = jax.grad(lambda cs, a, b: jnp.sum(np.abs(c) * untied_output(cs, a, b, np.abs(x),
                  s.center)), argnums=(0, 1, 2))(*abs_args)  # fmt: skip
    tol = 2 * 4 * gamma(s, EPS64)  # two orders of evaluation, four layers deep
    assert np.all(np.abs(g.shared - sum(gu[0])) <= tol * sum(ga[0]))
    assert not np.allclose(gu[0][0], gu[0][1])  # every layer contributes its own part
    for k in range(len(s.aux)):
        assert np.all(np.abs(g.aux[k] - gu[1][k]) <= tol * ga[1][k])
    assert np.all(np.abs(g.bias - gu[2]) <= tol * ga[2])


@pytest.mark.slow  # check_grads of the whole stack
def test_check_grads(x64, rng):
    s = with_bias(make(3, 12, 2, dtype=jnp.float64, activation=jnp.tanh), rng)
    x = rng.normal(size=(2, 12))

    def f(shared, aux, bias, x):
        return SharedMPOStack.from_cores(shared, aux, bias, center=s.center,
                                         activation=jnp.tanh)(x)  # fmt: skip

    check_grads(jax.jit(f), (s.shared, s.aux, s.bias, x), order=1, modes=("fwd", "rev"))
    # jit and eager run the same operations, up to XLA's fusion and reassociation
    g_jit = jax.jit(jax.grad(lambda m: jnp.sum(m(x) ** 2)))(s)
    g = jax.grad(lambda m: jnp.sum(m(x) ** 2))(s)
    tol = 2 * 3 * gamma(s, EPS64)
    for a, b in zip(jax.tree.leaves(g_jit), jax.tree.leaves(g), strict=True):
        assert np.abs(a - b).max() <= tol * np.abs(b).max()


# ---------------------------------------------------------------------------------------------
# Stable initialization
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("init, std", [("glorot", None), ("he", None), ("std", 0.7)])
@pytest.mark.slow  # statistics over many random draws
def test_every_layer_weight_has_the_target_variance(init, std):
    n_draws, L = 64, 3
    target = {"glorot": 2 / (24 + 24), "he": 2 / 24, "std": 0.49}[init]

    def draw(k):
        w = SharedMPOStack(L, 24, 24, 3, init=init, std=std, key=k).to_dense()
        return jnp.mean(w**2, axis=(1, 2))  # the mean square of each layer's entries

    ms = np.asarray(jax.vmap(draw)(jax.random.split(jax.random.key(0), n_draws)), np.float64)
    se = ms.std(axis=0, ddof=1) / math.sqrt(n_draws)
    assert np.all(np.abs(ms.mean(axis=0) - target) <= 5 * se)


@pytest.mark.slow  # many draws
def test_shared_core_is_a_scaled_isometry():
    s = make(4, 64, 8, init="std", std=0.125)  # centre (8, 4, 4, 8): rows 256 >= cols 4
    r0, o, i, r1 = s.shared.shape
    m = f64(s.shared).transpose(0, 1, 3, 2).reshape(r0 * o * r1, i)
    s2 = (0.125**2 / math.prod(s.ranks)) ** (1 / len((*s.ranks, 1)))  # entry variance
    gram = m.T @ m / (r0 * o * r1 * s2)
    # Householder QR: ||Q^T Q - I|| <= c m n eps
    assert np.abs(gram - np.eye(i)).max() <= r0 * o * r1 * i * EPS32


@pytest.mark.parametrize(
    "init, std, act, expected", [("std", 1 / 8, None, 1.0), ("he", None, jax.nn.relu, 2.0)]
)
@pytest.mark.slow  # statistics over many random draws
def test_signal_neither_explodes_nor_vanishes_with_depth(init, std, act, expected):
    """``E[|y|^2] = expected |x|^2`` at init for every depth (see `init_cores`): linear layers
    with ``Var = 1 / d`` keep it; He layers with ReLU keep it through the ReLUs, and the last
    (linear) layer doubles it. One draw fluctuates (a product of random TT-matrices: about a
    factor 3 either way at depth 8, about as for independently drawn TT layers, and heavy
    tailed), so the claim is tested on the mean over seeds, within 5 standard errors, at depths
    2 and 4, where that mean is informative."""
    x = jax.random.normal(jax.random.key(1), (256, 64))
    for depth in (2, 4):

        def ratio(key, depth=depth):
            s = SharedMPOStack(depth, 64, 64, 8, init=init, std=std, activation=act, key=key)
            return jnp.mean(s(x) ** 2) / jnp.mean(x**2) / expected

        ratios = np.asarray(jax.vmap(ratio)(jax.random.split(jax.random.key(0), 24)))
        se = np.std(ratios, ddof=1) / math.sqrt(len(ratios))
        assert abs(np.mean(ratios) - 1.0) <= 5 * se, (depth, np.mean(ratios), se)
        assert se < 0.3, (depth, se)  # the mean is informative


# ---------------------------------------------------------------------------------------------
# Fitting to dense weights
# ---------------------------------------------------------------------------------------------


def interface_conditions(stack):
    """Condition numbers of each layer's left and right interfaces at the centre's bonds."""
    out = []
    for li in range(stack.num_layers):
        cores = [c.reshape(c.shape[0], -1, c.shape[-1]) for c in layer_cores_np(stack, li)]
        left, right = np.ones((1, 1)), np.ones((1, 1))
        for g in cores[: stack.center]:
            left = (left @ g.reshape(g.shape[0], -1)).reshape(-1, g.shape[-1])
        for g in reversed(cores[stack.center + 1 :]):
            right = (g.reshape(-1, g.shape[-1]) @ right).reshape(g.shape[0], -1)
        out.append(np.linalg.cond(left) * np.linalg.cond(right))
    return np.array(out)


@pytest.mark.parametrize("n, order, center, rank", [(64, 3, 1, 4), (64, 3, 0, 4), (32, 5, 2, 3)])
@pytest.mark.slow  # alternating least-squares fits in float64
def test_from_dense_recovers_a_truly_shared_centre(x64, n, order, center, rank):
    true = make(4, n, rank, dtype=jnp.float64, tensor_order=order, center=center, init="std",
                std=1.0, seed=3)  # fmt: skip
    W = np.stack(ref_weights(true))
    fit, report = SharedMPOStack.from_dense(W, true.ranks, tensor_order=order, center=center,
                                            sweeps=2)  # fmt: skip
    assert isinstance(report, SharedMPOReport) and fit.ranks == true.ranks
    assert fit.center == center and fit.bias is None
    tol = interface_conditions(true) * n * n * EPS64
    got = np.stack(ref_weights(fit))
    err = np.linalg.norm(got - W, axis=(1, 2)) / np.linalg.norm(W, axis=(1, 2))
    assert np.all(err <= tol) and np.all(f64(report.errors) <= tol)
    assert np.all(f64(report.history) <= tol.max())


@pytest.mark.slow  # alternating least-squares fits in float64
def test_from_dense_generic_weights(x64, rng):
    L, n, order = 3, 64, 3
    W = rng.normal(size=(L, n, n)) / 8
    b = rng.normal(size=(L, n))
    fit, rep = SharedMPOStack.from_dense(W, 4, biases=b, sweeps=2, activation=jnp.tanh)
    got = np.stack(ref_weights(fit))
    norms = np.linalg.norm(W, axis=(1, 2))
    err = np.linalg.norm(got - W, axis=(1, 2)) / norms
    # a reconstruction is within gamma |W'| entrywise, so an error within gamma ||A|| / ||W||
    rel = 2 * gamma(fit, EPS64) * np.linalg.norm(ref_weights(fit, absolute=True)) / norms.min()
    assert np.all(np.abs(f64(rep.errors) - err) <= rel)  # the errors of the returned stack
    total = np.sqrt(np.sum((err * norms) ** 2) / np.sum(norms**2))
    assert abs(float(rep.history[-1]) - total) <= rel
    # ALS never raises the error: the final error is at most that of the aligned start
    h = f64(rep.history)
    assert np.all(np.diff(h) <= 2 * rel) and h[-1] < h[0]
    # the unshared errors are those of each layer's own TT-SVD; sharing only adds constraints
    for li in range(L):
        own = f64(TTMatrix.from_dense(W[li], fit.ranks).to_matrix())
        assert abs(float(rep.unshared_errors[li]) - np.linalg.norm(own - W[li]) / norms[li]) <= rel
    assert np.all(err >= f64(rep.unshared_errors) / math.sqrt(order - 1) - rel)
    np.testing.assert_array_equal(fit.bias, b)
    assert fit.activation is jnp.tanh


@pytest.mark.slow  # alternating least-squares fits in float64
def test_from_dense_one_layer_is_no_worse_than_tt_svd(x64, rng):
    W = rng.normal(size=(1, 24, 36))
    fit, rep = SharedMPOStack.from_dense(W, 3, sweeps=2)
    own = TTMatrix.from_dense(W[0], 3)
    # with L = 1 the aligned start is the layer's own TT-SVD, and sweeps only lower it
    rel = (
        2 * gamma(fit, EPS64) * np.linalg.norm(ref_weights(fit, absolute=True)) / np.linalg.norm(W)
    )
    assert float(rep.errors[0]) <= float(rep.unshared_errors[0]) + rel
    own_err = np.linalg.norm(f64(own.to_matrix()) - W[0]) / np.linalg.norm(W[0])
    assert abs(float(rep.unshared_errors[0]) - own_err) <= rel
    assert fit.in_features == 36 and fit.out_features == 24


# ---------------------------------------------------------------------------------------------
# Flax NNX
# ---------------------------------------------------------------------------------------------


@pytest.mark.slow  # compile-heavy: over 5 s on 2 cores (the default run's budget)
def test_nnx_parity(rng):
    e = with_bias(make(3, 24, 3, activation=jnp.tanh), rng)
    n = fnnx.SharedMPOStack.from_equinox(e)
    x = rng.normal(size=(5, 24)).astype(np.float32)
    np.testing.assert_array_equal(n(x), e(x))
    np.testing.assert_array_equal(n.apply_layer(1, x), e.apply_layer(1, x))
    np.testing.assert_array_equal(n.to_dense(), e.to_dense())
    np.testing.assert_array_equal(n.layer_weight(2).to_matrix(), e.layer_weight(2).to_matrix())
    assert (n.num_params, n.num_params_unshared, n.num_params_dense, n.ranks) == (
        e.num_params, e.num_params_unshared, e.num_params_dense, e.ranks,
    )  # fmt: skip
    m = fnnx.SharedMPOStack.from_cores(e.shared, e.aux, e.bias, center=e.center,
                                       activation=jnp.tanh)  # fmt: skip
    np.testing.assert_array_equal(m(x), e(x))
    # the NNX constructor draws cores of the same shapes
    r = fnnx.SharedMPOStack(3, 24, 24, 3, rngs=nnx.Rngs(params=jax.random.key(7)))
    q = SharedMPOStack(3, 24, 24, 3, key=jax.random.key(7))
    assert jax.tree.map(jnp.shape, r.equinox) == jax.tree.map(jnp.shape, q)
    # one Param for the shared core, one per stacked auxiliary core, one for the biases
    leaves = jax.tree.leaves(nnx.state(r, nnx.Param))
    assert len(leaves) == 1 + len(q.aux) + 1 and sum(v.size for v in leaves) == q.num_params
    f, rep = fnnx.SharedMPOStack.from_dense(np.asarray(e.to_dense()), e.ranks, sweeps=0)
    assert isinstance(f, fnnx.SharedMPOStack) and rep.errors.shape == (3,)


@pytest.mark.slow  # compile-heavy: over 5 s on 2 cores (the default run's budget)
def test_nnx_trains():
    m = fnnx.SharedMPOStack(3, 16, 16, 2, activation=jnp.tanh, rngs=nnx.Rngs(0))
    x = jax.random.normal(jax.random.key(1), (32, 16))
    target = jnp.tanh(x[:, ::-1])
    opt = nnx.Optimizer(m, optax.adam(1e-2), wrt=nnx.Param)
    shared0 = np.asarray(m.shared[...])

    @nnx.jit
    def step(m, opt):
        loss, g = nnx.value_and_grad(lambda m: jnp.mean((m(x) - target) ** 2))(m)
        opt.update(m, g)
        return loss

    losses = [float(step(m, opt)) for _ in range(30)]
    assert losses[-1] < 0.8 * losses[0]
    assert not np.allclose(m.shared[...], shared0)  # the shared core is trained


# ---------------------------------------------------------------------------------------------
# Bad input
# ---------------------------------------------------------------------------------------------


def test_bad_input():
    key = jax.random.key(0)
    cases = [
        (dict(num_layers=0), ValueError, r"`num_layers` must be an int >= 1; got 0"),
        (dict(num_layers=2.0), TypeError, r"`num_layers` must be a Python int"),
        (dict(out_features=12), ValueError, r"`in_features` must equal `out_features`"),
        (dict(out_modes=(2, 3, 5)), ValueError, r"product of `out_modes` must be 24"),
        (dict(center=3), ValueError, r"`center` must be an int in \[0, 2\]"),
        (dict(center=-1), ValueError, r"`center` must be an int in \[0, 2\]"),
        (dict(center=1.0), TypeError, r"`center` must be an int"),
        (dict(rank=(9, 2)), ValueError, r"`rank\[0\]` = 9 exceeds"),
        (dict(rank=(2,)), ValueError, r"`rank` as a tuple must hold the 2 inner"),
        (dict(tensor_order=1), ValueError, r"at least 2 cores"),
        (dict(init="small"), ValueError, r"`init` must be one of"),
        (dict(init="std"), TypeError, r"`std` must be a positive float"),
        (dict(activation="relu"), TypeError, r"`activation` must be None or a callable"),
        (dict(order="fastest"), ValueError, r"`order` must be one of"),
    ]
    for change, err, msg in cases:
        args = dict(num_layers=2, in_features=24, out_features=24, rank=3) | change
        with pytest.raises(err, match=msg):
            SharedMPOStack(**args, key=key)
    s = make(2, 24, 3)
    with pytest.raises(ValueError, match=r"`x` must have in_features = 24"):
        s(jnp.ones(12))
    with pytest.raises(ValueError, match=r"`layer` must be an int in \[-2, 1\]; got 2"):
        s.layer_weight(2)
    with pytest.raises(TypeError, match=r"`layer` must be an int or an integer scalar"):
        s.apply_layer(0.5, jnp.ones(24))
    with pytest.raises(ValueError, match=r"`weights` must be a stack \(L, d_out, d_in\)"):
        SharedMPOStack.from_dense(np.ones((24, 24)), 3)
    with pytest.raises(ValueError, match=r"`in_features` must equal `out_features`"):
        SharedMPOStack.from_dense(np.ones((2, 24, 12)), 3)
    with pytest.raises(ValueError, match=r"`sweeps` must be an int >= 0"):
        SharedMPOStack.from_dense(np.ones((2, 24, 24)), 3, sweeps=-1)
    with pytest.raises(ValueError, match=r"`center` must be an int in \[0, 2\]"):
        SharedMPOStack.from_dense(np.ones((2, 24, 24)), 3, center=5)
    with pytest.raises(ValueError, match=r"`aux\[1\]` must be a stack"):
        SharedMPOStack.from_cores(s.shared, (s.aux[0], s.aux[1][:1]), center=1)
    with pytest.raises(ValueError, match=r"`bias` must have shape \(2, 24\)"):
        SharedMPOStack.from_cores(s.shared, s.aux, jnp.ones(24), center=1)
    with pytest.raises(ValueError, match=r"boundary TT ranks must be 1"):
        SharedMPOStack.from_cores(s.shared, s.aux, center=0)
    with pytest.raises(TypeError, match=r"`stack` must be a factorjax.nn.SharedMPOStack"):
        fnnx.SharedMPOStack.from_equinox(s.layer_weight(0))
