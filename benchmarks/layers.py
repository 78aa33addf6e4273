"""Time factorized linear maps (TT-matrix, CP, Tucker) against tensorly-torch and dense.

Run from the repository root (needs the ``bench`` extra: ``pip install -e ".[bench]"``, which
brings PyTorch's CPU build and tensorly-torch):

    python benchmarks/layers.py                 # the grid: over an hour on 2 cores (below)
    python benchmarks/layers.py --quick         # a small grid: a smoke test
    python benchmarks/layers.py --json out.json # also save the numbers (after every point)
    python benchmarks/layers.py --markdown out.json  # the table of docs/benchmarks.md, from them

Run 4 (docs/benchmarks.md): TT took 27 minutes for 26 points, Tucker and CP 25 minutes
together; TT d=4096 r=64 B=4096 alone ran for 22 minutes more without finishing, with 22 of
the machine's 24 GB in use (the chain orders' 4 GB intermediates, timed in every round).
Since run 5, orders whose largest intermediate exceeds 1 GiB are not timed (``untimed`` in
the JSON), and `tune` does not time orders its cost model scores above 16x its cheapest.
Run 6 covered the whole grid in 42 minutes, run 7 (with the warm-up) in 54.
Select formats with ``--formats``.

For every point of the grid (``d_in = d_out = d``, rank ``r``, batch ``B``, format) it times the
forward plus backward pass of ``y = x W^T``: ``y``, and the gradient of ``sum(g * y)`` with
respect to the factors for a fixed random ``g`` (``jax.vjp``; both are returned, so that XLA
computes the forward product, which the gradient alone would not need for ``"dense"``):

- ``factorjax``: ``jax.jit`` of ``y`` and its gradient, ``W.apply(x)`` in every candidate
  order forced (``apply(x, order=...)``), to see how close the planner comes to the best of its own
  candidates, both ways it plans: the cost model (``W.plan(B)``, the default ``"auto"``) and
  the measurement (``W.tune(B)``, what ``order="tuned"`` and ``autotune()`` take; its own
  timing, before and apart from this script's);
- ``tltorch-factorized`` and ``tltorch-reconstructed``: tensorly-torch's ``FactorizedLinear``
  (``blocktt``, ``cp``, ``tucker``) holding the same factors, in its two implementations, on
  PyTorch's CPU build with as many threads as JAX uses (the cores);
- ``dense``: ``jax.jit`` of ``x @ W^T`` and its gradient with respect to a dense ``W``
  (``matmul_t``, XLA's fast form at ``B = 1``).

It also times the forward pass alone of the planned order and of a dense matmul, and prints
their GFLOP/s (the planner's FLOP count over the time; ``2 B d^2`` for the dense matmul).

Tensorization: ``d`` splits into 3 balanced modes on each side (``balanced_modes(d, 3)``). The
rank is the TT inner rank, the CP rank, and every Tucker mode rank (clipped to the mode sizes).
float32 throughout. Ratios compare times measured in the same round (interleaved rounds, best
of each; a block of back-to-back calls lasting at least 50 ms per implementation and round,
so that millisecond calls are averaged, after a 0.3 s pause and untimed calls that warm it
up: 50 ms of them in runs 7 to 9, 0.3 s since run 10; see `_timing.WARM_S`), never absolute
times across runs.

Since run 12, where the model's or `tune`'s order was not the fastest candidate, the orders
involved are timed again on fresh compilations (`recheck`), and both ratios are reported:
the first (against the least of several noisy times) and the recheck (no selection in it).
Since run 16 the recheck runs trials (12 for calls under 10 ms, 6 under 100 ms, else 3),
each compiling every order involved afresh and timing them side by side; its ratio is the
median over the trials of the ratio within a trial, with a 90% bootstrap interval.
"""

import argparse
import json
import os
import statistics
import sys

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(__file__))
from _timing import OtherLoad, machine, time_rounds

from factorjax.factorizations._operator import matmul_t
from factorjax.factorizations._tune import _output_and_grad

