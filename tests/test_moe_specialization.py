"""The moe-specialization experiment: its measures against references written from their
definitions, the parameter matching, a small run (slow), and refusals."""

import json
import math

import numpy as np
import pytest

pytest.importorskip("sklearn")

from factorjax.experiments.moe_specialization import (
    MoESpecializationConfig,
    _count,
    class_expert_mass,
    make_model,
    matched_sizes,
    mutual_information,
    run_moe_specialization,
)


def naive_mi(joint):
    """``sum_{c,e} p(c,e) log2(p(c,e) / (p(c) p(e)))`` by explicit loops."""
    pc = [sum(row) for row in joint]
    pe = [sum(joint[c][e] for c in range(len(joint))) for e in range(len(joint[0]))]
    total = 0.0
    for c in range(len(joint)):
        for e in range(len(joint[0])):
            if joint[c][e] > 0:
                total += joint[c][e] * math.log2(joint[c][e] / (pc[c] * pe[e]))
    return total


def test_class_expert_mass_and_mutual_information(rng):
    gates = rng.dirichlet(np.ones(6), size=40)
    labels = rng.integers(0, 10, size=40)
    joint = class_expert_mass(gates, labels)
    want = np.zeros((10, 6))
    for g, y in zip(gates, labels, strict=True):
        want[y] += g / 40
    np.testing.assert_allclose(joint, want, rtol=1e-12)
    assert abs(joint.sum() - 1) < 1e-12
    np.testing.assert_allclose(mutual_information(joint), naive_mi(joint.tolist()), rtol=1e-10)
    # the extremes: independent class and expert, and one expert per class
    assert abs(mutual_information(np.outer(np.full(10, 0.1), np.full(6, 1 / 6)))) < 1e-12
    np.testing.assert_allclose(mutual_information(np.eye(10) / 10), math.log2(10), rtol=1e-12)


@pytest.mark.slow  # compile-heavy: over 5 s on 2 cores (the default run's budget)
def test_parameter_matching():
    cfg = MoESpecializationConfig()
    sizes = matched_sizes(cfg)
    import jax

    counts = {m: _count(make_model(cfg, m, jax.random.key(0))) for m in ("mumoe", "dense",
                                                                          "lowrank")}  # fmt: skip
    # the dense width is the one whose model count is closest to the mumoe model's
    w = sizes["width"]
    per_width = 64 + 1 + 10  # (64 + 1) h + (h + 1) 10
    assert abs(counts["dense"] - counts["mumoe"]) <= per_width / 2
    assert counts["dense"] == (64 + 1) * w + (w + 1) * 10
    assert abs(counts["lowrank"] - counts["mumoe"]) < 0.05 * counts["mumoe"]


@pytest.mark.slow  # trains 9 small models: an experiment
def test_small_run_specializes_beyond_the_shuffled_control(tmp_path):
    cfg = MoESpecializationConfig(seeds=2, steps=200, permutations=50)
    run_moe_specialization(cfg, tmp_path)
    recs = [json.loads(line) for line in (tmp_path / "runs.jsonl").read_text().splitlines()]
    assert len(recs) == 6 and all(r["status"] == "ok" for r in recs)
    for r in recs:
        assert r["final"]["test_acc"] > 0.85
        if r["model"] == "mumoe":
            f = r["final"]
            assert f["mi_bits"] > f["mi_null_mean"] + 10 * f["mi_null_std"]
            assert f["mi_bits"] <= math.log2(10) + 1e-9
    assert (tmp_path / "specialization.png").stat().st_size > 10_000
    assert "I(class; expert)" in (tmp_path / "results.md").read_text()


@pytest.mark.parametrize(
    "kwargs, words",
    [
        (dict(models=("moe",)), ["`models`", "'moe'"]),
        (dict(gate="topk"), ["`gate`", "'topk'", "entmax15"]),
        (dict(steps=150, log_every=100), ["`steps`", "150", "log_every"]),
        (dict(experts=0), ["`experts`", "0"]),
    ],
)
def test_bad_config_is_refused_by_name(kwargs, words):
    with pytest.raises(ValueError) as e:
        MoESpecializationConfig(**kwargs)
    for w in words:
        assert w in str(e.value)
