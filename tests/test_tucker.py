"""Tests of `Tucker` against references written from the definition.

References (float64 NumPy on the values the module sees): the explicit sum over core entries
of products of factor entries, entry by entry; tensorly's ``tucker_to_tensor`` on the same core
and factors; ST-HOSVD written out with ``np.linalg.svd`` of each unfolding (and its rank rule
for ``rtol``, by brute force over the tails); ``x @ W^T``; FLOP counts from
``opt_einsum.contract_path`` along every order of mode products.

Tolerances (``eps`` of the computing dtype): an entry is a sum of ``prod(r)`` products of
``d + 1`` numbers, computed as nested sums of lengths ``r_1, ..., r_d``: within
``(d + sum(r)) eps`` times the same sum of absolute values (Higham 3.1, first order); applying
to ``x`` nests sums over the input modes too. An SVD is backward stable, ``||E|| <= c eps ||M||``
with ``c`` the larger dimension; a truncation then moves by at most
``||E|| (1 + 2 s_1 / gap)`` (Wedin), summed over the modes of the ST-HOSVD.
"""

import itertools
import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import opt_einsum
import pytest
import tensorly
from jax.test_util import check_grads

from factorjax.factorizations import _cost
from factorjax.factorizations._multilinear import multiply_trailing, trailing_plan
from factorjax.factorizations.tucker import Tucker, resolve_ranks

EPS32 = float(np.finfo(np.float32).eps)
EPS64 = float(np.finfo(np.float64).eps)


def f64(x):
    return np.asarray(x, np.float64)


def random_tucker(rng, shape, ranks, n_out=None, dtype=jnp.float32):
    core = rng.standard_normal(ranks)
    factors = [rng.standard_normal((n, r)) for n, r in zip(shape, ranks, strict=True)]
    return Tucker(jnp.asarray(core, dtype), tuple(jnp.asarray(f, dtype) for f in factors), n_out)


def tucker_loops(core, factors):
    """``T[i] = sum_j G[j] prod_k A_k[i_k, j_k]``, entry by entry."""
    g, fs = f64(core), [f64(f) for f in factors]
    out = np.zeros(tuple(f.shape[0] for f in fs))
    for i in np.ndindex(*out.shape):
        out[i] = sum(
            g[j] * math.prod(fs[k][i[k], j[k]] for k in range(len(fs)))
            for j in np.ndindex(*g.shape)
        )
    return out


def tucker_abs(t):
    return tensorly.tucker_to_tensor((np.abs(f64(t.core)), [np.abs(f64(f)) for f in t.factors]))


def assert_within(actual, ref, bound):
    err = np.abs(f64(actual) - ref)
    assert actual.shape == ref.shape
    assert np.all(err <= bound), (err.max(), np.max(bound))


def unfold(a, k):
    return np.moveaxis(a, k, 0).reshape(a.shape[k], -1)


def st_hosvd_ref(a, ranks=None, rtol=None):
    """ST-HOSVD from its definition: for each mode in turn, the leading left singular vectors
    of the current core's unfolding, and the core projected on them. With ``rtol``, the smallest
    rank whose discarded squared singular values are at most ``rtol^2 ||a||^2 / d``. Returns the
    reconstruction, the ranks, the singular values and the discarded energy of each step."""
    a = f64(a)
    core, us, svals, discarded, chosen = a, [], [], [], []
    for k in range(a.ndim):
        u, s, _ = np.linalg.svd(unfold(core, k), full_matrices=False)
        if rtol is None:
            r = ranks[k]
        else:
            budget = rtol**2 * np.sum(a**2) / a.ndim
            r = next(r for r in range(1, len(s) + 1) if np.sum(s[r:] ** 2) <= budget)
        rest = core.shape[:k] + core.shape[k + 1 :]
        core = np.moveaxis((u[:, :r].T @ unfold(core, k)).reshape(r, *rest), 0, k)
        us.append(u[:, :r])
        svals.append(s)
        discarded.append(np.sum(s[r:] ** 2))
        chosen.append(r)
    return tensorly.tucker_to_tensor((core, us)), tuple(chosen), svals, discarded


