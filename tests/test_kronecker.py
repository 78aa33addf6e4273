"""Tests of `Kronecker` against references written from its definition.

References (float64 NumPy on the float32 values the module sees, never the module itself):
``W[i1 p2 + i2, j1 q2 + j2] = sum_r A[r, i1, j1] B[r, i2, j2]`` by explicit loops, the sum of
``np.kron(A_r, B_r)``, the Van Loan - Pitsianis rearrangement built by loops, and opt_einsum's
cost of the same contraction paths for the FLOP counts.

Tolerances (float32, ``eps = 2^-23``): an entry of ``W`` is a sum of ``R`` products of two
factors, within ``(R + 1) eps`` of the sum of the absolute terms in any order (Higham 3.5);
applying to ``x`` adds ``d_in`` terms per output. SVD-based results (from_dense, truncate) move
by at most ``c eps ||.||_2`` backward (``c = max(m, n)`` for a dense SVD, ``max(m, n) R`` with
the QRs of ``R``-column factors), and a rank-``r`` truncation by that times
``1 + 2 s_1 / (s_r - s_{r+1})`` (Wedin).
"""

import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import opt_einsum
import pytest
from jax.test_util import check_grads

from factorjax.factorizations._cost import BYTE_COST, CHAIN_PENALTY
from factorjax.factorizations.kronecker import Kronecker

EPS32 = float(np.finfo(np.float32).eps)
EPS64 = float(np.finfo(np.float64).eps)


def f64(x):
    return np.asarray(x, np.float64)


def random_kron(rng, R, shapes, dtype=np.float32):
    (p1, q1), (p2, q2) = shapes
    a = rng.standard_normal((R, p1, q1)).astype(dtype)
    b = rng.standard_normal((R, p2, q2)).astype(dtype)
    return Kronecker(jnp.asarray(a), jnp.asarray(b))


def kron_loops(a, b):
    """The definition, entry by entry."""
    a, b = f64(a), f64(b)
    R, p1, q1 = a.shape
    _, p2, q2 = b.shape
    W = np.zeros((p1 * p2, q1 * q2))
    for r in range(R):
        for i1 in range(p1):
            for i2 in range(p2):
                for j1 in range(q1):
                    for j2 in range(q2):
                        W[i1 * p2 + i2, j1 * q2 + j2] += a[r, i1, j1] * b[r, i2, j2]
    return W


def kron_tol(K):
    return (K.rank + 1) * EPS32 * np.max(kron_loops(np.abs(f64(K.a)), np.abs(f64(K.b))))


def rearranged(W, shapes):
    """Van Loan - Pitsianis by loops: row (i1, j1), column (i2, j2)."""
    (p1, q1), (p2, q2) = shapes
    out = np.empty((p1 * q1, p2 * q2))
    for i1 in range(p1):
        for j1 in range(q1):
            for i2 in range(p2):
                for j2 in range(q2):
                    out[i1 * q1 + j1, i2 * q2 + j2] = W[i1 * p2 + i2, j1 * q2 + j2]
    return out


SHAPES = [((3, 4), (5, 2)), ((1, 3), (4, 1)), ((2, 2), (3, 3))]


@pytest.mark.parametrize("shapes", SHAPES)
@pytest.mark.parametrize("R", [1, 3])
def test_to_dense_is_the_kron_sum(rng, shapes, R):
    K = random_kron(rng, R, shapes)
    (p1, q1), (p2, q2) = shapes
    assert K.shape == (p1 * p2, q1 * q2) and K.shapes == shapes and K.rank == R
    assert (K.out_features, K.in_features) == K.shape
    assert K.num_params == R * (p1 * q1 + p2 * q2)
    ref = kron_loops(K.a, K.b)
    np.testing.assert_allclose(
        sum(np.kron(f64(K.a[r]), f64(K.b[r])) for r in range(R)), ref, rtol=0, atol=1e-12
    )
    dense = K.to_dense()
    assert dense.dtype == jnp.float32
    np.testing.assert_allclose(dense, ref, rtol=0, atol=kron_tol(K))
    np.testing.assert_allclose(K.to_matrix(), ref, rtol=0, atol=kron_tol(K))
    assert K.reconstruction_flops() == 2 * R * K.shape[0] * K.shape[1]


