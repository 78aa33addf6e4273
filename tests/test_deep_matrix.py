"""The deep-matrix experiment (Arora et al. 2019) and the minimum nuclear norm solver: the
paper's problems, the gradient of the deep factorization, the effective rank and the solver
against references written from their definitions (and cvxpy), a small run with its resume,
refusals, and (slow) the paper's headline ordering."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from factorjax import DeepLowRank
from factorjax.dynamics import MatrixCompletion, MatrixSensing, RunStore
from factorjax.dynamics.nuclear import min_nuclear_norm, singular_value_threshold
from factorjax.experiments.deep_matrix import (
    DeepMatrixConfig,
    effective_rank_of,
    make_problem,
    run_deep_matrix,
)


def naive_effective_rank(s):
    total = sum(s)
    h = 0.0
    for v in s:
        if v > 0:
            h -= (v / total) * math.log(v / total)
    return math.exp(h)


def test_effective_rank_against_its_definition(rng):
    s = np.sort(rng.uniform(0, 3, size=(4, 9)), axis=1)[:, ::-1].copy()
    s[1, 5:] = 0.0  # zeros count as 0 log 0 = 0
    got = np.asarray(effective_rank_of(jnp.asarray(s)))
    np.testing.assert_allclose(got, [naive_effective_rank(row) for row in s], rtol=1e-5)
    # equal non-zero singular values: the effective rank is their number
    np.testing.assert_allclose(effective_rank_of(jnp.asarray([2.0, 2.0, 2.0, 0.0])), 3.0,
                               rtol=1e-6)  # fmt: skip


def test_problems_follow_the_paper(x64):
    cfg = DeepMatrixConfig(n=10, rank=2, norm=10.0, completion_m=(40,), sensing_m=(30,),
                           float64=True)  # fmt: skip
    make = jax.jit(make_problem, static_argnums=(0, 1, 2))  # one compilation, not many ops
    p = make(cfg, "completion", 40, 3)
    X, y = np.asarray(p.ground_truth), np.asarray(p.y)
    assert abs(np.linalg.norm(X) - 10.0) < 1e-10
    assert np.linalg.matrix_rank(X, tol=1e-8) == 2
    for j, k in enumerate(np.asarray(p.idx)):  # y holds the observed entries
        assert y[j] == X[k // 10, k % 10]
    q = make(cfg, "sensing", 30, 3)
    G, Xs, ys = np.asarray(q.G).reshape(30, 10, 10), np.asarray(q.ground_truth), np.asarray(q.y)
    for j in range(30):  # y_j = <A_j, X*> by explicit sums
        want = sum(G[j, a, b] * Xs[a, b] for a in range(10) for b in range(10))
        assert abs(ys[j] - want) < 1e-10
    # A_j entries N(0, 1/n^2): the sample std of 3000 entries is within 5 standard errors
    assert abs(G.std() * 10 - 1) < 5 / math.sqrt(2 * G.size)


def test_init_scale_of_the_product():
    # factor entries N(0, s^(2/N) / n): the product has entries of variance s^2 / n
    n, depth, s = 60, 3, 1e-3
    m = DeepLowRank.init(n, n, (n,) * (depth - 1), key=jax.random.key(0), init="small",
                         alpha=s ** (1 / depth))  # fmt: skip
    for f in m.factors:
        assert abs(float(jnp.std(f)) / (s ** (1 / depth) / math.sqrt(n)) - 1) < 5 / math.sqrt(
            2 * n * n
        )
    W = np.asarray(m.to_dense(), np.float64)
    # ||W||_F^2 is a product of depth factors, each of relative std about sqrt(2) / n, so the
    # sample std of W's entries has a relative std of about sqrt(depth / 2) / n: 5 of those
    assert abs(W.std() / (s / math.sqrt(n)) - 1) < 5 * math.sqrt(depth / 2) / n


def test_iterates_are_the_papers_group_rmsprop_on_the_mean_loss(x64):
    """The experiment's run against the paper's update written here from its definition: the
    loss ``(1/m) sum_j (W[idx_j] - y_j)^2`` and GroupRMSprop on it (``v <- 0.99 v + 0.01
    ||g||^2``, step ``lr g / (sqrt(v / (1 - 0.99^t)) + 1e-4)``). factorjax's loss is ``m/2``
    times the paper's, so this holds only if the experiment scales eps alike. Small init, so
    that eps matters: the gradient is below 1e-4 there."""
    from factorjax.experiments.deep_matrix import _program

    cfg = DeepMatrixConfig(n=6, rank=2, norm=6.0, completion_m=(20,), depths=(3,),
                           scales=(1e-7,), steps=30, log_every=30, nuclear=False,
                           stop_loss=1e-30, float64=True)  # fmt: skip
    depth, scale, m, lr = 3, cfg.scales[0], 20, cfg.lr
    got = _program(cfg, "completion", m, depth)(jnp.asarray([0]), jnp.asarray([scale]))
    p = make_problem(cfg, "completion", m, 0)
    key = jax.random.fold_in(jax.random.key(8), 0)  # the experiment's init of seed 0
    model = DeepLowRank.init(6, 6, (6,) * (depth - 1), key=key, init="small",
                             alpha=scale ** (1 / depth), dtype=jnp.float64)  # fmt: skip

    def paper_loss(fs):
        W = fs[0]
        for f in fs[1:]:  # W = W_N ... W_1, the factors stored from W_1
            W = f @ W
        return jnp.mean((W.reshape(-1)[p.idx] - p.y) ** 2)

    fs = [jnp.asarray(f) for f in model.factors]
    np.testing.assert_allclose(paper_loss(fs), 2 / m * p.loss(model.to_dense()), rtol=1e-12)
    v, small = 0.0, []
    for t in range(1, cfg.steps + 1):
        g = jax.grad(paper_loss)(fs)
        sq = sum(float(jnp.sum(gi**2)) for gi in g)
        small.append(math.sqrt(sq) < 1e-4)
        v = 0.99 * v + 0.01 * sq
        step = lr / (math.sqrt(v / (1 - 0.99**t)) + 1e-4)
        fs = [f - step * gi for f, gi in zip(fs, g, strict=True)]
    assert all(small)  # eps is not negligible here
    # the loss barely moves from so small an init: compare what it moved
    moved = got["mse"][0, -1] - got["mse"][0, 0]
    assert moved < 0
    np.testing.assert_allclose(moved, float(paper_loss(fs)) - float(got["mse"][0, 0]), rtol=1e-6)


@pytest.mark.parametrize(
    "kind",
    ["completion", pytest.param("sensing", marks=pytest.mark.slow)],  # ~5 s: compiles
)
def test_gradient_of_the_deep_factorization(kind, x64, rng):
    cfg = DeepMatrixConfig(n=6, rank=2, norm=6.0, completion_m=(20,), sensing_m=(20,),
                           float64=True)  # fmt: skip
    p = jax.jit(make_problem, static_argnums=(0, 1, 2))(cfg, kind, 20, 1)
    fs = [jnp.asarray(rng.normal(size=(6, 6)) * 0.5) for _ in range(3)]

    def loss(fs):
        return p.loss(DeepLowRank(tuple(fs)).to_dense())

    got = jax.grad(loss)(fs)
    # naive: W = W3 W2 W1, R = A*(A(W) - y) by loops, dL/dW1 = (W3 W2)^T R, ...
    W1, W2, W3 = (np.asarray(f) for f in fs)
    W, y = W3 @ W2 @ W1, np.asarray(p.y)
    R = np.zeros((6, 6))
    if kind == "completion":
        for j, k in enumerate(np.asarray(p.idx)):
            R[k // 6, k % 6] += W[k // 6, k % 6] - y[j]
    else:
        G = np.asarray(p.G).reshape(20, 6, 6)
        for j in range(20):
            R += (np.sum(G[j] * W) - y[j]) * G[j]
    want = [(W3 @ W2).T @ R, W3.T @ R @ W1.T, R @ (W2 @ W1).T]
    for g, w in zip(got, want, strict=True):
        np.testing.assert_allclose(np.asarray(g), w, rtol=1e-10, atol=1e-10)
    # and against central finite differences (step 1e-6: error ~ h^2 * third derivative)
    h, loss = 1e-6, jax.jit(loss)
    for i in range(3):
        d = jnp.asarray(rng.normal(size=(6, 6)))
        plus = [f + h * d if j == i else f for j, f in enumerate(fs)]
        minus = [f - h * d if j == i else f for j, f in enumerate(fs)]
        fd = (loss(plus) - loss(minus)) / (2 * h)
        assert abs(float(fd) - float(jnp.sum(got[i] * d))) < 1e-6 * (1 + abs(float(fd)))


def test_singular_value_threshold_against_its_definition(rng):
    X = rng.normal(size=(7, 5))
    u, s, vt = np.linalg.svd(X, full_matrices=False)
    want = sum(max(s[i] - 0.8, 0.0) * np.outer(u[:, i], vt[i]) for i in range(5))
    np.testing.assert_allclose(singular_value_threshold(jnp.asarray(X), 0.8), want, atol=1e-5)


@pytest.mark.parametrize(
    "kind, m", [("completion", 80), pytest.param("sensing", 60, marks=pytest.mark.slow)]
)
def test_min_nuclear_norm_against_cvxpy(kind, m, x64):
    cp = pytest.importorskip("cvxpy")
    key = jax.random.key(3)
    if kind == "completion":
        p = MatrixCompletion.make(12, 12, 2, m, key=key, dtype=jnp.float64)
    else:
        p = MatrixSensing.make(12, 12, 2, m, key=key, dtype=jnp.float64)
    X, info = jax.jit(lambda p: min_nuclear_norm(p, tol=1e-8, max_iters=5000))(p)
    X = np.asarray(X)
    assert int(info["iters"]) < 5000  # converged
    x = cp.Variable((12, 12))
    y = np.asarray(p.y)
    if kind == "completion":
        r, c = np.unravel_index(np.asarray(p.idx), (12, 12))
        cons = [x[r, c] == y]
    else:
        cons = [np.asarray(p.G) @ cp.vec(x, order="C") == y]
    prob = cp.Problem(cp.Minimize(cp.normNuc(x)), cons)
    prob.solve(solver=cp.CLARABEL)
    # feasibility to rounding, the same optimal value to the solvers' tolerances (1e-8),
    # the same minimiser (unique here) to the square root of them
    np.testing.assert_allclose(np.asarray(p.measure(X)), y, atol=1e-10)
    assert abs(float(info["nuclear_norm"]) - prob.value) < 1e-6 * prob.value
    assert np.linalg.norm(X - x.value) < 1e-3 * np.linalg.norm(x.value)


@pytest.mark.slow  # compiles a training program and draws two figures: about 15 s
def test_small_run_records_figures_and_resume(tmp_path, capsys):
    cfg = DeepMatrixConfig(n=10, rank=1, norm=10.0, completion_m=(60,), sensing_m=(),
                           depths=(2,), scales=(1e-2, 1e-3), steps=20_000, log_every=500,
                           nuclear=False)  # fmt: skip
    recs = run_deep_matrix(cfg, tmp_path)
    assert len(recs) == 2 and all(r["status"] == "ok" and r["depth"] == 2 for r in recs)
    for r in recs:
        f = r["final"]
        # stopped at the paper's loss, (1/m) ||A(W) - y||^2 <= 1e-6, at the first such record
        assert f["mse"] <= cfg.stop_loss and 0 < f["stop_step"] <= cfg.steps
        tr = RunStore(tmp_path).load_trajectory(r["run_id"])
        before = tr["step"] < f["stop_step"]
        assert np.all(tr["mse"][before] > cfg.stop_loss)
        np.testing.assert_allclose(tr["mse"], 2 * tr["train_loss"] / 60, rtol=1e-6)
    for name in ("recovery.png", "singular_values.png"):
        assert (tmp_path / name).stat().st_size > 10_000
    assert "Wall time" in (tmp_path / "results.md").read_text()
    capsys.readouterr()
    run_deep_matrix(cfg, tmp_path)  # resume: nothing is redone
    assert "runs in" not in capsys.readouterr().out
    assert len((tmp_path / "runs.jsonl").read_text().splitlines()) == 2


@pytest.mark.parametrize(
    "kwargs, words",
    [
        (dict(depths=(1, 2)), ["`depths`", "(1, 2)"]),
        (dict(completion_m=(20000,)), ["`completion_m`", "20000"]),
        (dict(completion_m=(), sensing_m=()), ["`completion_m`", "`sensing_m`"]),
        (dict(scales=(0.0,)), ["`scales`", "0.0"]),
        (dict(steps=1000, log_every=300), ["`steps`", "1000", "log_every"]),
        (dict(lr_final=2.0), ["`lr_final`", "2.0"]),
        (dict(rank=200), ["`rank`", "200"]),
    ],
)
def test_bad_config_is_refused_by_name(kwargs, words):
    with pytest.raises(ValueError) as e:
        DeepMatrixConfig(**kwargs)
    for w in words:
        assert w in str(e.value)


@pytest.mark.slow  # the paper's setting at 2000 entries, depths 2 and 3: about a minute
def test_depth_three_beats_depth_two_and_nuclear_norm_at_few_entries(tmp_path):
    cfg = DeepMatrixConfig(completion_m=(2000,), depths=(2, 3), steps=50_000, nuclear_iters=600)
    recs = run_deep_matrix(cfg, tmp_path)
    err = {r["depth"]: r["final"]["test_error"] for r in recs}
    erank = {r["depth"]: r["final"]["effective_rank"] for r in recs}
    assert err[3] < 0.5 * err[2] and err[3] < 0.5 * err[0]
    assert err[3] < 0.05
    assert erank[3] < erank[2]


def test_min_nuclear_norm_refuses_bad_arguments_by_name():
    z = jnp.zeros(6)  # built directly, not drawn: little to compile
    p = MatrixCompletion(ground_truth=jnp.zeros((4, 4)), y=z, idx=jnp.arange(6), noise=z[0], r=1)
    with pytest.raises(TypeError, match="`problem`"):
        min_nuclear_norm(np.zeros((4, 4)))
    with pytest.raises(ValueError, match="`max_iters`"):
        min_nuclear_norm(p, max_iters=0)
    with pytest.raises(ValueError, match=r"`tol`.*-1"):
        min_nuclear_norm(p, tol=-1.0)