def sthosvd_tol(svals, ranks, norm, backward):
    """Wedin, mode by mode: how far a computed ST-HOSVD can be from the exact one when every
    step's SVD has backward error ``backward`` (relative to ``norm``)."""
    tol = 0.0
    for s, r in zip(svals, ranks, strict=True):
        gap = s[r - 1] - s[r] if r < len(s) else np.inf
        tol += backward * norm * (1 + 2 * s[0] / gap)
    return tol


# ---------------------------------------------------------------------------------------------
# The tensor and its matrix view
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "shape, ranks",
    [
        ((3, 4), (2, 2)),
        ((3, 4, 2), (3, 2, 2)),
        ((2, 3, 2, 3), (2, 2, 1, 2)),
        ((3, 4, 2), (3, 4, 2)),  # full rank: rebuilt by the cyclic sweep
    ],
)
def test_to_dense_equals_explicit_sum_and_tensorly(rng, shape, ranks):
    t = random_tucker(rng, shape, ranks)
    ref = tucker_loops(t.core, t.factors)
    tl = tensorly.tucker_to_tensor((f64(t.core), [f64(f) for f in t.factors]))
    bound = (len(shape) + sum(ranks)) * tucker_abs(t)
    assert_within(tl, ref, bound * EPS64)
    assert t.shape == shape and t.ranks == ranks and t.rank == max(ranks)
    assert t.num_params == math.prod(ranks) + sum(n * r for n, r in zip(shape, ranks, strict=True))
    dense = t.to_dense()
    assert dense.dtype == jnp.float32
    assert_within(dense, ref, bound * EPS32)
    W = t.with_n_out(1).to_matrix()
    assert W.shape == (shape[0], math.prod(shape[1:]))
    np.testing.assert_array_equal(W, np.asarray(dense).reshape(W.shape))


@pytest.mark.parametrize("how", ["cyclic", (1, 0, 2), (2, 0, 1)])
def test_multiply_trailing_equals_explicit_sum(rng, how):
    # y of shape (*lead, r_1, r_2, r_3) with lead (2, 3); mats[k] of shape (n_k, r_k)
    y = rng.standard_normal((2, 3, 3, 4, 2))
    mats = [rng.standard_normal(s) for s in ((5, 3), (4, 4), (6, 2))]
    ref = np.zeros((5, 4, 6, 2, 3))
    for a, b, i, j, k in itertools.product(*map(range, y.shape)):
        ref[:, :, :, a, b] += y[a, b, i, j, k] * np.einsum(
            "p,q,r->pqr", mats[0][:, i], mats[1][:, j], mats[2][:, k]
        )
    out = multiply_trailing(
        jnp.asarray(y, jnp.float32), [jnp.asarray(m, jnp.float32) for m in mats], how
    )
    assert out.shape == (5, 4, 6, 2, 3)
    np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max())


def test_multiply_trailing_gradients(rng, x64):
    y = jnp.asarray(rng.standard_normal((2, 3, 2)))
    mats = tuple(jnp.asarray(rng.standard_normal(s)) for s in ((4, 3), (3, 2)))
    for how in ("cyclic", (0, 1)):
        f = jax.jit(lambda y, *m, how=how: multiply_trailing(y, m, how))
        check_grads(f, (y, *mats), order=1)


def test_trailing_plan_counts_by_hand():
    # (6, 2, 3) -> (4, 5, 6): the sweep multiplies mode 2 first (rest = 6 * 2 entries),
    # then mode 1 (rest = 6 * 5): 2*5*3*12 + 2*4*2*30 = 840, as much as the cheapest chain:
    # ties go to the sweep. No side reaches GEMM_MIN_DIM, so none of it is at matmul rate.
    assert trailing_plan((2, 3), (4, 5), 6) == ("cyclic", 840, 0, [60, 120])
    # (3, 4, 1) -> (3, 4, 16): the sweep's fixed order expands the last mode first,
    # 2*16*1*12 + 2*4*4*48 = 1920 FLOPs, against 2*12*4 + 2*12*16 = 480 for the chain that
    # multiplies mode 1 first: the chain is taken
    assert trailing_plan((4, 1), (4, 16), 3) == ((0, 1), 480, 0, [12, 192])
    # (32, 32) -> (32, 64): both steps are matmuls with every side >= 32, counted at the
    # matmul rate: 2*64*32*32 + 2*32*32*64, against the cheapest chain's
    # 2*1024*32 + 2*1024*64 at CHAIN_PENALTY times
    assert _cost.GEMM_MIN_DIM <= 32
    n = 2 * 64 * 32 * 32 + 2 * 32 * 32 * 64
    assert trailing_plan((32, 32), (32, 64), 1) == ("cyclic", n, n, [2048, 2048])


