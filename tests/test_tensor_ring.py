"""Tests of `TensorRing` against references written from its definition.

References (float64 NumPy on the float32 values the module sees, never the module itself):
``A[i] = trace(G_0[:, i_0, :] ... G_{d-1}[:, i_{d-1}, :])`` entry by entry (a loop over the
multi-indices), tensorly's ``tr_to_tensor`` on the same cores, ``x @ W.T`` with ``W`` from that
reference, and opt_einsum's cost of the same contraction path for the FLOP counts.

Tolerances (float32, ``eps = 2^-23``): an entry of the ring is a sum of ``r_0 ... r_{d-1}``
products of ``d`` factors computed as a chain of sums over the bonds; in any summation order its
error is at most ``(r_0 + ... + r_{d-1} + d) eps`` times the same sum over the absolute values
of the terms (Higham 3.5), which the reference computes on ``|G_k|``. Applying to ``x`` adds the
``d_in`` terms of each output. TR-SVD bounds are checked in float64, where the rounding of the
SVDs (backward error ``max(m, n) eps ||A||`` each, Higham 19) is far below the bound's slack.
"""

import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import opt_einsum
import pytest
from jax.test_util import check_grads
from tensorly.tr_tensor import tr_to_tensor

from factorjax.factorizations import _cost
from factorjax.factorizations.tensor_ring import TensorRing

EPS32 = float(np.finfo(np.float32).eps)
EPS64 = float(np.finfo(np.float64).eps)


# ---------------------------------------------------------------------------------------------
# References
# ---------------------------------------------------------------------------------------------


def f64(x):
    return np.asarray(x, np.float64)


def random_cores(rng, shape, ranks, dtype=np.float32):
    d = len(shape)
    return [
        rng.standard_normal((ranks[k], shape[k], ranks[(k + 1) % d])).astype(dtype)
        for k in range(d)
    ]


def ring(cores, n_out=None):
    return TensorRing(tuple(jnp.asarray(c) for c in cores), n_out)


def tr_reference(cores):
    """The definition, entry by entry: trace of the product of the slices."""
    cores = [f64(c) for c in cores]
    shape = tuple(c.shape[1] for c in cores)
    out = np.empty(shape)
    for idx in np.ndindex(*shape):
        m = np.eye(cores[0].shape[0])
        for k, i in enumerate(idx):
            m = m @ cores[k][:, i, :]
        out[idx] = np.trace(m)
    return out


def ring_tol(cores):
    """Entrywise rounding bound of a float32 reconstruction (module docstring)."""
    terms = sum(c.shape[0] for c in cores) + len(cores)
    return terms * EPS32 * np.max(tr_reference([np.abs(f64(c)) for c in cores]))


def matrix(t, n_out):
    return t.reshape(math.prod(t.shape[:n_out]), -1)


# ---------------------------------------------------------------------------------------------
# Reconstruction
# ---------------------------------------------------------------------------------------------

CASES = [
    ((5,), (3,)),  # one core: A[i] = trace(G[:, i, :])
    ((3, 4), (2, 3)),
    ((3, 4, 2), (3, 2, 4)),  # smallest bond is r_1: the trace is taken there
    ((2, 3, 2, 3), (1, 2, 3, 2)),  # r_0 = 1: a tensor train
    ((2, 2, 3, 2, 2), (2, 3, 1, 2, 4)),
]


@pytest.mark.parametrize("shape, ranks", CASES)
def test_to_dense_is_the_trace_definition_and_tensorly(rng, shape, ranks):
    cores = random_cores(rng, shape, ranks)
    T = ring(cores)
    assert T.shape == shape and T.ranks == ranks and T.rank == max(ranks)
    assert T.num_params == sum(c.size for c in cores)
    dense = T.to_dense()
    assert dense.shape == shape and dense.dtype == jnp.float32
    ref = tr_reference(cores)
    tol = ring_tol(cores)
    np.testing.assert_allclose(dense, ref, rtol=0, atol=tol)
    if len(shape) > 1:  # tensorly needs two cores
        np.testing.assert_allclose(
            tr_to_tensor([f64(c) for c in cores]), ref, rtol=0, atol=1e-12 * np.max(np.abs(ref))
        )