DIMS = (256, 1024, 4096)
RANKS = (4, 16, 64)
BATCHES = (1, 64, 4096)
FORMATS = ("tt", "cp", "tucker")
# A timed block of calls lasts at least this long (one call of the large points does).
MIN_BLOCK_S = 0.05
# Orders whose largest intermediate exceeds this are not timed (the token-by-token chains at
# d=4096, r=64, B=4096 hold 4 GB each, and ran 40x slower than the best where they fit).
MAX_PEAK_BYTES = 2**30
TARGETS = {"median_over_tltorch": 1.5, "worst_over_tltorch": 0.9, "planner_over_best": 0.9}
# Where a chosen order was not the fastest, the orders involved are timed again in trials,
# each of which compiles every one of them afresh (see `recheck`): this many trials for calls
# under 10 ms, whose compilations vary most, and for calls under 100 ms; 3 for longer ones.
RECHECK_TRIALS = {0.01: 12, 0.1: 6}
RECHECK_ROUNDS = 2
# The interval reported with a rechecked ratio: this share of bootstrap resamples of the
# trials falls inside it.
INTERVAL = 0.9
# Short labels of the candidate orders in the printed table ("r2l(2-3)": right-to-left with
# cores 2 and 3 merged first).
SHORT = {
    "right-to-left": "r2l",
    "left-to-right": "l2r",
    "einsum-optimal": "ein-opt",
    "einsum-greedy": "ein-greedy",
    "inputs-first-reversed": "in-first-rev",
}


def short(name):
    """The short label of an order's name."""
    for long, abbrev in SHORT.items():
        name = name.replace(long, abbrev)
    return name


def make_weight(fmt, d, r, key):
    """Our factorization of a ``d x d`` weight, and the tensorized modes."""
    from factorjax.factorizations import CP, TTMatrix, Tucker
    from factorjax.factorizations._tensorize import balanced_modes

    modes = balanced_modes(d, 3)
    if fmt == "tt":
        W = TTMatrix.init(d, d, r, key=key, out_modes=modes, in_modes=modes)
    elif fmt == "cp":
        W = CP.init_matrix(d, d, r, key=key, out_modes=modes, in_modes=modes)
    else:
        ranks = tuple(min(r, m) for m in (*modes, *modes))
        W = Tucker.init_matrix(d, d, ranks, key=key, out_modes=modes, in_modes=modes)
    return W, modes


def tltorch_layer(fmt, W, modes, implementation):
    """tensorly-torch's FactorizedLinear holding the factors of ``W``."""
    import torch
    from tltorch import FactorizedLinear

    name = {"tt": "blocktt", "cp": "cp", "tucker": "tucker"}[fmt]
    if fmt == "tt":
        rank = max(c.shape[-1] for c in W.cores[:-1])
    elif fmt == "cp":
        rank = W.rank
    else:
        rank = tuple(W.core.shape)
    layer = FactorizedLinear(modes, modes, bias=False, factorization=name, rank=rank)
    layer.implementation = implementation
    t = lambda a: torch.from_numpy(np.array(a, dtype=np.float32))  # noqa: E731
    w = layer.weight
    with torch.no_grad():
        if fmt == "tt":
            for dst, src in zip(w.factors, W.cores, strict=True):
                dst.data = t(src)
        elif fmt == "cp":
            w.weights.data = t(W.weights)
            for dst, src in zip(w.factors, W.factors, strict=True):
                dst.data = t(src)
        else:
            w.core.data = t(W.core)
            for dst, src in zip(w.factors, W.factors, strict=True):
                dst.data = t(src)
    return layer


def torch_fwd_bwd(layer, x, g):
    import torch

    xt, gt = torch.from_numpy(np.asarray(x)), torch.from_numpy(np.asarray(g))

    def run():
        for p in layer.parameters():
            p.grad = None
        layer(xt).backward(gt)
        return None

    # Agreement with factorjax, checked once.
    with torch.no_grad():
        y = layer(xt).numpy()
    return run, y


def jax_fwd_bwd(W, x, g, order):
    # The output and the gradient, as a training step needs both (the gradient of sum(y * g)
    # alone would let XLA drop the forward matmul of "dense"; PyTorch computes it). x and g
    # are arguments, not constants closed over: XLA would fold products of constants.
    f = jax.jit(lambda W, x, g: _output_and_grad(W, x, g, order))
    jax.block_until_ready(f(W, x, g))
    return lambda: f(W, x, g)


def jax_forward(W, x, order):
    f = jax.jit(lambda W, x: W.apply(x, order=order))
    jax.block_until_ready(f(W, x))
    return lambda: f(W, x)


def recheck_trials(seconds):
    """How many trials `recheck` runs for a call of ``seconds``."""
    return next((n for limit, n in sorted(RECHECK_TRIALS.items()) if seconds < limit), 3)


