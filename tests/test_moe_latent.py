"""LatentMoE (Mixture of Latent Experts, MoLE): the fast path against a naive mixture written
from the definition, the two-phase conversion against NumPy's SVD, gradients, transformations,
the NNX twin and bad input."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from jax.test_util import check_grads

from factorjax.moe._latent import LatentMoE, fit_latent, latent_moe
from factorjax.nnx._moe_latent import LatentMoE as NnxLatentMoE

D_IN, D_OUT, E, L = 8, 6, 4, 3
EPS32 = float(np.finfo(np.float32).eps)


def f64(a):
    return np.asarray(a, np.float64)


def naive_weights(layer) -> np.ndarray:
    """``W_e = B_e P`` by explicit sums over the latent index."""
    P, B = f64(layer.projection), f64(layer.experts)
    W = np.zeros((layer.num_experts, layer.out_features, layer.in_features))
    for e in range(layer.num_experts):
        for lat in range(layer.latent_dim):
            W[e] += np.outer(B[e, :, lat], P[lat])
    return W


def naive_mixture(W, router, bias, x, top_k, act=lambda h: h):
    """``y = sum_{e in topk} w_e act(W_e x + b_e)``, one example and one expert at a time."""
    W, router, x = f64(W), f64(router), f64(x).reshape(-1, W.shape[2])
    y = np.zeros((x.shape[0], W.shape[1]))
    for n, xn in enumerate(x):
        logits = xn @ router
        chosen = np.argsort(-logits, kind="stable")[:top_k]
        w = np.exp(logits[chosen] - logits[chosen].max())
        w /= w.sum()
        for wk, e in zip(w, chosen, strict=True):
            h = W[e] @ xn + (0 if bias is None else f64(bias)[e])
            y[n] += wk * act(h)
    return y


def naive_aux(router, x, top_k):
    """Switch load balancing ``E sum_e f_e p_e`` and the router z-loss, by counting."""
    logits = f64(x).reshape(-1, router.shape[0]) @ f64(router)
    num_experts = logits.shape[1]
    counts, probs = np.zeros(num_experts), np.zeros(num_experts)
    for z in logits:
        for e in np.argsort(-z, kind="stable")[:top_k]:
            counts[e] += 1
        probs += np.exp(z - z.max()) / np.exp(z - z.max()).sum()
    f, p = counts / (len(logits) * top_k), probs / len(logits)
    lse = np.log(np.exp(logits - logits.max(1, keepdims=True)).sum(1)) + logits.max(1)
    return num_experts * np.sum(f * p), np.mean(lse**2)


def output_tol(layer, x):
    """float32 rounding bound of the two computations: each output is a sum of
    ``d_in + latent_dim`` products per expert, so its error is at most a few
    ``(d_in + latent_dim) eps`` times the sum of the absolute values of the terms."""
    P, B = np.abs(f64(layer.projection)), np.abs(f64(layer.experts))
    mag = np.einsum("eol,li,ni->no", B, P, np.abs(f64(x).reshape(-1, layer.in_features)))
    return 4 * (layer.in_features + layer.latent_dim) * EPS32 * (mag.max() + 1)


def random_layer(rng, **kw):
    layer = LatentMoE(D_IN, D_OUT, E, L, key=jax.random.key(int(rng.integers(1 << 30))), **kw)
    bias = jnp.asarray(rng.normal(size=(E, D_OUT)), jnp.float32)
    return eqx.tree_at(lambda m: m.bias, layer, bias) if layer.bias is not None else layer


def test_fast_path_matches_naive(rng):
    layer = random_layer(rng, activation=jax.nn.gelu)
    x = jnp.asarray(rng.normal(size=(2, 3, D_IN)), jnp.float32)
    y = layer(x)
    assert y.shape == (2, 3, D_OUT)
    gelu = lambda h: np.asarray(jax.nn.gelu(jnp.asarray(h)), np.float64)  # noqa: E731
    ref = naive_mixture(naive_weights(layer), layer.router, layer.bias, x, 2, gelu)
    np.testing.assert_allclose(f64(y).reshape(-1, D_OUT), ref, atol=output_tol(layer, x))
    # one example, top-1, no bias, linear experts
    lin = random_layer(rng, top_k=1, use_bias=False)
    x1 = x[0, 0]
    ref1 = naive_mixture(naive_weights(lin), lin.router, None, x1, 1)
    np.testing.assert_allclose(f64(lin(x1)), ref1[0], atol=output_tol(lin, x1))
    np.testing.assert_allclose(lin.expert_weights(), naive_weights(lin), rtol=1e-5, atol=1e-6)


def test_aux_losses(rng):
    layer = random_layer(rng)
    x = jnp.asarray(rng.normal(size=(5, D_IN)), jnp.float32)
    y, aux = layer(x, return_aux=True)
    np.testing.assert_allclose(y, layer(x))
    lb, z = naive_aux(layer.router, x, layer.top_k)
    np.testing.assert_allclose(aux["load_balancing"], lb, rtol=1e-5)
    np.testing.assert_allclose(aux["router_z"], z, rtol=1e-5)
    # a uniform router (zero logits): p_e = 1/E whatever the assignment, so the loss is 1
    flat = eqx.tree_at(lambda m: m.router, layer, jnp.zeros_like(layer.router))
    _, aux = flat(x, return_aux=True)
    np.testing.assert_allclose(aux["load_balancing"], 1.0, rtol=1e-6)
    np.testing.assert_allclose(aux["router_z"], np.log(E) ** 2, rtol=1e-6)


def test_gradients(rng, x64):
    # float64, well-separated logits: the top-k set is constant within check_grads' steps
    router = rng.normal(size=(D_IN, E)) * 3
    x = rng.normal(size=(3, D_IN))
    logits = np.sort(x @ router, axis=1)
    assert np.min(np.diff(logits, axis=1)) > 1e-2, "resample: logits too close for check_grads"
    args = (
        jnp.asarray(router), jnp.asarray(rng.normal(size=(L, D_IN))),
        jnp.asarray(rng.normal(size=(E, D_OUT, L))), jnp.asarray(rng.normal(size=(E, D_OUT))),
        jnp.asarray(x),
    )  # fmt: skip

    @jax.jit  # check_grads calls it many times
    def f(r, p, b, bias, x):
        y, aux = latent_moe(x, r, p, b, bias, top_k=2, activation=jnp.tanh, return_aux=True)
        return jnp.sum(y**2) + aux["load_balancing"] + aux["router_z"]

    check_grads(f, args, order=1, modes=("fwd", "rev"))


def test_jit_vmap_and_axes(rng):
    layer = random_layer(rng)
    x = jnp.asarray(rng.normal(size=(4, D_IN)), jnp.float32)
    y = layer(x)
    np.testing.assert_allclose(eqx.filter_jit(lambda m, v: m(v))(layer, x), y, rtol=1e-5,
                               atol=1e-6)  # fmt: skip
    np.testing.assert_allclose(jax.vmap(layer)(x), y, rtol=1e-5, atol=1e-6)
    leaves = jax.tree.leaves(eqx.filter(layer, eqx.is_array))
    axes = layer.expert_axes()
    assert len(axes) == len(leaves) == 4
    for leaf, axis in zip(leaves, axes, strict=True):
        assert axis is None or leaf.shape[axis] == E
    assert [a is None for a in axes] == [False, True, False, False]
    assert (
        layer.num_params == sum(a.size for a in leaves) == D_IN * E + L * D_IN + E * D_OUT * (L + 1)
    )
    assert (layer.num_experts, layer.in_features, layer.out_features) == (E, D_IN, D_OUT)
    assert len(random_layer(rng, use_bias=False).expert_axes()) == 3


# --- the two-phase conversion --------------------------------------------------------------


def test_conversion_exact_on_shared_row_space(rng, x64):
    P = rng.normal(size=(L, D_IN))
    W = np.einsum("eol,li->eoi", rng.normal(size=(E, D_OUT, L)), P)
    router, bias = rng.normal(size=(D_IN, E)), rng.normal(size=(E, D_OUT))
    layer, report = LatentMoE.from_experts(W, router, L, bias=bias, refine_steps=2)
    # the experts are exactly rank-L products: the error is rounding (float64 eps ~ 2e-16)
    assert float(report.overall) < 1e-12
    assert np.all(f64(report.relative_error) < 1e-12)
    np.testing.assert_allclose(layer.expert_weights(), W, atol=1e-12)
    np.testing.assert_array_equal(layer.router, router)
    x = rng.normal(size=(3, D_IN))
    np.testing.assert_allclose(layer(x), naive_mixture(W, router, bias, x, 2), atol=1e-11)
    # (float32: in test_nnx_parity_and_training)


def test_conversion_meets_svd_bound(rng, x64):
    W = rng.normal(size=(E, D_OUT, D_IN))
    S = W.reshape(E * D_OUT, D_IN)
    s = np.linalg.svd(S, compute_uv=False)
    # Eckart-Young: sum_e ||W_e - B_e P||^2 over rank-L products [B_1; ..; B_E] P is at least
    # the tail of the stacked spectrum, and phase 1 attains it
    bound = np.sqrt(np.sum(s[L:] ** 2) / np.sum(s**2))
    _, _, Vh = np.linalg.svd(S)
    proj = Vh[:L].T @ Vh[:L]
    per_ref = [np.linalg.norm(W[e] - W[e] @ proj) / np.linalg.norm(W[e]) for e in range(E)]
    p, b, report = fit_latent(W, L, refine_steps=3)
    np.testing.assert_allclose(report.phase1_overall, bound, rtol=1e-10)
    np.testing.assert_allclose(report.phase1_relative_error, per_ref, rtol=1e-10)
    assert float(report.overall) <= float(report.phase1_overall) * (1 + 1e-12)
    assert float(report.overall) >= bound * (1 - 1e-12)
    np.testing.assert_allclose(p @ p.T, np.eye(L), atol=1e-12)  # orthonormal rows
    recon = np.einsum("eol,li->eoi", b, p)
    np.testing.assert_allclose(
        np.linalg.norm(W - recon) / np.linalg.norm(W), report.overall, rtol=1e-10
    )


def test_refinement_never_increases_the_error(rng, x64):
    # slowly decaying spectrum; a randomized phase 1 without oversampling is far from optimal
    W = rng.normal(size=(E, D_OUT, D_IN)) * (0.8 ** np.arange(D_IN))
    s = np.linalg.svd(W.reshape(-1, D_IN), compute_uv=False)
    bound = np.sqrt(np.sum(s[L:] ** 2) / np.sum(s**2))
    _, _, report = fit_latent(
        W, L, refine_steps=6, method="randomized", oversample=1, key=jax.random.key(3)
    )
    traj = f64(report.trajectory)
    assert traj.shape == (7,)
    # each sweep is exact least squares in turn: monotone up to rounding
    assert np.all(np.diff(traj) <= 1e-12)
    assert traj[-1] < traj[0] - 1e-6  # it did something
    assert bound * (1 - 1e-12) <= float(report.overall) <= traj.min() + 1e-15
    # none: phase 1 only
    _, _, report0 = fit_latent(W, L, refine_steps=0)
    np.testing.assert_allclose(report0.overall, bound, rtol=1e-10)
    assert report0.trajectory.shape == (1,)


# --- NNX -------------------------------------------------------------------------------------


def test_nnx_parity_and_training(rng):
    layer = random_layer(rng, activation=jax.nn.relu)
    twin = NnxLatentMoE.from_equinox(layer)
    x = jnp.asarray(rng.normal(size=(5, D_IN)), jnp.float32)
    np.testing.assert_array_equal(twin(x), layer(x))
    _, aux = twin(x, return_aux=True)
    _, aux_ref = layer(x, return_aux=True)
    np.testing.assert_array_equal(aux["load_balancing"], aux_ref["load_balancing"])
    assert twin.expert_axes() == layer.expert_axes()
    assert twin.num_params == layer.num_params
    assert len(jax.tree.leaves(nnx.state(twin, nnx.Param))) == 4
    fresh = NnxLatentMoE(D_IN, D_OUT, E, L, top_k=1, rngs=nnx.Rngs(0))
    assert fresh(x).shape == (5, D_OUT) and fresh.top_k == 1

    target = jnp.asarray(rng.normal(size=(5, D_OUT)), jnp.float32)
    opt = nnx.Optimizer(twin, optax.sgd(0.05), wrt=nnx.Param)

    def loss(m):
        y, aux = m(x, return_aux=True)
        return jnp.mean((y - target) ** 2) + 0.01 * aux["load_balancing"]

    @nnx.jit
    def step(m, opt):
        value, grads = nnx.value_and_grad(loss)(m)
        opt.update(m, grads)
        return value

    before = step(twin, opt)
    assert loss(twin) < before

    # float32 conversion of experts sharing an L-dimensional row space: the SVD is backward
    # stable, so the error is a small multiple of eps on these 24 x 8 stacks
    W = np.einsum("eol,li->eoi", rng.normal(size=(E, D_OUT, L)), rng.normal(size=(L, D_IN)))
    conv, report = NnxLatentMoE.from_experts(W.astype(np.float32), rng.normal(size=(D_IN, E)), L)
    assert conv.latent_dim == L and report.relative_error.shape == (E,)
    assert float(report.overall) < 100 * EPS32
    np.testing.assert_allclose(conv.expert_weights(), W, rtol=1e-4, atol=1e-4)
    with pytest.raises(TypeError, match="layer"):
        NnxLatentMoE.from_equinox(twin)


# --- bad input -------------------------------------------------------------------------------


def test_bad_input(rng):
    key = jax.random.key(0)
    with pytest.raises(ValueError, match="top_k"):
        LatentMoE(D_IN, D_OUT, E, L, top_k=E + 1, key=key)
    with pytest.raises(ValueError, match="latent_dim"):
        LatentMoE(D_IN, D_OUT, E, 0, key=key)
    with pytest.raises(ValueError, match="latent_dim"):
        LatentMoE(D_IN, D_OUT, E, D_IN + 1, key=key)
    with pytest.raises(TypeError, match="activation"):
        LatentMoE(D_IN, D_OUT, E, L, activation="relu", key=key)
    layer = LatentMoE(D_IN, D_OUT, E, L, key=key)
    with pytest.raises(ValueError, match="in_features = 8"):
        layer(jnp.ones((2, D_IN + 1)))
    with pytest.raises(ValueError, match="x"):
        layer(jnp.float32(1.0))
    W, router = rng.normal(size=(E, D_OUT, D_IN)), rng.normal(size=(D_IN, E))
    with pytest.raises(ValueError, match="expert_weights"):
        LatentMoE.from_experts(W[0], router, L)
    with pytest.raises(ValueError, match="router_weight"):
        LatentMoE.from_experts(W, router.T, L)
    with pytest.raises(ValueError, match="bias"):
        LatentMoE.from_experts(W, router, L, bias=np.ones((E, D_OUT + 1)))
    with pytest.raises(ValueError, match="latent_dim"):
        fit_latent(W, D_IN + 1)
    with pytest.raises(ValueError, match="latent_dim"):
        fit_latent(W[:1, :2], 3)  # the stack (2, 8) has rank at most 2
    with pytest.raises(ValueError, match="refine_steps"):
        fit_latent(W, L, refine_steps=-1)
    with pytest.raises(ValueError, match="method"):
        fit_latent(W, L, method="qr")
    with pytest.raises(ValueError, match="key"):
        fit_latent(W, L, method="randomized")
    with pytest.raises(TypeError, match="expert_weights"):
        fit_latent("weights", L)
