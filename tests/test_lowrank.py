"""Tests of `LowRank` and `DeepLowRank` against NumPy references written from the definitions.

References (float64 NumPy on the float32 values the module sees, never the module itself):
the best rank-r approximation from ``np.linalg.svd`` (Eckart-Young), a brute-force search over
``r`` of the relative Frobenius error for ``rtol``, the left-to-right product of the factors,
and ``W @ x`` with ``W`` built from the factors in NumPy.

Tolerances (float32, ``eps = 2^-23``):

- a product of matrices with inner dimensions ``h_1, h_2, ...`` (any parenthesisation) is within
  ``(h_1 + h_2 + ...) eps (|W_N| ... |W_1|)`` entrywise of the exact one (Higham, 3.5);
- an SVD (or a QR followed by a small SVD) is backward stable with ``||E||_2 <= c eps ||W||_2``,
  ``c = max(m, n)`` for the SVD of a dense ``m x n`` matrix and ``c = max(m, n) r`` for the QRs of
  ``r``-column factors (Householder QR, Higham 19.4); its rank-r truncation then moves by at
  most ``||E|| (1 + 2 s_1 / (s_r - s_{r+1}))`` (Wedin), and balanced factors by
  ``c eps s_1`` in ``U^T U`` (loss of orthogonality of the singular vectors).
"""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from factorjax import DeepLowRank, LowRank

EPS32 = float(np.finfo(np.float32).eps)


# ---------------------------------------------------------------------------------------------
# References and bounds
# ---------------------------------------------------------------------------------------------


def f64(x):
    return np.asarray(x, np.float64)


def orth(rng, n, m):
    return np.linalg.qr(rng.standard_normal((n, m)))[0]


def with_spectrum(rng, m, n, s):
    """A float32 ``m x n`` matrix with singular values ``s`` (up to float32 rounding)."""
    s = np.asarray(s, np.float64)
    return ((orth(rng, m, len(s)) * s) @ orth(rng, n, len(s)).T).astype(np.float32)


def svd64(W):
    return np.linalg.svd(f64(W), full_matrices=False)


def best_rank(W, r):
    """Eckart-Young: the best rank-r approximation from NumPy's SVD."""
    U, s, Vh = svd64(W)
    return (U[:, :r] * s[:r]) @ Vh[:r]


def naive_chain(factors):
    """``W_N ... W_1`` multiplied left to right: ``((W_N W_{N-1}) ...) W_1``."""
    out = f64(factors[-1])
    for f in factors[-2::-1]:
        out = out @ f64(f)
    return out


def chain_tol(factors):
    """Entrywise rounding bound of a float32 matrix chain: sum of inner dims * eps * |W|...|W|."""
    inner = sum(f.shape[1] for f in factors[1:])
    return inner * EPS32 * np.max(naive_chain([np.abs(f64(f)) for f in factors]))


def truncation_tol(s, r, backward):
    """Wedin: the rank-r truncation of a matrix with singular values ``s`` moves by at most
    ``backward (1 + 2 s_1 / gap)`` when the matrix moves by ``backward`` in spectral norm."""
    gap = s[r - 1] - s[r] if r < len(s) else np.inf
    return backward * (1 + 2 * s[0] / gap)


def relative_errors(W):
    """Relative Frobenius error of the best rank-r approximation, r = 1 .. min(m, n)."""
    return [
        np.linalg.norm(f64(W) - best_rank(W, r)) / np.linalg.norm(f64(W))
        for r in range(1, min(W.shape) + 1)
    ]


def rtol_cases(errors):
    """(rtol, expected rank) pairs: tolerances strictly between consecutive errors (away from the
    thresholds, where rounding could decide), and the smallest rank meeting each one."""
    errors = np.asarray(errors)
    cases = []
    for rtol in [*((errors[:-1] + errors[1:]) / 2), 1.5 * errors[0]]:
        cases.append((float(rtol), next(r for r, e in enumerate(errors, 1) if e <= rtol)))
    return cases


SPECTRUM = [6.0, 4.0, 2.5, 1.2, 0.4]


def random_lowrank(rng, d_out, d_in, r):
    """A LowRank with standard normal float32 factors drawn by NumPy (the init schemes have their
    own tests in test_init.py; drawing with NumPy keeps this file free of PRNG compilations)."""
    return LowRank(
        jnp.asarray(rng.standard_normal((d_out, r)), jnp.float32),
        jnp.asarray(rng.standard_normal((d_in, r)), jnp.float32),
    )


