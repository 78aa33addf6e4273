"""The digits experiment's report: ``results.md``, ``summary.json`` and ``accuracy.png`` from a
run folder (`plot_digits`), kept apart from the training in `factorjax.experiments.digits`."""

import json
import math
from pathlib import Path

import numpy as np

from factorjax.experiments._common import pyplot, read_run

__all__ = ["plot_digits"]


_COLUMNS = [
    ("train", "equinox", "test_acc", "trained (Equinox)"),
    ("train", "nnx", "test_acc", "trained (NNX)"),
    ("posthoc", "equinox", "test_acc_factorized", "post-hoc (Equinox)"),
    ("posthoc", "equinox", "test_acc", "+ fine-tune (Equinox)"),
    ("posthoc", "nnx", "test_acc_factorized", "post-hoc (NNX)"),
    ("posthoc", "nnx", "test_acc", "+ fine-tune (NNX)"),
]


def _groups(records: list[dict]) -> dict[tuple, list[dict]]:
    out: dict[tuple, list[dict]] = {}
    for r in records:
        out.setdefault((r["stage"], r["framework"], r["format"], r["budget"]), []).append(r)
    return out


def _stats(runs: list[dict], key: str) -> tuple[float, float, int, int]:
    """Mean and standard deviation of ``final[key]`` over the runs that did not diverge, their
    number, and the number that diverged."""
    ok = [r["final"][key] for r in runs if r["status"] == "ok"]
    if not ok:
        return math.nan, math.nan, 0, len(runs)
    std = float(np.std(ok, ddof=1)) if len(ok) > 1 else 0.0
    return float(np.mean(ok)), std, len(ok), len(runs) - len(ok)


def _cell(runs: list[dict] | None, key: str) -> str:
    if not runs:
        return "-"
    mean, std, n, div = _stats(runs, key)
    text = "diverged" if n == 0 else f"{100 * mean:.1f} ± {100 * std:.1f}"
    return text + (f" ({div} diverged)" if div and n else "")


def _table(cfg: dict, records: list[dict]) -> str:
    groups = _groups(records)
    frameworks = cfg["frameworks"]
    cols = [c for c in _COLUMNS if c[1] in frameworks and (c[0] == "train" or cfg["posthoc"])]
    head = ["format", "budget", "params", *(c[3] for c in cols)]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    rows = [("dense", 1.0)] + [(f, float(b)) for f in cfg["formats"] for b in cfg["budgets"]]
    for fmt, b in rows:
        trained = groups.get(("train", frameworks[0], fmt, b))
        post = groups.get(("posthoc", frameworks[0], fmt, b))
        params = f"{int(trained[0]['final']['params']):,}" if trained else "-"
        if post and trained:
            p_post = sorted({int(r["final"]["params"]) for r in post})
            if p_post != [int(trained[0]["final"]["params"])]:
                params += " (post-hoc " + ", ".join(f"{p:,}" for p in p_post) + ")"
        cells = [
            _cell(groups.get((stage, fw, fmt, b)), key) if (stage == "train" or fmt != "dense")
            else "-"
            for stage, fw, key, _ in cols
        ]  # fmt: skip
        lines.append("| " + " | ".join([fmt, "1 (dense)" if fmt == "dense" else f"{b:g}", params,
                                        *cells]) + " |")  # fmt: skip
    return "\n".join(lines)


def _error_table(cfg: dict, records: list[dict]) -> str:
    groups = _groups(records)
    fw = cfg["frameworks"][0]
    head = ["format", *(f"budget {b:g}" for b in cfg["budgets"])]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for fmt in cfg["formats"]:
        cells = []
        for b in cfg["budgets"]:
            runs = groups.get(("posthoc", fw, fmt, float(b)))
            if not runs:
                cells.append("-")
                continue
            e = [np.mean([r["final"][f"rel_error{i}"] for r in runs]) for i in range(2)]
            cells.append(f"{e[0]:.2f} / {e[1]:.2f}")
        lines.append("| " + " | ".join([fmt, *cells]) + " |")
    return "\n".join(lines)


def _agreement(records: list[dict], n_test: int) -> str:
    """How closely the two frameworks agree on the same runs."""
    by_key: dict[tuple, dict] = {}
    for r in records:
        if r["status"] == "ok":
            k = (r["stage"], r["format"], r["budget"], r["seed"])
            by_key.setdefault(k, {})[r["framework"]] = r["final"]
    pairs = [v for v in by_key.values() if len(v) == 2]
    if not pairs:
        return ""
    keys = ("test_acc", "test_acc_factorized")
    diffs = [abs(p["equinox"][k] - p["nnx"][k]) for p in pairs for k in keys if k in p["equinox"]]
    same = sum(d == 0 for d in diffs)
    return (
        f"Equinox and NNX, same runs (same initial weights and minibatches): {len(diffs)} "
        f"accuracies compared, {same} identical, largest difference {100 * max(diffs):.2f} "
        f"points ({round(max(diffs) * n_test)} of the {n_test} test images)."
    )


