"""Karnik, Veselovska, Iwen and Krahmer, "Implicit Regularization for Tubal Tensor
Factorizations via Gradient Descent" (ICML 2025): Figs 2, 3 and 4, and the underdetermined
regime the paper could not show.

Setup (paper and the authors' code): ``n = 10``, ``k = 4``, ground truth ``X = Ubar * Ubar^T``
with every non-zero Fourier singular value 1, ``U_0`` with ``N(0, alpha^2 / R)`` entries, plain
gradient descent on the squared residual with the authors' step ``nu = 1e-5`` (step ``m * nu``
on measurements normalised by ``sqrt(m)``: `SensingSweepConfig`). Every curve is the mean over
``seeds`` independent runs, each with a fresh problem and a fresh init.

Experiments (``factorjax list``):

- ``tubal-fig2``: two stages of learning (r = 2, R = 100, alpha = 1e-7, m = 254, 10,000 steps,
  unsymmetrised measurements);
- ``tubal-fig3``: overparametrization (r = 3, m = 285, R in {10, 50, 100, 200, 400});
- ``tubal-fig4``: init scale (R = 200, alpha in {1e-2, 1e-4, 1e-6, 1e-8});
- ``tubal-underdetermined``: fewer measurements (120, 150, 180) than the 210 degrees of freedom
  of a t-symmetric 10 x 10 x 4 tensor, across alpha;
- ``tubal-paper``: all four, each in a subfolder, and a summary table.
"""

import dataclasses
import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from factorjax.dynamics import RunStore
from factorjax.experiments._common import pyplot, read_run
from factorjax.experiments._registry import Experiment, get, register
from factorjax.experiments.sensing_sweep import SensingSweepConfig, run_sensing_sweep

__all__ = ["PAPER", "PaperConfig"]

THRESHOLDS = ("1e-1", "1e-2", "1e-4")

# The paper's numbers (read off its figures and text), shown beside ours in summary.md.
PAPER = {
    "tubal-fig2": {
        "leaves the start (test error < 0.99)": "t ~ 2560",
        "test error 1e-1 at": "t ~ 4300",
        "test error 1e-2 at": "t ~ 5600",
        "test error 1e-4 at": "t ~ 8800",
        "min angle to A*A(X) subspace": "~3e-3 at t ~ 2560",
        "angle to true subspace, plateau then final": "~0.54, then ~2e-5",
    },
    "tubal-fig3": {
        "final test error": "4e-7 to 8e-7 (R >= 50 nearly coincide)",
    },
    "tubal-fig4": {
        "final test error per alpha": "1e-2: 5e-3, 1e-4: 5e-4, 1e-6: 2.5e-5, 1e-8: 1.1e-6",
        "theory (plain error)": "alpha^(21/32)",
    },
}


@dataclasses.dataclass(frozen=True)
class Fig2Config(SensingSweepConfig):
    rank: int = 2
    widths: tuple[int, ...] = (100,)
    measurements: tuple[int, ...] = (254,)
    alphas: tuple[float, ...] = (1e-7,)
    steps: int = 10000
    log_every: int = 50
    symmetric: bool = False
    checkpoint_every: int = 5000


@dataclasses.dataclass(frozen=True)
class Fig3Config(SensingSweepConfig):
    rank: int = 3
    widths: tuple[int, ...] = (10, 50, 100, 200, 400)
    measurements: tuple[int, ...] = (285,)
    alphas: tuple[float, ...] = (1e-7,)


@dataclasses.dataclass(frozen=True)
class Fig4Config(SensingSweepConfig):
    rank: int = 3
    widths: tuple[int, ...] = (200,)
    measurements: tuple[int, ...] = (285,)
    alphas: tuple[float, ...] = (1e-2, 1e-4, 1e-6, 1e-8)


@dataclasses.dataclass(frozen=True)
class UnderdeterminedConfig(SensingSweepConfig):
    rank: int = 2
    widths: tuple[int, ...] = (100,)
    measurements: tuple[int, ...] = (120, 150, 180)
    alphas: tuple[float, ...] = (1.0, 1e-1, 1e-2, 1e-3, 1e-5, 1e-7)
    steps: int = 10000
    log_every: int = 50
    checkpoint_every: int = 5000