# shape, ranks, n_out: uneven modes and ranks. Between them they run every loop of the orders
# empty and non-empty: one input core / several, one output core / two / three.
APPLY_CASES = [
    ((3, 5), (2, 3), 1),
    ((2, 3, 2, 4, 3), (2, 3, 1, 4, 2), 1),
    ((2, 3, 2, 4, 3), (2, 3, 1, 4, 2), 3),
    ((2, 3, 4, 3), (3, 1, 2, 2), 3),
]
ORDERS = (
    "inputs-first",
    "inputs-first-reversed",
    "merged",
    "einsum-optimal",
    "einsum-greedy",
    "dense",
    "auto",
)


@jax.jit
def apply_every_order(T, xs):
    """Every order on every input of ``xs`` (one compilation)."""
    return [[T.apply(x, order=name) for name in ORDERS] for x in xs]


@pytest.mark.parametrize("shape, ranks, n_out", APPLY_CASES)
def test_every_order_is_x_times_w_transpose(rng, shape, ranks, n_out):
    cores = random_cores(rng, shape, ranks)
    T = ring(cores, n_out)
    W = matrix(tr_reference(cores), n_out)
    Wabs = matrix(tr_reference([np.abs(f64(c)) for c in cores]), n_out)
    d_out, d_in = W.shape
    assert (T.out_features, T.in_features) == (d_out, d_in)
    np.testing.assert_allclose(T.to_matrix(), W, rtol=0, atol=ring_tol(cores))
    assert [c.order.name for c in T.candidates(1)] == list(ORDERS[:-1])
    terms = sum(ranks) + len(shape) + d_in
    # a batch of one, and leading batch axes
    xs = [rng.standard_normal((*lead, d_in)).astype(np.float32) for lead in [(1,), (2, 3)]]
    for x, ys in zip(xs, apply_every_order(T, xs), strict=True):
        ref = f64(x) @ W.T
        tol = terms * EPS32 * np.max(np.abs(f64(x)) @ Wabs.T)
        for name, y in zip(ORDERS, ys, strict=True):
            assert y.shape == ref.shape and y.dtype == jnp.float32
            np.testing.assert_allclose(y, ref, rtol=0, atol=tol, err_msg=name)


def test_call_vmap_and_eager_apply(rng):
    cores = random_cores(rng, (2, 3, 4), (2, 3, 2))
    T = ring(cores, 1)
    W = matrix(tr_reference(cores), 1)
    Wabs = matrix(tr_reference([np.abs(f64(c)) for c in cores]), 1)
    x = rng.standard_normal((3, 12)).astype(np.float32)
    ref = f64(x) @ W.T
    tol = (7 + 3 + 12) * EPS32 * np.max(np.abs(f64(x)) @ Wabs.T)
    np.testing.assert_allclose(T(x[0]), ref[0], rtol=0, atol=tol)
    np.testing.assert_allclose(jax.vmap(T)(x), ref, rtol=0, atol=tol)
    np.testing.assert_allclose(T.apply(x, order="inputs-first"), ref, rtol=0, atol=tol)


@pytest.mark.parametrize("batch", [1, 7, 4096])
def test_plan_picks_the_cheapest_candidate(rng, batch):
    T = ring(random_cores(rng, (4, 4, 4, 4), (3, 3, 3, 3)), 2)
    plan = T.plan(batch)
    cands = T.candidates(batch)
    assert plan.order in {c.order.name for c in cands}
    best = min((c.order for c in cands), key=_cost.score)  # the planner's scoring
    assert plan.order == best.name and plan.flops == best.flops


def linear_path(sequence, n):
    """opt_einsum path contracting operands ``sequence[0], sequence[1], ...`` one after another
    into an accumulator (positions in opt_einsum's shrinking operand list)."""
    ops, path = list(range(n)), []
    acc = sequence[0]
    for nxt in sequence[1:]:
        i, j = ops.index(acc), ops.index(nxt)
        path.append((min(i, j), max(i, j)))
        ops = [o for o in ops if o not in (acc, nxt)] + [("acc", nxt)]
        acc = ("acc", nxt)
    return path


