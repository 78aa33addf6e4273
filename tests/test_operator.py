"""The planner of `AbstractOperator`: choosing among candidate orders, and its refusals."""

import collections
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

import factorjax
from factorjax import Kronecker, TTMatrix
from factorjax.factorizations import _cost, _operator, _tune
from factorjax.factorizations._operator import Candidate, Order, Plan, choose


def _cands(*orders):
    return tuple(Candidate(o, lambda x, o=o: x) for o in orders)


def test_choose_weights_chains_against_one_matmul():
    """A chain is chosen over "dense" only when its cost (FLOPs times CHAIN_PENALTY, plus
    BYTE_COST per byte of its peak) is lower."""
    p, b = _cost.CHAIN_PENALTY, _cost.BYTE_COST
    gemm = 10**6
    dense = Order("dense", gemm + 100, 64, gemm)  # 100 FLOPs of reconstruction, also a chain
    dense_cost = 100 * p + gemm + 64 * b
    cheap = Order("chain", int((dense_cost - 8 * b) / p) - 1, 8)
    dear = Order("chain", int((dense_cost - 8 * b) / p) + 1, 8)
    assert choose(_cands(cheap, dense)).order.name == "chain"
    assert choose(_cands(dear, dense)).order.name == "dense"
    # A large intermediate costs: the same FLOPs with a peak of 1 MB lose to dense.
    heavy = Order("chain", cheap.flops, 2**20)
    assert choose(_cands(heavy, dense)).order.name == "dense"


def test_choose_breaks_ties_by_peak_memory():
    a, b = Order("a", 100, 64), Order("b", 100, 8)
    assert choose(_cands(a, b)).order.name == "b"


def test_forced_order_and_refusals():
    W = TTMatrix.init(64, 64, 4, key=jax.random.key(0))
    names = [o.name for o in W.plan(8).candidates]
    assert "dense" in names and len(names) >= 3
    assert W.plan(8, order="dense").order == "dense"
    with pytest.raises(
        ValueError, match=r"`order` must be one of 'auto', .*'dense'.*got 'fastest'"
    ):
        W.apply(jnp.ones((2, 64)), order="fastest")
    for bad in (0, -3, 2.0, True):
        with pytest.raises(ValueError, match="`batch` must be an int >= 1"):
            W.plan(bad)
    with pytest.raises(ValueError, match="d_in = 64 features"):
        W.apply(jnp.ones((2, 63)))
    with pytest.raises(ValueError, match="one unbatched input of shape"):
        W(jnp.ones((2, 64)))


def test_plan_follows_the_batch_size():
    """One operator, two batch sizes, two orders: the choice is made at trace time."""

    W = Kronecker.init(1024, 1024, 64, key=jax.random.key(0))
    small, large = W.plan(1), W.plan(1 << 16)

    def dense(plan):
        return {o.name: o for o in plan.candidates}["dense"].flops

    # one input: the factors meet it one at a time, over 10x fewer FLOPs than rebuilding W
    assert small.order != "dense" and small.flops * 10 < dense(small)
    # 2^16 inputs: W is rebuilt once and multiplied (by "dense", or by an einsum path that
    # takes the same route at the same FLOPs)
    assert large.flops == dense(large)
    x = jax.random.normal(jax.random.key(1), (3, 1024))
    want = np.asarray(x) @ np.asarray(W.to_matrix()).T
    # float32 sums of 1024 products: about 1024 eps = 1.2e-4 relative to the largest entry.
    np.testing.assert_allclose(W.apply(x), want, rtol=2e-4, atol=2e-4 * np.abs(want).max())


def test_matmul_t_is_x_times_m_transpose_at_every_batch(rng, x64):
    """`matmul_t` takes another route for a single row; both give ``x m^T`` and its gradient."""
    m = jnp.asarray(rng.standard_normal((5, 7)))
    for b in (1, 3):
        x = jnp.asarray(rng.standard_normal((b, 7)))
        y = _operator.matmul_t(x, m)
        assert y.shape == (b, 5)
        np.testing.assert_allclose(y, np.asarray(x) @ np.asarray(m).T, rtol=1e-13, atol=1e-13)
        check_grads(jax.jit(_operator.matmul_t), (x, m), order=2)
    # the gradients with respect to one operand only (the other's tangent a symbolic zero),
    # under jit and under vmap over a stack of weights, against g^T x and g m
    x = jnp.asarray(rng.standard_normal((4, 7)))
    g = rng.standard_normal((4, 5))

    def pull(x, m):
        return jax.vjp(_operator.matmul_t, x, m)[1](jnp.asarray(g))

    np.testing.assert_allclose(
        jax.jit(jax.grad(lambda m: jnp.sum(g * _operator.matmul_t(x, m))))(m),
        g.T @ np.asarray(x),
        rtol=1e-13,
    )
    np.testing.assert_allclose(
        jax.grad(lambda x: jnp.sum(g * _operator.matmul_t(x, m)))(x), g @ np.asarray(m), rtol=1e-13
    )
    ms = jnp.stack([m, 2 * m])
    gx, gm = jax.jit(jax.vmap(pull, in_axes=(None, 0)))(x, ms)
    np.testing.assert_allclose(gm, np.stack([g.T @ np.asarray(x)] * 2), rtol=1e-13)
    np.testing.assert_allclose(gx[1], 2 * g @ np.asarray(m), rtol=1e-13)


