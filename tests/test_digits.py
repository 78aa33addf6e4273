"""The digits worked example (`factorjax.experiments.digits`) on a small configuration: the
whole pipeline (train, post-hoc factorize, fine-tune, both frameworks, table and figure),
checked against references written here (a truncated SVD; the same run trained alone, without
padding), resumption, and refusals."""

import json

import numpy as np
import pytest

pytest.importorskip("sklearn")
pytest.importorskip("flax")

from factorjax.experiments.digits import DigitsConfig, _load_dense, run_digits

# One worker runs the whole file, so the module's small run is computed once (--dist loadgroup).
pytestmark = pytest.mark.xdist_group("digits")

SMALL = dict(hidden=32, seeds=1, steps=20, finetune_steps=10, log_every=10, batch_size=64)


def records(out):
    return [json.loads(line) for line in (out / "runs.jsonl").read_text().splitlines()]


def by_setting(recs):
    return {(r["stage"], r["framework"], r["format"], r["budget"], r["seed"]): r for r in recs}


@pytest.fixture(scope="session")
def small_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("digits")
    cfg = DigitsConfig(formats=("lowrank", "tt"), budgets=(0.1, 0.3), **SMALL)
    run_digits(cfg, out)
    return cfg, out


@pytest.mark.slow  # trains the small run: an experiment
def test_every_run_recorded_with_table_and_figure(small_run):
    cfg, out = small_run
    recs = records(out)
    assert len(recs) == len(cfg.settings()) == 2 * (1 + 4) + 2 * 4
    assert all(r["status"] == "ok" for r in recs)
    table = (out / "results.md").read_text()
    for fmt in ("dense", "lowrank", "tt"):
        assert f"| {fmt} |" in table
    assert (out / "accuracy.png").stat().st_size > 10_000
    # 20 Adam steps already classify far above chance (10 %)
    dense = by_setting(recs)[("train", "equinox", "dense", 1.0, 0)]
    assert dense["final"]["test_acc"] > 0.6
    # a factorized model has fewer parameters than the dense one, more at the larger budget
    p = {b: by_setting(recs)[("train", "equinox", "tt", b, 0)]["final"]["params"]
         for b in (0.1, 0.3)}  # fmt: skip
    assert p[0.1] < p[0.3] < dense["final"]["params"]


@pytest.mark.slow  # trains the small run: an experiment
def test_equinox_and_nnx_agree_run_by_run(small_run):
    _, out = small_run
    recs = by_setting(records(out))
    pairs = [(r, recs[(k[0], "nnx", *k[2:])]) for k, r in recs.items() if k[1] == "equinox"]
    assert len(pairs) == 9
    for eqx_run, nnx_run in pairs:
        for key in ("train_loss", "test_acc"):
            np.testing.assert_allclose(nnx_run["final"][key], eqx_run["final"][key],
                                       rtol=1e-4, atol=1e-6)  # fmt: skip


@pytest.mark.slow  # trains the small run: an experiment
def test_posthoc_lowrank_error_is_the_truncated_svd_error(small_run):
    """The post-hoc low-rank layer is the best rank-r approximation of the trained weight:
    its error is the norm of the discarded singular values (Eckart-Young)."""
    _, out = small_run
    spec = _load_dense(out, "equinox", 0)
    for b in (0.1, 0.3):
        run = by_setting(records(out))[("posthoc", "equinox", "lowrank", b, 0)]["final"]
        for i in range(2):
            w = np.asarray(spec[i][0], np.float64)
            s = np.linalg.svd(w, compute_uv=False)
            r = int(run[f"rank{i}"])
            assert 1 <= r < len(s)
            want = np.sqrt(np.sum(s[r:] ** 2)) / np.linalg.norm(s)
            np.testing.assert_allclose(run[f"rel_error{i}"], want, rtol=1e-3)


@pytest.mark.slow  # trains the small run: an experiment
def test_fine_tune_does_not_lose_accuracy_on_average(small_run):
    _, out = small_run
    post = [r["final"] for r in records(out) if r["stage"] == "posthoc"]
    gain = np.mean([f["test_acc"] - f["test_acc_factorized"] for f in post])
    assert gain > 0


@pytest.mark.slow  # trains the small run: an experiment
def test_padded_and_masked_run_equals_the_run_alone(small_run, tmp_path):
    """A run trained in a group padded to a larger budget's ranks and masked back gives the
    trajectory of the same run trained alone at its own size."""
    _, out = small_run
    alone = DigitsConfig(formats=("lowrank", "tt"), budgets=(0.1,), frameworks=("equinox",),
                         posthoc=False, **SMALL)  # fmt: skip
    run_digits(alone, tmp_path)
    grouped = by_setting(records(out))
    for fmt in ("lowrank", "tt"):
        key = ("train", "equinox", fmt, 0.1, 0)
        a = np.load(tmp_path / by_setting(records(tmp_path))[key]["trajectory"])
        g = np.load(out / grouped[key]["trajectory"])
        np.testing.assert_allclose(a["train_loss"], g["train_loss"], rtol=1e-4)
        assert (
            grouped[key]["final"]["params"] == by_setting(records(tmp_path))[key]["final"]["params"]
        )


@pytest.mark.slow  # trains the small run: an experiment
def test_resume_redoes_nothing(small_run, capsys):
    cfg, out = small_run
    before = (out / "runs.jsonl").read_text()
    capsys.readouterr()
    run_digits(cfg, out)
    assert f"0 of {len(cfg.settings())} runs to do" in capsys.readouterr().out
    assert (out / "runs.jsonl").read_text() == before


@pytest.mark.parametrize(
    "kwargs, words",
    [
        (dict(formats=("svd",)), ["`formats`", "'svd'", "lowrank"]),
        (dict(budgets=(0.1, 1.5)), ["`budgets`", "1.5", "(0, 1]"]),
        (dict(frameworks=("torch",)), ["`frameworks`", "torch", "nnx"]),
        (dict(steps=25, log_every=10), ["`steps`", "25", "log_every"]),
    ],
)
def test_bad_config_is_refused_by_name(kwargs, words):
    with pytest.raises(ValueError) as e:
        DigitsConfig(**kwargs)
    for w in words:
        assert w in str(e.value)


def test_budget_below_rank_one_is_refused(tmp_path):
    cfg = DigitsConfig(formats=("tucker",), budgets=(1e-5,), **SMALL)
    with pytest.raises(ValueError, match=r"budget 1e-05 with format 'tucker'"):
        run_digits(cfg, tmp_path)
    assert not (tmp_path / "runs.jsonl").exists()
