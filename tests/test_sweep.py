"""Tests of the sweep driver `factorjax.dynamics.sweep.run_sweep`.

The reference is the same runs done one at a time with `train`, unbatched and not jitted. The
batched runs differ from it by float32 rounding only (the same operations, batched and fused):
after 20 gradient steps of a well-conditioned problem that stays within a few hundred eps
relative, so ``rtol=1e-5`` with a tiny ``atol`` for quantities that are near zero.
"""

import functools

import jax
import numpy as np
import pytest

from factorjax import SymmetricTubalLowRank
from factorjax.dynamics import RunStore, TubalSensing, run_id, train
from factorjax.dynamics.sweep import run_sweep

N, K, R_TRUE, M, STEPS, LOG_EVERY = 4, 2, 1, 20, 20, 10


def one_run(width, alpha, seed, lr):
    """One run, its problem drawn from the seed: traceable in ``alpha``, ``seed`` and ``lr``."""
    key = jax.random.key(seed)
    problem = TubalSensing.make(N, K, R_TRUE, M, key=key)
    model = SymmetricTubalLowRank.init(
        N, K, width, key=jax.random.fold_in(key, 1), init="small", alpha=alpha
    )
    return train(problem, model, steps=STEPS, log_every=LOG_EVERY, step_size=lr)[1]


@functools.cache
def batched(width):
    """One jitted, vmapped function per group shape (``width``), compiled once per batch size."""
    return jax.jit(jax.vmap(functools.partial(one_run, width)))


class Counting:
    """The example ``run_group``, counting its calls and the batch sizes it was given."""

    def __init__(self):
        self.calls = []

    def __call__(self, group, batch):
        self.calls.append((dict(group), len(batch["seed"])))
        return batched(group["width"])(batch["alpha"], batch["seed"], batch["lr"])


@functools.cache
def reference(width):
    """The same run, unbatched (jitted per width only to keep the test fast)."""
    return jax.jit(functools.partial(one_run, width))


def refuse(group, batch):
    raise AssertionError(f"run_group called for {group} with {batch}")


GRID = [
    {"width": w, "alpha": a, "seed": s, "lr": 0.4}
    for w in (3, 4)
    for s in (0, 1)
    for a in (1e-2, 1e-3)
]


def assert_records_equal(a, b):
    assert [r["run_id"] for r in a] == [r["run_id"] for r in b]
    for ra, rb in zip(a, b, strict=True):
        assert {k: v for k, v in ra.items() if k != "final"} == {
            k: v for k, v in rb.items() if k != "final"
        }
        assert ra["final"].keys() == rb["final"].keys()
        for name in ra["final"]:
            np.testing.assert_allclose(ra["final"][name], rb["final"][name], rtol=1e-6)


@pytest.fixture(scope="module")
def full_sweep(tmp_path_factory):
    """The uninterrupted sweep of GRID: its store, records and run_group."""
    store = RunStore(tmp_path_factory.mktemp("full"))
    rg = Counting()
    records = run_sweep(store, GRID, rg, group_keys=("width",))
    return store, records, rg


@pytest.mark.slow  # a whole sweep and each of its runs again
def test_sweep_equals_runs_one_by_one(full_sweep):
    store, records, rg = full_sweep
    assert rg.calls == [({"width": 3}, 4), ({"width": 4}, 4)]
    assert [r["run_id"] for r in records] == [run_id(s) for s in GRID]
    for setting, rec in zip(GRID, records, strict=True):
        ref = reference(setting["width"])(setting["alpha"], setting["seed"], setting["lr"])
        assert {k: rec[k] for k in setting} == setting
        assert rec["status"] == "ok" and rec["diverged_at"] == -1
        traj = store.load_trajectory(rec["run_id"])
        names = {k for k, v in ref.items() if np.ndim(v) >= 1}
        assert set(traj) == names
        for name in names:
            np.testing.assert_allclose(traj[name], ref[name], rtol=1e-5, atol=1e-7, err_msg=name)
        assert set(rec["final"]) == {k for k in names if np.ndim(ref[k]) == 1} - {"step"}
        for name, value in rec["final"].items():
            np.testing.assert_allclose(value, ref[name][-1], rtol=1e-5, atol=1e-7, err_msg=name)
    # Learning happened, so the comparison is not between two copies of the initial state.
    assert all(
        r["final"]["train_loss"] < 0.5 * store.load_trajectory(r["run_id"])["train_loss"][0]
        for r in records
    )


def test_resume_redoes_nothing(full_sweep):
    store, records, _ = full_sweep
    again = run_sweep(RunStore(store.out_dir), GRID, refuse, group_keys=("width",))
    assert again == records


