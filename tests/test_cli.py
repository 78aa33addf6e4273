"""Tests of the ``factorjax`` command: list, run with typed ``--set`` overrides, plot, refusals."""

from __future__ import annotations  # the config's annotations are strings: get_type_hints

import dataclasses
import json
import os
import subprocess
import sys
import tomllib
import typing
from pathlib import Path
from typing import Literal

import jax
import pytest

from factorjax import cli
from factorjax.experiments import Experiment, experiments, get, register
from factorjax.experiments._registry import _REGISTRY

ROOT = Path(__file__).resolve().parents[1]
NAME = "cli-test-toy"
SUMMARY = "a toy experiment that only records its config"


@dataclasses.dataclass(frozen=True)
class ToyConfig:
    steps: int = 100
    lr: float = 0.1
    verbose: bool = False
    label: str = "toy"
    init: Literal["small", "large"] = "small"
    widths: tuple[int, ...] = (10, 20)
    alphas: tuple[float, ...] = (1e-3, 1.0)
    seed: int | None = None
    tol: float | None = 1e-6
    float64: bool = False

    def __post_init__(self):
        if self.steps <= 0:
            raise ValueError(f"steps must be positive, got {self.steps}")


@pytest.fixture
def toy():
    """Register the toy experiment for one test; ``toy.calls`` records what ``run`` saw."""
    calls = []

    def run(config, out_dir):
        calls.append({"config": config, "out_dir": out_dir, "x64": jax.config.jax_enable_x64})
        record = {"experiment": NAME, "config": dataclasses.asdict(config)}
        (out_dir / "config.json").write_text(json.dumps(record))
        (out_dir / "done.txt").write_text("done")

    def plot(out_dir):
        png = out_dir / "figure.png"
        png.write_bytes(b"")
        calls.append({"plot": out_dir, "x64": jax.config.jax_enable_x64})
        return [png]

    quick = {"steps": 5, "widths": (2,)}
    experiment = register(Experiment(NAME, SUMMARY, ToyConfig, quick, run, plot))
    try:
        yield experiment, calls
    finally:
        _REGISTRY.pop(NAME, None)


def _error(capsys) -> str:
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith("factorjax: error: ")
    assert "Traceback" not in captured.err
    return captured.err


def test_fixture_registers_and_removes(toy):
    assert get(NAME) is toy[0]
    assert list(experiments()).count(NAME) == 1