@pytest.mark.parametrize("lead", [1, 3])
def test_left_matmul_is_a_times_every_slice(rng, x64, lead):
    """``left_matmul(a, y)[p] = a @ y[p]``, written out entry by entry, and its gradient."""
    a = jnp.asarray(rng.standard_normal((4, 5)))
    y = jnp.asarray(rng.standard_normal((lead, 5, 6)))
    want = np.zeros((lead, 4, 6))
    for p in range(lead):
        for i in range(4):
            for q in range(6):
                want[p, i, q] = sum(float(a[i, k] * y[p, k, q]) for k in range(5))
    got = _operator.left_matmul(a, y)
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-13, atol=1e-13)
    check_grads(jax.jit(_operator.left_matmul), (a, y), order=2)
    ys = jnp.stack([y, 2 * y])
    np.testing.assert_allclose(
        jax.vmap(_operator.left_matmul, in_axes=(None, 0))(a, ys)[1], 2 * want, rtol=1e-13
    )


@pytest.mark.parametrize(
    "make",
    [
        lambda k: TTMatrix.init(24, 12, 3, key=k, out_modes=(2, 3, 4), in_modes=(3, 2, 2)),
        lambda k: factorjax.Tucker.init_matrix(
            24, 12, (2, 2, 3, 2), key=k, out_modes=(4, 6), in_modes=(3, 4)
        ),
        lambda k: factorjax.CP.init_matrix(24, 12, 3, key=k, out_modes=(4, 6), in_modes=(3, 4)),
        lambda k: factorjax.LowRank.init(24, 12, 3, key=k),
    ],
    ids=["tt", "tucker", "cp", "lowrank"],
)
def test_every_order_at_batch_one_and_its_gradient(make, x64):
    """A batch of one takes unbatched contractions (`matmul_t`, einsum paths without the
    batch label): every order against ``x W^T`` from the dense weight, and its gradient with
    respect to the factors and the input by finite differences."""
    W = make(jax.random.key(0))
    x = jax.random.normal(jax.random.key(1), (1, W.in_features), jnp.float64)
    W = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), W)
    want = np.asarray(x) @ np.asarray(W.to_matrix()).T
    for c in W.candidates(1):
        name = c.order.name
        y = W.apply(x, order=name)
        np.testing.assert_allclose(y, want, rtol=1e-12, atol=1e-12, err_msg=name)
        f = jax.jit(lambda W, x, n=name: W.apply(x, order=n))
        check_grads(f, (W, x), order=1, modes=["rev"])


# ---------------------------------------------------------------------------------------------
# Paths of a tensor network, and measured plans
# ---------------------------------------------------------------------------------------------


def test_sequential_path_contracts_in_the_given_order(rng):
    import opt_einsum

    # opt_einsum appends each result to the end of the operand list
    assert _operator.sequential_path(4, [0, 3, 2, 1]) == ((0, 3), (1, 2), (0, 1))
    assert _operator.sequential_path(4, [0, 1, 2, 3]) == ((0, 1), (0, 2), (0, 1))
    eq = "ab,bc,cd,de->ae"
    ops = [rng.standard_normal(s) for s in [(2, 3), (3, 4), (4, 5), (5, 6)]]
    want = ops[0] @ ops[1] @ ops[2] @ ops[3]
    for order in ([0, 1, 2, 3], [3, 2, 1, 0], [1, 2, 0, 3], [2, 1, 3, 0]):
        path = _operator.sequential_path(4, order)
        # the first pair is the first two of `order`, and the path contracts all four
        _, info = opt_einsum.contract_path(eq, *ops, optimize=list(path))
        assert set(info.contraction_list[0][0]) == set(order[:2])
        np.testing.assert_allclose(opt_einsum.contract(eq, *ops, optimize=list(path)), want)


