"""Tests of the crash-safe run storage: atomic files, torn lines, resume, config checks, ids."""

import hashlib
import json
import math
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from factorjax.dynamics import storage
from factorjax.dynamics.storage import (
    RunStore,
    atomic_write_bytes,
    atomic_write_json,
    run_id,
    save_npz_atomic,
)

STORAGE_FILE = Path(storage.__file__)


def _refuse(token):
    raise AssertionError(f"non-standard JSON token {token}")


def _parse(data):
    """Lines of complete JSON, parsed by a reader that refuses NaN and Infinity tokens."""
    return [json.loads(line, parse_constant=_refuse) for line in data.splitlines()]


def _lines(path):
    data = Path(path).read_bytes()
    assert data.endswith(b"\n")
    return _parse(data)


def _no_temp_files(directory):
    return [p.name for p in Path(directory).iterdir() if ".tmp" in p.name] == []


# --------------------------------------------------------------------------- atomic files


def test_atomic_write_keeps_old_content_when_replace_fails(tmp_path, monkeypatch):
    path = tmp_path / "config.json"
    atomic_write_json(path, {"a": 1})

    def boom(src, dst):
        raise OSError("killed before the rename")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError, match="killed"):
        atomic_write_json(path, {"a": 2})
    with pytest.raises(OSError, match="killed"):
        atomic_write_bytes(path, b"garbage")
    with pytest.raises(OSError, match="killed"):
        save_npz_atomic(tmp_path / "t.npz", x=np.ones(3))
    monkeypatch.undo()
    assert json.loads(path.read_text()) == {"a": 1}
    assert not (tmp_path / "t.npz").exists()
    assert _no_temp_files(tmp_path)
    atomic_write_bytes(path, b"new")
    assert path.read_bytes() == b"new"


def test_save_npz_atomic_suffix_and_reserved_names(tmp_path):
    written = save_npz_atomic(tmp_path / "traj", file=np.arange(3), allow_pickle=np.eye(2))
    assert written == tmp_path / "traj.npz"
    assert not (tmp_path / "traj").exists()
    with np.load(written) as z:
        np.testing.assert_array_equal(z["file"], np.arange(3))
        np.testing.assert_array_equal(z["allow_pickle"], np.eye(2))
    assert save_npz_atomic(tmp_path / "b.npz", y=np.zeros(1)) == tmp_path / "b.npz"
    with pytest.raises(TypeError, match="object"):
        save_npz_atomic(tmp_path / "c.npz", z=np.array([{}, 1], dtype=object))
    assert _no_temp_files(tmp_path)


# --------------------------------------------------------------------------- runs.jsonl


def test_record_and_read_back(tmp_path):
    store = RunStore(tmp_path / "out")
    loss = np.linspace(1.0, 0.0, 5)
    store.record("a", {"seed": 0, "status": "ok", "loss": 0.5}, {"loss": loss})
    store.record("b", {"seed": 1, "status": "ok"}, None)
    fresh = RunStore(tmp_path / "out")
    done = fresh.finished()
    assert list(done) == ["a", "b"]
    assert done["a"] == {
        "run_id": "a",
        "seed": 0,
        "status": "ok",
        "loss": 0.5,
        "trajectory": "trajectories/a.npz",
    }
    assert done["b"]["trajectory"] is None
    np.testing.assert_array_equal(fresh.load_trajectory("a")["loss"], loss)
    with pytest.raises(FileNotFoundError, match="'b'"):
        fresh.load_trajectory("b")
    assert [r["run_id"] for r in _lines(tmp_path / "out" / "runs.jsonl")] == ["a", "b"]


def test_duplicate_run_id_refused(tmp_path):
    store = RunStore(tmp_path)
    store.record("a", {"x": 1}, {"y": np.ones(2)})
    with pytest.raises(ValueError, match="already recorded"):
        store.record("a", {"x": 2}, {"y": np.zeros(2)})
    with pytest.raises(ValueError, match="already recorded"):  # also from a fresh process
        RunStore(tmp_path).record("a", {"x": 3})
    np.testing.assert_array_equal(store.load_trajectory("a")["y"], np.ones(2))
    assert len(_lines(tmp_path / "runs.jsonl")) == 1


def test_bad_records_refused_before_anything_is_written(tmp_path):
    store = RunStore(tmp_path)
    with pytest.raises(ValueError, match="run_id"):
        store.record("a/b", {})
    with pytest.raises(ValueError, match="run_id"):
        store.record("..", {})
    with pytest.raises(ValueError, match="'trajectory'"):
        store.record("a", {"trajectory": 1})
    with pytest.raises(TypeError, match=r"record\.f"):
        store.record("a", {"f": object()}, {"y": np.ones(2)})
    with pytest.raises(TypeError, match="keys must be strings"):
        store.record("a", {1: 2})
    assert not (tmp_path / "runs.jsonl").exists()
    assert not (tmp_path / "trajectories" / "a.npz").exists()


