"""``python -m factorjax``: the reproduction of the tubal implicit-regularization paper.

With no arguments, runs ``factorjax run tubal-paper`` (Figs 2-4 of Karnik et al., ICML 2025, and
the underdetermined regime) into ``runs/tubal-paper``, leaving the figures and a summary table
that puts the paper's numbers beside ours. With arguments, it is the ``factorjax`` command:
``python -m factorjax list``, ``python -m factorjax run tubal-fig3 --quick`` ...
"""

import sys

from factorjax.cli import main

if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:] or ["run", "tubal-paper"]))