_QUICK: dict[str, dict[str, Any]] = {
    "tubal-fig2": {"seeds": 4},
    "tubal-fig3": {"seeds": 4, "widths": (10, 50, 200)},
    "tubal-fig4": {"seeds": 4},
    "tubal-underdetermined": {"seeds": 4, "measurements": (120, 180), "alphas": (1.0, 1e-2, 1e-5)},
}


# ---------------------------------------------------------------------------------------------
# Reading results back
# ---------------------------------------------------------------------------------------------


def _load(out_dir: Path) -> tuple[dict, list[dict], dict[str, dict[str, np.ndarray]]]:
    store, stored = read_run(out_dir)
    records = list(store.finished().values())
    trajectories = {r["run_id"]: store.load_trajectory(r["run_id"]) for r in records}
    return stored, records, trajectories


def _curves(records, trajectories, key: str, **where) -> tuple[np.ndarray, np.ndarray] | None:
    """Steps and the stacked per-run curves of metric ``key`` for the runs matching ``where``."""
    runs = [r for r in records if all(r[k] == v for k, v in where.items())]
    if not runs:
        return None
    steps = trajectories[runs[0]["run_id"]]["step"]
    return steps, np.stack([trajectories[r["run_id"]][key] for r in runs])


def _crossing(steps: np.ndarray, curve: np.ndarray, level: float) -> float:
    """The first recorded step at which ``curve`` is below ``level`` (nan if never)."""
    below = np.nonzero(curve < level)[0]
    return float(steps[below[0]]) if below.size else math.nan


def _geomean(curves: np.ndarray) -> np.ndarray:
    return np.exp(np.mean(np.log(np.maximum(curves, 1e-300)), axis=0))


def _band(ax, steps, curves, label, color=None):
    """Geometric mean over runs and the min-max spread."""
    line = ax.plot(steps, _geomean(curves), label=label, color=color)[0]
    ax.fill_between(steps, curves.min(0), curves.max(0), alpha=0.2, color=line.get_color())


# ---------------------------------------------------------------------------------------------
# Figures and summaries, per experiment
# ---------------------------------------------------------------------------------------------


def _figure(nrows=1, ncols=1, **kw):
    plt = pyplot()

    fig, axes = plt.subplots(nrows, ncols, figsize=(5.2 * ncols, 3.8 * nrows), squeeze=False, **kw)
    return plt, fig, axes[0]


