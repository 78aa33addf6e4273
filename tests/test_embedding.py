"""FactorizedEmbedding (Equinox and NNX) and the row lookup of every matrix format."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.test_util import check_grads

import factorjax.nn as fnn
import factorjax.nnx as fnnx
from factorjax.factorizations import (
    CP,
    DeepLowRank,
    Kronecker,
    LowRank,
    TensorRing,
    TTMatrix,
    Tucker,
    make_operator,
)
from factorjax.factorizations._lookup import lookup

N_EMB, D = 24, 12

# (format, rank, options): every format, with default and explicit tensorizations (one or
# several out modes, one or several in modes).
CASES = [
    ("lowrank", 3, {}),
    ("deep_lowrank", 3, {"depth": 3}),
    ("tt", 3, {}),
    ("tt", 2, {"out_modes": (4, 3, 2), "in_modes": (2, 2, 3)}),
    ("cp", 4, {}),
    ("cp", 3, {"out_modes": (24,), "in_modes": (3, 2, 2)}),
    ("tucker", 2, {}),
    ("tucker", 2, {"out_modes": (2, 3, 4), "in_modes": (12,)}),
    ("tensor_ring", 2, {}),
    ("tensor_ring", 2, {"out_modes": (2, 3, 4), "in_modes": (3, 4)}),
    ("kronecker", 2, {}),
    ("kronecker", 2, {"shapes": ((6, 3), (4, 4))}),
]
IDS = [f"{f}-{'-'.join(map(str, o.values())) or 'default'}" for f, _, o in CASES]


call = jax.jit(lambda layer, x: layer(x))


def embedding(fmt, rank, options, n=N_EMB, d=D, **kw):
    return fnn.FactorizedEmbedding(n, d, fmt, rank, key=jax.random.key(0), **options, **kw)


# --- the table from the factors, entry by entry from each format's definition ----------------


def naive_table(w, absolute=False) -> np.ndarray:
    """``W (d_out, d_in)`` entry by entry, by explicit sums over the factors (float64). With
    ``absolute``, every factor is replaced by its absolute value: each entry is then the sum
    of the absolute values of the terms that make it, the scale of its rounding error."""

    def f(a):
        a = np.asarray(a, np.float64)
        return np.abs(a) if absolute else a

    if isinstance(w, LowRank):
        u, v = f(w.u), f(w.v)
        return np.array([[sum(u[o, r] * v[i, r] for r in range(w.rank)) for i in range(D)]
                         for o in range(N_EMB)])  # fmt: skip
    if isinstance(w, DeepLowRank):
        out = np.eye(w.in_features)
        for m in w.factors:
            out = f(m) @ out
        return out
    if isinstance(w, Kronecker):
        return sum(np.kron(f(a), f(b)) for a, b in zip(w.a, w.b, strict=True))
    W = np.zeros((w.out_features, w.in_features))
    out_modes, in_modes = w.out_modes, w.in_modes
    for row, oi in enumerate(np.ndindex(*out_modes)):
        for col, ii in enumerate(np.ndindex(*in_modes)):
            t = oi + ii  # the row-major multi-index of the tensorized entry
            if isinstance(w, TTMatrix):
                m = np.ones((1, 1))
                for c, a, b in zip(w.cores, oi, ii, strict=True):
                    m = m @ f(c)[:, a, b, :]
                W[row, col] = m[0, 0]
            elif isinstance(w, CP):
                W[row, col] = sum(
                    f(w.weights)[r]
                    * math.prod(f(a)[tk, r] for a, tk in zip(w.factors, t, strict=True))
                    for r in range(w.rank)
                )
            elif isinstance(w, Tucker):
                g = f(w.core)
                for a, tk in zip(w.factors, t, strict=True):  # contract the leading core axis
                    g = np.tensordot(f(a)[tk], g, axes=(0, 0))
                W[row, col] = g
            else:  # TensorRing: trace(prod_k G_k[:, t_k, :])
                m = np.eye(w.cores[0].shape[0])
                for c, tk in zip(w.cores, t, strict=True):
                    m = m @ f(c)[:, tk, :]
                W[row, col] = np.trace(m)
    return W


def roundings(w) -> int:
    """``m + q`` for entries that sum ``m`` products of ``q`` factors: float32 arithmetic in any
    order errs by at most ``(m + q) eps`` times the sum of the absolute terms."""
    if isinstance(w, LowRank | Kronecker):
        return w.rank + 2
    if isinstance(w, DeepLowRank):
        return math.prod(w.widths) + w.depth
    if isinstance(w, TTMatrix):
        return math.prod(w.ranks) + len(w.cores)
    if isinstance(w, CP):
        return w.rank + len(w.factors) + 1
    if isinstance(w, Tucker):
        return math.prod(w.ranks) + len(w.factors) + 1
    return math.prod(c.shape[0] for c in w.cores) + len(w.cores)


def assert_rows(got, want, bound):
    got = np.asarray(got, np.float64)
    assert got.shape == want.shape
    assert np.all(np.abs(got - want) <= bound), np.abs(got - want).max()


# --- lookups ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("fmt", "rank", "options"), CASES, ids=IDS)
def test_lookup_matches_naive_rows(fmt, rank, options):
    emb = embedding(fmt, rank, options)
    w = emb.weight
    W = naive_table(w)
    bound = roundings(w) * np.finfo(np.float32).eps * naive_table(w, absolute=True)
    assert emb.format == fmt and (emb.num_embeddings, emb.embedding_size) == (N_EMB, D)
    # one index: a Python int, a NumPy int, a JAX int, negative ones
    for i in (0, 5, N_EMB - 1, np.int32(7), jnp.asarray(11), -1, -N_EMB):
        assert_rows(emb(i), W[int(i)], bound[int(i)])
    # arrays of any shape, every row, negative ones and repeats; jitted and vmapped
    idx = np.concatenate([np.arange(N_EMB - 4), [-1, -2, 5, 5]]).reshape(4, 6)
    assert_rows(emb(idx), W[idx], bound[idx])
    assert_rows(
        emb(idx.reshape(2, 3, 4, 1)),
        W[idx].reshape(2, 3, 4, 1, D),
        bound[idx].reshape(2, 3, 4, 1, D),
    )
    assert_rows(call(emb, jnp.asarray(idx)), W[idx], bound[idx])
    assert_rows(jax.vmap(emb)(jnp.asarray(idx[0])), W[idx[0]], bound[idx[0]])
    assert_rows(emb(np.zeros((0, 3), np.int32)), np.zeros((0, 3, D)), 0.0)


def test_traced_indices_out_of_range_are_clamped_as_jax_indexing():
    """Under jit an index is not read back: out of range, it is wrapped once and clamped, the
    rule of ``table[idx]`` in JAX, so every format agrees with the dense lookup."""
    for fmt, rank, options in CASES[2:4] + CASES[-1:]:
        emb = embedding(fmt, rank, options)
        table = jnp.asarray(naive_table(emb.weight), jnp.float32)
        idx = jnp.asarray([N_EMB, 100, -N_EMB - 1, -100, 3])
        want = np.asarray(table[idx])
        np.testing.assert_allclose(call(emb, idx), want, atol=1e-5 * np.abs(want).max())


@pytest.mark.parametrize(("fmt", "rank", "options"), CASES[::2], ids=IDS[::2])
def test_gradients_are_the_dense_lookups_mapped_back(fmt, rank, options, x64, rng):
    """The gradient of a loss of looked-up rows w.r.t. the factors is the gradient of the same
    loss on the dense table, ``G = dL/dW`` (rows scattered by an explicit loop), mapped back to
    the factors by the reconstruction's VJP (float64)."""
    w = make_operator(fmt, N_EMB, D, rank, key=jax.random.key(1), dtype=jnp.float64, **options)
    idx = np.array([3, 7, 3, -1, 20])
    c = rng.normal(size=(len(idx), D))
    G = np.zeros((N_EMB, D))
    for n, i in enumerate(idx):
        G[i] += c[n]

    @jax.jit  # one program for both sides
    def grads(w):
        _, vjp = jax.vjp(lambda w: w.to_matrix(), w)
        return jax.grad(lambda w: jnp.sum(c * lookup(w, idx)))(w), vjp(jnp.asarray(G))[0]

    got, want = grads(w)
    for g, h in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        np.testing.assert_allclose(g, h, rtol=1e-12, atol=1e-12 * np.abs(h).max())


