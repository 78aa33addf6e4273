"""FactorizedLinear (Equinox and NNX), the format registry's rank specs, and rank masks."""

import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from jax.test_util import check_grads

import factorjax.nn as fnn
import factorjax.nnx as fnnx
from factorjax.factorizations import (
    CP,
    FORMATS,
    DeepLowRank,
    Kronecker,
    LowRank,
    TensorRing,
    TTMatrix,
    Tucker,
    leading_mask,
    make_operator,
    mask_ranks,
    nested_dropout_mask,
    operator_from_dense,
    rank_axes,
    resolve_rank,
    tensor_dropout_mask,
)

D_OUT, D_IN = 48, 64


def layer(fmt, rank=4, **kw):
    return fnn.FactorizedLinear(D_IN, D_OUT, fmt, rank, key=jax.random.key(0), **kw)


# --- the dense weight from the factors, written from each format's definition ---------------


def naive_dense(w) -> np.ndarray:
    """``W (d_out, d_in)`` by explicit sums over the factors (NumPy, float64)."""
    f = lambda a: np.asarray(a, np.float64)  # noqa: E731
    if isinstance(w, LowRank):
        return f(w.u) @ f(w.v).T
    if isinstance(w, DeepLowRank):
        out = np.eye(w.in_features)
        for m in w.factors:
            out = f(m) @ out
        return out
    if isinstance(w, Kronecker):
        return sum(np.kron(f(a), f(b)) for a, b in zip(w.a, w.b, strict=True))
    if isinstance(w, TTMatrix):
        o, i = w.out_modes, w.in_modes
        W = np.zeros((math.prod(o), math.prod(i)))
        for row, oi in enumerate(np.ndindex(*o)):
            for col, ii in enumerate(np.ndindex(*i)):
                m = np.ones((1, 1))
                for c, a, b in zip(w.cores, oi, ii, strict=True):
                    m = m @ f(c)[:, a, b, :]
                W[row, col] = m[0, 0]
        return W
    if isinstance(w, CP):
        t = np.zeros([a.shape[0] for a in w.factors])
        for r in range(w.weights.shape[0]):
            comp = f(w.weights)[r]
            for a in w.factors:
                comp = np.multiply.outer(comp, f(a)[:, r])
            t += comp
    elif isinstance(w, Tucker):
        t = f(w.core)
        for k, a in enumerate(w.factors):
            t = np.moveaxis(np.tensordot(f(a), t, axes=(1, k)), 0, k)
    else:  # TensorRing: T[i...] = trace(prod_k G_k[:, i_k, :])
        shape = [c.shape[1] for c in w.cores]
        t = np.zeros(shape)
        for idx in np.ndindex(*shape):
            m = np.eye(w.cores[0].shape[0])
            for c, a in zip(w.cores, idx, strict=True):
                m = m @ f(c)[:, a, :]
            t[idx] = np.trace(m)
    return t.reshape(w.out_features, w.in_features)


@pytest.mark.parametrize("fmt", FORMATS)
def test_linear_matches_dense_reference(fmt, rng):
    lay = layer(fmt, use_bias=True)
    lay = eqx.tree_at(lambda m: m.bias, lay, jnp.asarray(rng.normal(size=D_OUT), jnp.float32))
    W = naive_dense(lay.weight)
    x = rng.normal(size=(7, D_IN)).astype(np.float32)
    want = x @ W.T + np.asarray(lay.bias)
    scale = np.abs(want).max()
    # float32: one rounding per term of sums of length ~d_in (and rank)
    tol = 50 * np.finfo(np.float32).eps * scale * math.sqrt(D_IN)
    np.testing.assert_allclose(lay(x), want, atol=tol)  # batched: planned for B = 7
    np.testing.assert_allclose(jax.vmap(lay)(x), want, atol=tol)  # vmapped: planned for B = 1
    np.testing.assert_allclose(eqx.filter_jit(lay)(x[0]), want[0], atol=tol)
    np.testing.assert_allclose(lay(x.reshape(7, 1, D_IN))[:, 0], want, atol=tol)
    assert lay(x).shape == (7, D_OUT) and lay(x[0]).shape == (D_OUT,)