def recheck(W, x, g, names, trials):
    """The orders in ``names`` timed again, in ``trials`` trials: each compiles every order
    afresh and times them in `RECHECK_ROUNDS` interleaved rounds (the best of each). Returns
    each order's time per trial.

    The fastest of a point's first measurement is the least of several noisy times, so it is
    biased low (the winner's curse), and one compilation of a millisecond call can run a
    quarter faster than another of the same program (measured: nine compilations of Tucker
    d=1024 r=4 B=64 `factored`, 0.79 to 1.07 ms). A fresh measurement of the orders over
    many compilations, with no selection in it, tells a miss of the planner from one of the
    measurement; the trials pair the orders (compiled and timed side by side), which
    `ratio_interval` uses."""
    per = {n: [] for n in names}
    for _ in range(trials):
        fns = {n: jax_fwd_bwd(W, x, g, n) for n in names}
        best, _ = time_rounds(fns, RECHECK_ROUNDS, min_block_s=MIN_BLOCK_S)
        for n in names:
            per[n].append(best[n])
        del fns
    return per


def ratio_interval(per, chosen, seed=0, resamples=2000):
    """How ``chosen`` compares with the fastest order of `recheck`'s trials ``per``: the
    median over the trials of the fastest order's time over ``chosen``'s in the same trial
    (the fastest: the least median time), and its `INTERVAL` bootstrap interval (the trials
    resampled, the fastest found again in each resample).

    The ratios are taken within a trial because the machine's speed drifts between trials
    more than the orders differ: at TT d=1024 r=4 B=64, ten trials of `einsum-optimal` ran
    1.5 to 3.9 ms, the same trials of `right-to-left(2-3)` 2.0 to 3.3 ms, and the ratio within
    a trial was 0.62 to 0.91 in eight of them (median 0.80)."""
    times = np.array(list(per.values()))  # (orders, trials)
    k = list(per).index(chosen)

    def ratio(t):  # t: (..., orders, trials)
        fastest = np.median(t, axis=-1).argmin(axis=-1)
        best = np.take_along_axis(t, fastest[..., None, None], axis=-2)[..., 0, :]
        return np.median(best / t[..., k, :], axis=-1)

    idx = np.random.default_rng(seed).integers(0, times.shape[1], (resamples, times.shape[1]))
    boot = ratio(np.moveaxis(times[:, idx], 1, 0))  # (resamples, orders, trials)
    tail = (1 - INTERVAL) / 2
    lo, hi = np.quantile(boot, [tail, 1 - tail])
    return float(ratio(times)), (float(lo), float(hi))


def point(fmt, d, r, B, rounds):
    key = jax.random.key(d * 1000 + r * 10 + B)
    W, modes = make_weight(fmt, d, r, key)
    x = jax.random.normal(jax.random.key(1), (B, d), jnp.float32)
    g = jax.random.normal(jax.random.key(2), (B, d), jnp.float32)
    plan = W.plan(B)
    tuned = W.tune(B)
    fns = {}
    chosen = (plan.order, tuned.order)
    untimed = [
        o.name for o in plan.candidates if o.peak_bytes > MAX_PEAK_BYTES and o.name not in chosen
    ]
    for o in plan.candidates:
        if o.name not in untimed:
            fns[f"fj:{o.name}"] = jax_fwd_bwd(W, x, g, o.name)
    Wd = W.to_matrix()

    def dense_step(Wd, x, g):
        y, vjp = jax.vjp(lambda Wd: matmul_t(x, Wd), Wd)
        return y, vjp(g)[0]

    dense = jax.jit(dense_step)
    jax.block_until_ready(dense(Wd, x, g))
    fns["dense"] = lambda: dense(Wd, x, g)
    y_ref = np.asarray(W.apply(x))
    scale = float(np.abs(y_ref).max()) or 1.0
    agree = {}
    for impl in ("factorized", "reconstructed"):
        layer = tltorch_layer(fmt, W, modes, impl)
        run, y = torch_fwd_bwd(layer, x, g)
        agree[impl] = float(np.abs(y - y_ref).max() / scale)
        fns[f"tl:{impl}"] = run
    fwd_planned = jax_forward(W, x, "auto")
    fwd_dense = jax.jit(matmul_t)
    jax.block_until_ready(fwd_dense(Wd, x))
    fns["fwd:planned"] = fwd_planned
    fns["fwd:dense"] = lambda: fwd_dense(Wd, x)
    best, _ = time_rounds(fns, rounds, min_block_s=MIN_BLOCK_S)
    cand = {o.name: best[f"fj:{o.name}"] for o in plan.candidates if o.name not in untimed}
    planned, tuned_s = cand[plan.order], cand[tuned.order]
    tl_best = min(best["tl:factorized"], best["tl:reconstructed"])
    fastest = min(cand, key=cand.get)
    names = sorted({plan.order, tuned.order, fastest})
    if len(names) > 1:
        per = recheck(W, x, g, names, recheck_trials(cand[fastest]))
        again = {n: statistics.median(v) for n, v in per.items()}
        model_again, model_interval = ratio_interval(per, plan.order)
        tuned_again, tuned_interval = ratio_interval(per, tuned.order)
    else:
        per, again = {}, {fastest: cand[fastest]}
        model_again = tuned_again = 1.0
        model_interval = tuned_interval = (1.0, 1.0)
    return {
        "format": fmt,
        "d": d,
        "rank": r,
        "batch": B,
        "params": W.num_params,
        "order": plan.order,
        "tuned_order": tuned.order,
        "orders_s": cand,
        "untimed": untimed,
        "planned_s": planned,
        "tuned_s": tuned_s,
        "best_order": fastest,
        "planner_over_best": min(cand.values()) / planned,
        "tuned_over_best": min(cand.values()) / tuned_s,
        "recheck_s": again,
        "recheck_trials_s": per,
        "planner_over_best_recheck": model_again,
        "planner_over_best_recheck_interval": model_interval,
        "tuned_over_best_recheck": tuned_again,
        "tuned_over_best_recheck_interval": tuned_interval,
        "tltorch_s": {
            "factorized": best["tl:factorized"],
            "reconstructed": best["tl:reconstructed"],
        },
        "over_tltorch": tl_best / planned,
        "tuned_over_tltorch": tl_best / tuned_s,
        "dense_s": best["dense"],
        "over_dense": best["dense"] / planned,
        "gflops_planned": plan.flops / best["fwd:planned"] / 1e9,
        "gflops_dense": 2 * B * d * d / best["fwd:dense"] / 1e9,
        "tltorch_rel_diff": agree,
    }