@pytest.mark.parametrize("fmt", ["tt"])
def test_check_grads(fmt, x64, rng):
    """Forward and reverse derivatives of the layer w.r.t. its factors against finite
    differences (float64)."""
    emb = fnn.FactorizedEmbedding(12, 6, fmt, 2, dtype=jnp.float64, key=jax.random.key(3))
    idx = jnp.asarray([[1, 11], [1, -4]])
    c = jnp.asarray(rng.normal(size=(2, 2, 6)))
    check_grads(jax.jit(lambda e: jnp.sum(c * e(idx))), (emb,), order=1, modes=("fwd", "rev"))


# --- init, constructors, NNX -----------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["tt"])
def test_default_init_gives_unit_variance_entries(fmt):
    """The default init targets entries of variance 1, as ``eqx.nn.Embedding``'s N(0, 1):
    the mean of ``W^2`` over 32 draws is 1 within 5 standard errors of the draws. (Each
    format's variance targeting is tested with the format; this checks what the layer asks.)"""
    keys = jax.random.split(jax.random.key(2), 32)

    def second_moment(key):
        emb = fnn.FactorizedEmbedding(64, 48, fmt, 4, key=key)
        return jnp.mean(emb.weight.to_matrix() ** 2)

    m = np.asarray(jax.vmap(second_moment)(keys), np.float64)
    se = m.std(ddof=1) / math.sqrt(len(m))
    assert abs(m.mean() - 1.0) < 5 * se, (m.mean(), se)
    # std= and the fan schemes target the same table
    w = fnn.FactorizedEmbedding(64, 48, "lowrank", 48, std=3.0, key=keys[0]).weight.to_matrix()
    assert 2.0 < float(jnp.std(w)) < 4.0
    w = fnn.FactorizedEmbedding(64, 48, "lowrank", 48, init="lecun", key=keys[0]).weight
    assert float(jnp.std(w.to_matrix())) < 0.5