def random_deep(rng, d_out, d_in, widths, scale=1.0):
    dims = [d_in, *widths, d_out]
    return DeepLowRank(
        tuple(
            jnp.asarray(scale * rng.standard_normal((dims[i + 1], dims[i])), jnp.float32)
            for i in range(len(dims) - 1)
        )
    )


# ---------------------------------------------------------------------------------------------
# LowRank
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("m, n", [(7, 5), (5, 8)])
@pytest.mark.parametrize("r", [1, 2, 5])
def test_lowrank_from_dense_is_best_rank_r(rng, m, n, r):
    W = with_spectrum(rng, m, n, SPECTRUM)
    L = LowRank.from_dense(W, r)
    assert L.shape == (m, n) and L.rank == r
    assert L.u.shape == (m, r) and L.v.shape == (n, r) and L.u.dtype == jnp.float32
    s = svd64(W)[1]
    tol = truncation_tol(s, r, max(m, n) * EPS32 * s[0]) + r * EPS32 * s[0]
    np.testing.assert_allclose(L.to_dense(), best_rank(W, r), rtol=0, atol=tol)
    # balanced: U^T U = V^T V = diag(s_r)
    u, v = f64(L.u), f64(L.v)
    bal = 2 * max(m, n) * EPS32 * s[0]
    np.testing.assert_allclose(u.T @ u, v.T @ v, rtol=0, atol=bal)
    np.testing.assert_allclose(u.T @ u, np.diag(s[:r]), rtol=0, atol=bal)


def test_lowrank_from_dense_default_is_full_rank(rng):
    W = rng.standard_normal((6, 4)).astype(np.float32)
    L = LowRank.from_dense(W)
    assert L.rank == 4
    s = svd64(W)[1]
    np.testing.assert_allclose(L.to_dense(), W, rtol=0, atol=(6 + 4) * EPS32 * s[0])


def test_lowrank_from_dense_rtol_brute_force(rng):
    W = (rng.standard_normal((7, 6)) * np.array([5.0, 3, 2, 1, 0.5, 0.1])).astype(np.float32)
    cases = rtol_cases(relative_errors(W))
    assert {r for _, r in cases} == set(range(1, 7))
    for rtol, expected in cases:
        L = LowRank.from_dense(W, rtol=rtol)
        assert L.rank == expected
        err = np.linalg.norm(f64(L.to_dense()) - W) / np.linalg.norm(f64(W))
        assert err <= rtol


def test_lowrank_truncate_is_best_rank_r_of_dense(rng):
    # unbalanced factors: the product is the same, the result must be balanced anyway
    u = (4.0 * rng.standard_normal((8, 5))).astype(np.float32)
    v = (0.25 * rng.standard_normal((6, 5))).astype(np.float32)
    L = LowRank(jnp.asarray(u), jnp.asarray(v))
    dense = f64(u) @ f64(v).T
    s = svd64(dense)[1]
    backward = 2 * max(8, 6) * 5 * EPS32 * np.linalg.norm(f64(u), 2) * np.linalg.norm(f64(v), 2)
    for r in (1, 2, 3, 5):
        T = L.truncate(r)
        assert T.shape == L.shape and T.rank == r
        tol = truncation_tol(s, r, backward) + r * EPS32 * s[0]
        np.testing.assert_allclose(T.to_dense(), best_rank(dense, r), rtol=0, atol=tol)
        tu, tv = f64(T.u), f64(T.v)
        np.testing.assert_allclose(tu.T @ tu, tv.T @ tv, rtol=0, atol=backward)


def test_lowrank_truncate_overparametrized(rng):
    # rank 7 > min(d_out, d_in) = 4: the QRs of the factors are wide
    L = random_lowrank(rng, 4, 6, 7)
    dense = f64(L.u) @ f64(L.v).T
    s = svd64(dense)[1]
    backward = 2 * 6 * 7 * EPS32 * np.linalg.norm(f64(L.u), 2) * np.linalg.norm(f64(L.v), 2)
    T = L.truncate(2)
    assert T.shape == (4, 6) and T.rank == 2
    tol = truncation_tol(s, 2, backward) + 2 * EPS32 * s[0]
    assert tol < 0.05 * np.max(np.abs(dense))
    np.testing.assert_allclose(T.to_dense(), best_rank(dense, 2), rtol=0, atol=tol)