@pytest.mark.parametrize("fmt", FORMATS)
def test_every_order_agrees(fmt, rng):
    lay = layer(fmt)
    x = rng.normal(size=(5, D_IN)).astype(np.float32)
    ref = np.asarray(x @ naive_dense(lay.weight).T)
    for cand in lay.weight.plan(5).candidates:
        forced = fnn.FactorizedLinear.from_weight(lay.weight, lay.bias, order=cand.name)
        np.testing.assert_allclose(forced(x), ref, atol=1e-4 * np.abs(ref).max())


# every format's gradient compiles its own float64 programs: one in the default run
@pytest.mark.parametrize(
    "fmt", [f if f == "lowrank" else pytest.param(f, marks=pytest.mark.slow) for f in FORMATS]
)
def test_gradients(fmt, x64, rng):
    w = make_operator(fmt, 12, 8, 2, key=jax.random.key(1), dtype=jnp.float64)
    lay = fnn.FactorizedLinear.from_weight(w, jnp.asarray(rng.normal(size=12)))
    x = jnp.asarray(rng.normal(size=(3, 8)))
    params, static = eqx.partition(lay, eqx.is_inexact_array)
    check_grads(
        lambda p: eqx.combine(jax.tree.map(jnp.asarray, p), static)(x),
        (params,),
        order=1,
        modes=("rev",),
    )
    check_grads(lambda x: lay(x), (x,), order=1)


def test_rank_specs():
    # int and tuple: as given
    assert resolve_rank("lowrank", 48, 64, 5) == 5
    assert resolve_rank("tucker", 48, 64, (2, 3, 2, 3)) == (2, 3, 2, 3)
    # "same": lowrank r (d_out + d_in) <= d_out d_in, largest r: floor(48 * 64 / 112) = 27
    assert resolve_rank("lowrank", 48, 64, "same") == 27

    def count(fmt, r):  # the public constructor's parameters, from shapes
        shapes = jax.eval_shape(lambda: make_operator(fmt, 48, 64, r, key=jax.random.key(0)))
        return sum(math.prod(a.shape) for a in jax.tree.leaves(shapes))

    for fmt in FORMATS:
        for frac in (0.1, "same"):
            budget = (1.0 if frac == "same" else frac) * 48 * 64
            r = resolve_rank(fmt, 48, 64, frac)
            n = count(fmt, r)
            assert n <= budget, (fmt, frac, r, n)
            # the next rank is over budget unless the format clips it (then nothing grows)
            bigger = count(fmt, r + 1)
            assert bigger > budget or bigger == n, (fmt, frac, r, n, bigger)


def test_rank_spec_errors():
    with pytest.raises(ValueError, match=r"`rank`.*fraction.*got 1\.5"):
        resolve_rank("cp", 48, 64, 1.5)
    with pytest.raises(ValueError, match=r"`rank`.*got 'half'"):
        layer("cp", "half")
    with pytest.raises(ValueError, match=r"rank-1 'deep_lowrank'.*already holds"):
        resolve_rank("deep_lowrank", 48, 64, 0.001)
    with pytest.raises(ValueError, match=r"`format` must be one of .*'tt'.*got 'svd'"):
        layer("svd")
    with pytest.raises(ValueError, match=r"takes the options.*got `shapes`"):
        layer("cp", shapes=((6, 8), (8, 8)))
    with pytest.raises(ValueError, match=r"in_features"):
        fnn.FactorizedLinear(0, 4, key=jax.random.key(0))
    with pytest.raises(ValueError, match=r"`order` must be one of"):
        layer("tt", order="middle-out")
    with pytest.raises(ValueError, match=r"in_features = 64.*got"):
        layer("tt")(jnp.ones(63))
    with pytest.raises(ValueError, match=r"`rank_dropout`.*\[0, 1\).*got 1\.0"):
        layer("cp", rank_dropout=1.0)
    with pytest.raises(ValueError, match=r"`key` is required for rank dropout"):
        layer("cp", rank_dropout=0.5)(jnp.ones(64))
    with pytest.raises(TypeError, match=r"`weight` must be a matrix factorization"):
        fnn.FactorizedLinear.from_weight(jnp.ones((3, 3)))
    with pytest.raises(ValueError, match=r"`bias` must have shape \(48,\)"):
        fnn.FactorizedLinear.from_weight(layer("cp").weight, jnp.ones(3))