ORDERS = ("a-first", "b-first", "einsum-optimal", "einsum-greedy", "dense", "auto")


@jax.jit
def apply_every_order(K, xs):
    """Every order on every input of ``xs`` (one compilation)."""
    return [[K.apply(x, order=name) for name in ORDERS] for x in xs]


@pytest.mark.parametrize("shapes", SHAPES[:2])
def test_every_order_is_x_times_w_transpose(rng, shapes):
    K = random_kron(rng, 3, shapes)
    W = kron_loops(K.a, K.b)
    Wabs = kron_loops(np.abs(f64(K.a)), np.abs(f64(K.b)))
    assert [c.order.name for c in K.candidates(1)] == list(ORDERS[:-1])
    d_out, d_in = W.shape
    # a batch of one, and leading batch axes
    xs = [rng.standard_normal((*lead, d_in)).astype(np.float32) for lead in [(1,), (2, 3)]]
    for x, ys in zip(xs, apply_every_order(K, xs), strict=True):
        ref = f64(x) @ W.T
        tol = (3 + 1 + d_in) * EPS32 * np.max(np.abs(f64(x)) @ Wabs.T)
        for name, y in zip(ORDERS, ys, strict=True):
            assert y.shape == ref.shape and y.shape[-1] == d_out and y.dtype == jnp.float32
            np.testing.assert_allclose(y, ref, rtol=0, atol=tol, err_msg=name)
    # one unbatched input, and vmap over inputs (x, ref, tol: the last batch)
    np.testing.assert_allclose(K(x[0, 0]), ref[0, 0], rtol=0, atol=tol)
    np.testing.assert_allclose(jax.vmap(K)(x[0]), ref[0], rtol=0, atol=tol)


@pytest.mark.parametrize("batch", [1, 64, 4096])
def test_plan_picks_the_cheapest_candidate(rng, batch):
    K = random_kron(rng, 4, ((8, 4), (6, 16)))
    plan = K.plan(batch)
    cands = K.candidates(batch)
    assert plan.order in {c.order.name for c in cands}

    # the cost model from its definition: chain FLOPs CHAIN_PENALTY times, matmul FLOPs once,
    # BYTE_COST per byte of the intermediates (the peak where an order does not count them)
    def weight(o):
        moved = o.traffic_bytes or o.peak_bytes
        return (o.flops - o.gemm_flops) * CHAIN_PENALTY + o.gemm_flops + BYTE_COST * moved

    chosen = next(o for o in plan.candidates if o.name == plan.order)
    assert weight(chosen) == min(weight(c.order) for c in cands)


def test_flops_equal_opt_einsum_costs_of_the_same_paths(rng):
    K = random_kron(rng, 3, ((3, 4), (5, 2)))
    B = 7
    eq = "bjk,rij,rlk->bil"  # x (B, q1, q2), A (R, p1, q1), B (R, p2, q2)
    shapes = [(B, 4, 2), K.a.shape, K.b.shape]
    flops = {c.order.name: c.order.flops for c in K.candidates(B)}

    def cost(path):
        return opt_einsum.contract_path(eq, *shapes, shapes=True, optimize=path)[1].opt_cost

    assert flops["a-first"] == cost([(0, 1), (0, 1)])
    assert flops["b-first"] == cost([(0, 2), (0, 1)])
    dense = opt_einsum.contract_path("rij,rlk->iljk", K.a.shape, K.b.shape, shapes=True)[1]
    assert K.reconstruction_flops() == dense.opt_cost
    assert flops["dense"] == K.reconstruction_flops() + 2 * B * 15 * 8
    # by hand: A on q1 then B on (r, q2): 2 B q1 q2 R p1 + 2 B R p1 q2 p2
    assert flops["a-first"] == 2 * B * (4 * 2 * 3 * 3 + 3 * 3 * 2 * 5)


# ---------------------------------------------------------------------------------------------
# Van Loan - Pitsianis
# ---------------------------------------------------------------------------------------------