def test_dense_order_counts_the_sweeps_matmuls(rng):
    # a full-rank core with modes of 32: the rebuild is a sweep of matmuls at the matmul rate
    t = random_tucker(rng, (32, 32, 32), (32, 32, 32), n_out=1)
    recon = 3 * 2 * 32**4
    assert t.reconstruction_flops() == t.reconstruction_gemm_flops() == recon
    dense = {c.order.name: c.order for c in t.candidates(8)}["dense"]
    assert dense.flops == dense.gemm_flops == recon + 2 * 8 * 32 * 1024


OUT, IN, RANKS = (2, 3), (4, 2, 3), (2, 3, 3, 2, 2)
NAMES = {
    "factored",
    "core-input",
    "core-output",
    "low-rank",
    "einsum-optimal",
    "einsum-greedy",
    "dense",
}


@pytest.mark.parametrize("lead", [(1,), (6,), (2, 3)])
def test_every_candidate_equals_dense_matmul(rng, lead):
    t = random_tucker(rng, OUT + IN, RANKS, n_out=2)
    d_out, d_in = math.prod(OUT), math.prod(IN)
    assert (t.out_features, t.in_features, t.out_modes, t.in_modes) == (d_out, d_in, OUT, IN)
    x = rng.standard_normal((*lead, d_in)).astype(np.float32)
    W = tucker_loops(t.core, t.factors).reshape(d_out, d_in)
    W_abs = tucker_abs(t).reshape(d_out, d_in)
    ref = f64(x) @ W.T
    c = len(RANKS) + 2 + sum(RANKS) + d_in + sum(IN)
    bound = c * EPS32 * (np.abs(f64(x)) @ W_abs.T)
    batch = math.prod(lead)
    cands = t.candidates(batch)
    assert {c.order.name for c in cands} == NAMES
    for cand in cands:
        y = t.apply(x, order=cand.order.name)
        assert y.shape == (*lead, d_out) and y.dtype == jnp.float32
        assert_within(y, ref, bound)
        if lead == (6,):
            jitted = jax.jit(lambda m, x, n=cand.order.name: m.apply(x, order=n))
            assert_within(jitted(t, x), ref, bound)
    plan = t.plan(batch)
    best = min((c.order for c in cands), key=_cost.score)
    assert plan.order == best.name and plan.flops == best.flops
    xs = x.reshape(-1, d_in)
    assert_within(t(xs[0]), ref.reshape(-1, d_out)[0], bound.reshape(-1, d_out)[0])
    assert_within(jax.vmap(t)(xs), ref.reshape(-1, d_out), bound.reshape(-1, d_out))


def test_low_rank_through_either_side(rng, x64):
    """``"low-rank"`` goes through the smaller of S (output ranks) and T (input ranks)."""
    for ranks, inner in (((2, 2, 3, 3), 4), ((4, 3, 2, 2), 4)):  # S < T, then S > T
        t = random_tucker(rng, (4, 3, 3, 4), ranks, n_out=2, dtype=jnp.float64)
        x = rng.standard_normal((5, 12))
        W = tucker_loops(t.core, t.factors).reshape(12, 12)
        np.testing.assert_allclose(t.apply(x, order="low-rank"), x @ W.T, rtol=1e-12, atol=1e-12)
        order = {c.order.name: c.order for c in t.candidates(5)}["low-rank"]
        assert order.gemm_flops == 2 * 5 * inner * (12 + 12)