def test_modes_that_do_not_tensorize():
    with pytest.raises(ValueError, match=r"modes"):
        layer("tt", out_modes=(5, 8), in_modes=(8, 8))


@pytest.mark.parametrize("fmt", FORMATS)
def test_rank_masks_equal_truncated_sums(fmt, rng):
    """Masking the first r components of every rank axis is the factorization with only those
    components, built here by slicing the factors (the definition), for every format."""
    w = make_operator(fmt, D_OUT, D_IN, 4, key=jax.random.key(2))
    sizes = rank_axes(w)
    r = 2
    masked = mask_ranks(w, [leading_mask(n, r) for n in sizes])
    if isinstance(w, LowRank):
        sliced = LowRank(w.u[:, :r], w.v[:, :r])
    elif isinstance(w, DeepLowRank):
        f = w.factors
        sliced = DeepLowRank((f[0][:r], *(m[:r, :r] for m in f[1:-1]), f[-1][:, :r]))
    elif isinstance(w, TTMatrix):
        c = w.cores
        sliced = TTMatrix(
            tuple(
                g[: (r if k else 1), ..., : (r if k < len(c) - 1 else 1)] for k, g in enumerate(c)
            )
        )
    elif isinstance(w, TensorRing):
        sliced = TensorRing(tuple(g[:r, :, :r] for g in w.cores), w.n_out)
    elif isinstance(w, CP):
        sliced = CP(w.weights[:r], tuple(a[:, :r] for a in w.factors), w.n_out)
    elif isinstance(w, Tucker):
        core = w.core[tuple(slice(0, r) for _ in sizes)]
        sliced = Tucker(core, tuple(a[:, :r] for a in w.factors), w.n_out)
    else:
        sliced = Kronecker(w.a[:r], w.b[:r])
    np.testing.assert_allclose(naive_dense(masked), naive_dense(sliced), atol=1e-5)
    assert jax.tree.map(jnp.shape, masked) == jax.tree.map(jnp.shape, w)
    # the layer's `rank=` argument is the same mask, and a traced rank vmaps
    lay = fnn.FactorizedLinear.from_weight(w)
    x = rng.normal(size=(3, D_IN)).astype(np.float32)
    want = x @ naive_dense(sliced).T
    np.testing.assert_allclose(lay(x, rank=r), want, atol=1e-4 * np.abs(want).max())
    ys = jax.vmap(lambda r: lay(x, rank=r))(jnp.arange(1, 4))
    np.testing.assert_allclose(ys[1], want, atol=1e-4 * np.abs(want).max())


def test_rank_sweep_compiles_once():
    lay = layer("tt", 6)
    traces = []

    @eqx.filter_jit
    def f(lay, r):
        traces.append(r)
        return lay(jnp.ones(D_IN), rank=r)

    for r in (1, 3, 6):
        f(lay, jnp.asarray(r))
    assert len(traces) == 1


def test_dropout_masks_statistics():
    n, draws = 16, 4000
    keys = jax.random.split(jax.random.key(0), draws)
    t = jax.vmap(lambda k: tensor_dropout_mask(k, n, 0.25))(keys)
    # each entry is 0 or 1 / 0.75, kept with probability 0.75: mean 1, binomial error
    t_np = np.asarray(t)
    assert np.all(np.isclose(t_np, 0.0) | np.isclose(t_np, 1 / 0.75, rtol=1e-6))
    se = math.sqrt(0.25 / 0.75 / draws)  # std of the mean of (keep / 0.75)
    assert abs(float(t.mean()) - 1.0) < 5 * se / math.sqrt(n)
    m = np.asarray(jax.vmap(lambda k: nested_dropout_mask(k, n, 0.3))(keys))
    # a prefix of ones: kept counts b with P(b >= j + 1) = 0.7^j, truncated at n
    assert np.all(np.diff(m, axis=1) <= 0) and np.all(m[:, 0] == 1)
    b = m.sum(axis=1)
    for j in (1, 2, 4):
        p = 0.7**j
        assert abs(np.mean(b >= j + 1) - p) < 5 * math.sqrt(p * (1 - p) / draws)
    assert np.all(np.asarray(nested_dropout_mask(keys[0], n, 0.0)) == 1)
    with pytest.raises(ValueError, match=r"`rate` must be in \[0, 1\)"):
        tensor_dropout_mask(keys[0], n, 1.0)


