"""Tests of the experiment runner: `map_runs` over devices and processes, `run_sensing_sweep`
(sharded, multi-process, killed and resumed, diverging) and the ``factorjax run`` command.

Everything that changes jax's global state (the device count, float64, `jax.distributed`) runs
in a subprocess (``tests/_scripts/runner_worker.py``), so nothing leaks into other tests. One
small float64 sweep, run once on one device (the ``reference`` fixture), is what the sharded,
multi-process and killed-then-resumed sweeps must reproduce: their runs are the same arithmetic
on other devices, so they agree to rounding (1e-12 relative; bitwise on one CPU host in
practice), and the sweep itself agrees with its runs done one by one with `train` to 1e-9.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import equinox as eqx
import numpy as np
import pytest

from factorjax.dynamics import RunStore, train
from factorjax.experiments import sensing_sweep as ss

# One xdist worker runs the file, so its session fixtures (subprocess sweeps) run once.
pytestmark = pytest.mark.xdist_group("runner")

ROOT = Path(__file__).resolve().parents[1]
WORKER = ROOT / "tests" / "_scripts" / "runner_worker.py"
TIMEOUT = 120  # seconds; a hung subprocess fails the test instead of blocking the suite

# The reference sweep: 2 groups (widths 3 <= n and 6 > n, which the lifted method treats
# differently), 2 seeds x 2 alphas each, 10 chunks of 20 steps. alpha = 1e-2 converges; alpha =
# 1e3 overflows within a few steps, so every comparison covers diverged runs too.
CONFIG = {
    "n": 4,
    "k": 2,
    "rank": 1,
    "widths": [3, 6],
    "measurements": [12],
    "alphas": [0.01, 1000.0],
    "seeds": 2,
    "steps": 200,
    "log_every": 20,
    "checkpoint_every": 20,
    "nu": 0.003,
    "float64": True,
}
N_RUNS = 8
CHUNKS = CONFIG["steps"] // CONFIG["checkpoint_every"]
RTOL = 1e-12


# --------------------------------------------------------------------------- helpers


def _env(devices: int) -> dict:
    """The environment of a worker with ``devices`` CPU devices (set before it imports jax)."""
    env = dict(os.environ)
    flags = [
        f
        for f in env.get("XLA_FLAGS", "").split()
        if not f.startswith("--xla_force_host_platform_device_count")
    ]
    env["XLA_FLAGS"] = " ".join([*flags, f"--xla_force_host_platform_device_count={devices}"])
    env["JAX_PLATFORMS"] = "cpu"
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [env.get("PYTHONPATH")])])
    return env


def _start(args: dict, *, devices: int = 1) -> subprocess.Popen:
    """Start a worker; its output goes to ``<result>.log`` (a file: a pipe could fill up)."""
    with open(args["result"] + ".log", "w") as log:
        return subprocess.Popen(
            [sys.executable, str(WORKER), json.dumps(args)],
            env=_env(devices),
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
        )


def _wait(procs: list[subprocess.Popen], timeout: float = TIMEOUT) -> None:
    """Wait for all ``procs``; kill them all when one fails or the time is up (a worker of a
    distributed job whose partner died would wait for it forever)."""
    deadline = time.monotonic() + timeout
    try:
        while any(p.poll() is None for p in procs):
            if time.monotonic() > deadline or any(p.poll() not in (None, 0) for p in procs):
                break
            time.sleep(0.05)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()


def _results(procs: list[subprocess.Popen], all_args: list[dict]) -> list[dict]:
    """The findings of finished workers; the end of every failed one's log otherwise."""
    failed = [
        f"worker {i} failed ({p.returncode}):\n" + Path(a["result"] + ".log").read_text()[-3000:]
        for i, (p, a) in enumerate(zip(procs, all_args, strict=True))
        if p.returncode != 0
    ]
    assert not failed, "\n".join(failed)
    return [json.loads(Path(a["result"]).read_text()) for a in all_args]