def cheapest_chain(expr_in, operands, letters):
    """The fewest opt_einsum FLOPs over every order of contracting the first operand with the
    matrices, one at a time."""
    best = None
    for perm in itertools.permutations(range(len(letters))):
        path = []
        for step, j in enumerate(perm):
            # the running result sits last after the first step; matrix j sits at its position
            # among the ones not yet used
            left = [m for m in range(len(letters)) if m not in perm[:step]]
            pos = left.index(j) + (0 if step else 1)
            path.append((0, pos) if step == 0 else (pos, len(left)))
        cost = opt_einsum.contract_path(expr_in, *operands, shapes=True, optimize=path)[1].opt_cost
        best = cost if best is None else min(best, cost)
    return best


def test_flop_counts_match_opt_einsum(rng):
    t = random_tucker(rng, OUT + IN, RANKS, n_out=2)
    B = 5
    orders = {c.order.name: c.order for c in t.candidates(B)}
    # x (B, 4, 2, 3) -> (B, 3, 2, 2): every order of the three projections, the cheapest
    proj = cheapest_chain("bijk,ip,jq,kr->bpqr", [(B, *IN), (4, 3), (2, 2), (3, 2)], "ijk")
    core = opt_einsum.contract_path("bt,st->bs", (B, 12), (6, 12), shapes=True)[1].opt_cost
    expand = cheapest_chain("bst,us,vt->buv", [(B, 2, 3), (2, 2), (3, 3)], "uv")
    assert orders["factored"].flops == proj + core + expand
    # the core merged with the input factors: (2, 3, 3, 2, 2) -> (2, 3, 4, 2, 3)
    merge_in = cheapest_chain("abpqr,ip,jq,kr->abijk", [RANKS, (4, 3), (2, 2), (3, 2)], "ijk")
    mm = opt_einsum.contract_path("bi,si->bs", (B, 24), (6, 24), shapes=True)[1].opt_cost
    assert orders["core-input"].flops == merge_in + mm + expand
    merge_out = cheapest_chain("abpqr,ua,vb->uvpqr", [RANKS, (2, 2), (3, 3)], "uv")
    mm = opt_einsum.contract_path("bt,ot->bo", (B, 12), (6, 12), shapes=True)[1].opt_cost
    assert orders["core-output"].flops == proj + merge_out + mm
    # low-rank through S = 2 * 3 = 6 < T = 12: the Kronecker product of the output factors
    # (2 x 2, then 3 x 3: 4 * 9 multiplications), the core merged with the input factors, and
    # the matmuls (B, 24) x (24, 6) and (B, 6) x (6, 6)
    assert orders["low-rank"].flops == 4 * 9 + merge_in + 2 * B * 6 * (24 + 6)
    assert orders["low-rank"].gemm_flops == 2 * B * 6 * (24 + 6)
    recon = cheapest_chain(
        "abcde,ia,jb,kc,ld,me->ijklm",
        [RANKS, (2, 2), (3, 3), (4, 3), (2, 2), (3, 2)],
        "ijklm",
    )
    assert t.reconstruction_flops() == recon
    assert orders["dense"].flops == recon + 2 * B * 24 * 6


# ---------------------------------------------------------------------------------------------
# ST-HOSVD, HOOI, truncation
# ---------------------------------------------------------------------------------------------


def low_rank_plus_noise(rng, shape, ranks, noise, dtype=np.float32):
    core = rng.standard_normal(ranks)
    us = [np.linalg.qr(rng.standard_normal((n, r)))[0] for n, r in zip(shape, ranks, strict=True)]
    a = tensorly.tucker_to_tensor((core, us))
    return (a + noise * np.linalg.norm(a) / np.sqrt(a.size) * rng.standard_normal(shape)).astype(
        dtype
    )