def _figure(cfg: dict, records: list[dict], path: Path) -> Path:
    plt = pyplot()
    import matplotlib.ticker

    groups = _groups(records)
    panels = [("train", "test_acc", "trained factorized")]
    if cfg["posthoc"]:
        panels += [
            ("posthoc", "test_acc_factorized", "post-hoc factorized (no fine-tune)"),
            ("posthoc", "test_acc", f"post-hoc + {cfg['finetune_steps']} steps fine-tune"),
        ]
    fig, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels), 4.2), squeeze=False)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    styles = {"equinox": ("-", "o"), "nnx": ("--", "x")}
    for ax, (stage, key, title) in zip(axes[0], panels, strict=True):
        dense = groups.get(("train", cfg["frameworks"][0], "dense", 1.0))
        if dense:
            mean, std, _, _ = _stats(dense, "test_acc")
            ax.axhline(mean, color="k", lw=1, label="dense")
            ax.axhspan(mean - std, mean + std, color="k", alpha=0.1)
            ax.plot([dense[0]["final"]["params"]], [mean], "k*", ms=9)
        for c, fmt in enumerate(cfg["formats"]):
            for fw in cfg["frameworks"]:
                pts = []
                for b in cfg["budgets"]:
                    runs = groups.get((stage, fw, fmt, float(b)))
                    if runs:
                        mean, std, n, _ = _stats(runs, key)
                        if n:
                            params = np.mean([r["final"]["params"] for r in runs])
                            pts.append((params, mean, std))
                if not pts:
                    continue
                x, y, e = map(np.asarray, zip(*pts, strict=True))
                ls, marker = styles[fw]
                label = fmt if fw == cfg["frameworks"][0] else None
                ax.errorbar(x, y, yerr=e, ls=ls, marker=marker, color=colors[c % len(colors)],
                            label=label, capsize=2, ms=4)  # fmt: skip
        ax.set_xscale("log")
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())  # no crowded labels
        ax.set_xlabel("parameters of the model")
        ax.set_ylabel("test accuracy")
        ax.set_title(title)
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8, title=" / ".join(f"{fw} {styles[fw][0]}"
                                                     for fw in cfg["frameworks"]),
                      title_fontsize=7)  # fmt: skip
    fig.suptitle(f"digits: MLP 64-{cfg['hidden']}-{cfg['hidden']}-10, hidden layers factorized; "
                 f"mean ± std over {cfg['seeds']} seeds")  # fmt: skip
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_digits(out_dir: Path) -> list[Path]:
    """(Re)write ``results.md``, ``summary.json`` and ``accuracy.png`` from a run folder."""
    out_dir = Path(out_dir)
    store, stored = read_run(out_dir)
    cfg, records = stored["config"], list(store.finished().values())
    n_div = sum(r["status"] == "diverged" for r in records)
    group_time = {(r["stage"], r["framework"], r["format"]): r["final"]["group_seconds"]
                  for r in records}  # fmt: skip
    parts = [
        "# digits: factorized MLPs",
        "",
        f"MLP 64-{cfg['hidden']}-{cfg['hidden']}-10 on scikit-learn's digits "
        f"({round(1797 * (1 - cfg['test_fraction']))} train / "
        f"{round(1797 * cfg['test_fraction'])} test), hidden layers factorized. Test accuracy "
        f"(%), mean ± std over {cfg['seeds']} seeds; {cfg['steps']} Adam steps (lr "
        f"{cfg['lr']:g}, batch {cfg['batch_size']}); post-hoc: the trained dense model "
        f"factorized, then {cfg['finetune_steps']} steps of fine-tune (lr "
        f"{cfg['finetune_lr']:g}). `params`: the whole model's.",
        "",
        _table(cfg, records),
        "",
    ]
    if cfg["posthoc"]:
        parts += [
            "Relative reconstruction error of the post-hoc factorization, "
            "`||W - W_hat||_F / ||W||_F`, of layers.0 / layers.1 (mean over seeds, "
            f"{cfg['frameworks'][0]}):",
            "",
            _error_table(cfg, records),
            "",
        ]
    agree = _agreement(records, round(1797 * cfg["test_fraction"]))
    parts += [
        *([agree, ""] if agree else []),
        f"{len(records)} runs ({n_div} diverged), {sum(group_time.values()):.0f} s of training "
        f"and factorization (compile included).",
        "",
    ]
    (out_dir / "results.md").write_text("\n".join(parts))
    summary = {}
    for (stage, fw, fmt, b), runs in sorted(_groups(records).items()):
        entry = {"params": runs[0]["final"]["params"]}
        for key in ("test_acc", "test_acc_factorized"):
            if key in runs[0]["final"]:
                mean, std, n, div = _stats(runs, key)
                entry[key] = {"mean": mean, "std": std, "runs": n, "diverged": div}
        summary[f"{stage}/{fw}/{fmt}/{b:g}"] = entry
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=1))
    return [_figure(cfg, records, out_dir / "accuracy.png")]