def test_rank_dropout_in_layer():
    lay = layer("cp", 8, rank_dropout=0.5)
    x = jnp.ones(D_IN)
    y1, y2 = lay(x, key=jax.random.key(1)), lay(x, key=jax.random.key(2))
    assert not np.allclose(y1, y2)
    # inference mode: no dropout, no key needed, equals the undropped layer
    inf = eqx.nn.inference_mode(lay)
    np.testing.assert_allclose(inf(x), layer("cp", 8)(x), rtol=1e-6)
    # the mean over draws approaches the undropped output (tensor dropout rescales)
    ys = jax.vmap(lambda k: lay(x, key=k))(jax.random.split(jax.random.key(3), 3000))
    full = np.asarray(inf(x))
    err = np.abs(np.asarray(ys.mean(0)) - full).max() / np.abs(full).max()
    assert err < 0.15


@pytest.mark.parametrize("fmt", FORMATS)
def test_nnx_parity(fmt, rng):
    e = layer(fmt, 4)
    e = eqx.tree_at(lambda m: m.bias, e, jnp.asarray(rng.normal(size=D_OUT), jnp.float32))
    n = fnnx.FactorizedLinear.from_weight(e.weight, e.bias)
    x = rng.normal(size=(5, D_IN)).astype(np.float32)
    np.testing.assert_array_equal(n(x), e(x))
    np.testing.assert_array_equal(n(x, rank=2), e(x, rank=2))
    assert jax.tree.map(jnp.shape, n.factorization) == jax.tree.map(jnp.shape, e.weight)
    # the NNX constructor draws the same kinds of factors, with the variance target
    m = fnnx.FactorizedLinear(D_IN, D_OUT, fmt, 4, rngs=nnx.Rngs(0))
    assert type(m.factorization) is type(e.weight) and m(x).shape == (5, D_OUT)
    # every factor is its own nnx.Param, so optimizers see them
    leaves = jax.tree.leaves(nnx.state(m, nnx.Param))
    assert len(leaves) == len(jax.tree.leaves(eqx.filter(e, eqx.is_array))) and sum(
        v.size for v in leaves
    ) == (e.weight.num_params + D_OUT)


def test_nnx_trains_and_dropout():
    m = fnnx.FactorizedLinear(D_IN, D_OUT, "tt", 4, rank_dropout=0.2, rngs=nnx.Rngs(0))
    x = jax.random.normal(jax.random.key(1), (16, D_IN))
    target = jax.random.normal(jax.random.key(2), (16, D_OUT))
    opt = nnx.Optimizer(m, optax.adam(1e-2), wrt=nnx.Param)

    @nnx.jit
    def step(m, opt):
        loss, g = nnx.value_and_grad(lambda m: jnp.mean((m(x) - target) ** 2))(m)
        opt.update(m, g)
        return loss

    losses = [float(step(m, opt)) for _ in range(30)]
    assert losses[-1] < 0.8 * losses[0]
    m.eval()
    y = m(x)
    np.testing.assert_array_equal(y, m(x))  # deterministic after eval()
    m.train()
    assert not np.allclose(m(x), m(x))  # dropout draws from the kept rngs


def test_from_dense_round_trip(rng):
    w = rng.normal(size=(D_OUT, D_IN)).astype(np.float32)
    for fmt, opts in (("lowrank", {}), ("tt", {}), ("tucker", {}), ("kronecker", {})):
        op = operator_from_dense(fmt, w, **opts)  # full rank: exact
        np.testing.assert_allclose(naive_dense(op), w, atol=1e-4 * np.abs(w).max())
    op = operator_from_dense("lowrank", w, 0.25)
    s = np.linalg.svd(w, compute_uv=False)
    r = resolve_rank("lowrank", D_OUT, D_IN, 0.25)
    err = np.linalg.norm(naive_dense(op) - w)
    np.testing.assert_allclose(err, np.sqrt(np.sum(s[r:] ** 2)), rtol=1e-4)
    with pytest.raises(ValueError, match=r"`w` must be a matrix"):
        operator_from_dense("tt", np.ones(4))
    with pytest.raises(ValueError, match=r"`rank` is required for format 'cp'"):
        operator_from_dense("cp", w)