def _run(args: dict, *, devices: int = 1) -> dict:
    """Run a worker to completion; its findings."""
    proc = _start(args, devices=devices)
    _wait([proc])
    return _results([proc], [args])[0]


def _sweep_args(out_dir: Path, **extra) -> dict:
    return {
        "mode": "sweep",
        "out_dir": str(out_dir),
        "result": str(out_dir.with_name(out_dir.name + "-result.json")),
        "config": CONFIG,
        "x64": True,
        **extra,
    }


def _load(out_dir: Path) -> tuple[dict, dict, dict]:
    """Config, records (by run id, in recorded order) and trajectories of a sweep folder."""
    store = RunStore(out_dir)
    records = store.finished()
    trajectories = {rid: store.load_trajectory(rid) for rid in records}
    return store.read_config(), records, trajectories


def _close(got, want, rtol, what):
    got, want = np.asarray(got), np.asarray(want)
    assert got.shape == want.shape, what
    assert got.dtype == want.dtype, what
    finite = np.abs(want[np.isfinite(want)])
    scale = finite.max() if finite.size else 0.0
    np.testing.assert_allclose(got, want, rtol=rtol, atol=rtol * scale, err_msg=what)


def assert_same_sweep(got_dir: Path, want_dir: Path, rtol: float = RTOL) -> None:
    """Two sweep folders hold the same config (volatile keys aside), runs and trajectories."""
    cfg_got, got, traj_got = _load(got_dir)
    cfg_want, want, traj_want = _load(want_dir)
    for key in ("experiment", "config"):
        assert cfg_got[key] == cfg_want[key]
    assert sorted(got) == sorted(want)
    assert len(want) == N_RUNS
    for rid in want:
        a, b = got[rid], want[rid]
        assert {k: v for k, v in a.items() if k != "final"} == {
            k: v for k, v in b.items() if k != "final"
        }, rid
        assert a["final"].keys() == b["final"].keys(), rid
        for name in b["final"]:
            _close(a["final"][name], b["final"][name], rtol, f"{rid} final {name}")
        assert traj_got[rid].keys() == traj_want[rid].keys(), rid
        for name in traj_want[rid]:
            _close(traj_got[rid][name], traj_want[rid][name], rtol, f"{rid} {name}")