def test_lowrank_call_equals_dense_matvec(rng):
    L = random_lowrank(rng, 7, 5, 3)
    x = rng.standard_normal(5).astype(np.float32)
    u, v = f64(L.u), f64(L.v)
    ref = (u @ v.T) @ f64(x)
    tol = (5 + 3) * EPS32 * np.max(np.abs(u) @ (np.abs(v).T @ np.abs(f64(x))))
    y = L(x)
    assert y.shape == (7,)
    np.testing.assert_allclose(y, ref, rtol=0, atol=tol)
    np.testing.assert_allclose(jax.jit(L.__call__)(x), ref, rtol=0, atol=tol)
    X = rng.standard_normal((4, 5)).astype(np.float32)
    Y = jax.vmap(L)(X)
    assert Y.shape == (4, 7)
    tolX = (5 + 3) * EPS32 * np.max(np.abs(f64(X)) @ np.abs(v) @ np.abs(u).T)
    np.testing.assert_allclose(Y, f64(X) @ (u @ v.T).T, rtol=0, atol=tolX)
    np.testing.assert_allclose(jax.jit(jax.vmap(L))(X), f64(X) @ (u @ v.T).T, rtol=0, atol=tolX)


def test_lowrank_properties(rng):
    L = random_lowrank(rng, 9, 4, 3)
    assert L.shape == (9, 4) and L.rank == 3
    assert L.num_params == 3 * (9 + 4)
    np.testing.assert_allclose(
        L.to_dense(),
        f64(L.u) @ f64(L.v).T,
        rtol=0,
        atol=3 * EPS32 * np.max(np.abs(f64(L.u)) @ np.abs(f64(L.v)).T),
    )
    # overparametrized: rank above min(d_out, d_in) is allowed
    assert random_lowrank(rng, 3, 2, 5).rank == 5


def test_lowrank_pytree(rng):
    L = random_lowrank(rng, 6, 4, 2)
    leaves = jax.tree.leaves(L)
    assert len(leaves) == 2 and leaves[0] is L.u and leaves[1] is L.v

    @jax.jit
    def apply(module, x):
        return module(x), module.to_dense()

    x = rng.standard_normal(4).astype(np.float32)
    y, dense = apply(L, x)
    u, v = f64(L.u), f64(L.v)
    np.testing.assert_allclose(
        dense, u @ v.T, rtol=0, atol=2 * EPS32 * np.max(np.abs(u) @ np.abs(v).T)
    )
    np.testing.assert_allclose(
        y, u @ v.T @ x, rtol=0, atol=6 * EPS32 * np.max(np.abs(u) @ np.abs(v).T @ np.abs(x))
    )
    # a module with other leaves through tree.map is still a LowRank
    doubled = jax.tree.map(lambda a: 2 * a, L)
    assert isinstance(doubled, LowRank)
    np.testing.assert_array_equal(doubled.u, 2 * L.u)


def test_lowrank_filter_vmap_over_stacked_modules(rng):
    keys = jax.random.split(jax.random.key(3), 4)
    stacked = jax.vmap(lambda k: LowRank.init(6, 5, 2, key=k))(keys)
    assert stacked.u.shape == (4, 6, 2) and stacked.v.shape == (4, 5, 2)
    X = rng.standard_normal((4, 5)).astype(np.float32)
    Y = eqx.filter_vmap(lambda m, x: m(x))(stacked, X)
    dense = eqx.filter_vmap(lambda m: m.to_dense())(stacked)
    assert Y.shape == (4, 6) and dense.shape == (4, 6, 5)
    for i in range(4):
        # member i is the module drawn with keys[i]
        single = LowRank.init(6, 5, 2, key=keys[i])
        np.testing.assert_allclose(stacked.u[i], single.u, rtol=2 * EPS32, atol=0)
        u, v = f64(stacked.u[i]), f64(stacked.v[i])
        bound = np.abs(u) @ np.abs(v).T
        np.testing.assert_allclose(dense[i], u @ v.T, rtol=0, atol=2 * EPS32 * np.max(bound))
        np.testing.assert_allclose(
            Y[i], u @ v.T @ X[i], rtol=0, atol=7 * EPS32 * np.max(bound @ np.abs(X[i]))
        )
    assert not np.allclose(stacked.u[0], stacked.u[1])  # different keys, different members