MARKDOWN_COLUMNS = (
    "format", "d", "rank", "batch", "model's order", "tuned order", "fastest (first)",
    "fastest / model's (first)", "(recheck)", "fastest / tuned (first)", "(recheck)",
    "tltorch better mode / ours (model)", "(tuned)", "dense matmul / ours (model)",
)  # fmt: skip


def markdown_table(rows):
    """The rows of a run (``--json``) as the markdown table of docs/benchmarks.md: ratios
    above 1 mean factorjax is faster; "(recheck)" is the ratio on the orders timed again,
    the first one where none was."""
    lines = ["| " + " | ".join(MARKDOWN_COLUMNS) + " |", "|---" * len(MARKDOWN_COLUMNS) + "|"]
    for r in rows:
        cells = [
            r["format"], r["d"], r["rank"], r["batch"],
            short(r["order"]), short(r["tuned_order"]), short(r["best_order"]),
            r["planner_over_best"], r.get("planner_over_best_recheck", r["planner_over_best"]),
            r["tuned_over_best"], r.get("tuned_over_best_recheck", r["tuned_over_best"]),
            r["over_tltorch"], r["tuned_over_tltorch"], r["over_dense"],
        ]  # fmt: skip
        lines.append(
            "| " + " | ".join(f"{c:.2f}" if isinstance(c, float) else str(c) for c in cells) + " |"
        )
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="a small grid (smoke test)")
    p.add_argument("--json", metavar="PATH", help="save the numbers to this JSON file")
    p.add_argument("--formats", default=",".join(FORMATS), help="comma-separated subset")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument(
        "--markdown", metavar="PATH", help="print a saved run as a markdown table; time nothing"
    )
    args = p.parse_args(argv)
    if args.markdown:
        with open(args.markdown) as fh:
            print(markdown_table(json.load(fh)["rows"]))
        return 0
    import torch

    threads = os.cpu_count() or 1
    torch.set_num_threads(threads)
    dims, ranks, batches = (
        ((256, 1024), (4, 16), (1, 256)) if args.quick else (DIMS, RANKS, BATCHES)
    )
    formats = tuple(args.formats.split(","))
    info = machine()
    info["torch"] = torch.__version__
    print(f"machine: {info}")
    print(f"torch threads {threads}; float32; forward+backward unless said\n")
    head = (
        f"{'fmt':<7}{'d':>5}{'r':>4}{'B':>6} {'params':>9} {'model':>11} {'tuned':>11} "
        f"{'best':>11} {'model/best':>10} {'tuned/best':>10} {'tl-fact':>8} {'tl-rec':>8} "
        f"{'vs tl':>6} {'tuned vs tl':>11} {'vs dense':>8} {'GF/s plan':>9} {'GF/s dense':>10}"
    )
    print(head)
    rows = []
    with OtherLoad() as load:
        for fmt in formats:
            for d in dims:
                for r in ranks:
                    for B in batches:
                        row = point(fmt, d, r, B, args.rounds)
                        rows.append(row)
                        if args.json:  # after every point: a long run killed keeps its rows
                            with open(args.json, "w") as fh:
                                json.dump({"machine": info, "rows": rows}, fh, indent=1)
                        t = row["tltorch_s"]
                        names = [short(row[k]) for k in ("order", "tuned_order", "best_order")]
                        print(
                            f"{fmt:<7}{d:>5}{r:>4}{B:>6} {row['params']:>9} "
                            f"{names[0]:>11} {names[1]:>11} {names[2]:>11} "
                            f"{row['planner_over_best']:>10.2f} {row['tuned_over_best']:>10.2f} "
                            f"{t['factorized'] / row['planned_s']:>8.2f} "
                            f"{t['reconstructed'] / row['planned_s']:>8.2f} "
                            f"{row['over_tltorch']:>6.2f} {row['tuned_over_tltorch']:>11.2f} "
                            f"{row['over_dense']:>8.2f} "
                            f"{row['gflops_planned']:>9.1f} {row['gflops_dense']:>10.1f}",
                            flush=True,
                        )
                        if len(row["recheck_s"]) > 1:
                            times = ", ".join(
                                f"{short(n)} {t * 1e3:.3f} ms" for n, t in row["recheck_s"].items()
                            )
                            model, tuned = (
                                f"{row[k]:.2f} [{row[k + '_interval'][0]:.2f}, "
                                f"{row[k + '_interval'][1]:.2f}]"
                                for k in ("planner_over_best_recheck", "tuned_over_best_recheck")
                            )
                            trials = len(next(iter(row["recheck_trials_s"].values())))
                            print(
                                f"{'':<23}recheck ({trials} trials, medians): {times}; "
                                f"model/best {model}, tuned/best {tuned}",
                                flush=True,
                            )
    summary = {"other_load_cores": load.cores}
    for way, over_key, best_key in (
        ("model", "over_tltorch", "planner_over_best"),
        ("tuned", "tuned_over_tltorch", "tuned_over_best"),
    ):
        over = [r[over_key] for r in rows]
        plan_best = [r[best_key] for r in rows]
        again = [r[best_key + "_recheck"] for r in rows]
        s = {
            "median_over_tltorch": statistics.median(over),
            "worst_over_tltorch": min(over),
            "below_0.9_tltorch": sum(v < 0.9 for v in over),
            "planner_over_best": min(plan_best),
            "below_0.9_best": sum(v < 0.9 for v in plan_best),
            "planner_over_best_recheck": min(again),
            "below_0.9_best_recheck": sum(v < 0.9 for v in again),
            # the rechecked ratio's whole interval below 0.9
            "surely_below_0.9_best_recheck": sum(
                r.get(best_key + "_recheck_interval", (1, 1))[1] < 0.9 for r in rows
            ),
        }
        summary[way] = s
        print(
            f"\n[{way}] factorjax vs tltorch's better mode (its time / ours): median "
            f"{s['median_over_tltorch']:.2f}x (target >= {TARGETS['median_over_tltorch']}), "
            f"worst {s['worst_over_tltorch']:.2f}x (target >= {TARGETS['worst_over_tltorch']}; "
            f"{s['below_0.9_tltorch']} of {len(rows)} points below 0.9)"
        )
        print(
            f"[{way}] chosen order vs the best of factorjax's candidates (best / chosen): "
            f"worst {s['planner_over_best']:.2f} (target >= {TARGETS['planner_over_best']}; "
            f"{s['below_0.9_best']} of {len(rows)} below 0.9); measured again where it was "
            f"not the fastest (`recheck`): worst {s['planner_over_best_recheck']:.2f} "
            f"({s['below_0.9_best_recheck']} below 0.9, "
            f"{s['surely_below_0.9_best_recheck']} with the whole {INTERVAL:.0%} interval below)"
        )
    print(f"other-load {load.cores if load.cores is None else round(load.cores, 2)} cores")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"machine": info, "rows": rows, "summary": summary}, fh, indent=1)
        print(f"saved {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