def test_st_hosvd_rtol_bound_and_reference(rng):
    shape = (6, 7, 5)
    a = low_rank_plus_noise(rng, shape, (2, 3, 2), 0.05)
    norm = np.linalg.norm(f64(a))
    # each step's SVD of an (n_k, M) unfolding: c = max(n_k, M) <= 7 * 6 < max(shape)^2
    backward = max(shape) ** 2 * EPS32
    for rtol in (0.02, 0.1, 0.5):  # full rank, (2, 3, 2), (2, 2, 2)
        ref, ranks, svals, discarded = st_hosvd_ref(a, rtol=rtol)
        # the reference's choice is not on a knife edge: every tail sum is away from the budget
        budget = rtol**2 * norm**2 / 3
        for s in svals:
            tails = [np.sum(s[q:] ** 2) for q in range(len(s) + 1)]
            assert all(abs(tl - budget) > 1e-3 * budget for tl in tails)
        t = Tucker.from_dense(a, rtol=rtol)
        assert t.ranks == ranks
        err = np.linalg.norm(f64(t.to_dense()) - f64(a))
        assert err <= rtol * norm
        # ST-HOSVD's error is exactly the discarded energy of its steps (orthogonal projections)
        assert abs(err**2 - sum(discarded)) <= 2 * backward * norm**2
        assert_within(t.to_dense(), ref, sthosvd_tol(svals, ranks, norm, backward))
        # orthonormal factors
        for f in t.factors:
            np.testing.assert_allclose(f64(f).T @ f64(f), np.eye(f.shape[1]), rtol=0, atol=backward)