def test_lowrank_gradients(rng, x64):
    u = jnp.asarray(rng.standard_normal((4, 2)))
    v = jnp.asarray(rng.standard_normal((3, 2)))
    x = jnp.asarray(rng.standard_normal(3))
    assert u.dtype == jnp.float64
    # check_grads evaluates the function on NumPy arrays too: the modules hold JAX arrays
    lr = lambda u, v: LowRank(jnp.asarray(u), jnp.asarray(v))  # noqa: E731
    check_grads(jax.jit(lambda u, v: lr(u, v).to_dense()), (u, v), order=1)
    check_grads(jax.jit(lambda u, v, x: lr(u, v)(x)), (u, v, x), order=1)
    # the gradient of 1/2 ||U V^T - T||_F^2 by U is (U V^T - T) V, by V is (U V^T - T)^T U
    T = rng.standard_normal((4, 3))
    g = jax.grad(lambda m: 0.5 * jnp.sum((m.to_dense() - T) ** 2))(LowRank(u, v))
    assert isinstance(g, LowRank)
    R = f64(u) @ f64(v).T - T
    # float64: a handful of roundings on entries of size ~ 10
    np.testing.assert_allclose(g.u, R @ f64(v), rtol=0, atol=1e-13)
    np.testing.assert_allclose(g.v, R.T @ f64(u), rtol=0, atol=1e-13)


def test_lowrank_bad_input(rng):
    W = jnp.ones((4, 3))
    with pytest.raises(ValueError, match="`w` must be a matrix"):
        LowRank.from_dense(jnp.ones((2, 4, 3)))
    with pytest.raises(TypeError, match="complex"):
        LowRank.from_dense(jnp.ones((4, 3), jnp.complex64))
    for bad in (0, 4):
        with pytest.raises(ValueError, match=r"`rank` must be an int in \[1, 3\]"):
            LowRank.from_dense(W, bad)
    with pytest.raises(TypeError, match="rank"):
        LowRank.from_dense(W, 2.0)
    with pytest.raises(ValueError, match="at most one of `rank` and `rtol`"):
        LowRank.from_dense(W, 2, rtol=0.1)
    for bad in (float("nan"), -0.5, float("inf")):
        with pytest.raises(ValueError, match="rtol"):
            LowRank.from_dense(W, rtol=bad)
    with pytest.raises(ValueError, match="rank="):
        jax.jit(lambda w: LowRank.from_dense(w, rtol=0.1).to_dense())(W)
    # with rank= it works under jit
    np.testing.assert_allclose(
        jax.jit(lambda w: LowRank.from_dense(w, 1).to_dense())(W),
        np.ones((4, 3)),
        rtol=0,
        atol=8 * EPS32 * np.sqrt(12),
    )
    L = random_lowrank(rng, 4, 3, 2)
    with pytest.raises(ValueError, match=r"\(3,\).*vmap"):
        L(jnp.ones(4))
    with pytest.raises(ValueError, match=r"\(3,\).*vmap"):
        L(jnp.ones((2, 3)))
    for bad in (0, 3):
        with pytest.raises(ValueError, match=r"rank.*\[1, 2\]"):
            L.truncate(bad)
    # Factors that do not fit: `__check_init__` raises ValueError; under the jaxtyping runtime
    # checks of the test run, the field annotations ("d_out r", "d_in r") catch it first with a
    # TypeError. Either names the mismatch.
    with pytest.raises((ValueError, TypeError), match=r"same number of columns|parameter 'v'"):
        LowRank(jnp.ones((4, 2)), jnp.ones((3, 3)))
    with pytest.raises((ValueError, TypeError), match=r"same number of columns|parameter 'u'"):
        LowRank(jnp.ones(4), jnp.ones((3, 1)))


def test_lowrank_numpy_integer_rank_is_valid(rng):
    W = with_spectrum(rng, 5, 4, SPECTRUM[:4])
    L = LowRank.from_dense(W, np.int64(2))
    assert L.rank == 2 and isinstance(L.rank, int)
    assert L.truncate(np.int32(1)).rank == 1
    assert LowRank.from_dense(W, rtol=0).rank == 4  # an int tolerance