def _lines(path: Path) -> list[bytes]:
    """The complete lines of ``path`` (a torn last line left out)."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return []
    return data[: data.rfind(b"\n") + 1].splitlines(keepends=True)


def _checkpoints(out_dir: Path) -> list[Path]:
    """The checkpoints of a sweep folder; hidden temporary files (a write in progress, or one
    cut short by a kill) are not checkpoints."""
    return sorted(p for p in (out_dir / "checkpoints").glob("*.npz") if not p.name.startswith("."))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def reference(tmp_path_factory) -> Path:
    """The sweep of CONFIG, uninterrupted, on one CPU device, in float64."""
    out = tmp_path_factory.mktemp("reference") / "sweep"
    found = _run(_sweep_args(out), devices=1)
    assert found["local_device_count"] == 1
    assert found["process_count"] == 1
    assert found["x64"]
    assert found["counts"]["record"] == N_RUNS
    # One problems call, one start call and CHUNKS chunk calls per group.
    assert found["counts"]["map_runs"] == len(CONFIG["widths"]) * (2 + CHUNKS)
    assert len(_lines(out / "runs.jsonl")) == N_RUNS
    assert not _checkpoints(out)  # cleared once a group is done
    return out


# --------------------------------------------------------------------------- map_runs


def test_map_runs_on_8_devices_equals_the_plain_call(tmp_path):
    args = {"mode": "map_runs", "result": str(tmp_path / "result.json"), "sizes": [1, 5, 8, 13]}
    found = _run(args, devices=8)
    assert found["local_device_count"] == 8
    assert [c["size"] for c in found["cases"]] == [1, 5, 8, 13]
    for case in found["cases"]:
        assert case["same_tree"], case
        assert case["shapes"] == case["want_shapes"], case
        assert case["shapes"][0][0] == case["size"], case  # padding rows dropped
        assert case["numpy"], case
        assert case["max_abs_diff"] <= 1e-6, case
    assert found["scan_from_constant_max_abs_diff"] <= 1e-6


# --------------------------------------------------------------------------- sharded sweeps


@pytest.mark.slow  # a whole sweep on 8 devices in a subprocess: a long integration run
def test_sweep_on_8_devices_equals_one_device(tmp_path, request):
    out = tmp_path / "sweep"
    args = _sweep_args(out)
    proc = _start(args, devices=8)
    # The reference, if not computed yet, is computed meanwhile (each sweep keeps about one
    # core busy).
    try:
        reference = request.getfixturevalue("reference")
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    _wait([proc])
    found = _results([proc], [args])[0]
    assert found["local_device_count"] == 8
    assert found["counts"]["record"] == N_RUNS
    assert_same_sweep(out, reference)
    # Recorded in the same order, and the devices recorded as they were.
    assert list(_load(out)[1]) == list(_load(reference)[1])
    assert len(_load(out)[0]["devices"]["local"]) == 8


@pytest.mark.slow  # two jax.distributed processes: a long integration run
def test_two_process_distributed_sweep_equals_one_process(tmp_path, reference):
    out = tmp_path / "sweep"
    port = _free_port()
    all_args = [
        _sweep_args(
            out,
            result=str(tmp_path / f"result{i}.json"),
            distributed={"port": port, "num_processes": 2, "process_id": i},
        )
        for i in range(2)
    ]
    procs = [_start(a, devices=1) for a in all_args]
    _wait(procs)
    found = _results(procs, all_args)
    assert [f["process_index"] for f in found] == [0, 1]
    assert all(f["process_count"] == 2 for f in found)
    # Both processes computed every chunk and got every record back ...
    assert found[0]["counts"]["map_runs"] == found[1]["counts"]["map_runs"]
    assert found[0]["run_ids"] == found[1]["run_ids"]
    assert len(found[1]["run_ids"]) == N_RUNS
    # ... and process 0 alone wrote.
    assert found[0]["counts"]["record"] == N_RUNS
    assert found[0]["counts"]["write_config"] == 1
    assert found[0]["counts"]["save_checkpoint"] == len(CONFIG["widths"]) * (CHUNKS - 1)
    for name in ("record", "save_checkpoint", "write_config"):
        assert found[1]["counts"][name] == 0, name
    assert len(_lines(out / "runs.jsonl")) == N_RUNS
    assert_same_sweep(out, reference)
    assert _load(out)[0]["devices"]["process_count"] == 2


# --------------------------------------------------------------------------- kill and resume


@pytest.mark.slow  # a sweep killed and run again: a long integration run
def test_sigkill_mid_sweep_then_resume(tmp_path, reference):
    """Kill the sweep with SIGKILL after its first group is recorded, while the second group
    has a checkpoint; the restarted sweep redoes no recorded run, resumes the second group
    from its checkpoint, and ends with the uninterrupted sweep's results."""
    out = tmp_path / "sweep"
    runs = out / "runs.jsonl"
    # Sleeping 0.1 s after each checkpoint keeps the window between the first record and the
    # end of the second group (9 checkpoints) about a second wide.
    args = _sweep_args(out, checkpoint_delay=0.1)
    proc = _start(args)
    killed_with = None
    try:
        deadline = time.monotonic() + TIMEOUT
        while proc.poll() is None and time.monotonic() < deadline:
            # runs.jsonl first: once it has a line, the first group's checkpoint is gone, so
            # any checkpoint seen after is the second group's.
            if _lines(runs) and _checkpoints(out):
                os.kill(proc.pid, signal.SIGKILL)
                killed_with = signal.SIGKILL
                break
            time.sleep(0.002)
    finally:
        if proc.poll() is None and killed_with is None:
            proc.kill()
        proc.wait()
    output = Path(args["result"] + ".log").read_text()
    assert killed_with is not None, f"the sweep ended before it could be killed:\n{output}"
    assert proc.returncode == -signal.SIGKILL, output
    assert not Path(args["result"]).exists()  # it had not finished

    before = _lines(runs)
    finished_before = [json.loads(line)["run_id"] for line in before]
    assert 0 < len(finished_before) < N_RUNS
    checkpoints = _checkpoints(out)
    assert checkpoints
    done = []
    for path in checkpoints:
        with np.load(path) as z:
            done.append(int(z["done"]))
    assert all(0 < d < CONFIG["steps"] and d % CONFIG["checkpoint_every"] == 0 for d in done)
    per_group = N_RUNS // len(CONFIG["widths"])
    recorded = [sum(json.loads(line)["width"] == w for line in before) for w in CONFIG["widths"]]
    groups_left = sum(r < per_group for r in recorded)

    found = _run(_sweep_args(out))
    # (b) the runs recorded before the kill were kept as they were and not redone ...
    after = _lines(runs)
    assert after[: len(before)] == before
    ids = [json.loads(line)["run_id"] for line in after]
    assert len(ids) == len(set(ids)) == N_RUNS
    assert found["counts"]["record"] == N_RUNS - len(finished_before)
    # ... and the group in flight went on from its checkpoint: fewer chunks than a fresh start.
    expected_calls = groups_left * (2 + CHUNKS) - sum(d // CONFIG["checkpoint_every"] for d in done)
    assert found["counts"]["map_runs"] == expected_calls
    assert not _checkpoints(out)
    # (a), (c): every trajectory loads, and all equal the uninterrupted sweep.
    assert_same_sweep(out, reference)


# --------------------------------------------------------------------------- divergence


@pytest.mark.slow  # needs the reference sweep, run in a subprocess
def test_diverging_run_is_recorded_and_the_sweep_finishes(reference):
    """In the reference sweep alpha = 1e3 overflows within a few steps and alpha = 1e-2
    converges: the diverged runs are recorded as such, and the sweep records every run."""
    cfg, records, trajectories = _load(reference)
    assert cfg["config"]["alphas"] == [0.01, 1000.0]
    assert len(records) == N_RUNS
    steps = list(range(0, CONFIG["steps"] + 1, CONFIG["log_every"]))
    for rid, rec in records.items():
        traj = trajectories[rid]
        assert traj["step"].tolist() == steps
        if rec["alpha"] == 1000.0:
            assert rec["status"] == "diverged", rec
            assert 1 <= rec["diverged_at"] <= CONFIG["steps"], rec
        else:
            assert rec["status"] == "ok", rec
            assert rec["diverged_at"] == -1, rec
            assert np.all(np.isfinite(traj["test_error"]))
            assert traj["test_error"][-1] < 0.2 * traj["test_error"][0]
    assert sum(r["status"] == "diverged" for r in records.values()) == N_RUNS // 2


# --------------------------------------------------------------------------- one by one


@pytest.mark.slow  # needs the reference sweep, run in a subprocess
def test_sweep_equals_its_runs_one_by_one(reference, x64):
    """Batching over seeds and alphas, the shared problem of a seed's alphas (the grid), the
    chunks and the checkpoints change nothing: each run of the sweep is `train` on
    `_problem(cfg, m, seed)` from `_init(cfg, width, seed, alpha)`, diverged runs included
    (they diverge at the same step)."""
    cfg = ss.SensingSweepConfig(
        **{k: tuple(v) if isinstance(v, list) else v for k, v in CONFIG.items()}
    )
    _, records, trajectories = _load(reference)
    assert len(records) == N_RUNS

    @eqx.filter_jit
    def one(problem, model, step_size):
        return train(
            problem, model, steps=cfg.steps, log_every=cfg.log_every, step_size=step_size,
            method="lifted",
        )[1]  # fmt: skip

    for rid, rec in records.items():
        problem = ss._problem(cfg, rec["m"], rec["seed"])
        model = ss._init(cfg, rec["width"], rec["seed"], rec["alpha"])
        history = one(problem, model, cfg.step_size(rec["m"]))
        assert rec["status"] == ("diverged" if history["diverged"] else "ok")
        assert rec["diverged_at"] == int(history["diverged_at"])
        traj = trajectories[rid]
        assert set(traj) == set(history) - {"diverged", "diverged_at"}
        for name in traj:
            _close(traj[name], np.asarray(history[name]), 1e-9, f"{rid} {name}")


# --------------------------------------------------------------------------- the command


CLI_ARGS = [
    "run", "tubal-fig3", "--quick", "--set", "seeds=2", "widths=10,20", "steps=80",
    "log_every=20", "checkpoint_every=40",
]  # fmt: skip


def _cli(argv: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "factorjax.cli", *argv],
        env=_env(1),
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )


