"""The README's first command, `python -m factorjax`: the tubal paper reproduction."""

import json
import re
import subprocess
import sys

import pytest

FIGURES = ("fig2", "fig3", "fig4", "underdetermined")


def _run(args, cwd, timeout):
    out = subprocess.run(
        [sys.executable, "-m", "factorjax", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=cwd,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return out


def _check_folder(root):
    summary = (root / "summary.md").read_text()
    for fig in FIGURES:
        sub = root / fig
        assert (sub / f"{fig}.png").stat().st_size > 10_000
        lines = (sub / "runs.jsonl").read_text().splitlines()
        records = [json.loads(line) for line in lines]
        assert records and all(r["status"] == "ok" for r in records)
        assert f"## tubal-{fig}" in summary
    return summary


def test_main_lists_the_paper_experiments(tmp_path):
    out = _run(["list"], tmp_path, 120)
    for name in ("tubal-paper", *(f"tubal-{f}" for f in FIGURES)):
        assert name in out.stdout


@pytest.mark.slow  # the whole paper at --quick size: a reproduction
def test_quick_reproduction_leaves_figures_and_table(tmp_path):
    _run(["run", "tubal-paper", "--quick", "--set", "seeds=2", "--out", "quick"], tmp_path, 600)
    summary = _check_folder(tmp_path / "quick")
    # Fig 2's two stages: the spectral stage aligns with A*A(X) long before the error falls.
    angle = re.search(r"min angle to A\*A\(X\) subspace \| [^|]* \| ([0-9.e+-]+) at", summary)
    assert angle is not None and float(angle.group(1)) < 0.05, summary


@pytest.mark.slow
def test_full_reproduction_matches_the_paper(tmp_path):
    """The default `python -m factorjax`: full size, 20 seeds. Checks the headline numbers
    against the paper's (read off its figures), with margins for seed-to-seed spread."""
    _run([], tmp_path, 1800)
    root = tmp_path / "runs" / "tubal-paper"
    _check_folder(root)
    fig2 = json.loads((root / "fig2" / "summary.json").read_text())
    # Paper: 1e-1 at ~4300, 1e-2 at ~5600, 1e-4 at ~8800.
    assert 3500 <= fig2["test error 1e-1 at"] <= 5000
    assert 4800 <= fig2["test error 1e-2 at"] <= 6400
    assert 7800 <= fig2["test error 1e-4 at"] <= 9800
    fig4 = json.loads((root / "fig4" / "summary.json").read_text())
    # The error floor falls with alpha; the theory's rate is alpha^(21/32) ~ alpha^0.66.
    assert 0.3 < float(fig4["fitted slope of final error vs alpha (log-log)"]) < 1.0