# ---------------------------------------------------------------------------------------------
# DeepLowRank
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("depth", [1, 2, 4])
@pytest.mark.parametrize("r", [2, 5])
def test_deep_from_dense_is_best_rank_r_and_balanced(rng, depth, r):
    m, n = 7, 5
    W = with_spectrum(rng, m, n, SPECTRUM)
    D = DeepLowRank.from_dense(W, r, depth=depth)
    assert D.depth == depth and D.shape == (m, n)
    if depth == 1:
        assert D.widths == () and D.factors[0].shape == (m, n) and D.rank == min(m, n)
    else:
        assert D.widths == (r,) * (depth - 1) and D.rank == r
        assert [f.shape for f in D.factors] == [(r, n)] + [(r, r)] * (depth - 2) + [(m, r)]
    assert D.num_params == sum(f.size for f in D.factors)
    s = svd64(W)[1]
    tol = truncation_tol(s, r, max(m, n) * EPS32 * s[0]) + chain_tol(D.factors)
    np.testing.assert_allclose(D.to_dense(), best_rank(W, r), rtol=0, atol=tol)
    # balanced: W_{i+1}^T W_{i+1} = W_i W_i^T (= S^(2/N))
    for i in range(depth - 1):
        lo, hi = f64(D.factors[i]), f64(D.factors[i + 1])
        bal = 3 * max(m, n) * EPS32 * s[0] ** (2 / depth)
        np.testing.assert_allclose(hi.T @ hi, lo @ lo.T, rtol=0, atol=bal)
        np.testing.assert_allclose(lo @ lo.T, np.diag(s[:r] ** (2 / depth)), rtol=0, atol=bal)


def test_deep_from_dense_rtol_brute_force(rng):
    W = (rng.standard_normal((6, 5)) * np.array([4.0, 2, 1, 0.5, 0.1])).astype(np.float32)
    for rtol, expected in rtol_cases(relative_errors(W)):
        D = DeepLowRank.from_dense(W, rtol=rtol, depth=3)
        assert D.rank == expected and D.widths == (expected, expected)
        err = np.linalg.norm(f64(D.to_dense()) - W) / np.linalg.norm(f64(W))
        assert err <= rtol


@pytest.mark.parametrize("widths", [(), (4,), (5, 3, 7)])
def test_deep_init_to_dense_call_and_properties(rng, widths):
    d_out, d_in = 6, 4
    D = random_deep(rng, d_out, d_in, widths)
    dims = [d_in, *widths, d_out]
    assert D.depth == len(widths) + 1
    assert D.widths == tuple(widths)
    assert D.shape == (d_out, d_in)
    assert D.rank == min(dims)
    assert [f.shape for f in D.factors] == [(dims[i + 1], dims[i]) for i in range(D.depth)]
    assert D.num_params == sum(dims[i] * dims[i + 1] for i in range(D.depth))
    np.testing.assert_allclose(
        D.to_dense(), naive_chain(D.factors), rtol=0, atol=chain_tol(D.factors)
    )
    x = rng.standard_normal(d_in).astype(np.float32)
    ref = naive_chain([x[:, None], *D.factors])[:, 0]  # W_N ... W_1 x
    tol = chain_tol([x[:, None], *D.factors])
    np.testing.assert_allclose(D(x), ref, rtol=0, atol=tol)
    np.testing.assert_allclose(jax.jit(D.__call__)(x), ref, rtol=0, atol=tol)
    X = rng.standard_normal((3, d_in)).astype(np.float32)
    Y = jax.vmap(D)(X)
    assert Y.shape == (3, d_out)
    for b in range(3):
        ref_b = naive_chain([X[b][:, None], *D.factors])[:, 0]
        np.testing.assert_allclose(Y[b], ref_b, rtol=0, atol=chain_tol([X[b][:, None], *D.factors]))


@pytest.mark.parametrize("widths", [(), (4,), (5, 3, 7)])
def test_deep_truncate_is_best_rank_r_of_dense(rng, widths):
    D = random_deep(rng, 6, 5, widths)
    dense = naive_chain(D.factors)
    s = svd64(dense)[1]
    norms = np.prod([np.linalg.norm(f64(f), 2) for f in D.factors])
    # QR of the last factor and of the product of the others (itself a chain): backward error
    # c eps ||W_N|| ||W_{N-1} ... W_1|| <= c eps prod ||W_i||, plus the chain's rounding
    c = 2 * max(6, 5) * max(min(dims) for dims in [f.shape for f in D.factors])
    backward = c * EPS32 * norms + chain_tol(D.factors)
    for r in (1, 2, min(D.rank, 5)):
        T = D.truncate(r)
        assert T.shape == D.shape and T.depth == D.depth
        if D.depth > 1:
            assert T.widths == (r,) * (D.depth - 1)
        tol = truncation_tol(s, r, backward) + chain_tol(T.factors)
        np.testing.assert_allclose(T.to_dense(), best_rank(dense, r), rtol=0, atol=tol)
        for i in range(T.depth - 1):
            lo, hi = f64(T.factors[i]), f64(T.factors[i + 1])
            np.testing.assert_allclose(hi.T @ hi, lo @ lo.T, rtol=0, atol=backward)