@pytest.mark.slow  # compile-heavy: over 5 s on 2 cores (the default run's budget)
def test_from_dense_is_optimal_van_loan_pitsianis(rng, x64):
    shapes = ((3, 5), (4, 2))  # W is 12 x 10, R(W) is 15 x 8
    W = rng.standard_normal((12, 10))
    s = np.linalg.svd(rearranged(W, shapes), compute_uv=False)
    norm = np.linalg.norm(W)
    tol = 15 * EPS64 * s[0] * 10  # dense SVD backward error, float64, plus the rebuild
    for R in range(1, 9):
        K = Kronecker.from_dense(W, R, shapes=shapes)
        assert K.rank == R and K.shapes == shapes and K.dtype == jnp.float64
        err = np.linalg.norm(f64(K.to_dense()) - W)
        # the error is the tail of the singular values of R(W): by Eckart-Young on R(W), no
        # sum of R Kronecker products does better
        assert abs(err - np.sqrt(np.sum(s[R:] ** 2))) <= tol, (R, err)
        # balanced: ||A_i||_F = ||B_i||_F = sqrt(s_i)
        np.testing.assert_allclose(
            np.linalg.norm(f64(K.a), axis=(1, 2)), np.sqrt(s[:R]), rtol=0, atol=tol
        )
        np.testing.assert_allclose(
            np.linalg.norm(f64(K.b), axis=(1, 2)), np.sqrt(s[:R]), rtol=0, atol=tol
        )
    # rtol: the smallest R whose tail is within rtol ||W|| (brute force over R)
    tails = np.array([np.sqrt(np.sum(s[R:] ** 2)) / norm for R in range(1, 9)])
    for rtol in (tails[:-1] + tails[1:]) / 2:
        K = Kronecker.from_dense(W, rtol=float(rtol), shapes=shapes)
        assert K.rank == 1 + int(np.nonzero(tails <= rtol)[0][0])
        assert np.linalg.norm(f64(K.to_dense()) - W) <= rtol * norm + tol


def test_from_dense_recovers_an_exact_kronecker_sum(rng):
    K = random_kron(rng, 2, ((4, 3), (2, 5)))
    W = kron_loops(K.a, K.b).astype(np.float32)
    # the rearranged matrix has rank 2 exactly: rank 2 and a small rtol recover W
    s = np.linalg.svd(rearranged(f64(W), K.shapes), compute_uv=False)
    backward = 12 * EPS32 * s[0]  # SVD of the 12 x 10 rearrangement, float32
    tol = backward * (1 + 2 * s[0] / s[1]) + kron_tol(K)
    for L in (
        Kronecker.from_dense(W, 2, shapes=K.shapes),
        Kronecker.from_dense(W, rtol=1e-4, shapes=K.shapes),
        jax.jit(lambda w: Kronecker.from_dense(w, 2, shapes=((4, 3), (2, 5))))(W),
    ):
        assert L.rank == 2
        np.testing.assert_allclose(L.to_dense(), W, rtol=0, atol=tol)
    full = Kronecker.from_dense(W, shapes=K.shapes)  # neither: min(p1 q1, p2 q2) = 10 terms
    assert full.rank == 10
    np.testing.assert_allclose(full.to_dense(), W, rtol=0, atol=tol)


def test_truncate_is_the_best_approximation_from_the_factors(rng):
    # 7 terms of 2 x 3 and 3 x 2 factors: more terms than p1 q1 = 6 (overparametrized)
    K = random_kron(rng, 7, ((2, 3), (3, 2)))
    W = kron_loops(K.a, K.b)
    s = np.linalg.svd(rearranged(W, K.shapes), compute_uv=False)
    na = np.linalg.norm(f64(K.a).reshape(7, -1), 2)
    nb = np.linalg.norm(f64(K.b).reshape(7, -1), 2)
    backward = 2 * 6 * 7 * EPS32 * na * nb  # QR of two 6 x 7 factors and the small SVD
    for r in (1, 3, 6):
        T = K.truncate(r)
        assert T.rank == r and T.shapes == K.shapes
        best = Kronecker.from_dense(W, r, shapes=K.shapes)  # float64 reference, same theorem
        gap = s[r - 1] - s[r] if r < 6 else np.inf
        tol = backward * (1 + 2 * s[0] / gap) + kron_tol(T)
        np.testing.assert_allclose(T.to_dense(), f64(best.to_dense()), rtol=0, atol=tol)
    assert jax.jit(lambda k: k.truncate(2))(K).rank == 2