def _save(plt, fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _plot_fig2(out_dir, cfg, records, traj) -> tuple[list[Path], dict]:
    plt, fig, (ax1, ax2) = _figure(1, 2)
    got = _curves(records, traj, "test_error")
    summary = {}
    if got is not None:
        steps, err = got
        _band(ax1, steps, err, "test error")
        _, ang_s = _curves(records, traj, "angle_spectral")
        _, ang_t = _curves(records, traj, "angle_truth")
        _band(ax2, steps, ang_s, "angle to top-r subspace of A*A(X)")
        _band(ax2, steps, ang_t, "angle to true subspace")
        mean = _geomean(err)
        summary["leaves the start (test error < 0.99)"] = _crossing(steps, mean, 0.99)
        for level in THRESHOLDS:
            summary[f"test error {level} at"] = _crossing(steps, mean, float(level))
        ms = _geomean(ang_s)
        i = int(np.argmin(ms))
        summary["min angle to A*A(X) subspace"] = f"{ms[i]:.2g} at t = {steps[i]:g}"
        mt = _geomean(ang_t)
        plateau = mt[(steps >= 0.5 * steps[i]) & (steps <= steps[i])]
        summary["angle to true subspace, plateau then final"] = (
            f"{np.median(plateau):.2g}, then {mt[-1]:.2g}"
        )
    for ax in (ax1, ax2):
        ax.set_yscale("log")
        ax.set_xlabel("iteration")
        ax.legend()
    ax1.set_title(f"Fig 2: r={cfg['rank']}, R={cfg['widths'][0]}, m={cfg['measurements'][0]}")
    ax2.set_title("principal angles (sine of the largest)")
    return [_save(plt, fig, out_dir / "fig2.png")], summary


def _plot_fig3(out_dir, cfg, records, traj) -> tuple[list[Path], dict]:
    plt, fig, (ax,) = _figure()
    summary = {}
    finals = []
    for R in cfg["widths"]:
        got = _curves(records, traj, "test_error", width=R)
        if got is None:
            continue
        steps, err = got
        _band(ax, steps, err, f"R = {R}")
        finals.append(f"R={R}: {_geomean(err)[-1]:.2g}")
    summary["final test error"] = ", ".join(finals)
    ax.set_yscale("log")
    ax.set_xlabel("iteration")
    ax.set_ylabel("test error")
    ax.set_title(f"Fig 3: overparametrization (r={cfg['rank']}, m={cfg['measurements'][0]})")
    ax.legend()
    return [_save(plt, fig, out_dir / "fig3.png")], summary


def _plot_fig4(out_dir, cfg, records, traj) -> tuple[list[Path], dict]:
    plt, fig, (ax1, ax2) = _figure(1, 2)
    alphas, finals, leave = [], [], []
    for a in cfg["alphas"]:
        got = _curves(records, traj, "test_error", alpha=a)
        if got is None:
            continue
        steps, err = got
        _band(ax1, steps, err, f"alpha = {a:g}")
        alphas.append(a)
        finals.append(_geomean(err)[-1])
        leave.append(_crossing(steps, _geomean(err), 0.5))
    summary = {}
    if alphas:
        alphas, finals = np.asarray(alphas), np.asarray(finals)
        ax2.loglog(alphas, finals, "o-", label="final test error (ours)")
        slope = np.polyfit(np.log(alphas), np.log(finals), 1)[0] if len(alphas) > 1 else math.nan
        ref = finals[0] * (alphas / alphas[0]) ** (21 / 32)
        ax2.loglog(alphas, ref, "--", label="theory rate alpha^(21/32)")
        ax2.set_xlabel("alpha")
        ax2.legend()
        ax2.set_title(f"error floor: fitted slope {slope:.2f}")
        summary["final test error per alpha"] = ", ".join(
            f"{a:.0e}: {f:.2g}" for a, f in zip(alphas, finals, strict=True)
        )
        summary["fitted slope of final error vs alpha (log-log)"] = f"{slope:.3f}"
        summary["steps to reach test error 0.5, per alpha"] = ", ".join(f"{t:g}" for t in leave)
    ax1.set_yscale("log")
    ax1.set_xlabel("iteration")
    ax1.set_ylabel("test error")
    ax1.set_title(f"Fig 4: init scale (R={cfg['widths'][0]})")
    ax1.legend()
    return [_save(plt, fig, out_dir / "fig4.png")], summary


def _plot_underdetermined(out_dir, cfg, records, traj) -> tuple[list[Path], dict]:
    plt, fig, (ax1, ax2) = _figure(1, 2)
    summary = {}
    for m in cfg["measurements"]:
        xs, err, rank = [], [], []
        for a in cfg["alphas"]:
            runs = [r for r in records if r["m"] == m and r["alpha"] == a]
            if not runs:
                continue
            xs.append(a)
            err.append(_geomean(np.asarray([r["final"]["test_error"] for r in runs])[None])[0])
            rank.append(np.mean([r["final"]["rank"] for r in runs]))
        if not xs:
            continue
        ax1.loglog(xs, err, "o-", label=f"m = {m}")
        ax2.semilogx(xs, rank, "o-", label=f"m = {m}")
        summary[f"m={m}: final test error for alpha = " + ", ".join(f"{a:g}" for a in xs)] = (
            ", ".join(f"{e:.2g}" for e in err)
        )
    ax1.set_xlabel("alpha")
    ax1.set_ylabel("final test error")
    ax1.set_title(f"underdetermined: m < {cfg['n'] * (cfg['n'] * cfg['k'] + 2) // 2} dof")
    ax2.set_xlabel("alpha")
    ax2.set_ylabel(f"final tubal rank (true {cfg['rank']})")
    for ax in (ax1, ax2):
        ax.legend()
    return [_save(plt, fig, out_dir / "underdetermined.png")], summary


_PLOTS = {
    "tubal-fig2": _plot_fig2,
    "tubal-fig3": _plot_fig3,
    "tubal-fig4": _plot_fig4,
    "tubal-underdetermined": _plot_underdetermined,
}


def _summary_markdown(name: str, summary: dict, records: list[dict]) -> str:
    lines = [f"## {name}", "", "| quantity | paper | factorjax |", "|---|---|---|"]
    paper = PAPER.get(name, {})
    for key in dict.fromkeys([*paper, *summary]):
        ours = summary.get(key, "")
        ours = f"t = {ours:g}" if isinstance(ours, float) and not math.isnan(ours) else ours
        lines.append(f"| {key} | {paper.get(key, '')} | {ours} |")
    diverged = sum(r["status"] == "diverged" for r in records)
    lines += ["", f"{len(records)} runs ({diverged} diverged).", ""]
    return "\n".join(lines)


def _plot_one(out_dir: Path) -> list[Path]:
    out_dir = Path(out_dir)
    stored, records, traj = _load(out_dir)
    name = stored["experiment"]
    paths, summary = _PLOTS[name](out_dir, stored["config"], records, traj)
    text = _summary_markdown(name, summary, records)
    (out_dir / "summary.md").write_text(text)
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=1, default=str))
    return paths