def test_pairwise_path_contracts_the_intermediates_holding_each_pair(rng):
    import opt_einsum

    # (1, 2), then the result (holding 1) with 3, then 0 with it; (0, 2) is already done
    path = _operator.pairwise_path(4, [(1, 2), (1, 3), (0, 1), (0, 2)])
    assert path == ((1, 2), (1, 2), (0, 1))
    eq = "ab,bc,cd,de->ae"
    ops = [rng.standard_normal(s) for s in [(2, 3), (3, 4), (4, 5), (5, 6)]]
    _, info = opt_einsum.contract_path(eq, *ops, optimize=list(path))
    assert [set(step[0]) for step in info.contraction_list] == [{1, 2}, {1, 2}, {0, 1}]
    want = ops[0] @ ops[1] @ ops[2] @ ops[3]
    np.testing.assert_allclose(opt_einsum.contract(eq, *ops, optimize=list(path)), want)


def _small_ttm():
    return TTMatrix.init(24, 12, 3, key=jax.random.key(0), out_modes=(2, 3, 4), in_modes=(3, 2, 2))


@pytest.fixture
def quick_tuning(monkeypatch):
    """One short block per candidate: the tests check what is measured and kept, not speed."""
    monkeypatch.setattr(_tune, "_ROUNDS", 1)
    monkeypatch.setattr(_tune, "_MIN_BLOCK_S", 0.0)
    _tune._TUNED.clear()


def test_tune_times_every_candidate_and_caches_per_shape(quick_tuning, monkeypatch):
    monkeypatch.setattr(_tune, "_UNTIMED_ABOVE", math.inf)
    W = _small_ttm()
    plan = W.tune(4, grad=False)  # a real measurement (one short block per order)
    names = {c.order.name for c in W.candidates(4)}
    assert {o.name for o in plan.candidates} == names
    assert plan.seconds is not None and len(plan.seconds) == len(names)
    assert all(0 < s < math.inf for s in plan.seconds)
    assert list(plan.seconds) == sorted(plan.seconds)
    assert plan.order == plan.candidates[0].name and plan.batch == 4
    assert "ms" in plan.table()
    # cached per shape: other values of the same shapes reuse it; another batch, `grad` or
    # shape measures anew (counted with a stand-in for the measurement)
    W2 = TTMatrix.init(24, 12, 3, key=jax.random.key(5), out_modes=(2, 3, 4), in_modes=(3, 2, 2))
    assert W2.tune(4, grad=False) is plan
    calls = []
    monkeypatch.setattr(_tune, "_measure", lambda op, b, g: calls.append((b, g)) or plan)
    W.tune(4)
    W.tune(5, grad=False)
    W.plan(4, order="tuned")  # = W.tune(4): cached
    W.truncate(2).tune(4, grad=False)
    assert calls == [(4, True), (5, False), (4, False)]
    assert len(_tune._TUNED) == 4


@pytest.mark.parametrize("small_call_s, compiles", [(math.inf, 3), (0.0, 1)])
def test_tune_compiles_small_calls_several_times(quick_tuning, monkeypatch, small_call_s, compiles):
    """Candidates whose call is under `_SMALL_CALL_S` are compiled `_COMPILES` times (their
    time is the median over compilations); longer ones once. Counted by the traces of each
    order: one per compilation."""
    monkeypatch.setattr(_tune, "_UNTIMED_ABOVE", math.inf)
    monkeypatch.setattr(_tune, "_SMALL_CALL_S", small_call_s)
    monkeypatch.setattr(_tune, "_COMPILES", 3)
    traced = collections.Counter()
    real = _tune._output_and_grad

    def counting(w, x, g, order):
        traced[order] += 1
        return real(w, x, g, order)

    monkeypatch.setattr(_tune, "_output_and_grad", counting)
    W = _small_ttm()
    plan = W.tune(4)
    names = {c.order.name for c in W.candidates(4)}
    assert traced == dict.fromkeys(names, compiles)
    assert all(0 < s < math.inf for s in plan.seconds)
    assert list(plan.seconds) == sorted(plan.seconds)


def test_tune_leaves_untimed_the_orders_the_model_scores_far_above_its_cheapest(
    quick_tuning, monkeypatch
):
    W = TTMatrix.init(64, 64, 8, key=jax.random.key(0), out_modes=(4, 4, 4), in_modes=(4, 4, 4))
    scores = {c.order.name: _cost.score(c.order)[0] for c in W.candidates(256)}
    cheapest = min(scores.values())
    limit = 2.0
    far = {n for n, v in scores.items() if v > limit * cheapest}
    assert far and len(far) < len(scores)  # the case is informative
    monkeypatch.setattr(_tune, "_UNTIMED_ABOVE", limit)
    plan = W.tune(256, grad=False)
    seconds = dict(zip((o.name for o in plan.candidates), plan.seconds, strict=True))
    assert set(seconds) == set(scores)
    assert {n for n, t in seconds.items() if t == math.inf} == far
    assert plan.order not in far and plan.seconds[0] < math.inf