# ---------------------------------------------------------------------------------------------
# init
# ---------------------------------------------------------------------------------------------

Z = 5.0


@pytest.mark.parametrize("R", [2, 8, 64])
def test_init_reconstructed_std_within_5_percent(R):
    """The std of the entries of ``W``, pooled over independent draws, is within 5% of glorot's.

    The entries of one draw share factors, so the mean square of one draw fluctuates with a
    coefficient of variation ``cv`` (largest at small ``R``). The pooled std over ``B`` draws
    has relative standard error ``cv / (2 sqrt(B))``; for ``Z`` of them to fit in 5%,
    ``B >= (Z cv / 0.1)^2``. A pilot chunk measures ``cv``; the test draws twice that many
    (in chunks of one compiled shape) and asserts the margin on the final spread.
    """
    d_out, d_in = 48, 36  # shapes ((6, 6), (8, 6))
    target = math.sqrt(2.0 / (d_in + d_out))
    draw = jax.jit(
        jax.vmap(lambda k: jnp.mean(Kronecker.init(d_out, d_in, R, key=k).to_dense() ** 2))
    )
    seed, chunk = jax.random.key(R), 256
    chunks = [np.asarray(draw(jax.random.split(jax.random.fold_in(seed, 0), chunk)))]
    cv = chunks[0].std(ddof=1) / chunks[0].mean()
    for i in range(1, math.ceil(2 * (Z * cv / 0.1) ** 2 / chunk)):
        chunks.append(np.asarray(draw(jax.random.split(jax.random.fold_in(seed, i), chunk))))
    ms = np.concatenate(chunks).astype(np.float64)
    std = math.sqrt(ms.mean())
    se = ms.std(ddof=1) / math.sqrt(len(ms)) / (2 * std)  # delta method: se of sqrt(mean)
    assert Z * se <= 0.05 * target, (Z * se / target, len(ms), "too few draws for a 5% check")
    assert abs(std / target - 1) <= 0.05, (std, target)


def test_init_shapes_small_and_keys():
    key = jax.random.key(0)
    K = jax.eval_shape(lambda: Kronecker.init(48, 36, 3, key=key))
    assert K.shapes == ((6, 6), (8, 6)) and K.shape == (48, 36) and K.rank == 3
    assert K.a.dtype == jnp.float32
    K = jax.eval_shape(lambda: Kronecker.init(12, 10, 2, key=key, shapes=((2, 5), (6, 2))))
    assert K.a.shape == (2, 2, 5) and K.b.shape == (2, 6, 2)
    alpha, R = 0.3, 4
    S = jax.jit(lambda k: Kronecker.init(40, 40, R, key=k, init="small", alpha=alpha))(key)
    for f in (S.a, S.b):
        x = f64(f).ravel()
        sigma2 = alpha**2 / R
        se = sigma2 * math.sqrt(2.0 / x.size)  # exact for i.i.d. normal entries
        assert abs(np.mean(x**2) - sigma2) <= Z * se
    assert not np.array_equal(S.a[0, :4, :4], S.b[0, :4, :4])  # different parts of the draw


# ---------------------------------------------------------------------------------------------
# Gradients, transformations
# ---------------------------------------------------------------------------------------------


def test_gradients(rng, x64):
    a = jnp.asarray(rng.standard_normal((2, 2, 3)))
    b = jnp.asarray(rng.standard_normal((2, 3, 2)))
    x = jnp.asarray(rng.standard_normal((2, 6)))

    def every_order(a, b, x):
        K = Kronecker(jnp.asarray(a), jnp.asarray(b))
        ys = [K.apply(x, order=name) for name in ORDERS[:-1]]
        return jnp.concatenate([y.ravel() for y in [*ys, K.to_dense()]])

    check_grads(jax.jit(every_order), (a, b, x), order=1)