def network(T, batch):
    """The einsum of ``x W^T`` as one network: operand 0 is ``x``, operand ``k + 1`` core ``k``."""
    d, p = len(T.shape), T.n_out
    bond = [opt_einsum.get_symbol(k) for k in range(d)]
    mode = [opt_einsum.get_symbol(d + k) for k in range(d)]
    b = opt_einsum.get_symbol(2 * d)
    terms = [b + "".join(mode[p:])] + [bond[k] + mode[k] + bond[(k + 1) % d] for k in range(d)]
    shapes = [(batch, *T.shape[p:])] + [c.shape for c in T.cores]
    return ",".join(terms) + "->" + b + "".join(mode[:p]), shapes


def path_cost(eq, shapes, path):
    return opt_einsum.contract_path(eq, *shapes, shapes=True, optimize=path)[1].opt_cost


def test_flops_equal_opt_einsum_costs_of_the_same_paths(rng):
    T = ring(random_cores(rng, (2, 3, 4, 5, 3), (2, 3, 4, 1, 5)), 2)
    B, d, p = 6, 5, 2
    eq, shapes = network(T, B)
    ops = d + 1
    flops = {c.order.name: c.order.flops for c in T.candidates(B)}
    inputs = [k + 1 for k in range(p, d)]
    outputs = [k + 1 for k in range(p)]
    assert flops["inputs-first"] == path_cost(
        eq, shapes, linear_path([0, *inputs[::-1], *outputs], ops)
    )
    assert flops["inputs-first-reversed"] == path_cost(
        eq, shapes, linear_path([0, *inputs, *outputs[::-1]], ops)
    )
    # merged: the input half (cores 2, 3, 4), the output half (0, 1), then x, then the output
    merged = [(3, 4), (3, 4), (1, 2), (0, 1), (0, 1)]
    assert flops["merged"] == path_cost(eq, shapes, merged)
    # to_dense: the cores alone, from the smallest bond (r_3 = 1) around the ring
    inputs_eq, _ = eq.split("->")
    all_modes = "".join(opt_einsum.get_symbol(d + k) for k in range(d))
    ring_eq = inputs_eq.split(",", 1)[1] + "->" + all_modes
    assert T.reconstruction_flops() == path_cost(
        ring_eq, shapes[1:], linear_path([3, 4, 0, 1, 2], d)
    )
    assert flops["dense"] == T.reconstruction_flops() + 2 * B * 60 * 6
    # a hand count: shape (2, 3, 4), ranks 2, n_out = 1, inputs-first:
    # x (B, 3, 4) with G_2: 2 B 12 r r; with G_1: 2 B r 3 r r; closing with G_0: 2 B r r 2
    S = ring(random_cores(rng, (2, 3, 4), (2, 2, 2)), 1)
    assert S.candidates(B)[0].order.flops == B * (2 * 12 * 4 + 2 * 3 * 8 + 2 * 4 * 2)


# ---------------------------------------------------------------------------------------------
# TR-SVD
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(4, 3, 5, 4), (3, 2, 3, 2, 3)])
def test_from_dense_rtol_meets_the_tr_svd_bound(rng, x64, shape):
    # a random tensor (slowly decaying spectra) plus a ring of ranks 2: every rtol truncates
    A = rng.standard_normal(shape) + 3 * tr_reference(random_cores(rng, shape, (2,) * len(shape)))
    norm = np.linalg.norm(A)
    # d SVDs, each backward stable within max(m, n) eps ||.|| <= prod(shape) eps ||A||
    slack = len(shape) * math.prod(shape) * EPS64 * norm
    full = TensorRing.from_dense(A)
    np.testing.assert_allclose(full.to_dense(), A, rtol=0, atol=slack)
    sizes = []
    for rtol in (0.05, 0.2, 0.5):
        T = TensorRing.from_dense(A, rtol=rtol)
        assert T.dtype == jnp.float64
        err = np.linalg.norm(f64(T.to_dense()) - A)
        assert err <= rtol * norm + slack, (rtol, err / norm, T.ranks)
        sizes.append(T.num_params)
    assert sizes == sorted(sizes, reverse=True) and sizes[-1] < full.num_params