def test_exact_recovery_at_multilinear_rank(rng, x64):
    shape, ranks = (5, 6, 4), (2, 3, 2)
    a = low_rank_plus_noise(rng, shape, ranks, 0.0, np.float64)
    norm = np.linalg.norm(a)
    backward = sum(max(n, a.size // n) for n in shape) * EPS64
    cases = [(Tucker.from_dense(a, ranks), ranks), (Tucker.from_dense(a, rtol=1e-6), ranks)]
    cases.append((Tucker.from_dense(a), shape))  # the full multilinear rank
    for t, expected in cases:
        assert t.core.dtype == jnp.float64 and t.ranks == expected
        np.testing.assert_allclose(t.to_dense(), a, rtol=0, atol=backward * norm)
    # full rank clipped to the product of the others: (2, 3, 10) -> (2, 3, 6)
    assert Tucker.from_dense(rng.standard_normal((2, 3, 10))).ranks == (2, 3, 6)
    # an int caps every mode
    assert Tucker.from_dense(a, 3).ranks == (3, 3, 3)


def test_hooi_never_increases_the_error(rng, x64):
    a = rng.standard_normal((6, 7, 8))  # no structure: HOOI has work to do
    norm = np.linalg.norm(a)
    # each sweep: d SVDs of (n_k, prod of the other ranks) matrices and the projections that
    # build them, each backward stable with c <= max(shape) * d * prod(ranks) eps
    slack = 8 * 3 * 27 * EPS64 * norm
    errs = []
    for n_iter in (0, 1, 4):
        t = Tucker.from_dense(a, (3, 3, 3), n_iter=n_iter)
        errs.append(np.linalg.norm(f64(t.to_dense()) - a))
        for f in t.factors:
            np.testing.assert_allclose(f.T @ f, np.eye(3), rtol=0, atol=slack / norm)
    assert errs[1] <= errs[0] + slack and errs[2] <= errs[1] + slack, errs
    assert errs[2] < errs[0] - 1e3 * slack  # and here it helps
    # jit with a static rank and n_iter
    t = jax.jit(lambda a: Tucker.from_dense(a, (3, 3, 3), n_iter=4).to_dense())(a)
    assert abs(np.linalg.norm(f64(t) - a) - errs[2]) <= slack


def test_truncate_is_st_hosvd_of_the_dense_tensor(rng):
    # multilinear rank (4, 4, 4): a (2, 3, 2) part with well-conditioned unfoldings (entries 50
    # at (0,0,0), (1,1,1), (0,2,1), (1,2,0): orthogonal rows, singular values 50 and 70.7) and
    # a tail of size ~2, so that the truncations have wide gaps; held with well-conditioned but
    # non-orthonormal factors, so that truncate has to orthonormalize them first
    shape = (5, 6, 7)
    core = 2 * rng.standard_normal((4, 4, 4))
    for idx in [(0, 0, 0), (1, 1, 1), (0, 2, 1), (1, 2, 0)]:
        core[idx] += 50
    factors = [
        np.linalg.qr(rng.standard_normal((n, 4)))[0]
        @ (np.eye(4) + 0.3 * rng.standard_normal((4, 4)))
        for n in shape
    ]
    t = Tucker(
        jnp.asarray(core, jnp.float32), tuple(jnp.asarray(f, jnp.float32) for f in factors), 1
    )
    dense = tensorly.tucker_to_tensor((f64(t.core), [f64(f) for f in t.factors]))
    norm = np.linalg.norm(dense)
    # backward errors, relative to ||T||: the QR of A_k (n_k r_k eps ||A_k||, Higham 19.4) moves
    # T by up to n_k r_k eps cond(A_k); each SVD of the small core by its larger dimension
    conds = [np.linalg.cond(f64(f)) for f in t.factors]
    backward = EPS32 * (sum(4 * n * c for n, c in zip(shape, conds, strict=True)) + 3 * 16)
    for rank in [(2, 3, 2), (1, 1, 1)]:
        ref, ranks, svals, _ = st_hosvd_ref(dense, rank)
        tol = sthosvd_tol(svals, ranks, norm, backward)
        # the check can tell a wrong truncation: one that keeps the wrong singular vectors is
        # off by at least the first discarded singular value of some mode
        assert tol < 0.1 * min(s[r] for s, r in zip(svals, ranks, strict=True) if r < len(s))
        tr = t.truncate(rank)
        assert tr.ranks == rank and tr.n_out == 1
        assert_within(tr.to_dense(), ref, tol)
    tr = t.truncate(rtol=0.2)
    _, ranks, _, _ = st_hosvd_ref(dense, rtol=0.2)
    assert tr.ranks == ranks == (2, 3, 2)
    assert np.linalg.norm(f64(tr.to_dense()) - dense) <= 0.2 * norm
    assert jax.jit(lambda t: t.truncate(2))(t).ranks == (2, 2, 2)


def test_from_matrix(rng):
    t = random_tucker(rng, (2, 3, 4, 2), (2, 2, 2, 2), n_out=2)
    w = t.to_matrix()
    r = Tucker.from_matrix(w, (2, 2, 2, 2), out_modes=(2, 3), in_modes=(4, 2))
    assert r.shape == (2, 3, 4, 2) and r.n_out == 2
    norm = np.linalg.norm(f64(w))
    np.testing.assert_allclose(r.to_matrix(), w, rtol=0, atol=4 * 24 * EPS32 * norm)
    assert Tucker.from_matrix(w, 2).shape == (2, 3, 2, 4)  # balanced_modes(d, 2)


# ---------------------------------------------------------------------------------------------
# init
# ---------------------------------------------------------------------------------------------

Z = 5.0  # standard errors allowed
# a 5% band on the std is [0.95^2, 1.05^2] on the variance: at least 9.75% either side
BAND = 1 - 0.95**2
SHAPES = {2: (40, 50), 3: (12, 15, 10), 4: (6, 8, 7, 9), 5: (4, 5, 6, 5, 4)}


def mean_square(t):
    """Mean square of the reconstructed entries from the Gram matrices of the factors:
    ``||T||_F^2 = <G, G ×_1 A_1^T A_1 ... ×_d A_d^T A_d>``."""
    h = t.core
    for k, f in enumerate(t.factors):
        h = jnp.moveaxis(jnp.tensordot(f.T @ f, h, axes=(1, k)), 0, k)
    return jnp.sum(h * t.core) / math.prod(t.shape)


@pytest.mark.parametrize("order", [2, 3, 4, 5])
@pytest.mark.parametrize("rank", [2, 8, 64])
def test_init_variance(order, rank):
    """Each module's mean square is one estimate of the target variance; the estimates of
    independent modules are averaged (entries of one module share its core and factors). Their
    coefficient of variation comes from the core's norm (about sqrt(2 / prod(r))) and the Gram
    matrices of the factors (about sqrt(2 / (n_k r_k)) a mode), with heavy tails at small
    ranks: measured up to 1.5 here (rank 2, order 5) and 0.75 with all ranks >= 4, so
    B = 16384 / min(r) >= 2048 modules put Z = 5 standard errors inside the 5% band; the test
    asserts that too, with the empirical standard error. Ranks are capped by the modes."""
    shape = SHAPES[order]
    n_out = order // 2
    target = 2 / (math.prod(shape[:n_out]) + math.prod(shape[n_out:]))  # glorot, the default
    ranks = resolve_ranks(rank, shape)
    keys = jax.random.split(jax.random.key(order * 100 + rank), max(2048, 16384 // min(ranks)))
    draw = lambda k: Tucker.init(shape, rank, key=k, n_out=n_out)  # noqa: E731
    ms, one = jax.jit(lambda ks: (jax.vmap(lambda k: mean_square(draw(k)))(ks), draw(ks[0])))(keys)
    assert all(r <= min(rank, n) for r, n in zip(one.ranks, shape, strict=True))
    ms = f64(ms)
    se = ms.std(ddof=1) / np.sqrt(len(ms))
    assert Z * se <= BAND * target, (Z * se / target, len(ms))
    assert abs(np.sqrt(ms.mean() / target) - 1) <= 0.05, np.sqrt(ms.mean() / target)
    dense = tensorly.tucker_to_tensor((f64(one.core), [f64(f) for f in one.factors]))
    bound = (order + sum(one.ranks)) * 2 * EPS32 * np.mean(tucker_abs(one) ** 2)
    assert abs(ms[0] - np.mean(dense**2)) <= bound


def test_init_schemes_small_and_ranks():
    t = Tucker.init((30, 40, 20), (4, 5, 6), key=jax.random.key(2), init="small", alpha=0.5)
    for a, width in [(t.core, 120), *((f, r) for f, r in zip(t.factors, (4, 5, 6), strict=True))]:
        var = 0.25 / width
        assert abs(np.mean(f64(a) ** 2) - var) <= Z * var * np.sqrt(2 / a.size)
    # "std" on a plain tensor needs no fans
    keys = jax.random.split(jax.random.key(3), 2048)
    ms = f64(
        jax.jit(
            jax.vmap(lambda k: mean_square(Tucker.init((6, 7, 8), 3, key=k, init="std", std=0.2)))
        )(keys)
    )
    assert Z * ms.std(ddof=1) / np.sqrt(2048) <= BAND * 0.04
    assert abs(np.sqrt(ms.mean() / 0.04) - 1) <= 0.05
    # ranks: an int caps every mode and the product of the others; defaults are balanced modes
    assert resolve_ranks(8, (2, 50)) == (2, 2)
    assert resolve_ranks(None, (3, 4, 20)) == (3, 4, 12)
    m = Tucker.init_matrix(24, 12, 3, key=jax.random.key(0), order=3)
    assert m.shape == (2, 4, 3, 2, 3, 2) and m.ranks == (2, 3, 3, 2, 3, 2) and m.n_out == 3


def test_stacked_init_and_filter_vmap(rng):
    keys = jax.random.split(jax.random.key(5), 3)
    stacked = jax.vmap(lambda k: Tucker.init_matrix(6, 8, 2, key=k))(keys)
    assert stacked.core.shape == (3, 2, 2, 2, 2)
    # member i is the module drawn with keys[i]
    first = Tucker.init_matrix(6, 8, 2, key=keys[0])
    np.testing.assert_allclose(stacked.core[0], first.core, rtol=4 * EPS32, atol=0)
    X = rng.standard_normal((3, 8)).astype(np.float32)
    Y = eqx.filter_vmap(lambda m, x: m(x))(stacked, X)
    for i in range(3):
        member = jax.tree.map(lambda a, i=i: a[i], stacked)
        W = tucker_loops(member.core, member.factors).reshape(6, 8)
        c = 4 + 2 + 8 + 8 + 6
        bound = c * EPS32 * (tucker_abs(member).reshape(6, 8) @ np.abs(f64(X[i])))
        assert_within(Y[i], W @ f64(X[i]), bound)


# ---------------------------------------------------------------------------------------------
# Gradients and bad input
# ---------------------------------------------------------------------------------------------


def test_gradients(rng, x64):
    g = jnp.asarray(rng.standard_normal((2, 2, 2)))
    fs = tuple(jnp.asarray(rng.standard_normal((n, 2))) for n in (3, 2, 4))
    x = jnp.asarray(rng.standard_normal((2, 8)))
    make = lambda g, *fs: Tucker(jnp.asarray(g), tuple(map(jnp.asarray, fs)), 1)  # noqa: E731
    check_grads(jax.jit(lambda g, *fs: make(g, *fs).to_dense()), (g, *fs), order=1)
    for name in sorted(NAMES - {"dense"}):  # "dense" is to_dense, above
        f = jax.jit(lambda x, g, *fs, n=name: make(g, *fs).apply(x, order=n))
        check_grads(f, (x, g, *fs), order=1)


def test_bad_input(rng):
    t = random_tucker(rng, (2, 3, 4), (2, 2, 2))
    msg = "no matrix view.*with_n_out"
    for call in (
        lambda: t.apply(jnp.ones((1, 12))),
        lambda: t(jnp.ones(12)),
        t.to_matrix,
        lambda: t.in_features,
        lambda: t.plan(2),
    ):
        with pytest.raises(ValueError, match=msg):
            call()
    with pytest.raises(ValueError, match=r"`n_out`.*\[1, 2\]"):
        t.with_n_out(3)
    # ranks
    with pytest.raises(ValueError, match=r"`rank\[1\]` must be an int in \[1, 3\].*size of mode 1"):
        Tucker.from_dense(jnp.ones((2, 3, 4)), (2, 4, 2))
    with pytest.raises(ValueError, match=r"`rank\[2\]` = 4 exceeds 2, the product of the other"):
        Tucker.from_dense(jnp.ones((2, 3, 4)), (1, 2, 4))
    with pytest.raises(ValueError, match="one entry per mode"):
        Tucker.from_dense(jnp.ones((2, 3, 4)), (1, 2))
    with pytest.raises(ValueError, match=r"`rank` must be an int >= 1"):
        Tucker.from_dense(jnp.ones((2, 3)), 0)
    with pytest.raises(TypeError, match="`rank`"):
        Tucker.from_dense(jnp.ones((2, 3)), 1.5)
    with pytest.raises(ValueError, match=r"rank\[0\]"):  # a core too large for its factor
        Tucker(jnp.ones((3, 2)), (jnp.ones((2, 3)), jnp.ones((4, 2))))
    with pytest.raises(ValueError, match=r"exceeds 2, the product"):
        Tucker(jnp.ones((3, 2)), (jnp.ones((4, 3)), jnp.ones((4, 2))))
    with pytest.raises((ValueError, TypeError), match=r"factors\[1\]|'factors'"):
        Tucker(jnp.ones((2, 2)), (jnp.ones((3, 2)), jnp.ones((4, 3))))
    with pytest.raises(ValueError, match="one matrix per axis"):
        Tucker(jnp.ones((2, 2, 2)), (jnp.ones((3, 2)), jnp.ones((4, 2))))
    with pytest.raises(ValueError, match=r"`rank\[0\]` must be an int in \[1, 2\].*current rank"):
        t.truncate((3, 2, 2))
    with pytest.raises(ValueError, match="pass `rank` or `rtol`"):
        t.truncate()
    # tolerances and iterations
    a = jnp.ones((3, 4))
    with pytest.raises(ValueError, match="at most one of `rank` and `rtol`"):
        Tucker.from_dense(a, 2, rtol=0.1)
    for bad in (-0.1, float("nan")):
        with pytest.raises(ValueError, match="`rtol`"):
            Tucker.from_dense(a, rtol=bad)
    with pytest.raises(ValueError, match="rank="):
        jax.jit(lambda a: Tucker.from_dense(a, rtol=0.1).to_dense())(a)
    with pytest.raises(ValueError, match="`n_iter`"):
        Tucker.from_dense(a, 2, n_iter=-1)
    with pytest.raises(ValueError, match="order >= 2"):
        Tucker.from_dense(jnp.ones(3))
    with pytest.raises(ValueError, match="`w` must be a matrix"):
        Tucker.from_matrix(jnp.ones((2, 3, 4)))
    with pytest.raises(ValueError, match="product of `in_modes` must be 4"):
        Tucker.from_matrix(a, in_modes=(3, 2))
    # init
    key = jax.random.key(0)
    with pytest.raises(ValueError, match=r"n_out=None.*pass `n_out`"):
        Tucker.init((3, 4), 2, key=key)
    with pytest.raises(ValueError, match="`init` must be one of"):
        Tucker.init((3, 4), 2, key=key, n_out=1, init="orthogonal")
    with pytest.raises(ValueError, match=r"`shape\[0\]` must be an int >= 1"):
        Tucker.init((0, 4), 2, key=key, n_out=1)