def test_filter_vmap_over_stacked_modules(rng):
    keys = jax.random.split(jax.random.key(3), 4)
    stacked = jax.jit(jax.vmap(lambda k: Kronecker.init(6, 4, 2, key=k)))(keys)
    assert stacked.a.shape == (4, 2, 2, 2) and stacked.b.shape == (4, 2, 3, 2)
    X = rng.standard_normal((4, 4)).astype(np.float32)
    Y = eqx.filter_jit(eqx.filter_vmap(lambda m, x: m(x)))(stacked, X)
    single = Kronecker.init(6, 4, 2, key=keys[1])  # member 1 is drawn with keys[1]
    np.testing.assert_allclose(single.a, stacked.a[1], rtol=2 * EPS32, atol=0)
    for i in range(4):
        W = kron_loops(stacked.a[i], stacked.b[i])
        Wabs = kron_loops(np.abs(f64(stacked.a[i])), np.abs(f64(stacked.b[i])))
        tol = (2 + 1 + 4) * EPS32 * np.max(Wabs @ np.abs(f64(X[i])))
        np.testing.assert_allclose(Y[i], W @ X[i], rtol=0, atol=tol)


# ---------------------------------------------------------------------------------------------
# Bad input
# ---------------------------------------------------------------------------------------------


def test_bad_input(rng):
    key = jax.random.key(0)
    with pytest.raises(ValueError, match=r"product of `shapes \(p1, p2\)` must be 12"):
        Kronecker.init(12, 10, 2, key=key, shapes=((3, 5), (5, 2)))
    with pytest.raises(ValueError, match=r"product of `shapes \(q1, q2\)` must be 10"):
        Kronecker.init(12, 10, 2, key=key, shapes=((3, 5), (4, 3)))
    with pytest.raises(ValueError, match=r"`shapes` must be \(\(p1, q1\), \(p2, q2\)\)"):
        Kronecker.init(12, 10, 2, key=key, shapes=(3, 4))
    with pytest.raises(ValueError, match="`rank` must be an int >= 1"):
        Kronecker.init(12, 10, 0, key=key)
    W = rng.standard_normal((12, 10)).astype(np.float32)
    with pytest.raises(ValueError, match=r"product of `shapes \(p1, p2\)` must be 12"):
        Kronecker.from_dense(W, 2, shapes=((2, 5), (3, 2)))
    with pytest.raises(ValueError, match=r"`rank` must be an int in \[1, 8\]"):
        Kronecker.from_dense(W, 9, shapes=((3, 5), (4, 2)))
    for bad in (0, -0.1, float("nan")):
        with pytest.raises(ValueError, match="`rtol`"):
            Kronecker.from_dense(W, rtol=bad)
    with pytest.raises(ValueError, match="at most one of `rank` and `rtol`"):
        Kronecker.from_dense(W, 2, rtol=0.1)
    with pytest.raises(ValueError, match="rank="):
        jax.jit(lambda w: Kronecker.from_dense(w, rtol=0.1).to_dense())(W)
    with pytest.raises(ValueError, match="`w` must be a matrix"):
        Kronecker.from_dense(W[0])
    K = random_kron(rng, 3, ((3, 5), (4, 2)))
    for bad in (0, 4):
        with pytest.raises(ValueError, match=r"`rank` must be an int in \[1, 3\]"):
            K.truncate(bad)
    with pytest.raises(ValueError, match="`x` must have d_in = 10"):
        K.apply(np.ones((2, 12), np.float32))
    with pytest.raises(ValueError, match="`order` must be one of"):
        K.apply(np.ones((2, 10), np.float32), order="c-first")
    # factors that do not fit: `__check_init__`, or first the jaxtyping runtime checks ("R")
    with pytest.raises((ValueError, TypeError), match=r"same number R|parameter 'b'"):
        Kronecker(jnp.ones((2, 3, 4)), jnp.ones((3, 2, 2)))
    with pytest.raises((ValueError, TypeError), match=r"3-D|parameter 'a'"):
        Kronecker(jnp.ones((3, 4)), jnp.ones((3, 2, 2)))