def test_from_dense_recovers_a_known_ring(rng, x64):
    shape, ranks = (4, 3, 5, 4), (2, 2, 2, 2)
    cores = random_cores(rng, shape, ranks, np.float64)
    A = tr_reference(cores)
    tol = 4 * math.prod(shape) * EPS64 * np.linalg.norm(A)
    for T in (TensorRing.from_dense(A, rtol=1e-9), TensorRing.from_dense(A)):
        np.testing.assert_allclose(T.to_dense(), A, rtol=0, atol=tol)
    # the first unfolding has rank r_0 r_1 = 4, split balanced
    assert TensorRing.from_dense(A, rtol=1e-9).ranks[:2] == (2, 2)
    # a tensor train (r_0 = 1) is recovered at its own ranks, also under jit
    tt = random_cores(rng, shape, (1, 3, 4, 2), np.float64)
    B = tr_reference(tt)
    for T in (
        TensorRing.from_dense(B, (1, 3, 4, 2)),
        jax.jit(lambda b: TensorRing.from_dense(b, (1, 3, 4, 2)))(B),
    ):
        assert T.ranks == (1, 3, 4, 2)
        np.testing.assert_allclose(T.to_dense(), B, rtol=0, atol=tol)


def test_from_dense_int_rank_caps_every_bond(rng):
    A = rng.standard_normal((4, 5, 6, 3)).astype(np.float32)
    ranks = jax.jit(lambda a: [TensorRing.from_dense(a, r).ranks for r in (1, 3)])(A)
    # r_0 r_1 <= min(4, 90) with both <= 3: (2, 2); the others min(3, what the shapes allow)
    assert ranks == [(1, 1, 1, 1), (2, 2, 3, 3)]
    # a 6 x 3 matrix: r_0 r_1 <= 3, so (1, 3) (3 is prime) although the cap 5 allows more
    assert jax.eval_shape(lambda a: TensorRing.from_dense(a, 5), A[0, 0]).ranks == (1, 3)


def test_from_matrix_and_init_matrix_modes(rng):
    w = rng.standard_normal((12, 6)).astype(np.float32)
    T = TensorRing.from_matrix(w)  # exact, balanced modes (3, 4) and (2, 3)
    assert T.shape == (3, 4, 2, 3) and T.n_out == 2
    # d SVDs, each backward stable with error <= max(m, n) eps ||.|| <= 72 eps ||w||
    err = np.linalg.norm(f64(T.to_matrix()) - w)
    assert err <= 4 * 72 * EPS32 * np.linalg.norm(f64(w))
    S = jax.eval_shape(lambda w: TensorRing.from_matrix(w, 2, out_modes=(12,), in_modes=(2, 3)), w)
    assert S.shape == (12, 2, 3) and S.n_out == 1 and S.rank <= 2
    key = jax.random.key(0)
    M = jax.eval_shape(
        lambda: TensorRing.init_matrix(64, 30, (2, 3, 4, 5, 6), key=key, out_modes=(4, 4, 4))
    )
    assert M.shape == (4, 4, 4, 5, 6) and M.ranks == (2, 3, 4, 5, 6) and M.n_out == 3
    assert M.out_features == 64 and M.in_features == 30


# ---------------------------------------------------------------------------------------------
# truncate
# ---------------------------------------------------------------------------------------------


def redundant(rng, cores, extra):
    """The same ring with every bond padded by ``extra`` zero slices and gauged by random
    invertible matrices: ``G_k -> M_k^{-1} G_k M_{k+1}`` (the trace is unchanged)."""
    d = len(cores)
    padded = []
    for c in cores:
        r, n, s = c.shape
        p = np.zeros((r + extra, n, s + extra))
        p[:r, :, :s] = c
        padded.append(p)
    gauges = [np.eye(c.shape[0]) + 0.3 * rng.standard_normal((c.shape[0],) * 2) for c in padded]
    return [
        np.einsum("ab,bnc,cd->and", np.linalg.inv(gauges[k]), padded[k], gauges[(k + 1) % d])
        for k in range(d)
    ]