def test_partial_then_full_runs_only_the_missing(tmp_path, full_sweep):
    _, full_records, _ = full_sweep
    store = RunStore(tmp_path)
    subset = [GRID[i] for i in (0, 3, 5, 6)]  # two runs of each width
    first = Counting()
    part = run_sweep(store, subset, first, group_keys=("width",))
    assert first.calls == [({"width": 3}, 2), ({"width": 4}, 2)]
    assert [r["run_id"] for r in part] == [run_id(s) for s in subset]
    rest = Counting()
    records = run_sweep(RunStore(tmp_path), GRID, rest, group_keys=("width",))
    assert rest.calls == [({"width": 3}, 2), ({"width": 4}, 2)]
    assert_records_equal(records, full_records)


def test_kill_between_groups_keeps_finished_groups(tmp_path):
    """A failure in the second group leaves the first recorded; the restart runs the second."""

    def fake(fail_on):
        calls = []

        def run_group(group, batch):
            calls.append(group["width"])
            if group["width"] == fail_on:
                raise KeyboardInterrupt
            b = len(batch["seed"])
            return {
                "loss": np.outer(batch["seed"] + group["width"], [1.0, 0.5]),
                "diverged": np.zeros(b, bool),
                "diverged_at": np.full(b, -1),
            }

        return run_group, calls

    grid = [{"width": w, "seed": s} for w in (1, 2) for s in range(3)]
    rg, calls = fake(fail_on=2)
    with pytest.raises(KeyboardInterrupt):
        run_sweep(RunStore(tmp_path), grid, rg, group_keys=("width",))
    assert calls == [1, 2]
    assert set(RunStore(tmp_path).finished()) == {run_id(s) for s in grid[:3]}
    rg, calls = fake(fail_on=None)
    records = run_sweep(RunStore(tmp_path), grid, rg, group_keys=("width",))
    assert calls == [2]
    assert [r["final"]["loss"] for r in records] == [0.5 * (s["seed"] + s["width"]) for s in grid]


def test_diverging_run_is_recorded_as_diverged(tmp_path):
    grid = [{"width": 4, "alpha": 1e-2, "seed": s, "lr": lr} for s, lr in ((0, 0.1), (1, 1e4))]
    records = run_sweep(RunStore(tmp_path), grid, Counting(), group_keys=("width",))
    assert [r["status"] for r in records] == ["ok", "diverged"]
    assert records[0]["diverged_at"] == -1
    assert 1 <= records[1]["diverged_at"] <= STEPS
    ref = reference(4)(1e-2, 1, 1e4)
    assert bool(ref["diverged"]) and records[1]["diverged_at"] == int(ref["diverged_at"])


@pytest.mark.parametrize(
    "settings, group_keys, match",
    [
        ([{"width": 1, "seed": 0}, {"width": 1, "seed": 0}], ("width",), "duplicate"),
        ([{"width": 1, "seed": 0}, {"width": 1.0, "seed": 0.0}], ("width",), None),
        ([{"seed": 0}, {"seed": 1}], ("width",), "`group_keys` names 'width'"),
        ([{"width": 1, "seed": 0}, {"width": 1, "lr": 0.1}], ("width",), "same keys"),
        ([{"width": 1, "seed": 0}, {"width": 1, "seed": 1, "lr": 0.1}], ("width",), "same keys"),
        ([{"width": 1, "seed": 0}], ("width", "seed"), "no axis is left"),
        ([{"width": 1, "seed": 0, "status": "ok"}], ("width",), "reserved"),
        ([{"width": 1, "seed": [0, 1]}], ("width",), r"settings\[0\]\['seed'\]"),
    ],
)
def test_bad_inputs(tmp_path, settings, group_keys, match):
    store = RunStore(tmp_path)
    if match is None:  # 1 and 1.0 are distinct runs (as in `run_id`): no error
        calls = []

        def rg(group, batch):
            calls.append(group)
            n = len(batch["seed"])
            return {"diverged": np.zeros(n, bool), "diverged_at": np.full(n, -1)}

        assert len(run_sweep(store, settings, rg, group_keys=group_keys)) == 2
        assert len(calls) == 2
        return
    with pytest.raises(ValueError, match=match):
        run_sweep(store, settings, refuse, group_keys=group_keys)
    assert store.finished() == {}


def test_bad_group_keys_and_history(tmp_path):
    store = RunStore(tmp_path)
    grid = [{"width": 1, "seed": s} for s in range(2)]
    with pytest.raises(TypeError, match="group_keys"):
        run_sweep(store, grid, refuse, group_keys="width")
    with pytest.raises(TypeError, match="settings"):
        run_sweep(store, grid[0], refuse, group_keys=("width",))

    def short(group, batch):  # one run too few
        return {"diverged": np.zeros(1, bool), "diverged_at": np.full(1, -1)}

    with pytest.raises(ValueError, match="leading axis of 2"):
        run_sweep(store, grid, short, group_keys=("width",))

    def no_flag(group, batch):
        return {"loss": np.zeros((2, 3))}

    with pytest.raises(ValueError, match="'diverged'"):
        run_sweep(store, grid, no_flag, group_keys=("width",))
    assert store.finished() == {}
