"""BasisMoE (Mixture of Basis Experts, MoBE): the fast path against a naive mixture written
from the definition, the Adam fit of the factors, gradients, transformations, the NNX twin and
bad input."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from jax.test_util import check_grads

from factorjax.moe._basis import BasisMoE, basis_moe, fit_basis
from factorjax.nnx._moe_basis import BasisMoE as NnxBasisMoE

D_IN, D_OUT, E, M, R = 8, 6, 4, 2, 3
EPS32 = float(np.finfo(np.float32).eps)


def f64(a):
    return np.asarray(a, np.float64)


def silu(v):
    return v / (1 + np.exp(-v))


def naive_weights(A, alpha, B, act=silu) -> np.ndarray:
    """``W_j = A_j act(sum_i softmax(alpha_j)_i B_i)``, expert by expert, basis by basis."""
    A, alpha, B = f64(A), f64(alpha), f64(B)
    W = np.zeros((A.shape[0], A.shape[1], B.shape[2]))
    for j in range(A.shape[0]):
        s = np.exp(alpha[j] - alpha[j].max())
        s /= s.sum()
        mixed = np.zeros(B.shape[1:])
        for i in range(B.shape[0]):
            mixed += s[i] * B[i]
        W[j] = A[j] @ act(mixed)
    return W


def naive_mixture(W, router, bias, x, top_k):
    """``y = sum_{j in topk} w_j (W_j x + b_j)``, one example and one expert at a time."""
    W, router, x = f64(W), f64(router), f64(x).reshape(-1, W.shape[2])
    y = np.zeros((x.shape[0], W.shape[1]))
    for n, xn in enumerate(x):
        logits = xn @ router
        chosen = np.argsort(-logits, kind="stable")[:top_k]
        w = np.exp(logits[chosen] - logits[chosen].max())
        w /= w.sum()
        for wk, j in zip(w, chosen, strict=True):
            y[n] += wk * (W[j] @ xn + (0 if bias is None else f64(bias)[j]))
    return y


def output_tol(layer, x):
    """float32 rounding bound: each output sums ``m + r + d_in`` products per expert (the mixed
    basis, then ``C_j x``, then ``A_j``), so its error is a few ``(m + r + d_in) eps`` times the
    sum of the absolute values of the terms (``|A_j| |C_j| |x|``, ``|C_j| <= max |B| + 1``
    for SiLU, plus the bias)."""
    c = np.abs(f64(layer.bases)).max() + 1
    mag = np.abs(f64(layer.experts)).sum(-1).max() * c * np.abs(f64(x)).sum(-1).max()
    mag += np.abs(f64(layer.bias)).max() if layer.bias is not None else 0
    return 4 * (layer.num_bases + layer.rank + layer.in_features) * EPS32 * (mag + 1)


def random_layer(rng, **kw):
    layer = BasisMoE(D_IN, D_OUT, E, M, rank=R, key=jax.random.key(int(rng.integers(1 << 30))),
                     **kw)  # fmt: skip
    bias = jnp.asarray(rng.normal(size=(E, D_OUT)), jnp.float32)
    return eqx.tree_at(lambda m: m.bias, layer, bias) if layer.bias is not None else layer


def model_experts(rng, num_bases, d_out=D_OUT, d_in=D_IN, rank=R):
    """``E`` experts generated exactly by the model from random ``A``, ``alpha``, ``B``."""
    A, alpha = rng.normal(size=(E, d_out, rank)), rng.normal(size=(E, num_bases))
    B = rng.normal(size=(num_bases, rank, d_in))
    return naive_weights(A, alpha, B).astype(np.float32)


def test_fast_path_matches_naive(rng):
    layer = random_layer(rng)
    x = jnp.asarray(rng.normal(size=(2, 3, D_IN)), jnp.float32)
    y = layer(x)
    assert y.shape == (2, 3, D_OUT)
    W = naive_weights(layer.experts, layer.mixing, layer.bases)
    ref = naive_mixture(W, layer.router, layer.bias, x, 2)
    np.testing.assert_allclose(f64(y).reshape(-1, D_OUT), ref, atol=output_tol(layer, x))
    np.testing.assert_allclose(layer.expert_weights(), W, rtol=1e-5, atol=1e-6)
    # top-1, no bias, tanh bases, one example
    other = random_layer(rng, top_k=1, use_bias=False, activation=jnp.tanh)
    W = naive_weights(other.experts, other.mixing, other.bases, np.tanh)
    x1 = x[0, 0]
    np.testing.assert_allclose(
        f64(other(x1)), naive_mixture(W, other.router, None, x1, 1)[0], atol=output_tol(other, x1)
    )


def test_aux_losses(rng):
    layer = random_layer(rng, top_k=3)
    x = jnp.asarray(rng.normal(size=(5, D_IN)), jnp.float32)
    y, aux = layer(x, return_aux=True)
    np.testing.assert_allclose(y, layer(x))
    logits = f64(x) @ f64(layer.router)
    counts = np.zeros(E)
    for z in logits:
        counts[np.argsort(-z, kind="stable")[:3]] += 1
    p = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    lb = E * np.sum(counts / (5 * 3) * p.mean(0))
    np.testing.assert_allclose(aux["load_balancing"], lb, rtol=1e-5)
    np.testing.assert_allclose(aux["router_z"], np.mean(np.log(np.exp(logits).sum(1)) ** 2),
                               rtol=1e-5)  # fmt: skip


def test_gradients(rng, x64):
    # float64, well-separated logits: the top-k set is constant within check_grads' steps
    router = rng.normal(size=(D_IN, E)) * 3
    x = rng.normal(size=(3, D_IN))
    assert np.min(np.diff(np.sort(x @ router, axis=1), axis=1)) > 1e-2, "logits too close"
    args = (
        jnp.asarray(router), jnp.asarray(rng.normal(size=(E, D_OUT, R))),
        jnp.asarray(rng.normal(size=(E, M))), jnp.asarray(rng.normal(size=(M, R, D_IN))),
        jnp.asarray(rng.normal(size=(E, D_OUT))), jnp.asarray(x),
    )  # fmt: skip

    @jax.jit  # check_grads calls it many times
    def f(r, a, alpha, b, bias, x):
        y, aux = basis_moe(x, r, a, alpha, b, bias, top_k=2, activation=jax.nn.silu,
                           return_aux=True)  # fmt: skip
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
    assert len(axes) == len(leaves) == 5
    for leaf, axis in zip(leaves, axes, strict=True):
        assert axis is None or leaf.shape[axis] == E
    assert axes[3] is None  # the shared bases
    assert (
        layer.num_params
        == sum(a.size for a in leaves)
        == (D_IN * E + E * D_OUT * R + E * M + M * R * D_IN + E * D_OUT)
    )
    assert (layer.num_experts, layer.in_features, layer.out_features) == (E, D_IN, D_OUT)
    assert len(random_layer(rng, use_bias=False).expert_axes()) == 4
    # the init targets entries of variance 1/d_in (LeCun); 8 layers x 192 entries estimate it
    # within a few percent, so a factor 2 either way cannot pass by chance if the scale is off
    var = np.mean([
        np.var(f64(BasisMoE(64, 24, 8, 3, rank=8, key=jax.random.key(s)).expert_weights()))
        for s in range(4)
    ])  # fmt: skip
    assert 0.5 / 64 < var < 2 / 64


# --- fitting ---------------------------------------------------------------------------------


def test_fit_recovers_single_basis_experts(rng):
    # With one basis the experts are W_j = A_j act(B): an exact solution exists and Adam from
    # the SVD init reaches it to float32 rounding (measured: median 1e-7, worst 2e-5 over 8
    # draws at 2000 steps, below 4e-7 at 4000). 1e-4 is far above rounding and far below the
    # initial error (about 0.5), so a fit that stalls or optimizes the wrong objective fails.
    W = model_experts(rng, 1)
    params, report = fit_basis(W, 1, R, steps=3000, learning_rate=0.03)
    assert float(report.overall) < 1e-4
    assert np.all(f64(report.relative_error) < 1e-3)
    W_hat = naive_weights(*params)
    np.testing.assert_allclose(
        np.linalg.norm(W_hat - W) / np.linalg.norm(W), report.overall, rtol=1e-2, atol=1e-6
    )


def test_fit_decreases_the_loss(rng):
    # Two bases, r = d_out (square A_j, the paper's setting): nonconvex, Adam from the
    # authors' SVD init lands at 1-3% relative error (local minima; measured over 30 draws),
    # so no exact-recovery claim here. Over those draws the final loss was at most 0.2% of the
    # initial one and the median loss of each tenth of the run fell strictly, every time: the
    # test asks for < 1% and the falling medians (Adam's loss spikes, so not every step).
    d_out, d_in = 6, 12
    W = model_experts(rng, M, d_out, d_in, d_out)
    steps = 3000
    params, report = fit_basis(W, M, d_out, steps=steps, learning_rate=0.03)
    loss = f64(report.loss)
    assert loss.shape == (steps,) and report.trajectory.shape == (steps, E)
    assert loss[-1] < 0.01 * loss[0]
    assert np.all(np.diff(np.median(loss.reshape(10, -1), axis=1)) < 0)
    np.testing.assert_allclose(f64(report.overall) ** 2, loss.min(), rtol=1e-3)
    # the per-expert trajectory agrees with the loss: sum_j err_j^2 ||W_j||^2 / ||W||^2
    norms = np.sum(f64(W) ** 2, axis=(1, 2))
    recomputed = f64(report.trajectory) ** 2 @ norms / norms.sum()
    np.testing.assert_allclose(recomputed, loss, rtol=1e-3, atol=1e-7)
    per = [np.linalg.norm(naive_weights(*params)[j] - W[j]) / np.linalg.norm(W[j]) for j in
           range(E)]  # fmt: skip
    np.testing.assert_allclose(report.relative_error, per, rtol=1e-3, atol=1e-6)

    router, bias = rng.normal(size=(d_in, E)), rng.normal(size=(d_out,))
    layer, report2 = BasisMoE.from_experts(W, router, M, d_out, bias=bias, steps=steps,
                                           learning_rate=0.03)  # fmt: skip
    np.testing.assert_allclose(report2.overall, report.overall, rtol=1e-5)
    np.testing.assert_allclose(layer.expert_weights(), naive_weights(*params), atol=1e-5)
    np.testing.assert_allclose(layer.bias, np.broadcast_to(bias, (E, d_out)), rtol=1e-6)
    np.testing.assert_allclose(layer.router, router, rtol=1e-6)


# --- NNX -------------------------------------------------------------------------------------


@pytest.mark.slow  # compile-heavy: over 5 s on 2 cores (the default run's budget)
def test_nnx_parity_and_training(rng):
    layer = random_layer(rng, activation=jnp.tanh)
    twin = NnxBasisMoE.from_equinox(layer)
    x = jnp.asarray(rng.normal(size=(5, D_IN)), jnp.float32)
    np.testing.assert_array_equal(twin(x), layer(x))
    _, aux = twin(x, return_aux=True)
    _, aux_ref = layer(x, return_aux=True)
    np.testing.assert_array_equal(aux["router_z"], aux_ref["router_z"])
    assert twin.expert_axes() == layer.expert_axes() and twin.num_params == layer.num_params
    assert len(jax.tree.leaves(nnx.state(twin, nnx.Param))) == 5
    fresh = NnxBasisMoE(D_IN, D_OUT, E, M, rank=R, use_bias=False, rngs=nnx.Rngs(0))
    assert fresh(x).shape == (5, D_OUT) and fresh.rank == R and fresh.bias is None

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

    # the single-basis fit's settings (its compiled program is reused)
    conv, report = NnxBasisMoE.from_experts(
        model_experts(rng, 1), rng.normal(size=(D_IN, E)), 1, R, steps=3000, learning_rate=0.03
    )
    assert conv.num_bases == 1 and report.trajectory.shape == (3000, E)
    assert float(report.overall) < 1e-4
    with pytest.raises(TypeError, match="layer"):
        NnxBasisMoE.from_equinox(twin)


# --- bad input -------------------------------------------------------------------------------


def test_bad_input(rng):
    key = jax.random.key(0)
    with pytest.raises(ValueError, match="top_k"):
        BasisMoE(D_IN, D_OUT, E, M, rank=R, top_k=E + 1, key=key)
    with pytest.raises(ValueError, match="rank"):
        BasisMoE(D_IN, D_OUT, E, M, rank=0, key=key)
    with pytest.raises(ValueError, match="rank"):
        BasisMoE(D_IN, D_OUT, E, M, rank=D_OUT + 1, key=key)
    with pytest.raises(ValueError, match="num_bases"):
        BasisMoE(D_IN, D_OUT, E, 0, rank=R, key=key)
    with pytest.raises(TypeError, match="activation"):
        BasisMoE(D_IN, D_OUT, E, M, rank=R, activation=None, key=key)
    layer = BasisMoE(D_IN, D_OUT, E, M, rank=R, key=key)
    with pytest.raises(ValueError, match="in_features = 8"):
        layer(jnp.ones((D_IN - 1,)))
    W, router = rng.normal(size=(E, D_OUT, D_IN)), rng.normal(size=(D_IN, E))
    with pytest.raises(ValueError, match="expert_weights"):
        fit_basis(W[None], M, R)
    with pytest.raises(ValueError, match="rank"):
        fit_basis(W, M, min(D_IN, D_OUT) + 1)
    with pytest.raises(ValueError, match="steps"):
        fit_basis(W, M, R, steps=0)
    with pytest.raises(ValueError, match="learning_rate"):
        fit_basis(W, M, R, learning_rate=-0.1)
    with pytest.raises(ValueError, match="router_weight"):
        BasisMoE.from_experts(W, router[:, :-1], M, R)
    with pytest.raises(ValueError, match="bias"):
        BasisMoE.from_experts(W, router, M, R, bias=np.ones((E + 1, D_OUT)))
    with pytest.raises(ValueError, match="top_k"):
        BasisMoE.from_experts(W, router, M, R, top_k=E + 1, steps=1)