def test_deep_pytree_jit_and_filter_vmap(rng):
    D = random_deep(rng, 5, 4, (3, 6))
    leaves = jax.tree.leaves(D)
    assert len(leaves) == 3 and all(a is b for a, b in zip(leaves, D.factors, strict=True))
    x = rng.standard_normal(4).astype(np.float32)
    tol = chain_tol([x[:, None], *D.factors])
    y = jax.jit(lambda m, x: m(x))(D, x)
    np.testing.assert_allclose(y, naive_chain([x[:, None], *D.factors])[:, 0], rtol=0, atol=tol)
    # a stacked batch of modules (a batch made by vmapping `init` over keys is in test_init.py)
    stacked = jax.tree.map(
        lambda *fs: jnp.stack(fs), *[random_deep(rng, 5, 4, (3, 6)) for _ in range(3)]
    )
    assert isinstance(stacked, DeepLowRank)
    assert [f.shape for f in stacked.factors] == [(3, 3, 4), (3, 6, 3), (3, 5, 6)]
    X = rng.standard_normal((3, 4)).astype(np.float32)
    Y = eqx.filter_vmap(lambda m, x: m(x))(stacked, X)
    for i in range(3):
        fs = [f[i] for f in stacked.factors]
        np.testing.assert_allclose(
            Y[i],
            naive_chain([X[i][:, None], *fs])[:, 0],
            rtol=0,
            atol=chain_tol([X[i][:, None], *fs]),
        )


def test_deep_gradients(rng, x64):
    fs = tuple(jnp.asarray(rng.standard_normal(s)) for s in [(3, 4), (2, 3), (5, 2)])
    x = jnp.asarray(rng.standard_normal(4))
    # check_grads evaluates the function on NumPy arrays too: the modules hold JAX arrays
    deep = lambda fs: DeepLowRank(tuple(jnp.asarray(f) for f in fs))  # noqa: E731
    check_grads(jax.jit(lambda *fs: deep(fs).to_dense()), fs, order=1)
    check_grads(jax.jit(lambda x, *fs: deep(fs)(x)), (x, *fs), order=1)


def test_deep_bad_input(rng):
    with pytest.raises(ValueError, match="at least one"):
        DeepLowRank(())
    with pytest.raises(ValueError, match="does not chain"):
        DeepLowRank((jnp.ones((3, 4)), jnp.ones((5, 2))))
    # a non-matrix factor: ValueError from `__check_init__`, or first the TypeError of the
    # field annotation under the jaxtyping runtime checks of the test run
    with pytest.raises((ValueError, TypeError), match=r"matrix|parameter 'factors'"):
        DeepLowRank((jnp.ones((3, 4, 1)),))
    W = jnp.ones((4, 3))
    with pytest.raises(ValueError, match="`w` must be a matrix"):
        DeepLowRank.from_dense(jnp.ones(3))
    with pytest.raises(ValueError, match="depth"):
        DeepLowRank.from_dense(W, 2, depth=0)
    with pytest.raises(TypeError, match="depth"):
        DeepLowRank.from_dense(W, 2, depth=2.0)
    with pytest.raises(ValueError, match=r"rank.*\[1, 3\]"):
        DeepLowRank.from_dense(W, 4)
    with pytest.raises(ValueError, match="at most one"):
        DeepLowRank.from_dense(W, 2, rtol=0.5)
    with pytest.raises(ValueError, match="rank="):
        jax.jit(lambda w: DeepLowRank.from_dense(w, rtol=0.5).to_dense())(W)
    D = random_deep(rng, 4, 3, (2, 5))
    with pytest.raises(ValueError, match=r"rank.*\[1, 2\]"):
        D.truncate(3)
    with pytest.raises(ValueError, match=r"\(3,\).*vmap"):
        D(jnp.ones((2, 3)))