def test_from_dense_and_from_weight(rng):
    table = rng.normal(size=(N_EMB, D)).astype(np.float32)
    idx = np.array([[1, 2], [23, 0]])
    tol = 1e-5 * np.abs(table).max()
    for fmt in ("lowrank", "tt"):  # exact at their default rank
        emb = fnn.FactorizedEmbedding.from_dense(table, fmt)
        assert emb.format == fmt and (emb.num_embeddings, emb.embedding_size) == (N_EMB, D)
        np.testing.assert_allclose(emb(idx), table[idx], atol=tol * 10)
    emb = fnn.FactorizedEmbedding.from_dense(table, "tt", 2, tensor_order=2)
    assert len(emb.weight.cores) == 2 and emb.weight.rank == 2
    emb = fnn.FactorizedEmbedding.from_dense(table, "lowrank", 0.5)  # a fraction of params
    assert emb.weight.num_params <= 0.5 * N_EMB * D
    w = LowRank.from_dense(table, 4)
    emb = fnn.FactorizedEmbedding.from_weight(w)
    assert emb.format == "lowrank" and emb.weight is w
    np.testing.assert_allclose(emb(idx), np.asarray(w.to_matrix())[idx], atol=tol)
    emb = fnn.FactorizedEmbedding(N_EMB, D, "tt", 2, tensor_order=2, key=jax.random.key(0))
    assert len(emb.weight.cores) == 2


PARITY = [CASES[i] for i in (2, 4, 8)]


@pytest.mark.parametrize(("fmt", "rank", "options"), PARITY, ids=[IDS[i] for i in (2, 4, 8)])
def test_parity_eqx_nnx(fmt, rank, options):
    """The NNX layer built from ``rngs=nnx.Rngs(0)`` holds the factors of the Equinox layer
    built from the key ``nnx.Rngs(0).params()``, as Params, and gives the same rows."""
    e = fnn.FactorizedEmbedding(N_EMB, D, fmt, rank, key=nnx.Rngs(0).params(), **options)
    n = fnnx.FactorizedEmbedding(N_EMB, D, fmt, rank, rngs=nnx.Rngs(0), **options)
    for a, b in zip(jax.tree.leaves(e.weight), jax.tree.leaves(n.factorization), strict=True):
        np.testing.assert_array_equal(a, b)
    params = nnx.state(n, nnx.Param)
    assert sum(p.size for p in jax.tree.leaves(params)) == e.weight.num_params
    assert (n.num_embeddings, n.embedding_size, n.format) == (N_EMB, D, fmt)
    idx = np.array([[0, 5], [23, -3]])
    np.testing.assert_array_equal(n(idx), e(idx))
    np.testing.assert_array_equal(nnx.jit(lambda m, i: m(i))(n, jnp.asarray(idx)), e(idx))
    np.testing.assert_array_equal(fnnx.FactorizedEmbedding.from_weight(e.weight)(idx), e(idx))
    # gradients w.r.t. the Params are those w.r.t. the Equinox layer's factors
    graph, _ = nnx.split(n)
    g_n = nnx.merge(graph, nnx.grad(lambda m: jnp.sum(m(idx) ** 2))(n)).factorization
    g_e = jax.grad(lambda w: jnp.sum(lookup(w, idx) ** 2))(e.weight)
    assert jax.tree.structure(g_n) == jax.tree.structure(g_e)
    for a, b in zip(jax.tree.leaves(g_n), jax.tree.leaves(g_e), strict=True):
        np.testing.assert_array_equal(a, b)