def test_tuned_order_under_jit_with_traced_factors(quick_tuning):
    """`tune` runs while the caller is traced: the factors are tracers, only their shapes are
    read, and the result is still x W^T."""
    W = _small_ttm()
    x = jax.random.normal(jax.random.key(1), (3, 12))
    want = np.asarray(x, np.float64) @ np.asarray(W.to_matrix(), np.float64).T
    y = jax.jit(lambda W, x: W.apply(x, order="tuned"))(W, x)
    np.testing.assert_allclose(y, want, rtol=1e-5, atol=1e-5 * np.abs(want).max())
    assert len(_tune._TUNED) == 1


def test_autotune_makes_auto_take_the_measured_order(monkeypatch):
    """Under `autotune`, apply(x) takes the order of `tune` (here a stand-in that picks the
    model's worst order, so that the two choices differ); outside it, the model's."""
    W = _small_ttm()
    worst = W.plan(4).candidates[-1].name
    assert worst != W.plan(4).order
    measured = []

    def fake_measure(op, batch, grad):
        measured.append((batch, grad))
        orders = tuple(c.order for c in op.candidates(batch))
        o = next(o for o in orders if o.name == worst)
        return Plan(o.name, o.flops, o.peak_bytes, batch, orders, (1.0,) * len(orders))

    chosen = []
    real_choose = _operator.choose

    def spy(cands, order="auto"):
        c = real_choose(cands, order)
        chosen.append(c.order.name)
        return c

    _tune._TUNED.clear()
    monkeypatch.setattr(_tune, "_measure", fake_measure)
    monkeypatch.setattr(_operator, "choose", spy)
    x = jnp.ones((4, 12))
    f = jax.jit(lambda W, x: W.apply(x))
    with factorjax.factorizations.autotune():
        y = jax.jit(lambda W, x: W.apply(x))(W, x)
    assert chosen[-1] == worst and measured == [(4, True)]
    f(W, x)
    assert chosen[-1] == W.plan(4).order  # outside the context: the cost model
    np.testing.assert_allclose(y, f(W, x), rtol=1e-5, atol=1e-5)


def test_cost_model_picks_the_measured_fastest_matmul_orders():
    """Orders built on plain matmuls count as such where no side of the product is below
    `GEMM_MIN_DIM`: on the layers benchmark (runs 5 and 6, docs/benchmarks.md)
    ``khatri-rao`` ran 2.4-3.7x faster than ``einsum-optimal`` for CP at d=1024, B=4096 (the
    same FLOPs and peak). A product with a rank-4 or rank-16 side runs slower than that: at
    d=1024, r=4, B=64 ``einsum-optimal`` took 0.27 to 0.46 ms against 0.39 to 0.49 for
    ``khatri-rao`` (runs 11 and 12), and then the bytes of their intermediates decide. At
    Tucker d=1024, r=4, B=4096 ``low-rank`` (two matmuls through S = 64) took 24 ms,
    ``core-input`` 31 and ``factored`` 42 (run 8); the model of run 4 picked ``factored``."""
    modes = (8, 16, 8)
    key = jax.random.key(0)

    def cp(rank):
        return factorjax.CP.init_matrix(1024, 1024, rank, key=key, out_modes=modes, in_modes=modes)

    orders = {c.order.name: c.order for c in cp(64).candidates(4096)}
    assert abs(orders["khatri-rao"].flops / orders["einsum-optimal"].flops - 1) < 1e-4
    assert orders["khatri-rao"].gemm_flops == 2 * 4096 * 1024 * 64 * 2  # x K_in, z K_out^T
    assert cp(64).plan(4096).order == "khatri-rao"
    orders = {c.order.name: c.order for c in cp(16).candidates(4096)}
    assert orders["khatri-rao"].gemm_flops == 0  # the rank, 16, is below GEMM_MIN_DIM
    assert cp(16).plan(4096).order == "khatri-rao"
    assert cp(4).plan(64).order == "einsum-optimal"
    tucker = factorjax.Tucker.init_matrix(
        1024, 1024, (4,) * 6, key=key, out_modes=modes, in_modes=modes
    )
    assert tucker.plan(4096).order == "low-rank"
