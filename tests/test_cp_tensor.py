"""The cp-tensor experiment: the CP completion problem against references written from its
definition, a quick run with resume, refusals, and (slow) the paper's orderings."""

import itertools
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from factorjax.dynamics import RunStore
from factorjax.dynamics.cp_completion import CPCompletion, component_norms, cp_dense
from factorjax.experiments.cp_tensor import (
    CPTensorConfig,
    run_cp_tensor,
    switch_on_steps,
    truth_fit,
)


def naive_dense(factors):
    """``X[i, j, ...] = sum_r prod_k A_k[i_k, r]`` by explicit loops."""
    shape = tuple(f.shape[0] for f in factors)
    out = np.zeros(shape)
    for idx in itertools.product(*map(range, shape)):
        for r in range(factors[0].shape[1]):
            p = 1.0
            for k, i in enumerate(idx):
                p *= factors[k][i, r]
            out[idx] += p
    return out


def naive_loss(factors, idx, y):
    x = naive_dense(factors).reshape(-1)
    return sum((x[i] - v) ** 2 for i, v in zip(idx, y, strict=True)) / len(idx)


def _factors(rng, order, n, comps):
    return tuple(jnp.asarray(rng.normal(size=(n, comps))) for _ in range(order))


@pytest.mark.parametrize("order", [4])
def test_loss_and_gradient_against_autodiff_and_finite_differences(x64, rng, order):
    p = CPCompletion.make(order, 3, 2, 15, key=jax.random.key(order))
    a = _factors(rng, order, 3, 4)
    idx, y = np.asarray(p.idx), np.asarray(p.y)
    np.testing.assert_allclose(p.loss(a), naive_loss([np.asarray(f) for f in a], idx, y),
                               rtol=1e-12)  # fmt: skip
    loss, grads, x = p.loss_and_grad(a)
    np.testing.assert_allclose(loss, p.loss(a), rtol=1e-12)
    np.testing.assert_allclose(x, naive_dense([np.asarray(f) for f in a]), rtol=1e-12)
    auto = jax.grad(p.loss)(a)
    for g, h in zip(grads, auto, strict=True):
        np.testing.assert_allclose(g, h, rtol=1e-10, atol=1e-12)
    # central differences on every entry of the first and last factor: O(h^2) error
    h = 1e-6
    loss_fn = jax.jit(lambda f: p.loss(f))
    base = [np.asarray(f) for f in a]
    for k in (0, order - 1):
        fd = np.zeros(base[k].shape)
        for i, j in itertools.product(*map(range, base[k].shape)):
            vals = []
            for sign in (1, -1):
                moved = [f.copy() for f in base]
                moved[k][i, j] += sign * h
                vals.append(float(loss_fn(tuple(map(jnp.asarray, moved)))))
            fd[i, j] = (vals[0] - vals[1]) / (2 * h)
        np.testing.assert_allclose(grads[k], fd, rtol=1e-6, atol=1e-8)


def test_problem_ground_truth_and_observations(x64):
    p = CPCompletion.make(4, 3, 3, 50, key=jax.random.key(0))
    truth = naive_dense([np.asarray(f) for f in p.truth_factors])
    np.testing.assert_allclose(p.ground_truth, truth, rtol=1e-10, atol=1e-14)
    np.testing.assert_allclose(np.linalg.norm(truth), 1.0, rtol=1e-12)
    idx = np.asarray(p.idx)
    assert len(set(idx.tolist())) == 50 and np.all(np.diff(idx) > 0)
    np.testing.assert_allclose(p.y, truth.reshape(-1)[idx], rtol=1e-12)
    assert float(np.asarray(p.mask).sum()) == 50
    assert float(p.loss(p.truth_factors)) < 1e-28
    assert float(p.error(p.truth_factors)) < 1e-12
    np.testing.assert_allclose(truth_fit(p.ground_truth, p.truth_factors), np.ones(3), rtol=1e-8)


def test_component_norms_against_a_loop(x64, rng):
    a = _factors(rng, 4, 5, 7)
    want = []
    for r in range(7):
        comp = np.asarray(a[0][:, r])
        for f in a[1:]:
            comp = np.multiply.outer(comp, np.asarray(f[:, r]))
        want.append(np.sqrt(np.sum(comp**2)))
    np.testing.assert_allclose(component_norms(a), want, rtol=1e-12)
    np.testing.assert_allclose(cp_dense(a), naive_dense([np.asarray(f) for f in a]), rtol=1e-10)


def test_switch_on_steps():
    v = np.array([[0.0, 0.1], [0.6, 0.2], [0.9, 0.3]])
    out = switch_on_steps(v, np.array([10, 20, 30]), 0.5)
    assert out[0] == 20 and np.isnan(out[1])


@pytest.mark.slow  # an end-to-end run of the experiment: compiles and draws figures
def test_quick_run_and_resume(tmp_path, capsys):
    cfg = CPTensorConfig(n=4, m=100, rank=3, components=10, stds=(0.1, 0.2), steps=100,
                         log_every=50, top_k=4)  # fmt: skip
    run_cp_tensor(cfg, tmp_path)
    assert "cp-tensor: 2 runs" in capsys.readouterr().out
    recs = [json.loads(line) for line in (tmp_path / "runs.jsonl").read_text().splitlines()]
    assert len(recs) == 2 and all(r["status"] == "ok" for r in recs)
    for name in ("norms.png", "error.png"):
        assert (tmp_path / name).stat().st_size > 5_000
    assert "| 0.1 | 0 |" in (tmp_path / "results.md").read_text()
    before = (tmp_path / "runs.jsonl").read_text()
    run_cp_tensor(cfg, tmp_path)  # everything recorded: nothing is run again
    assert "cp-tensor:" not in capsys.readouterr().out.split("figure:")[0]
    assert (tmp_path / "runs.jsonl").read_text() == before


@pytest.mark.parametrize(
    "kwargs, words",
    [
        (dict(stds=()), ["`stds`"]),
        (dict(stds=(-1.0,)), ["`stds`", "-1.0"]),
        (dict(steps=150, log_every=100), ["`steps`", "150", "log_every"]),
        (dict(components=0), ["`components`", "0"]),
        (dict(m=20000), ["`m`", "20000"]),
        (dict(lr=0.0), ["`lr`"]),
        (dict(order=1), ["`order`"]),
    ],
)
def test_bad_config_is_refused_by_name(kwargs, words):
    with pytest.raises(ValueError) as e:
        CPTensorConfig(**kwargs)
    for w in words:
        assert w in str(e.value)


@pytest.mark.slow  # two runs of 200 components, 3000 steps (7 s quiet, 30 s loaded)
def test_strongest_component_first_and_smaller_init_lower_error(x64, tmp_path):
    cfg = CPTensorConfig(components=200, stds=(5e-2, 1e-1), steps=3000, log_every=50)
    run_cp_tensor(cfg, tmp_path)
    lines = (tmp_path / "runs.jsonl").read_text().splitlines()
    recs = {r["std"]: r for r in map(json.loads, lines)}
    store = RunStore(tmp_path)
    for std in cfg.stds:
        t = store.load_trajectory(recs[std]["run_id"])
        strengths = t["strengths"][0]
        on = switch_on_steps(t["truth_fit"], t["step"], cfg.on_threshold)
        assert not np.isnan(on[np.argmax(strengths)])
        # the strongest ground-truth component is learned first, alone
        assert np.nanmin(np.delete(on, np.argmax(strengths))) > on[np.argmax(strengths)]
    assert recs[5e-2]["final"]["error"] < recs[1e-1]["final"]["error"]