def test_list(toy, capsys):
    assert cli.main(["list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert any(NAME in line and SUMMARY in line for line in lines)


def test_list_name_shows_fields(toy, capsys):
    assert cli.main(["list", NAME]) == 0
    out = capsys.readouterr().out
    for field in dataclasses.fields(ToyConfig):
        assert field.name in out
    assert "widths (tuple[int, ...]) = (10, 20)  [--quick: (2,)]" in out
    assert "steps (int) = 100  [--quick: 5]" in out
    assert "init (Literal['small', 'large']) = 'small'" in out
    assert "seed (int | None) = None" in out
    assert "lr (float) = 0.1\n" in out  # no quick value


def test_list_unknown_name(toy, capsys):
    assert cli.main(["list", "nope"]) == 2
    err = _error(capsys)
    assert "'nope'" in err and NAME in err


def test_run_defaults_and_default_out_dir(toy, capsys, tmp_path, monkeypatch):
    _, calls = toy
    monkeypatch.chdir(tmp_path)
    assert cli.main(["run", NAME]) == 0
    assert calls[-1]["config"] == ToyConfig()
    assert calls[-1]["out_dir"] == Path("runs") / NAME
    assert (tmp_path / "runs" / NAME / "done.txt").read_text() == "done"
    assert str(tmp_path / "runs" / NAME) in capsys.readouterr().out


def test_run_quick_and_typed_overrides(toy, tmp_path):
    _, calls = toy
    argv = ["run", NAME, "--quick", "--out", str(tmp_path / "out")]
    argv += ["--set", "lr=1e-7", "verbose=YES", "--set", "label=hello world"]
    argv += ["--set", "init=large", "--set", "alphas=0.5, 3", "--set", "seed=-3"]
    argv += ["--set", "tol=none", "--set", "float64=false"]
    assert cli.main(argv) == 0
    config = calls[-1]["config"]
    assert config == ToyConfig(
        steps=5,
        lr=1e-7,
        verbose=True,
        label="hello world",
        init="large",
        widths=(2,),
        alphas=(0.5, 3.0),
        seed=-3,
        tol=None,
    )
    assert type(config.lr) is float and type(config.seed) is int
    assert all(type(a) is float for a in config.alphas)
    assert (tmp_path / "out" / "done.txt").exists()


def test_set_overrides_quick(toy, tmp_path):
    _, calls = toy
    argv = ["run", NAME, "--quick", "--out", str(tmp_path), "--set", "widths=10,50,100"]
    assert cli.main(argv) == 0
    assert calls[-1]["config"].widths == (10, 50, 100)
    assert calls[-1]["config"].steps == 5


def test_parse_overrides_types():
    parsed = cli.parse_overrides(
        ToyConfig,
        ["steps=+7", "lr=3", "verbose=0", "init=small", "widths=4", "seed=12", "tol=2e-3"],
    )
    assert parsed == {
        "steps": 7,
        "lr": 3.0,
        "verbose": False,
        "init": "small",
        "widths": (4,),
        "seed": 12,
        "tol": 2e-3,
    }
    assert type(parsed["lr"]) is float
    assert cli.parse_overrides(ToyConfig, ["seed=None", "seed=5"]) == {"seed": 5}  # last wins
    assert cli.parse_overrides(ToyConfig, ["label="]) == {"label": ""}
    assert cli.parse_overrides(ToyConfig, ["label=a=b"]) == {"label": "a=b"}


def test_parse_overrides_real_annotations():
    """Annotations that are type objects (no ``from __future__``), and ``typing.Optional``."""
    cls = dataclasses.make_dataclass(
        "Plain",
        [
            ("n", int, 1),
            ("x", typing.Optional[float], None),  # noqa: UP045
            ("ks", tuple[int, ...], (1,)),
        ],
        frozen=True,
    )
    parsed = cli.parse_overrides(cls, ["n=2", "x=none", "ks=3,4"])
    assert parsed == {"n": 2, "x": None, "ks": (3, 4)}
    assert cli.parse_overrides(cls, ["x=0.25"]) == {"x": 0.25}
    with pytest.raises(ValueError, match=r"x \(float \| None\)"):
        cli.parse_overrides(cls, ["x=abc"])


@pytest.mark.parametrize(
    ("item", "expected"),
    [
        ("steps=1.5", ["'1.5'", "steps (int)", "integer"]),
        ("steps=1e3", ["'1e3'", "steps (int)", "integer"]),
        ("steps=true", ["'true'", "steps (int)"]),
        ("lr=fast", ["'fast'", "lr (float)", "number"]),
        ("lr=nan", ["'nan'", "lr (float)", "finite"]),
        ("lr=inf", ["'inf'", "lr (float)", "finite"]),
        ("verbose=maybe", ["'maybe'", "verbose (bool)", "true", "false"]),
        ("init=medium", ["'medium'", "init", "'small'", "'large'"]),
        ("widths=", ["''", "widths (tuple[int, ...])", "non-empty"]),
        ("widths=1,x", ["'1,x'", "widths (tuple[int, ...])", "integer"]),
        ("widths=1,,2", ["'1,,2'", "widths (tuple[int, ...])"]),
        ("alphas=0.1,nope", ["'0.1,nope'", "alphas (tuple[float, ...])", "number"]),
        ("seed=1.0", ["'1.0'", "seed (int | None)", "integer"]),
    ],
)
def test_bad_values_refused(toy, capsys, tmp_path, item, expected):
    _, calls = toy
    assert cli.main(["run", NAME, "--out", str(tmp_path), "--set", item]) == 2
    err = _error(capsys)
    for text in expected:
        assert text in err
    assert calls == []
    with pytest.raises(ValueError):
        cli.parse_overrides(ToyConfig, [item])


def test_unknown_experiment_lists_known(toy, capsys, tmp_path):
    assert cli.main(["run", "no-such-thing", "--out", str(tmp_path)]) == 2
    err = _error(capsys)
    assert "'no-such-thing'" in err and NAME in err
    assert not any(tmp_path.iterdir())


def test_unknown_key_lists_allowed(toy, capsys, tmp_path):
    assert cli.main(["run", NAME, "--out", str(tmp_path), "--set", "width=3"]) == 2
    err = _error(capsys)
    assert "'width'" in err
    for text in ["steps (int)", "widths (tuple[int, ...])", "alphas (tuple[float, ...])"]:
        assert text in err
    assert "init (Literal['small', 'large'])" in err and "tol (float | None)" in err


def test_missing_equals(toy, capsys, tmp_path):
    assert cli.main(["run", NAME, "--out", str(tmp_path), "--set", "steps"]) == 2
    err = _error(capsys)
    assert "KEY=VALUE" in err and "'steps'" in err and "widths (tuple[int, ...])" in err


def test_config_validation_refused(toy, capsys, tmp_path):
    _, calls = toy
    assert cli.main(["run", NAME, "--out", str(tmp_path), "--set", "steps=0"]) == 2
    assert "steps must be positive, got 0" in _error(capsys)
    assert calls == []


def test_float64_applied_before_run(toy, tmp_path):
    _, calls = toy
    try:
        jax.config.update("jax_enable_x64", False)
        assert cli.main(["run", NAME, "--out", str(tmp_path), "--set", "float64=true"]) == 0
        assert calls[-1]["x64"] is True
        assert cli.main(["run", NAME, "--out", str(tmp_path)]) == 0
        assert calls[-1]["x64"] is False
    finally:
        jax.config.update("jax_enable_x64", False)


def test_plot(toy, capsys, tmp_path):
    _, calls = toy
    try:
        argv = ["run", NAME, "--quick", "--out", str(tmp_path), "--set", "float64=1"]
        assert cli.main(argv) == 0
        jax.config.update("jax_enable_x64", False)
        capsys.readouterr()
        assert cli.main(["plot", str(tmp_path)]) == 0
        assert calls[-1] == {"plot": tmp_path, "x64": True}  # float64 from config.json
        assert capsys.readouterr().out.splitlines() == [str(tmp_path / "figure.png")]
    finally:
        jax.config.update("jax_enable_x64", False)


def test_plot_refusals(toy, capsys, tmp_path):
    assert cli.main(["plot", str(tmp_path / "missing")]) == 2
    assert "config.json" in _error(capsys)
    assert cli.main(["plot", str(tmp_path)]) == 2  # exists, but no config.json
    assert "config.json" in _error(capsys)
    (tmp_path / "config.json").write_text(json.dumps({"experiment": "gone", "config": {}}))
    assert cli.main(["plot", str(tmp_path)]) == 2
    err = _error(capsys)
    assert "'gone'" in err and NAME in err
    (tmp_path / "config.json").write_text("{not json")
    assert cli.main(["plot", str(tmp_path)]) == 2
    assert "not a run config" in _error(capsys)


def test_usage_errors_exit_2(capsys):
    for argv in [[], ["run"], ["frobnicate"], ["run", NAME, "--set"]]:
        with pytest.raises(SystemExit) as info:
            cli.main(argv)
        assert info.value.code == 2
    capsys.readouterr()


def test_console_script_declared():
    with open(ROOT / "pyproject.toml", "rb") as f:
        project = tomllib.load(f)["project"]
    assert project["scripts"]["factorjax"] == "factorjax.cli:main"
    module, _, func = project["scripts"]["factorjax"].partition(":")
    assert module == cli.__name__ and getattr(cli, func) is cli.main


def test_python_dash_m():
    """``python -m factorjax.cli`` runs `main` and exits with its status."""
    result = subprocess.run(
        [sys.executable, "-m", "factorjax.cli", "run", "no-such-thing"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )
    assert result.returncode == 2
    assert result.stderr.startswith("factorjax: error: no experiment named 'no-such-thing'")


_DEVICES_SCRIPT = """
import dataclasses, json, sys
import jax
from factorjax import cli
from factorjax.experiments import Experiment, register

@dataclasses.dataclass(frozen=True)
class C:
    steps: int = 1

def run(config, out_dir):
    (out_dir / "devices.json").write_text(json.dumps(jax.local_device_count()))

register(Experiment("devices-toy", "records the local device count", C, {}, run, None))
sys.exit(cli.main(["run", "devices-toy", "--out", sys.argv[1], *sys.argv[2:]]))
"""


@pytest.mark.parametrize(
    ("args", "env", "expected"),
    [
        (["--cpu-devices", "3"], {}, 3),
        ([], {}, "cores"),
        ([], {"XLA_FLAGS": "--xla_force_host_platform_device_count=5"}, 5),
    ],
)
def test_run_splits_the_cpu_into_devices(tmp_path, args, env, expected):
    """`factorjax run` presents the cores as devices (the sweeps shard over them), unless told
    a count, by --cpu-devices or by the environment."""
    base = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "JAX_NUM_CPU_DEVICES")}
    result = subprocess.run(
        [sys.executable, "-c", _DEVICES_SCRIPT, str(tmp_path), *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**base, "JAX_PLATFORMS": "cpu", **env},
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    if expected == "cores":
        expected = len(os.sched_getaffinity(0))
    assert json.loads((tmp_path / "devices.json").read_text()) == expected


def test_cpu_devices_refuses_non_positive(capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(["run", NAME, "--cpu-devices", "0"])
    assert info.value.code == 2
    assert "expected a positive integer, got '0'" in capsys.readouterr().err
