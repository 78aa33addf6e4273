"""The norms-2x2 experiment: its gradient against jax.grad and finite differences, effective
rank and Schatten norms against their definitions, the inits, a quick run (records, figure,
resume), refusals, and (slow) |W_11| growing as the loss falls."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from factorjax.dynamics import RunStore
from factorjax.experiments.norms_2x2 import (
    Norms2x2Config,
    effective_rank_np,
    factor_grads,
    loss_fn,
    positive_det_init,
    run_norms_2x2,
    schatten,
)
from factorjax.linalg import effective_rank

OBSERVED = {(0, 1): 1.0, (1, 0): 1.0, (1, 1): 0.0}


def naive_loss(factors):
    """``1/2 sum_observed (W_ij - b_ij)^2`` with the product by explicit loops."""
    w = [[float(i == j) for j in range(2)] for i in range(2)]
    for f in factors:  # W <- W_j W
        w = [[sum(f[i][k] * w[k][j] for k in range(2)) for j in range(2)] for i in range(2)]
    return 0.5 * sum((w[i][j] - b) ** 2 for (i, j), b in OBSERVED.items())


@pytest.mark.parametrize("depth", [2, 3, 4])
def test_gradient_against_jax_grad_and_finite_differences(x64, rng, depth):
    f = rng.normal(size=(depth, 2, 2))
    g, loss = factor_grads(jnp.asarray(f))
    np.testing.assert_allclose(loss, naive_loss(f), rtol=1e-12)
    np.testing.assert_allclose(loss_fn(jnp.asarray(f)), naive_loss(f), rtol=1e-12)
    np.testing.assert_allclose(g, jax.grad(loss_fn)(jnp.asarray(f)), rtol=1e-10, atol=1e-12)
    h = 1e-6  # central differences of the loop loss: error ~ h^2, far below the tolerance
    fd = np.zeros_like(f)
    for idx in np.ndindex(*f.shape):
        fp, fm = f.copy(), f.copy()
        fp[idx] += h
        fm[idx] -= h
        fd[idx] = (naive_loss(fp) - naive_loss(fm)) / (2 * h)
    np.testing.assert_allclose(g, fd, rtol=1e-6, atol=1e-8)


def test_effective_rank_and_schatten_against_definitions(rng):
    for _ in range(5):
        w = rng.normal(size=(2, 2))
        s = np.linalg.svd(w, compute_uv=False)
        p = [x / sum(s) for x in s]
        want = math.exp(-sum(q * math.log(q) for q in p if q > 0))  # Roy & Vetterli
        np.testing.assert_allclose(effective_rank_np(s), want, rtol=1e-12)
        np.testing.assert_allclose(effective_rank(jnp.asarray(w)), want, rtol=1e-5)  # library
        for q in (0.5, 1.0, 2.0):
            np.testing.assert_allclose(schatten(s, q), sum(x**q for x in s) ** (1 / q),
                                       rtol=1e-12)  # fmt: skip
    np.testing.assert_allclose(schatten(np.linalg.svd(w, compute_uv=False), 2.0),
                               np.linalg.norm(w), rtol=1e-12)  # fmt: skip
    assert abs(effective_rank_np(np.array([3.0, 0.0])) - 1) < 1e-12  # rank one
    assert abs(effective_rank_np(np.array([2.0, 2.0])) - 2) < 1e-12  # equal singular values


@pytest.mark.parametrize("init", ["balanced", "gaussian"])
def test_positive_det_init(init):
    for seed in range(4):
        f, attempt = positive_det_init(seed, 3, 8e-3, init=init)
        assert np.linalg.det(f[2] @ f[1] @ f[0]) > 0
        assert attempt >= 0
        g, _ = positive_det_init(seed, 3, 8e-3, init=init)
        np.testing.assert_array_equal(f, g)  # reproducible
        if init == "balanced":
            for j in range(2):
                # balanced to float64 rounding (a float32 SVD left 1e-7 relative)
                np.testing.assert_allclose(f[j + 1].T @ f[j + 1], f[j] @ f[j].T, rtol=1e-12)
        assert 1e-4 < np.abs(f).mean() < 4e-2  # entries of scale init_std


@pytest.mark.slow  # an end-to-end run of the experiment: compiles and draws figures
def test_quick_run_records_figure_and_resume(tmp_path, capsys):
    cfg = Norms2x2Config(inits=("balanced",), lrs=(1e-2,), seeds=2, steps=20_000,
                         log_every=5_000, stop_loss=0.05, levels_per_decade=4)  # fmt: skip
    with jax.enable_x64(True):
        recs = run_norms_2x2(cfg, tmp_path)
    assert "runs in" in capsys.readouterr().out
    assert len(recs) == 2 and all(r["status"] == "ok" for r in recs)
    store = RunStore(tmp_path)
    for r in recs:
        assert r["final"]["loss"] <= 0.05
        t = store.load_trajectory(r["run_id"])
        assert t["level_W"].shape == (len(t["level"]), 2, 2)
        assert t["loss"].shape == (4,) and t["W"].shape == (4, 2, 2)
        assert np.all(t["level_step"] >= 0)  # every level down to stop_loss crossed
    assert (tmp_path / "norms_2x2.png").stat().st_size > 10_000
    assert "abs(W_11)" in (tmp_path / "results.md").read_text()
    lines = (tmp_path / "runs.jsonl").read_text()
    with jax.enable_x64(True):
        run_norms_2x2(cfg, tmp_path)  # nothing to redo
    assert "runs in" not in capsys.readouterr().out
    assert (tmp_path / "runs.jsonl").read_text() == lines


def test_float64_is_required_without_x64(tmp_path):
    with jax.enable_x64(False), pytest.raises(ValueError, match="float64"):
        run_norms_2x2(Norms2x2Config(), tmp_path)


@pytest.mark.parametrize(
    "kwargs, words",
    [
        (dict(depth=1), ["`depth`", "1"]),
        (dict(inits=("orthogonal",)), ["`inits`", "'orthogonal'"]),
        (dict(lrs=(-1e-3,)), ["`lrs`", "-0.001"]),
        (dict(steps=15_000, log_every=10_000), ["`steps`", "15000", "log_every"]),
        (dict(stop_loss=0.9), ["`stop_loss`", "0.9", "levels_per_decade"]),
    ],
)
def test_bad_config_is_refused_by_name(kwargs, words):
    with pytest.raises(ValueError) as e:
        Norms2x2Config(**kwargs)
    for w in words:
        assert w in str(e.value)


@pytest.mark.slow  # 4 runs x 4e5 steps: the headline of the paper, reduced
def test_w11_and_norms_grow_as_the_loss_falls(tmp_path):
    cfg = Norms2x2Config(inits=("balanced",), seeds=4, steps=400_000, log_every=20_000,
                         stop_loss=1e-3)  # fmt: skip
    with jax.enable_x64(True):
        recs = run_norms_2x2(cfg, tmp_path)
    store = RunStore(tmp_path)
    for r in recs:
        t = store.load_trajectory(r["run_id"])
        lv, w = np.asarray(t["level"]), np.asarray(t["level_W"])
        picks = [int(np.argmin(np.abs(np.log(lv / x)))) for x in (1e-1, 1e-2, 1e-3)]
        assert all(t["level_step"][i] >= 0 for i in picks)
        w11 = [abs(w[i, 0, 0]) for i in picks]
        assert w11[0] < w11[1] < w11[2]
        for i, x in zip(picks, (1e-1, 1e-2, 1e-3), strict=True):
            s = np.linalg.svd(w[i], compute_uv=False)
            assert np.linalg.det(w[i]) > 0  # balanced init keeps the sign
            # det W > 0 and |W_22| <= sqrt(2 loss) force |W_11| >= W_12 W_21 / sqrt(2 loss)
            assert abs(w[i, 0, 0]) >= 0.8 / math.sqrt(2 * x)
            if x <= 1e-2:
                assert effective_rank_np(s) < 1.01
        nuc = [schatten(np.linalg.svd(w[i], compute_uv=False), 1.0) for i in picks]
        assert nuc[0] < nuc[1] < nuc[2]  # the nuclear norm grows too
