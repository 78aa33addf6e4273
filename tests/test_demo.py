"""The README's first command runs `python -m factorjax`: keep it working and telling the truth."""

import re
import subprocess
import sys


def test_demo_runs_and_small_init_recovers():
    out = subprocess.run(
        [sys.executable, "-m", "factorjax"], capture_output=True, text=True, timeout=600
    )
    assert out.returncode == 0, out.stderr
    errors = dict(re.findall(r"alpha = (\S+): .*?= ([0-9.e+-]+) \(", out.stdout))
    assert set(errors) == {"0.001", "1"}, out.stdout
    # The small init finds the tubal-rank-2 tensor; the large one fits the data but not X*.
    assert float(errors["0.001"]) < 0.05 < float(errors["1"])