def test_nnx_from_dense(rng):
    table = rng.normal(size=(N_EMB, D)).astype(np.float32)
    e = fnn.FactorizedEmbedding.from_dense(table, "tt", 3)
    n = fnnx.FactorizedEmbedding.from_dense(table, "tt", 3)
    np.testing.assert_array_equal(n(np.arange(N_EMB)), e(np.arange(N_EMB)))


def test_bad_input():
    emb = embedding("tt", 2, {})
    for bad in (1.0, np.array([1.5, 2.0]), jnp.ones(3), True, np.array([True]), "3", None):
        with pytest.raises(TypeError, match=r"`x` must be an integer index or an integer array"):
            emb(bad)
    with pytest.raises(TypeError, match="got an array of shape \\(3,\\) and dtype float32"):
        emb(jnp.ones(3))
    for bad in (N_EMB, -N_EMB - 1, np.array([0, 30])):
        with pytest.raises(ValueError, match=rf"`x` must hold indices in \[-{N_EMB}, {N_EMB}\)"):
            emb(bad)
    with pytest.raises(ValueError, match=r"`format` must be one of 'lowrank', .*; got 'svd'"):
        fnn.FactorizedEmbedding(N_EMB, D, "svd", 2, key=jax.random.key(0))
    with pytest.raises(ValueError, match=r"`rank` 0.001 asks for at most 0 parameters"):
        fnn.FactorizedEmbedding(N_EMB, D, "tt", 0.001, key=jax.random.key(0))
    with pytest.raises(ValueError, match=r"`rank` must be an int, a tuple .* got 'full'"):
        fnn.FactorizedEmbedding(N_EMB, D, "lowrank", "full", key=jax.random.key(0))
    with pytest.raises(ValueError, match="`rank` must be an int, a tuple"):
        fnn.FactorizedEmbedding(N_EMB, D, "lowrank", 1.5, key=jax.random.key(0))
    with pytest.raises(ValueError, match=r"`num_embeddings` must be an int >= 1; got 0"):
        fnn.FactorizedEmbedding(0, D, key=jax.random.key(0))
    with pytest.raises(TypeError, match=r"`embedding_size` must be a Python int"):
        fnn.FactorizedEmbedding(N_EMB, 12.0, key=jax.random.key(0))
    with pytest.raises(ValueError, match="format 'lowrank' takes the options"):
        fnn.FactorizedEmbedding(N_EMB, D, "lowrank", 2, depth=3, key=jax.random.key(0))
    with pytest.raises(ValueError, match="at most one of `order` and `tensor_order`"):
        fnn.FactorizedEmbedding(N_EMB, D, "tt", 2, order=2, tensor_order=2, key=jax.random.key(0))
    with pytest.raises(ValueError, match="`std` is only used with init='std'"):
        fnn.FactorizedEmbedding(N_EMB, D, "tt", 2, init="glorot", std=1.0, key=jax.random.key(0))
    with pytest.raises(TypeError, match="`weight` must be a matrix factorization"):
        fnn.FactorizedEmbedding.from_weight(jnp.ones((N_EMB, D)))
    with pytest.raises(TypeError, match="`weight` must be a matrix factorization"):
        lookup(jnp.ones((N_EMB, D)), 0)
    with pytest.raises(ValueError, match="plain tensor"):  # a ring without a matrix view
        ring = TensorRing.init_matrix(N_EMB, D, 2, key=jax.random.key(0)).with_n_out(None)
        lookup(ring, 0)
    with pytest.raises(TypeError, match="`x` must be an integer index"):
        fnnx.FactorizedEmbedding(N_EMB, D, "tt", 2, rngs=nnx.Rngs(0))(0.0)
