"""The compare-families experiment: learned-time extraction and the scaling fit against hand
computations, the three ground truths' spectra against their definitions, a quick run with
resume, and refusals."""

import functools
import json
import math

import jax
import numpy as np
import pytest

from factorjax.experiments.compare_families import (
    CompareFamiliesConfig,
    cp_problem,
    learned_table,
    learned_times,
    matrix_problem,
    run_compare_families,
    scaling_fit,
    tubal_problem,
)


def test_learned_times_by_hand():
    # targets (4, 2, 1), threshold 1/2: component 0 passes 2.0 at step 20 (exactly 2.0 counts),
    # component 1 passes 1.0 at step 30, component 2 (needs 0.5) never does.
    values = np.array([[0.1, 0.0, 0.0], [1.9, 0.2, 0.1], [2.0, 0.9, 0.2], [3.9, 1.5, 0.4]])
    steps = np.array([0, 10, 20, 30])
    out = learned_times(values, steps, np.array([4.0, 2.0, 1.0]), 0.5)
    assert out[0] == 20 and out[1] == 30 and np.isnan(out[2])
    # a value that passes and falls back still counts at its first passing record
    out = learned_times(np.array([[0.0], [0.8], [0.1]]), steps[:3], np.array([1.0]), 0.75)
    assert out[0] == 10


def test_scaling_fit_by_hand():
    scales = np.array([1e-1, 1e-2, 1e-3])
    per, _ = scaling_fit(scales, np.array([100.0, 150.0, 200.0]))  # t = 50 (log10(1/s) + 1)
    assert math.isclose(per, 50.0, rel_tol=1e-12)
    _, ex = scaling_fit(scales, 7.0 / scales)  # t = 7 / s: exponent -1
    assert math.isclose(ex, -1.0, rel_tol=1e-12)
    assert all(np.isnan(scaling_fit(scales, np.array([np.nan, np.nan, 3.0]))))


@pytest.mark.slow
def test_ground_truth_spectra(x64):
    cfg = CompareFamiliesConfig(matrix_n=5, matrix_m=10, tubal_n=4, tubal_k=3, tubal_m=10,
                                cp_n=4, cp_m=20)  # fmt: skip
    s = np.array(cfg.strengths)
    p = jax.jit(functools.partial(matrix_problem, cfg))(0)
    x = np.asarray(p.ground_truth)
    np.testing.assert_allclose(np.linalg.svd(x, compute_uv=False)[:3], s, rtol=1e-10)
    np.testing.assert_allclose(p.y, np.asarray(p.G) @ x.reshape(-1), rtol=1e-10)
    p = jax.jit(functools.partial(tubal_problem, cfg))(0)
    x = np.asarray(p.ground_truth)
    xf = np.fft.fft(x, axis=2)  # Fourier slices, by the definition of the t-SVD
    for j in range(cfg.tubal_k):
        sv = np.linalg.svd(xf[:, :, j], compute_uv=False)
        np.testing.assert_allclose(sv[:3], s, rtol=1e-10)
        assert sv[3] < 1e-10
    np.testing.assert_allclose(x, np.transpose(x, (1, 0, 2))[:, :, (-np.arange(3)) % 3],
                               atol=1e-12)  # t-symmetric  # fmt: skip
    np.testing.assert_allclose(p.y, np.asarray(p.G) @ x.reshape(-1), rtol=1e-10)
    p = jax.jit(functools.partial(cp_problem, cfg))(0)
    norms = [np.prod([np.linalg.norm(f[:, r]) for f in p.truth_factors]) for r in range(3)]
    np.testing.assert_allclose(norms, s, rtol=1e-10)
    dense = np.einsum("ar,br,cr->abc", *map(np.asarray, p.truth_factors))
    np.testing.assert_allclose(p.ground_truth, dense, rtol=1e-10, atol=1e-14)
    np.testing.assert_allclose(p.y, dense.reshape(-1)[np.asarray(p.idx)], rtol=1e-10)


@pytest.mark.slow  # an end-to-end run of the experiment: compiles and draws figures
def test_quick_run_and_resume(x64, tmp_path, capsys):
    cfg = CompareFamiliesConfig(seeds=1, log_every=10, matrix_n=4, matrix_m=20, matrix_steps=40,
                                matrix_scales=(0.1, 0.01), tubal_n=3, tubal_k=2, tubal_m=20,
                                tubal_steps=40, tubal_scales=(0.1,), cp_n=3, cp_m=20,
                                cp_components=4, cp_steps=40, cp_scales=(0.1,))  # fmt: skip
    run_compare_families(cfg, tmp_path)
    out = capsys.readouterr().out
    for fam, runs in (("matrix", 2), ("tubal", 1), ("cp", 1)):
        assert f"compare-families: {fam}: {runs} runs" in out
    recs = [json.loads(line) for line in (tmp_path / "runs.jsonl").read_text().splitlines()]
    assert len(recs) == 4 and all(r["status"] == "ok" for r in recs)
    assert (tmp_path / "learning_times.png").stat().st_size > 5_000
    text = (tmp_path / "results.md").read_text()
    assert "| matrix | alpha 0.01 | 0 |" in text and "| cp | 1 | 3 |" in text
    before = (tmp_path / "runs.jsonl").read_text()
    run_compare_families(cfg, tmp_path)  # everything recorded: nothing is run again
    assert "runs in" not in capsys.readouterr().out
    assert (tmp_path / "runs.jsonl").read_text() == before


@pytest.mark.slow
def test_components_learned_in_order_and_later_from_smaller_init(x64, tmp_path):
    """The headline: from small init, the components are learned one at a time in order of
    strength, and each later as the init scale shrinks, in all three families."""
    cfg = CompareFamiliesConfig(seeds=1, matrix_scales=(1e-2, 1e-3), matrix_steps=1000,
                                tubal_scales=(1e-2, 1e-3), tubal_steps=600,
                                cp_scales=(3e-2, 1e-2), cp_steps=1500)  # fmt: skip
    run_compare_families(cfg, tmp_path)
    _, rows = learned_table(tmp_path)
    assert len(rows) == 6
    for fam in ("matrix", "tubal", "cp"):
        big, small = sorted((r for r in rows if r["family"] == fam), key=lambda r: -r["scale"])
        for r in (big, small):
            assert np.all(np.isfinite(r["times"])) and np.all(np.diff(r["times"]) > 0), r
        assert np.all(small["times"] > big["times"]), (fam, big["times"], small["times"])


@pytest.mark.parametrize(
    "field, value",
    [
        ("seeds", 0),
        ("strengths", (1.0, 2.0)),
        ("strengths", ()),
        ("matrix_depth", 1),
        ("cp_order", 2),
        ("matrix_n", 2),
        ("cp_m", 10_000),
        ("tubal_steps", 1001),
        ("cp_scales", (0.1, -1.0)),
        ("matrix_lr", float("nan")),
        ("threshold", 1.5),
    ],
)
def test_bad_config_refused_by_name(field, value):
    with pytest.raises(ValueError, match=f"`{field}`"):
        CompareFamiliesConfig(**{field: value})