def test_trajectory_written_before_line(tmp_path, monkeypatch):
    """A run killed while its trajectory is written leaves no line: it is not finished."""
    store = RunStore(tmp_path)
    store.record("a", {"x": 1}, {"y": np.ones(2)})

    def boom(src, dst):
        raise OSError("killed")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError):
        store.record("b", {"x": 2}, {"y": np.ones(2)})
    monkeypatch.undo()
    assert list(RunStore(tmp_path).finished()) == ["a"]
    store.record("b", {"x": 2}, {"y": np.zeros(2)})  # redone after the "kill"
    np.testing.assert_array_equal(RunStore(tmp_path).load_trajectory("b")["y"], np.zeros(2))


@pytest.mark.parametrize(
    "tail",
    [
        b'{"run_id": "c", "x": 1, "traj',  # torn mid-line
        b'{"run_id": "c", "x": 1, "trajectory": null}',  # complete JSON but no newline
        b"\x00\x00\x00\x00\n",  # garbage ending in a newline
        b'{"run_id": "c", "x"\n\n',  # invalid last line followed by blank lines
    ],
)
def test_torn_last_line_ignored_and_repaired(tmp_path, tail):
    store = RunStore(tmp_path)
    store.record("a", {"x": 1})
    store.record("b", {"x": 2})
    runs = tmp_path / "runs.jsonl"
    good = runs.read_bytes()
    with open(runs, "ab") as f:
        f.write(tail)
    fresh = RunStore(tmp_path)
    assert list(fresh.finished()) == ["a", "b"]
    assert runs.read_bytes() == good + tail  # reading repairs nothing
    fresh.record("c", {"x": 3})
    assert [r["run_id"] for r in _lines(runs)] == ["a", "b", "c"]
    assert runs.read_bytes().startswith(good)
    assert RunStore(tmp_path).finished()["c"]["x"] == 3


def test_corrupt_middle_line_raises(tmp_path):
    store = RunStore(tmp_path)
    store.record("a", {"x": 1})
    runs = tmp_path / "runs.jsonl"
    with open(runs, "ab") as f:
        f.write(b'{"run_id": "b", "x": \n')
    store.record("c", {"x": 3})  # the broken line was the tail: it is repaired away
    assert [r["run_id"] for r in _lines(runs)] == ["a", "c"]
    data = runs.read_bytes().splitlines(keepends=True)
    runs.write_bytes(data[0] + b'{"run_id": "b", "x": \n' + data[1])
    with pytest.raises(ValueError, match=r"line 2.*invalid JSON"):
        RunStore(tmp_path).finished()
    with pytest.raises(ValueError, match="line 2"):
        RunStore(tmp_path).record("d", {})
    runs.write_bytes(data[0] + b'["not", "a", "record"]\n' + data[1])
    with pytest.raises(ValueError, match=r"line 2.*run_id"):
        RunStore(tmp_path).finished()
    runs.write_bytes(data[0] + data[0] + data[1])
    with pytest.raises(ValueError, match=r"line 2.*twice"):
        RunStore(tmp_path).finished()


def test_non_finite_values_round_trip(tmp_path):
    store = RunStore(tmp_path)
    record = {
        "status": "diverged",
        "loss": math.nan,
        "best": -math.inf,
        "worst": np.float32(np.inf),
        "curve": np.array([1.0, np.nan, -np.inf]),
        "nested": {"x": [math.inf, 2.5]},
    }
    store.record("a", record)
    (line,) = _lines(tmp_path / "runs.jsonl")  # standard JSON: no NaN / Infinity tokens
    assert line["loss"] == "nan" and line["best"] == "-inf" and line["worst"] == "inf"
    assert line["curve"] == [1.0, "nan", "-inf"]
    got = RunStore(tmp_path).finished()["a"]
    assert math.isnan(got["loss"]) and got["best"] == -math.inf and got["worst"] == math.inf
    assert got["curve"][0] == 1.0 and math.isnan(got["curve"][1]) and got["curve"][2] == -math.inf
    assert got["nested"] == {"x": [math.inf, 2.5]}
    assert got["status"] == "diverged"
    with pytest.raises(ValueError, match="reserved"):  # would not round-trip
        store.record("b", {"note": "inf"})


