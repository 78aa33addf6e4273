"""Refit the planner's cost model (`CHAIN_PENALTY`, `BYTE_COST`, `GEMM_MIN_DIM` in
factorjax/factorizations/_cost.py) to the candidate times that ``layers.py --json`` saved.

    python benchmarks/fit_cost_model.py run.json

For every point of the saved grid it rebuilds the operator (same shapes; the cost model reads
only shapes), scores every candidate order under each set of constants of a grid, and reports
how the order each set picks compares with the fastest measured one (taking the rechecked
times of ``layers.py`` where it has them): the worst ratio
(fastest / picked, 1 is best), how many points fall below 0.9, and the geometric mean. The
current constants are listed first. A fit on one run is in-sample: check it on another run.
Each value of `GEMM_MIN_DIM` rebuilds the candidates (it changes their `gemm_flops`).
"""

import argparse
import itertools
import json
import math
import os
import sys

sys.path.insert(0, os.path.dirname(__file__))

import jax
from layers import make_weight

from factorjax.factorizations import _cost


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("json", nargs="+", help="outputs of layers.py --json")
    args = p.parse_args(argv)
    rows = []
    for path in args.json:
        with open(path) as fh:
            rows += json.load(fh)["rows"]
    saved_min_dim = _cost.GEMM_MIN_DIM
    penalties = (1, 2, 3, 4, 6, 8, 12, 16)
    byte_costs = (0, 16, 32, 64, 128, 256, 512, 1024, 2048)
    min_dims = sorted({saved_min_dim, 16, 32, 64, 128, 256, 10**9})
    current = (_cost.CHAIN_PENALTY, _cost.BYTE_COST, saved_min_dim)
    results = []
    for md in min_dims:
        _cost.GEMM_MIN_DIM = md
        points = []
        for row in rows:
            W, _ = make_weight(row["format"], row["d"], row["rank"], jax.random.key(0))
            orders = {c.order.name: c.order for c in W.candidates(row["batch"])}
            points.append((row, orders))
        grid = itertools.product(penalties, byte_costs)
        for cp, bc in [current[:2], *grid] if md == saved_min_dim else grid:
            ratios = []
            for row, orders in points:
                # the rechecked times where the run has them; orders it did not time (too
                # large) count as infinite
                times = {**row["orders_s"], **row.get("recheck_s", {})}
                pick = min(orders.values(), key=lambda o: _cost.score(o, cp, bc))
                ratios.append(min(times.values()) / times.get(pick.name, math.inf))
            geo = math.exp(sum(map(math.log, ratios)) / len(ratios))
            results.append((cp, bc, md, min(ratios), sum(r < 0.9 for r in ratios), geo))
    _cost.GEMM_MIN_DIM = saved_min_dim
    head = (
        f"{'CHAIN_PENALTY':>13} {'BYTE_COST':>9} {'GEMM_MIN_DIM':>12} {'worst':>6} "
        f"{'below 0.9':>9} {'geo mean':>8}"
    )
    print(f"{len(rows)} points; current constants first, then the best 15 by points below 0.9")
    print(head)
    cur = next(r for r in results if r[:3] == current)
    rest = sorted(results, key=lambda r: (r[4], -r[5]))
    for cp, bc, md, worst, below, geo in [cur, *rest[:15]]:
        print(f"{cp:>13g} {bc:>9g} {md:>12g} {worst:>6.2f} {below:>9d} {geo:>8.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