@pytest.mark.parametrize("shape, ranks", [((4, 5), (2, 3)), ((3, 4, 5, 3), (2, 3, 2, 3))])
def test_truncate_recovers_a_padded_and_gauged_ring(rng, x64, shape, ranks):
    cores = random_cores(rng, shape, ranks, np.float64)
    A = tr_reference(cores)
    big = ring(redundant(rng, cores, 2))
    assert big.ranks == tuple(r + 2 for r in ranks)
    # Each QR / SVD of the two passes (2 sweeps over d cores each) moves one core by at most
    # m eps ||G_k|| (m: its largest matrix dimension); a change E_k of core k moves the ring by
    # at most ||E_k||_F prod_{j != k} ||G_j||_F (entries of a trace of products).
    m = max(c.shape[0] * c.shape[1] for c in big.cores) * max(c.shape[2] for c in big.cores)
    tol = 4 * len(shape) * m * EPS64 * math.prod(np.linalg.norm(c) for c in big.cores)
    assert tol < 1e-8 * np.max(np.abs(A))
    np.testing.assert_allclose(big.to_dense(), A, rtol=0, atol=tol)
    # truncated to the true ranks, and at its own ranks (which only re-gauges)
    T, same = jax.jit(lambda t: (t.truncate(ranks), t.truncate(t.rank).to_dense()))(big)
    assert T.ranks == ranks
    np.testing.assert_allclose(T.to_dense(), A, rtol=0, atol=tol)
    np.testing.assert_allclose(same, A, rtol=0, atol=tol)


def test_truncate_lowers_ranks_and_keeps_n_out(rng):
    T = ring(random_cores(rng, (3, 4, 5, 3), (5, 4, 6, 3)), 2)
    S = T.truncate(3)
    assert S.ranks == (3, 3, 3, 3) and S.n_out == 2 and S.shape == T.shape
    ref = f64(T.to_dense())
    err = np.linalg.norm(f64(S.to_dense()) - ref) / np.linalg.norm(ref)
    assert 0 < err < 1
    one_cores = random_cores(rng, (6,), (3,))
    one = ring(one_cores)
    np.testing.assert_allclose(
        one.truncate(1).to_dense(), tr_reference(one_cores), rtol=0, atol=ring_tol(one_cores)
    )
    assert one.truncate(2).ranks == (2,)


# ---------------------------------------------------------------------------------------------
# init
# ---------------------------------------------------------------------------------------------

Z = 5.0
# Mode sizes per order and rank: the dense tensors stay small (<= 1024 entries) so that many
# independent draws are cheap; rank 64 uses small modes (its reconstruction costs ~2 * 64^3 per
# entry and step).
INIT_SHAPES = {
    2: {2: (32, 32), 8: (32, 32), 64: (16, 16)},
    3: {2: (8, 8, 8), 8: (8, 8, 8), 64: (4, 4, 4)},
    4: {2: (4, 4, 4, 4), 8: (4, 4, 4, 4), 64: (2, 2, 2, 2)},
    5: {2: (4, 4, 4, 4, 4), 8: (3, 3, 3, 3, 3), 64: (2, 2, 2, 2, 2)},
}