def test_numpy_scalars_in_records(tmp_path):
    store = RunStore(tmp_path)
    record = {
        "seed": np.int64(3),
        "lr": np.float32(0.1),
        "alpha": np.float64(1e-7),
        "ok": np.bool_(True),
        "name": np.str_("lowrank"),
        "rank": np.array(4),
        "svals": np.array([[1, 2], [3, 4]], dtype=np.int32),
        "shape": (3, 4),
    }
    store.record("a", record)
    got = RunStore(tmp_path).finished()["a"]
    assert got["seed"] == 3 and type(got["seed"]) is int
    assert got["lr"] == float(np.float32(0.1)) and type(got["lr"]) is float
    assert got["alpha"] == 1e-7
    assert got["ok"] is True
    assert got["name"] == "lowrank"
    assert got["rank"] == 4 and type(got["rank"]) is int
    assert got["svals"] == [[1, 2], [3, 4]]
    assert got["shape"] == [3, 4]


# --------------------------------------------------------------------------- config


def test_config_mismatch_refused_and_match_accepted(tmp_path):
    cfg = {
        "problem": {"n": 50, "rank": 3},
        "alphas": [1e-3, 1e-6],
        "lr": 0.1,
        "started": "2025-01-01T00:00",
        "versions": {"jax": "0.10.2"},
        "env": {"devices": ["cpu:0"], "precision": "f32"},
    }
    volatile = ("started", "versions", "env.devices")
    store = RunStore(tmp_path)
    assert store.read_config() is None
    store.write_config(cfg, volatile=volatile)
    first = (tmp_path / "config.json").read_bytes()
    assert store.read_config() == cfg

    resumed = {
        **cfg,
        "started": "2025-02-02T00:00",
        "versions": {"jax": "0.12.0", "numpy": "2.5"},
        "env": {"devices": ["gpu:0", "gpu:1"], "precision": "f32"},
    }
    RunStore(tmp_path).write_config(resumed, volatile=volatile)  # accepted
    assert (tmp_path / "config.json").read_bytes() == first  # and left as it was

    changed = {
        **resumed,
        "problem": {"n": 60, "rank": 3},
        "lr": 0.2,
        "env": {"devices": [], "precision": "f64"},
        "extra": 1,
    }
    with pytest.raises(ValueError, match="different sweep") as info:
        RunStore(tmp_path).write_config(changed, volatile=volatile)
    message = str(info.value)
    for key in ("'problem.n'", "'lr'", "'env.precision'", "'extra'"):
        assert key in message
    for key in ("'problem.rank'", "'alphas'", "'started'", "'env.devices'", "'versions"):
        assert key not in message
    assert (tmp_path / "config.json").read_bytes() == first
    with pytest.raises(ValueError, match="'started'"):  # volatile only when declared
        RunStore(tmp_path).write_config(resumed)


def test_config_non_finite_and_numpy(tmp_path):
    cfg = {"clip": math.inf, "n": np.int64(5), "alphas": np.array([1e-3, 1e-6])}
    RunStore(tmp_path).write_config(cfg)
    RunStore(tmp_path).write_config({"clip": float("inf"), "n": 5, "alphas": [1e-3, 1e-6]})
    got = RunStore(tmp_path).read_config()
    assert got == {"clip": math.inf, "n": 5, "alphas": [1e-3, 1e-6]}
    with pytest.raises(ValueError, match="'clip'"):
        RunStore(tmp_path).write_config({**got, "clip": 1.0})


# --------------------------------------------------------------------------- checkpoints


def test_checkpoints(tmp_path):
    store = RunStore(tmp_path)
    assert store.load_checkpoint("sweep") is None
    assert store.checkpoint_path("sweep") == tmp_path / "checkpoints" / "sweep.npz"
    path = store.save_checkpoint("sweep", step=np.array(10), params=np.ones((2, 3)))
    assert path == store.checkpoint_path("sweep")
    got = RunStore(tmp_path).load_checkpoint("sweep")
    assert got["step"] == 10 and got["params"].shape == (2, 3)
    store.save_checkpoint("sweep", step=np.array(20))
    assert set(store.load_checkpoint("sweep")) == {"step"}
    store.clear_checkpoint("sweep")
    store.clear_checkpoint("sweep")  # nothing to clear: no error
    assert store.load_checkpoint("sweep") is None
    with pytest.raises(ValueError, match="name"):
        store.checkpoint_path("../escape")
    assert _no_temp_files(tmp_path / "checkpoints")


# --------------------------------------------------------------------------- run ids


def test_run_id_readable_and_order_independent():
    settings = {"width": 100, "seed": 3, "alpha": 1e-7}
    assert run_id(settings) == "alpha=1e-07_seed=3_width=100"
    assert run_id({"alpha": 1e-7, "width": 100, "seed": 3}) == run_id(settings)
    numpy_settings = {"seed": np.int64(3), "alpha": np.float64(1e-7), "width": np.int32(100)}
    assert run_id(numpy_settings) == run_id(settings)
    assert run_id({"lr": 0.1, "init": "small", "deep": True, "clip": None}) == (
        "clip=None_deep=True_init=small_lr=0.1"
    )
    assert run_id({"x": 1e20}) == "x=1e+20"
    assert run_id({}) == "run"
    assert run_id({"x": 1}) != run_id({"x": 1.0})