@pytest.fixture(scope="session")
def cli_runs(tmp_path_factory):
    """``factorjax run tubal-fig3`` three times into one folder: a first run, the same again,
    and again with a changed ``steps``; the snapshots of the folder after each."""
    cwd = tmp_path_factory.mktemp("cli")
    out = cwd / "out"

    def snapshot():
        return {
            "runs": (out / "runs.jsonl").read_bytes(),
            "config": (out / "config.json").read_bytes(),
            "trajectories": {
                p.name: p.stat().st_mtime_ns for p in (out / "trajectories").glob("*.npz")
            },
        }

    first = _cli([*CLI_ARGS, "--out", str(out)], cwd)
    snaps = [snapshot() if first.returncode == 0 else None]
    again = _cli([*CLI_ARGS, "--out", str(out)], cwd)
    snaps.append(snapshot() if again.returncode == 0 else None)
    changed = _cli([*CLI_ARGS, "steps=120", "--out", str(out)], cwd)
    snaps.append(snapshot() if first.returncode == 0 else None)
    return out, [first, again, changed], snaps


@pytest.mark.slow  # three `factorjax run` processes (the cli_runs fixture)
def test_cli_run_end_to_end(cli_runs):
    out, (first, again, _), (snap1, snap2, _) = cli_runs
    assert first.returncode == 0, first.stderr[-4000:]
    for name in ("config.json", "runs.jsonl", "fig3.png", "summary.md"):
        assert (out / name).is_file(), name
    assert (out / "fig3.png").stat().st_size > 0
    assert "tubal-fig3" in (out / "summary.md").read_text()
    stored = json.loads(snap1["config"])
    assert stored["experiment"] == "tubal-fig3"
    assert stored["config"]["steps"] == 80
    assert stored["config"]["widths"] == [10, 20]
    assert stored["config"]["seeds"] == 2
    assert stored["config"]["float64"] is True
    lines = snap1["runs"].splitlines()
    assert len(lines) == 4
    records = [json.loads(line) for line in lines]
    assert sorted((r["width"], r["seed"]) for r in records) == [(10, 0), (10, 1), (20, 0), (20, 1)]
    assert all(r["status"] == "ok" for r in records)
    assert len(snap1["trajectories"]) == 4
    # The same command again redoes nothing and succeeds.
    assert again.returncode == 0, again.stderr[-4000:]
    assert snap2 == snap1


@pytest.mark.slow
def test_cli_run_with_a_changed_config_is_refused(cli_runs):
    _, (_, _, changed), (snap1, _, snap3) = cli_runs
    assert changed.returncode != 0
    assert "holds a different sweep" in changed.stderr
    assert "config.steps" in changed.stderr
    assert "stored 80, given 120" in changed.stderr
    assert snap3 == snap1  # nothing was written


@pytest.mark.slow
def test_cli_changed_config_is_a_clean_user_error(cli_runs):
    _, (_, _, changed), _ = cli_runs
    assert changed.returncode == 2
    assert changed.stderr.startswith("factorjax: error:")
    assert "Traceback" not in changed.stderr


@pytest.mark.slow
def test_cli_draws_no_progress_bar_off_a_terminal(cli_runs):
    _, (first, _, _), _ = cli_runs
    assert first.returncode == 0
    assert "step/s" not in first.stderr  # tqdm's rate: a bar was drawn