@pytest.mark.parametrize("order", [2, 3, 4, 5])
@pytest.mark.parametrize("rank", [2, 8, 64])
def test_init_reconstructed_std_within_5_percent(order, rank):
    """The std of the entries, pooled over many independent draws, is within 5% of glorot's.

    The entries of one draw share cores and are sums of products of ``d`` Gaussians
    (heavy-tailed at low rank), so the mean square of one draw fluctuates with a coefficient of
    variation ``cv`` that grows as the rank falls and the order rises (from ~0.06 to ~1 here).
    The pooled std over ``B`` draws has relative standard error ``cv / (2 sqrt(B))``; for ``Z``
    standard errors to fit in the 5% tolerance, ``B >= (Z cv / 0.1)^2``. A pilot chunk of draws
    measures ``cv``; the test draws twice that many (the estimate of ``cv`` is itself noisy
    for heavy tails), in chunks of one compiled shape, and asserts the margin on the final
    spread, so too few draws fail loudly instead of flakily.
    """
    shape = INIT_SHAPES[order][rank]
    n_out = order // 2
    fan_out, fan_in = math.prod(shape[:n_out]), math.prod(shape[n_out:])
    target = math.sqrt(2.0 / (fan_in + fan_out))  # glorot
    chunk = 64 if rank == 64 else 256
    draw = jax.jit(
        jax.vmap(
            lambda k: jnp.mean(TensorRing.init(shape, rank, key=k, n_out=n_out).to_dense() ** 2)
        )
    )
    seed = jax.random.key(1000 * order + rank)
    chunks = [np.asarray(draw(jax.random.split(jax.random.fold_in(seed, 0), chunk)))]
    cv = chunks[0].std(ddof=1) / chunks[0].mean()
    needed = 2 * (Z * cv / 0.1) ** 2
    for i in range(1, math.ceil(needed / chunk)):
        chunks.append(np.asarray(draw(jax.random.split(jax.random.fold_in(seed, i), chunk))))
    ms = np.concatenate(chunks).astype(np.float64)
    std = math.sqrt(ms.mean())
    se = ms.std(ddof=1) / math.sqrt(len(ms)) / (2 * std)  # delta method: se of sqrt(mean)
    assert Z * se <= 0.05 * target, (Z * se / target, len(ms), "too few draws for a 5% check")
    assert abs(std / target - 1) <= 0.05, (std, target)


def test_init_small_std_and_shapes():
    alpha, ranks, shape = 0.5, (2, 8, 3), (5, 4, 6)
    keys = jax.random.split(jax.random.key(7), 256)
    T = jax.jit(
        jax.vmap(lambda k: TensorRing.init(shape, ranks, key=k, init="small", alpha=alpha))
    )(keys)
    for k, c in enumerate(T.cores):
        assert c.shape == (256, ranks[k], shape[k], ranks[(k + 1) % 3])
        sigma2 = alpha**2 / ranks[k]  # its leading bond
        x = f64(c).ravel()
        se = sigma2 * math.sqrt(2.0 / x.size)  # exact for i.i.d. normal entries
        assert abs(np.mean(x**2) - sigma2) <= Z * se
    S = TensorRing.init(shape, 2, key=jax.random.key(0), init="std", std=0.1)
    assert S.n_out is None and S.ranks == (2, 2, 2) and S.dtype == jnp.float32
    assert not np.array_equal(
        S.cores[0][:, :4], S.cores[1][:, :4, :2]
    )  # different parts of the draw
    H = jax.eval_shape(
        lambda: TensorRing.init(shape, 2, key=jax.random.key(0), n_out=1, dtype=jnp.float16)
    )
    assert H.dtype == jnp.float16 and H.n_out == 1


# ---------------------------------------------------------------------------------------------
# Gradients, transformations
# ---------------------------------------------------------------------------------------------


def test_gradients(rng, x64):
    cores = tuple(jnp.asarray(c) for c in random_cores(rng, (2, 3, 2), (2, 1, 3), np.float64))
    x = jnp.asarray(rng.standard_normal((2, 6)))

    def every_order(cs, x):  # one function, so one compilation, checks the four orders
        T = TensorRing(tuple(jnp.asarray(c) for c in cs), 1)
        ys = [T.apply(x, order=name) for name in ORDERS[:-1]]
        return jnp.concatenate([y.ravel() for y in [*ys, T.to_dense()]])

    check_grads(jax.jit(every_order), (cores, x), order=1)


