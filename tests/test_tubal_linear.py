"""TubalLinear (Equinox and NNX): the t-product layer, dense and of low tubal rank."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.test_util import check_grads

import factorjax.nn as fnn
import factorjax.nnx as fnnx
from factorjax.factorizations import TubalLowRank

IN, OUT = 4, 3
EPS32 = np.finfo(np.float32).eps
call = jax.jit(lambda layer, x: layer(x))


# --- references written from the definitions -------------------------------------------------


def circconv(a, b):
    """``c[t] = sum_s a[s] b[(t - s) mod k]``."""
    k = len(a)
    return np.array([sum(a[s] * b[(t - s) % k] for s in range(k)) for t in range(k)])


def naive_layer(W, b, x):
    """``y[i] = sum_j circconv(W[i, j], x[j]) + b[i]`` for one input ``x (in, k)``."""
    W, x = np.asarray(W, np.float64), np.asarray(x, np.float64)
    y = np.zeros((W.shape[0], W.shape[2]))
    for i in range(W.shape[0]):
        for j in range(W.shape[1]):
            y[i] += circconv(W[i, j], x[j])
    return y if b is None else y + np.asarray(b, np.float64)


def naive_reconstruct(u, v):
    """``W = U * V^T``: ``V^T[r, j, t] = V[j, r, -t mod k]`` (the t-transpose), then
    ``W[i, j] = sum_r circconv(U[i, r], V^T[r, j])``."""
    u, v = np.asarray(u, np.float64), np.asarray(v, np.float64)
    (n1, R, k), n2 = u.shape, v.shape[0]
    vt = np.zeros((R, n2, k))
    for r in range(R):
        for j in range(n2):
            for t in range(k):
                vt[r, j, t] = v[j, r, (-t) % k]
    W = np.zeros((n1, n2, k))
    for i in range(n1):
        for j in range(n2):
            W[i, j] = sum(circconv(u[i, r], vt[r, j]) for r in range(R))
    return W


def tprod_bound(W, x, steps):
    """Rounding bound of a t-product through the Fourier domain, per output tube ``(out, 1)``:
    every spectral coefficient of ``W[i, j]`` is at most ``||W[i, j]||_1``, of ``x[j]`` at
    most ``||x[j]||_1``, and each of the ``steps`` roundings along the way (DFT sums of ``k``
    terms, the sum over ``in``, the inverse DFT) errs by ``eps`` relative to
    ``S_i = sum_j ||W[i, j]||_1 ||x[j]||_1``."""
    S = np.abs(np.asarray(W, np.float64)).sum(-1) @ np.abs(np.asarray(x, np.float64)).sum(-1)
    return steps * EPS32 * S[:, None]


def random_layer(k, rank, rng, use_bias=True):
    layer = fnn.TubalLinear(IN, OUT, k, rank, use_bias=use_bias, key=jax.random.key(k))
    if use_bias:
        bias = jnp.asarray(rng.normal(size=(OUT, k)), jnp.float32)
        layer = fnn.TubalLinear.from_weight(layer.weight, bias)
    return layer


# --- outputs ---------------------------------------------------------------------------------


@pytest.mark.parametrize("k", [1, 4, 5])
def test_dense_matches_circular_convolution(k, rng):
    layer = random_layer(k, None, rng)
    assert layer.weight.shape == (OUT, IN, k) and layer.rank is None
    W, b = np.asarray(layer.weight), np.asarray(layer.bias)
    x = rng.normal(size=(2, IN, k)).astype(np.float32)
    for got in (layer(x), call(layer, x), jax.vmap(layer)(x), [layer(xi) for xi in x]):
        for g, xi in zip(got, x, strict=True):
            want = naive_layer(W, b, xi)
            assert np.all(np.abs(np.asarray(g) - want) <= tprod_bound(W, xi, 2 * k + IN + 2))
    assert layer(x[0]).shape == (OUT, k) and layer(x).shape == (2, OUT, k)


@pytest.mark.parametrize("k", [4, 5])
def test_low_rank_matches_the_dense_reconstruction(k, rng):
    """The factored path ``U * (V^T * x)`` equals the t-product with ``W = U * V^T`` built by
    explicit circular convolutions, and the dense layer holding that ``W``."""
    layer = random_layer(k, 2, rng)
    assert isinstance(layer.weight, TubalLowRank) and layer.rank == 2
    W, b = naive_reconstruct(layer.weight.u, layer.weight.v), np.asarray(layer.bias)
    x = rng.normal(size=(3, IN, k)).astype(np.float32)
    dense = fnn.TubalLinear.from_weight(jnp.asarray(W, jnp.float32), layer.bias)
    # two t-products: W's abs-sum bounds the terms through U and V^T
    Wabs = naive_reconstruct(np.abs(layer.weight.u), np.abs(layer.weight.v))
    for xi, got, via_dense in zip(x, layer(x), dense(x), strict=True):
        want = naive_layer(W, b, xi)
        bound = tprod_bound(Wabs, xi, 4 * k + IN + 2 + 4)
        assert np.all(np.abs(np.asarray(got) - want) <= bound)
        assert np.all(np.abs(np.asarray(via_dense) - want) <= bound)


@pytest.mark.parametrize("rank", [None, pytest.param(2, marks=pytest.mark.slow)])
def test_batched_equals_vmapped(rank, rng):
    layer = random_layer(5, rank, rng)
    x = rng.normal(size=(2, 3, IN, 5)).astype(np.float32)
    batched = np.asarray(layer(x))
    vmapped = np.asarray(jax.vmap(jax.vmap(layer))(x))
    looped = np.stack([np.stack([np.asarray(layer(xb)) for xb in xa]) for xa in x])
    assert batched.shape == (2, 3, OUT, 5)
    # the same sums batched differently: each side within the t-product bound of the exact
    # value, so within twice it of each other
    Wabs = np.abs(naive_reconstruct_or_dense(layer))
    tol = max(tprod_bound(Wabs, xi, 2 * (4 * 5 + IN + 6)).max() for xi in x.reshape(-1, IN, 5))
    np.testing.assert_allclose(batched, looped, rtol=0, atol=tol)
    np.testing.assert_allclose(vmapped, looped, rtol=0, atol=tol)
    # no bias: W * x alone
    layer = fnn.TubalLinear(IN, OUT, 5, rank, use_bias=False, key=jax.random.key(0))
    assert layer.bias is None
    W = naive_reconstruct_or_dense(layer)
    want = naive_layer(W, None, x[0, 0])
    bound = tprod_bound(np.abs(W), x[0, 0], 4 * 5 + IN + 6)
    assert np.all(np.abs(np.asarray(layer(x[0, 0])) - want) <= bound)


def naive_reconstruct_or_dense(layer):
    if isinstance(layer.weight, TubalLowRank):
        return naive_reconstruct(layer.weight.u, layer.weight.v)
    return np.asarray(layer.weight, np.float64)


@pytest.mark.parametrize("rank", [None, 2])
def test_check_grads(rank, x64, rng):
    """Forward and reverse derivatives w.r.t. the weight (or its factors), the bias and the
    input, against finite differences (float64)."""
    layer = fnn.TubalLinear(IN, OUT, 4, rank, dtype=jnp.float64, key=jax.random.key(1))
    layer = fnn.TubalLinear.from_weight(layer.weight, jnp.asarray(rng.normal(size=(OUT, 4))))
    x = jnp.asarray(rng.normal(size=(2, IN, 4)))
    c = jnp.asarray(rng.normal(size=(2, OUT, 4)))
    f = jax.jit(lambda lay, x: jnp.sum(c * lay(x)))
    check_grads(f, (layer, x), order=1, modes=("fwd", "rev"))


# --- init ------------------------------------------------------------------------------------


@pytest.mark.parametrize(("rank", "init"), [(None, "glorot"), (3, "glorot"), (None, "lecun")])
@pytest.mark.slow  # statistics over many random draws
def test_init_gives_outputs_of_the_derived_variance(rank, init):
    """Fans ``in k`` and ``out k``: for inputs of unit variance, ``Var(y) = in k Var(W)`` is
    ``2 in / (in + out)`` under Glorot and 1 under LeCun, whatever ``k`` (fans without ``k``
    would give ``k`` times that). Checked over 48 draws of weights and inputs, within 5
    standard errors of the draws."""
    n_in, n_out, k = 12, 6, 4
    want = 2 * n_in / (n_in + n_out) if init == "glorot" else 1.0

    def second_moment(key):
        kw, kx = jax.random.split(key)
        layer = fnn.TubalLinear(n_in, n_out, k, rank, init=init, key=kw)
        return jnp.mean(layer(jax.random.normal(kx, (32, n_in, k))) ** 2)

    m = np.asarray(jax.vmap(second_moment)(jax.random.split(jax.random.key(7), 48)), np.float64)
    se = m.std(ddof=1) / math.sqrt(len(m))
    assert abs(m.mean() - want) < 5 * se, (m.mean(), want, se)
    assert abs(m.mean() - want * k) > 5 * se  # the k-less fans are told apart


# --- NNX -------------------------------------------------------------------------------------


@pytest.mark.parametrize("rank", [None, pytest.param(2, marks=pytest.mark.slow)])
def test_parity_eqx_nnx(rank, rng):
    """The NNX layer built from ``rngs=nnx.Rngs(0)`` holds the weight of the Equinox layer
    built from the key ``nnx.Rngs(0).params()``, as Params, and gives the same outputs and
    gradients."""
    e = fnn.TubalLinear(IN, OUT, 5, rank, key=nnx.Rngs(0).params())
    n = fnnx.TubalLinear(IN, OUT, 5, rank, rngs=nnx.Rngs(0))
    for a, b in zip(jax.tree.leaves(e), jax.tree.leaves(n.factorization), strict=False):
        np.testing.assert_array_equal(a, b)
    assert (n.in_features, n.out_features, n.tube_size, n.rank) == (IN, OUT, 5, rank)
    x = rng.normal(size=(2, IN, 5)).astype(np.float32)
    np.testing.assert_array_equal(n(x), e(x))
    np.testing.assert_array_equal(nnx.jit(lambda m, x: m(x))(n, x), e(x))
    e = fnn.TubalLinear.from_weight(e.weight, jnp.asarray(rng.normal(size=(OUT, 5)), jnp.float32))
    n = fnnx.TubalLinear.from_weight(e.weight, e.bias)
    np.testing.assert_array_equal(n(x), e(x))
    graph, _ = nnx.split(n)
    g_n = nnx.merge(graph, nnx.grad(lambda m: jnp.sum(m(x) ** 2))(n))
    g_e = jax.grad(lambda m: jnp.sum(m(x) ** 2))(e)
    g_n = (g_n.factorization, g_n.bias[...])
    assert jax.tree.structure(g_n) == jax.tree.structure((g_e.weight, g_e.bias))
    for a, b in zip(jax.tree.leaves(g_n), jax.tree.leaves((g_e.weight, g_e.bias)), strict=True):
        np.testing.assert_array_equal(a, b)


# --- bad input -------------------------------------------------------------------------------


def test_bad_input():
    key = jax.random.key(0)
    layer = fnn.TubalLinear(IN, OUT, 5, key=key)
    for bad in (jnp.ones((IN, 4)), jnp.ones((IN + 1, 5)), jnp.ones((2, IN, 6)), jnp.ones(5)):
        with pytest.raises(ValueError, match=r"`x` must be \(in_features, tube_size\) = \(4, 5\)"):
            layer(bad)
    with pytest.raises(TypeError, match="`x` must be real"):
        layer(jnp.ones((IN, 5), jnp.complex64))
    with pytest.raises(ValueError, match=r"`x` must be \(in_features, tube_size\)"):
        fnnx.TubalLinear(IN, OUT, 5, rngs=nnx.Rngs(0))(jnp.ones((IN, 4)))
    with pytest.raises(ValueError, match=r"`rank` must be an int in \[1, 3\]; got 4"):
        fnn.TubalLinear(IN, OUT, 5, 4, key=key)
    with pytest.raises(ValueError, match=r"`rank` must be an int in \[1, 3\]; got 0"):
        fnn.TubalLinear(IN, OUT, 5, 0, key=key)
    with pytest.raises(TypeError, match="`rank` must be a Python int"):
        fnn.TubalLinear(IN, OUT, 5, 2.0, key=key)
    with pytest.raises(ValueError, match="`tube_size` must be an int >= 1; got 0"):
        fnn.TubalLinear(IN, OUT, 0, key=key)
    with pytest.raises(TypeError, match="`in_features` must be a Python int"):
        fnn.TubalLinear(4.0, OUT, 5, key=key)
    with pytest.raises(ValueError, match="init='small' scales the factors"):
        fnn.TubalLinear(IN, OUT, 5, init="small", alpha=0.1, key=key)
    with pytest.raises(ValueError, match="`init` must be one of"):
        fnn.TubalLinear(IN, OUT, 5, init="xavier", key=key)
    with pytest.raises(ValueError, match=r"`bias` must have shape \(out_features, k\) = \(3, 5\)"):
        fnn.TubalLinear.from_weight(layer.weight, jnp.ones(OUT))
    with pytest.raises(ValueError, match=r"`weight` must be a tensor \(out_features, in_f"):
        fnn.TubalLinear.from_weight(jnp.ones((OUT, IN)))
    small = fnn.TubalLinear(IN, OUT, 5, 2, init="small", alpha=0.1, key=key)  # low rank: fine
    assert float(jnp.abs(small.weight.u).max()) < 1.0