def _runner(name: str):
    def run(cfg: SensingSweepConfig, out_dir: Path) -> None:
        run_sensing_sweep(name, cfg, out_dir)
        from factorjax.dynamics.parallel import is_writer

        if is_writer():
            for p in _plot_one(out_dir):
                print(f"figure: {p}")

    return run


_SUMMARIES = {
    "tubal-fig2": "Fig 2 of Karnik et al. 2025: the two stages of learning (r=2, R=100, 10k steps)",
    "tubal-fig3": "Fig 3 of Karnik et al. 2025: overparametrization, R in {10..400}",
    "tubal-fig4": "Fig 4 of Karnik et al. 2025: error floor against init scale alpha",
    "tubal-underdetermined": "beyond the paper: m < 210 measurements, across alpha",
}
_CONFIGS = {
    "tubal-fig2": Fig2Config,
    "tubal-fig3": Fig3Config,
    "tubal-fig4": Fig4Config,
    "tubal-underdetermined": UnderdeterminedConfig,
}
for _name, _cls in _CONFIGS.items():
    register(Experiment(_name, _SUMMARIES[_name], _cls, _QUICK[_name], _runner(_name), _plot_one))


# ---------------------------------------------------------------------------------------------
# All of it
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class PaperConfig:
    """All figures of the tubal paper, each in a subfolder of the output folder.

    Fields:
        figures: which experiments to run.
        seeds: runs per setting (the paper: 20).
        quick: the ``--quick`` version of each experiment (4 seeds, fewer settings).
        float64: compute in float64.
    """

    figures: tuple[str, ...] = tuple(_CONFIGS)
    seeds: int = 20
    quick: bool = False
    float64: bool = True

    def __post_init__(self):
        unknown = [f for f in self.figures if f not in _CONFIGS]
        if unknown or not self.figures:
            raise ValueError(
                f"`figures` must be a non-empty tuple of {list(_CONFIGS)}; got {self.figures!r}."
            )
        if isinstance(self.seeds, bool) or not isinstance(self.seeds, int) or self.seeds < 1:
            raise ValueError(f"`seeds` must be an int >= 1; got {self.seeds!r}.")

    def sub_configs(self) -> dict[str, SensingSweepConfig]:
        """The config of each figure: its default, or its ``--quick`` version (with at most
        ``seeds`` seeds), in float64 or not."""
        configs = {}
        for name in self.figures:
            exp = get(name)
            seeds = (
                min(self.seeds, exp.quick.get("seeds", self.seeds)) if self.quick else self.seeds
            )
            configs[name] = exp.make_config(quick=self.quick, seeds=seeds, float64=self.float64)
        return configs


def _run_paper(cfg: PaperConfig, out_dir: Path) -> None:
    from factorjax.dynamics.parallel import is_writer

    out_dir = Path(out_dir)
    store = RunStore(out_dir)
    if is_writer():
        store.write_config({"experiment": "tubal-paper", "config": dataclasses.asdict(cfg)})
    for name, sub in cfg.sub_configs().items():
        _runner(name)(sub, out_dir / name.removeprefix("tubal-"))
    if is_writer():
        _plot_paper(out_dir)


def _plot_paper(out_dir: Path) -> list[Path]:
    out_dir = Path(out_dir)
    paths, parts = [], ["# Tubal implicit regularization: paper and factorjax", ""]
    for name in _CONFIGS:
        sub = out_dir / name.removeprefix("tubal-")
        if (sub / "config.json").exists():
            paths += _plot_one(sub)
            parts.append((sub / "summary.md").read_text())
    (out_dir / "summary.md").write_text("\n".join(parts))
    print((out_dir / "summary.md").read_text())
    return paths


register(
    Experiment(
        "tubal-paper",
        "all figures of Karnik et al. 2025 (Figs 2-4) and the underdetermined regime",
        PaperConfig,
        {"quick": True},
        _run_paper,
        _plot_paper,
    )
)