def test_filter_vmap_over_stacked_rings(rng):
    keys = jax.random.split(jax.random.key(3), 4)
    stacked = jax.jit(jax.vmap(lambda k: TensorRing.init_matrix(6, 4, 2, key=k)))(keys)
    shapes = [(4, 2, 2, 2), (4, 2, 3, 2), (4, 2, 2, 2), (4, 2, 2, 2)]  # modes (2, 3), (2, 2)
    assert [c.shape for c in stacked.cores] == shapes
    assert stacked.n_out == 2
    X = rng.standard_normal((4, 4)).astype(np.float32)
    Y = eqx.filter_jit(eqx.filter_vmap(lambda m, x: m(x)))(stacked, X)
    single = TensorRing.init_matrix(6, 4, 2, key=keys[1])  # member 1 is drawn with keys[1]
    for a, b in zip(single.cores, stacked.cores, strict=True):
        np.testing.assert_allclose(a, b[1], rtol=2 * EPS32, atol=0)
    for i in range(4):
        cores = [c[i] for c in stacked.cores]
        W = matrix(tr_reference(cores), 2)
        Wabs = matrix(tr_reference([np.abs(f64(c)) for c in cores]), 2)
        tol = (8 + 4 + 4) * EPS32 * np.max(Wabs @ np.abs(f64(X[i])))
        np.testing.assert_allclose(Y[i], W @ X[i], rtol=0, atol=tol)


# ---------------------------------------------------------------------------------------------
# Bad input
# ---------------------------------------------------------------------------------------------


def test_bad_input(rng):
    key = jax.random.key(0)
    with pytest.raises(ValueError, match=r"`rank` must be an int or a tuple of d = 3"):
        TensorRing.init((2, 3, 4), (2, 2), key=key, init="std", std=1.0)
    with pytest.raises(ValueError, match=r"`rank\[1\]` must be an int >= 1"):
        TensorRing.init((2, 3, 4), (2, 0, 2), key=key, init="std", std=1.0)
    with pytest.raises(ValueError, match="`shape`"):
        TensorRing.init((), 2, key=key)
    with pytest.raises(ValueError, match=r"`n_out`.*\[1, 2\]"):
        TensorRing.init((2, 3, 4), 2, key=key, n_out=3)
    with pytest.raises(ValueError, match="pass `n_out`"):
        TensorRing.init((2, 3, 4), 2, key=key)  # glorot needs the fans of a matrix view
    with pytest.raises(ValueError, match=r"product of `out_modes` must be 12"):
        TensorRing.init_matrix(12, 6, 2, key=key, out_modes=(3, 5))
    A = rng.standard_normal((3, 4, 5)).astype(np.float32)
    with pytest.raises(ValueError, match=r"`rank` does not fit.*r_0 r_1.*at most 3"):
        TensorRing.from_dense(A, (2, 2, 2))
    with pytest.raises(ValueError, match=r"`rank` does not fit.*r_2 must be at most 5"):
        TensorRing.from_dense(A, (1, 3, 6))
    for bad in (0, -0.1, float("nan")):
        with pytest.raises(ValueError, match="`rtol`"):
            TensorRing.from_dense(A, rtol=bad)
    with pytest.raises(ValueError, match="at most one of `rank` and `rtol`"):
        TensorRing.from_dense(A, 2, rtol=0.1)
    with pytest.raises(ValueError, match="rank="):
        jax.jit(lambda a: TensorRing.from_dense(a, rtol=0.1).to_dense())(A)
    with pytest.raises(ValueError, match="`w` must be a matrix"):
        TensorRing.from_matrix(A)
    T = ring(random_cores(rng, (3, 4, 5), (2, 3, 2)))
    with pytest.raises(ValueError, match=r"plain tensor.*n_out"):
        T.apply(np.ones((2, 20), np.float32))
    with pytest.raises(ValueError, match="plain tensor"):
        T.to_matrix()
    with pytest.raises(ValueError, match=r"`rank` must be at most the current ranks"):
        T.truncate(4)
    with pytest.raises(ValueError, match=r"`rank` must be at most the current ranks"):
        T.truncate((2, 3, 3))
    with pytest.raises(ValueError, match="`x` must have d_in = 20"):
        TensorRing(T.cores, 1).apply(np.ones((2, 12), np.float32))
    with pytest.raises(ValueError, match="the ring does not close"):
        TensorRing((jnp.ones((2, 3, 3)), jnp.ones((3, 4, 3))))
    with pytest.raises((ValueError, TypeError), match=r"3-D|cores"):
        TensorRing((jnp.ones((2, 3)),))
    with pytest.raises(ValueError, match=r"`n_out`"):
        TensorRing(T.cores, 3)
