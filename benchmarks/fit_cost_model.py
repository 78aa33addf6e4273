"""Refit the planner's cost model (`CHAIN_PENALTY`, `BYTE_COST` in
factorjax/factorizations/_operator.py) to the candidate times that ``layers.py --json`` saved.

    python benchmarks/fit_cost_model.py run.json

For every point of the saved grid it rebuilds the operator (same shapes; the cost model reads
only shapes), scores every candidate order under each pair of constants of a grid, and reports
how the order each pair picks compares with the fastest measured one: the worst ratio
(fastest / picked, 1 is best), how many points fall below 0.9, and the geometric mean. The
current constants are listed first. A fit on one run is in-sample: check it on another run.
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

from factorjax.factorizations import _operator


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("json", nargs="+", help="outputs of layers.py --json")
    args = p.parse_args(argv)
    points = []
    for path in args.json:
        with open(path) as fh:
            rows = json.load(fh)["rows"]
        for row in rows:
            W, _ = make_weight(row["format"], row["d"], row["rank"], jax.random.key(0))
            orders = {c.order.name: c.order for c in W.candidates(row["batch"])}
            points.append((row, orders))
    penalties = (1, 2, 3, 4, 6, 8, 12, 16)
    byte_costs = (0, 16, 32, 64, 128, 256, 512, 1024, 2048)
    current = (_operator.CHAIN_PENALTY, _operator.BYTE_COST)
    results = []
    for cp, bc in [current, *itertools.product(penalties, byte_costs)]:
        ratios = []
        for row, orders in points:
            times = row["orders_s"]  # orders it did not time (too large) count as infinite
            pick = min(orders.values(), key=lambda o: _operator._score(o, cp, bc))
            ratios.append(min(times.values()) / times.get(pick.name, math.inf))
        geo = math.exp(sum(map(math.log, ratios)) / len(ratios))
        results.append((cp, bc, min(ratios), sum(r < 0.9 for r in ratios), geo))
    head = f"{'CHAIN_PENALTY':>13} {'BYTE_COST':>9} {'worst':>6} {'below 0.9':>9} {'geo mean':>8}"
    print(f"{len(points)} points; current constants first, then the best 15 by points below 0.9")
    print(head)
    cur, rest = results[0], sorted(results[1:], key=lambda r: (r[3], -r[4]))
    for cp, bc, worst, below, geo in [cur, *rest[:15]]:
        print(f"{cp:>13g} {bc:>9g} {worst:>6.2f} {below:>9d} {geo:>8.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