def test_run_id_hashed_when_ambiguous_or_long():
    def digest(settings):
        canonical = json.dumps(settings, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()[:12]

    # A known value: the same on every process, platform and Python version.
    assert run_id({"init": "small scale", "seed": 1}) == "init=small-scale_seed=1~38b4a9e80978"
    assert digest({"init": "small scale", "seed": 1}) == "38b4a9e80978"
    ids = {
        run_id(s)
        for s in (
            {"a": 1},
            {"a": "1"},
            {"a": True},
            {"a": "True"},
            {"a": "x y"},
            {"a": "x-y"},
            {"a": "x/y"},
            {"a": [1, 2]},
            {"a": "nan"},
            {"a": math.nan},
        )
    }
    assert len(ids) == 10
    assert all(storage._SAFE_NAME.fullmatch(i) for i in ids)
    long = {f"key{i}": i / 7 for i in range(30)}
    rid = run_id(long)
    assert len(rid) <= 120 and rid.endswith("~" + digest(long))
    assert rid.startswith("key0=0.0_key1=0.14285714285714285_")
    assert run_id({**long, "key29": 1.0}) != rid


def test_run_id_same_in_another_process():
    cases = [{"b": 2.5, "a": "x y", "c": [1, 2]}, {"seed": 3, "alpha": 1e-7}]
    code = textwrap.dedent(
        f"""
        import importlib.util, json, sys
        spec = importlib.util.spec_from_file_location("s", {str(STORAGE_FILE)!r})
        m = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(m)
        print(json.dumps([m.run_id(c) for c in json.loads(sys.argv[1])]))
        """
    )
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    out = subprocess.run(
        [sys.executable, "-c", code, json.dumps(cases)],
        capture_output=True,
        text=True,
        env=env,
        check=True,
        timeout=60,
    )
    assert json.loads(out.stdout) == [run_id(c) for c in cases]


# --------------------------------------------------------------------------- SIGKILL


_WRITER = textwrap.dedent(
    """
    import importlib.util, sys
    import numpy as np
    spec = importlib.util.spec_from_file_location("s", sys.argv[1])
    m = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(m)
    store = m.RunStore(sys.argv[2])
    store.write_config({"sweep": "kill", "runs": 100000, "pid": 0}, volatile=["pid"])
    done = store.finished()
    print("ready", flush=True)
    for i in range(100000):
        rid = f"r{i:06d}"
        if rid in done:
            continue
        record = {"i": i, "loss": np.float32(i) / 7, "pad": "x" * (37 * i % 3000)}
        store.record(rid, record, {"loss": np.arange(i % 500, dtype=float) + i})
    """
)


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL")
def test_sigkill_at_random_moments_then_resume(tmp_path, rng):
    out = tmp_path / "out"
    counts = []
    for _ in range(5):
        proc = subprocess.Popen(
            [sys.executable, "-c", _WRITER, str(STORAGE_FILE), str(out)],
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            assert proc.stdout.readline() == "ready\n"
            time.sleep(rng.uniform(0.05, 0.3))
        finally:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
            proc.stdout.close()
        assert proc.returncode == -signal.SIGKILL

        # Every line parses, ids are r0..r{n-1} in order (resumed, nothing redone), and every
        # referenced trajectory loads with the content that run wrote.
        data = (out / "runs.jsonl").read_bytes() if (out / "runs.jsonl").exists() else b""
        lines = _parse(data[: data.rfind(b"\n") + 1])  # a torn tail (no newline) is not read
        assert [r["run_id"] for r in lines] == [f"r{i:06d}" for i in range(len(lines))]
        store = RunStore(out)
        assert list(store.finished()) == [r["run_id"] for r in lines]
        for r in lines[-20:]:
            i = r["i"]
            assert r["trajectory"] == f"trajectories/r{i:06d}.npz"
            traj = np.load(out / r["trajectory"])["loss"]
            np.testing.assert_array_equal(traj, np.arange(i % 500, dtype=float) + i)
        counts.append(len(lines))
        assert _no_temp_files(out)  # the config is only rewritten on the first start

    assert counts == sorted(counts) and counts[-1] > 0
    # Every trajectory referenced anywhere loads.
    for r in RunStore(out).finished().values():
        assert np.load(out / r["trajectory"])["loss"].shape == (r["i"] % 500,)
    store = RunStore(out)
    store.write_config({"sweep": "kill", "runs": 100000, "pid": 1}, volatile=["pid"])
    n = counts[-1]
    store.record(f"r{n:06d}", {"i": n}, {"loss": np.zeros(1)})
    done = RunStore(out).finished()
    assert list(done) == [f"r{i:06d}" for i in range(n + 1)]
