"""Time the gradient-descent runs of the tubal implicit-regularization paper (Figs 3 and 4).

Karnik et al., "Implicit Regularization for Tubal Tensor Factorizations via Gradient Descent"
(ICML 2025): gradient descent on ``U`` of shape ``(n, R, k)`` for
``L(U) = 1/2 ||A(U * U^T) - y||^2``, ``*`` the t-product, from ``U_0`` with i.i.d.
``N(0, alpha^2 / R)`` entries. Paper scale: ``n = 10, k = 4, r = 3, m = 285`` symmetrised
Gaussian measurements ``A_j = (G_j + G_j^T) / sqrt(m)``, ``alpha = 1e-7``, 4000 steps of size
``m * 1e-5``, the test error ``||X - X*|| / ||X*||`` recorded every 40 steps; float64.

Run from the repository root:

    python benchmarks/tubal_dynamics.py                  # everything (about 3 minutes on 2 cores)
    python benchmarks/tubal_dynamics.py --quick          # 400 steps, fewer seeds: a smoke test
    python benchmarks/tubal_dynamics.py --json out.json  # also save the numbers
    python benchmarks/tubal_dynamics.py --skip sweep     # leave out a part (single, vmap, sweep)

``--timeout S`` (default 1800 s) is a watchdog: past it every thread's traceback is printed and
the script exits (a sweep has been seen to stall for good, every XLA thread idle).

Three measurements, in one process:

(a) One run at ``R = 200``, best of 3 (excluding compilation, reported apart):

- ``numpy``: the update ``U <- U - mu (M + M^T) * U`` with ``M = A*(A(U * U^T) - y)``,
  vectorized: ``U`` is kept as its half spectrum (``np.fft.rfft`` along the tube axis, tube axis
  first), ``X = U * U^T`` is one batched ``np.matmul`` over the frequency slices and one
  ``irfft``, ``A(X)`` is ``G @ vec(X)``, ``A*(res)`` is ``G.T @ res``, and ``(M + M^T) * U`` is
  one ``rfft`` and one batched ``np.matmul``. The loop over iterations is a Python loop, and
  the test error is computed every 40 steps as factorjax does. Same problem data (``G``, ``y``,
  ``X*``) and same ``U_0`` as factorjax; the script checks that the final ``U`` and test error
  agree with factorjax to 1e-8 relative and exits non-zero otherwise.
- ``factorjax``: ``jax.jit`` of ``factorjax.dynamics.train`` with ``method="factors"`` (autodiff
  through ``U * U^T``) and ``method="lifted"`` (the default for `SymmetricTubalLowRank`, on the
  problem with its Gram matrix, `TubalSensing.with_gram`): metrics (test error, loss,
  singular values, two subspace angles, rank) every 40 steps.

(b) The payoff of batching: 20 seeds of that run, each with its own problem and init
(`sensing_sweep._problem`, `sensing_sweep._init`), as one ``jax.jit(jax.vmap(run))`` on one
device, and as `map_runs` of it over all local devices (what the sweeps do); per-run time
(total / 20) against ``jax.jit(run)`` of one seed. Method ``"lifted"``, as in the sweeps. On a
CPU the local devices are the cores (``--cpu-devices``, default one per core, as
``factorjax run`` sets them): one run cannot use a second core (its operations are too small to
split), twenty can.

(c) The whole of Figs 3 and 4 (Fig 3: ``R`` in 10, 50, 100, 200, 400; Fig 4: ``alpha`` in
1e-2, 1e-4, 1e-6, 1e-8 at ``R = 200``; 20 seeds each, 180 runs) through
`run_sensing_sweep`, twice, each into a fresh temporary folder: the first run compiles, the
second reuses the compiled functions (cached per config), so that the difference is the
compilation (and first-touch) time.

Timing: the implementations of (a) and (b) run in interleaved rounds (the order reversed every
other round) with a 0.3 s pause before each timed call (BLAS worker threads spin for up to
0.2 s after a call and would steal a core from the next one); a time is the best of the
rounds. ``other-load`` says how many cores other processes kept busy while a part ran: on a
shared machine compare ratios measured in the same part, not absolute times across runs.

The script enables ``jax_enable_x64`` (the paper's runs are float64) and sets
``jax_num_cpu_devices`` (``--cpu-devices``) before anything is traced, and sets no other JAX
configuration and no XLA flags.
"""

import argparse
import contextlib
import faulthandler
import functools
import io
import json
import os
import sys
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _timing import OtherLoad, _load, _ready, machine, time_rounds

N, K, RANK, M = 10, 4, 3, 285
WIDTH, ALPHA, NU = 200, 1e-7, 1e-5
STEPS, LOG_EVERY = 4000, 40
SEEDS = 20
ROUNDS = 3
AGREE_RTOL = 1e-8
TARGETS = {"numpy_over_factorjax": 30.0, "vmap_per_run_over_single": 0.5, "sweep_s": 90.0}


# ---------------------------------------------------------------------------------------------
# The NumPy peer
# ---------------------------------------------------------------------------------------------


def numpy_run(G, y, truth, U0, step_size, steps, log_every):
    """Gradient descent on ``U`` for ``1/2 ||A(U * U^T) - y||^2``, vectorized NumPy.

    Arguments:
        G: the operator ``(m, n * n * k)``, row ``j`` is ``A_j`` flattened row-major.
        y: the observations ``(m,)``. truth: ``X*``, ``(n, n, k)``. U0: ``(n, R, k)``.

    Returns:
        ``(U, test_errors)``: the final ``U`` ``(n, R, k)`` and ``||X_t - X*|| / ||X*||`` for
        ``t = 0, log_every, ..., steps``.
    """
    m = G.shape[0]
    n, _, k = U0.shape
    # The columns of G reordered to the tube-first layout (k, n, n) of X below: A(X) = G @ vec(X)
    # then needs no transpose of X in the loop.
    Gk = np.ascontiguousarray(G.reshape(m, n, n, k).transpose(0, 3, 1, 2).reshape(m, -1))
    GkT = np.ascontiguousarray(Gk.T)
    truth_k = np.ascontiguousarray(truth.transpose(2, 0, 1))
    truth_norm = np.linalg.norm(truth_k)
    # U as its half spectrum (f, n, R), tube axis first: each frequency slice a C-contiguous
    # matrix. The update is linear in U, so it is applied to the spectrum directly.
    U_hat = np.fft.rfft(np.ascontiguousarray(U0.transpose(2, 0, 1)), axis=0)
    errors = []
    for t in range(steps + 1):
        # X = U * U^T: the t-transpose's Fourier slices are the conjugate transposes.
        X = np.fft.irfft(U_hat @ np.conj(U_hat).transpose(0, 2, 1), n=k, axis=0)
        if t % log_every == 0:
            errors.append(np.linalg.norm(X - truth_k) / truth_norm)
        if t == steps:
            break
        res = Gk @ X.ravel() - y
        M_hat = np.fft.rfft((GkT @ res).reshape(k, n, n), axis=0)
        S_hat = M_hat + np.conj(M_hat).transpose(0, 2, 1)  # M + M^T
        U_hat = U_hat - step_size * (S_hat @ U_hat)
    U = np.fft.irfft(U_hat, n=k, axis=0).transpose(1, 2, 0)
    return U, np.asarray(errors)


# ---------------------------------------------------------------------------------------------
# Timing helpers
# ---------------------------------------------------------------------------------------------


def compile_timed(fn, *args):
    """``jax.jit(fn)`` lowered and compiled for ``args``: (compiled, seconds)."""
    t0 = time.perf_counter()
    compiled = jax.jit(fn).lower(*args).compile()
    return compiled, time.perf_counter() - t0


def _rel(x, ref):
    x, ref = np.asarray(x, np.float64), np.asarray(ref, np.float64)
    return float(np.linalg.norm(x - ref) / np.linalg.norm(ref))


# ---------------------------------------------------------------------------------------------
# The three parts
# ---------------------------------------------------------------------------------------------


def part_single(cfg, steps, rounds):
    """(a): one run, NumPy against factorjax's two methods."""
    from factorjax.dynamics import train
    from factorjax.experiments import sensing_sweep as ss

    step_size = cfg.step_size(M)
    problem = ss._problem(cfg, M, 0)
    model = ss._init(cfg, WIDTH, 0, ALPHA)
    G, y, truth, U0 = (np.asarray(a) for a in (problem.G, problem.y, problem.ground_truth, model.u))
    assert G.dtype == np.float64, "float64 is not enabled"

    def run(method, problem, model):
        return train(
            problem, model, steps=steps, log_every=LOG_EVERY, step_size=step_size, method=method
        )

    compiled, compile_s, agree = {}, {}, {}
    U_np, err_np = numpy_run(G, y, truth, U0, step_size, steps, LOG_EVERY)
    for method in ("factors", "lifted"):
        compiled[method], compile_s[method] = compile_timed(
            functools.partial(run, method), problem, model
        )
        final, history = _ready(compiled[method](problem, model))
        err = np.asarray(history["test_error"])
        agree[method] = {
            "final_U": _rel(final.u, U_np),
            "final_test_error": abs(float(err[-1]) - float(err_np[-1])) / float(err_np[-1]),
            "max_test_error": float(np.max(np.abs(err - err_np) / err_np)),
        }
    fns = {
        "numpy": lambda: numpy_run(G, y, truth, U0, step_size, steps, LOG_EVERY),
        "factors": lambda: compiled["factors"](problem, model),
        "lifted": lambda: compiled["lifted"](problem, model),
    }
    with OtherLoad() as load:
        best, all_times = time_rounds(fns, rounds)
    return {
        "steps": steps,
        "best_s": best,
        "all_s": all_times,
        "compile_s": compile_s,
        "numpy_over": {m: best["numpy"] / best[m] for m in ("factors", "lifted")},
        "agreement": agree,
        "final_test_error": float(err_np[-1]),
        "other_load_cores": load.cores,
    }


def part_vmap(cfg, steps, seeds, rounds):
    """(b): ``seeds`` runs as one vmapped program against one run of the same function: on one
    device (``jax.jit(jax.vmap(run))``) and split over all local devices (`map_runs`)."""
    from factorjax.dynamics import train
    from factorjax.dynamics.parallel import map_runs
    from factorjax.experiments import sensing_sweep as ss

    step_size = cfg.step_size(M)

    def one(seed):
        problem = ss._problem(cfg, M, seed)
        model = ss._init(cfg, WIDTH, seed, ALPHA)
        return train(
            problem, model, steps=steps, log_every=LOG_EVERY, step_size=step_size, method="lifted"
        )[1]

    seed0 = jnp.asarray(0)
    seed_batch = jnp.arange(seeds)
    batched_fn = jax.vmap(one)
    single, single_c = compile_timed(one, seed0)
    batched, batched_c = compile_timed(batched_fn, seed_batch)
    t0 = time.perf_counter()
    hs = map_runs(batched_fn, np.arange(seeds))  # compiles (cached for the timed calls)
    sharded_c = time.perf_counter() - t0
    # The vmapped runs are the single runs: compare seed 0's history.
    h1, hb = _ready(single(seed0)), _ready(batched(seed_batch))
    agree = {
        "vmapped": _rel(hb["test_error"][0], h1["test_error"]),
        "sharded": _rel(hs["test_error"], hb["test_error"]),
    }
    fns = {
        "single": lambda: single(seed0),
        "vmapped": lambda: batched(seed_batch),
        "sharded": lambda: map_runs(batched_fn, np.arange(seeds)),
    }
    with OtherLoad() as load:
        best, all_times = time_rounds(fns, rounds)
    ratio = {m: best[m] / seeds / best["single"] for m in ("vmapped", "sharded")}
    return {
        "steps": steps,
        "seeds": seeds,
        "devices": len(jax.local_devices()),
        "best_s": best,
        "per_run_over_single": ratio,
        "all_s": all_times,
        "compile_s": {"single": single_c, "vmapped": batched_c, "sharded": sharded_c},
        "rel_diff": agree,
        "final_test_error_geomean": float(np.exp(np.mean(np.log(hb["test_error"][:, -1])))),
        "other_load_cores": load.cores,
    }


def part_sweep(configs):
    """(c): `run_sensing_sweep` of every ``name: config``, twice into fresh folders."""
    from factorjax.experiments.sensing_sweep import run_sensing_sweep

    times, finals = [], {}
    with OtherLoad() as load:
        for attempt in range(2):
            with tempfile.TemporaryDirectory(prefix="tubal_dynamics_") as tmp:
                t0 = time.perf_counter()
                for name, cfg in configs.items():
                    # The sweep prints one line per experiment (quiet only silences the bar).
                    with contextlib.redirect_stdout(io.StringIO()):
                        records = run_sensing_sweep(name, cfg, f"{tmp}/{name}", quiet=True)
                    if attempt == 0:
                        errs = [r["final"]["test_error"] for r in records]
                        finals[name] = {
                            "runs": len(records),
                            "final_test_error_geomean": float(np.exp(np.mean(np.log(errs)))),
                            "diverged": sum(r["status"] == "diverged" for r in records),
                        }
                times.append(time.perf_counter() - t0)
    return {
        "first_s": times[0],
        "second_s": times[1],
        "compile_s": times[0] - times[1],
        "runs": sum(f["runs"] for f in finals.values()),
        "experiments": finals,
        "other_load_cores": load.cores,
    }


# ---------------------------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------------------------


def _verdict(ok):
    return "met" if ok else "NOT met"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument(
        "--quick",
        action="store_true",
        help="400 steps, 4 seeds, a reduced sweep: a smoke test, not the targets",
    )
    p.add_argument("--json", metavar="PATH", help="save the numbers to this JSON file")
    p.add_argument(
        "--skip",
        action="append",
        default=[],
        choices=("single", "vmap", "sweep"),
        help="leave out a part (repeatable)",
    )
    p.add_argument(
        "--cpu-devices",
        type=int,
        default=os.cpu_count(),
        metavar="N",
        help="present the CPU as N devices, over which (b) and (c) split their runs, as "
        "`factorjax run` does (default: one per core; 0 leaves JAX's default)",
    )
    p.add_argument(
        "--timeout",
        type=float,
        default=1800.0,
        metavar="S",
        help="print every thread's traceback and exit if the script runs longer (default 1800)",
    )
    args = p.parse_args(argv)
    jax.config.update("jax_enable_x64", True)  # before anything is traced
    if args.cpu_devices:
        jax.config.update("jax_num_cpu_devices", args.cpu_devices)  # before any computation
    # A watchdog: a computation that never completes (seen in the sweep, see the README) ends the
    # script with the tracebacks instead of stalling it.
    faulthandler.dump_traceback_later(args.timeout, exit=True)

    from factorjax.experiments.tubal_implicit_reg import Fig3Config, Fig4Config

    steps = 400 if args.quick else STEPS
    seeds = 4 if args.quick else SEEDS
    cfg = Fig3Config(widths=(WIDTH,), measurements=(M,), alphas=(ALPHA,), nu=NU, steps=steps)
    if args.quick:
        sweep = {
            "tubal-fig3": Fig3Config(widths=(10, 50), seeds=2, steps=steps, checkpoint_every=200),
            "tubal-fig4": Fig4Config(
                alphas=(1e-2, 1e-6), seeds=2, steps=steps, checkpoint_every=200
            ),
        }
    else:
        sweep = {"tubal-fig3": Fig3Config(), "tubal-fig4": Fig4Config()}

    info = machine()
    print(
        f"machine: {info['platform']}; platform.processor() = {info['processor']!r} "
        f"({info['cpu_model']}); os.cpu_count() = {info['cpu_count']}"
    )
    print(
        f"python {info['python']}, jax {info['jax']}, jaxlib {info['jaxlib']}, numpy "
        f"{info['numpy']}; devices: {', '.join(info['devices'])}"
    )
    print(f"command: python {' '.join([os.path.relpath(__file__), *(argv or sys.argv[1:])])}")
    print(
        f"float64; n={N}, k={K}, r={RANK}, m={M} symmetric, alpha={ALPHA:g}, step m*{NU:g}, "
        f"{steps} steps, metrics every {LOG_EVERY}\n"
    )
    results = {"machine": info, "quick": args.quick}
    ok = True

    if "single" not in args.skip:
        a = part_single(cfg, steps, ROUNDS)
        results["single"] = a
        print(
            f"(a) one run, R = {WIDTH}: best of {ROUNDS} (compile excluded)   other-load "
            f"{_load(a['other_load_cores'])}"
        )
        print(
            f"  {'implementation':<22} {'time':>9} {'per step':>10} {'compile':>8} "
            f"{'numpy / it':>10}  agreement with numpy (U, final err, max err)"
        )
        print(
            f"  {'numpy':<22} {a['best_s']['numpy']:8.3f}s "
            f"{a['best_s']['numpy'] / steps * 1e6:8.1f}us {'':>8} {'1.00x':>10}"
        )
        for method in ("factors", "lifted"):
            g = a["agreement"][method]
            print(
                f"  {'factorjax ' + method:<22} {a['best_s'][method]:8.3f}s "
                f"{a['best_s'][method] / steps * 1e6:8.1f}us {a['compile_s'][method]:7.2f}s "
                f"{a['numpy_over'][method]:9.2f}x  "
                f"{g['final_U']:.1e}, {g['final_test_error']:.1e}, {g['max_test_error']:.1e}"
            )
            if not (g["final_U"] <= AGREE_RTOL and g["final_test_error"] <= AGREE_RTOL):
                ok = False
                print(f"  MISMATCH: factorjax {method} and numpy disagree beyond {AGREE_RTOL:g}")
        best = max(a["numpy_over"].values())
        print(
            f"  final test error {a['final_test_error']:.3g}; target numpy / factorjax >= "
            f"{TARGETS['numpy_over_factorjax']:g}x: {best:.1f}x, "
            f"{_verdict(best >= TARGETS['numpy_over_factorjax'])}\n"
        )

    if "vmap" not in args.skip:
        b = part_vmap(cfg, steps, seeds, ROUNDS)
        results["vmap"] = b
        t = b["best_s"]
        print(
            f"(b) {seeds} seeds, method 'lifted', problem and init drawn inside; best of "
            f"{ROUNDS}   other-load {_load(b['other_load_cores'])}"
        )
        print(f"  jit(run), one seed: {t['single']:.3f}s (compile {b['compile_s']['single']:.2f}s)")
        for name, what in (
            ("vmapped", "jit(vmap(run)) on one device"),
            ("sharded", f"map_runs over {b['devices']} local devices"),
        ):
            r = b["per_run_over_single"][name]
            print(
                f"  {what}: {t[name]:.3f}s = {t[name] / seeds:.4f}s per run "
                f"(compile {b['compile_s'][name]:.2f}s); per run / single = {r:.3f}, target <= "
                f"{TARGETS['vmap_per_run_over_single']:g}: "
                f"{_verdict(r <= TARGETS['vmap_per_run_over_single'])}"
            )
        print(
            f"  agreement: seed 0 vmapped vs single {b['rel_diff']['vmapped']:.1e}, sharded vs "
            f"vmapped {b['rel_diff']['sharded']:.1e}; final test error geomean "
            f"{b['final_test_error_geomean']:.3g}\n"
        )

    if "sweep" not in args.skip:
        c = part_sweep(sweep)
        results["sweep"] = c
        print(
            f"(c) run_sensing_sweep of {', '.join(sweep)} ({c['runs']} runs of {steps} "
            f"steps), twice into fresh folders   other-load {_load(c['other_load_cores'])}"
        )
        print(
            f"  first run {c['first_s']:.1f}s (compile included), second run "
            f"{c['second_s']:.1f}s, difference (compile) {c['compile_s']:.1f}s"
        )
        for name, f in c["experiments"].items():
            print(
                f"  {name}: {f['runs']} runs, final test error geomean "
                f"{f['final_test_error_geomean']:.3g}, {f['diverged']} diverged"
            )
        print(
            f"  target <= {TARGETS['sweep_s']:g}s excluding compile: {c['second_s']:.1f}s, "
            f"{_verdict(c['second_s'] <= TARGETS['sweep_s'])}\n"
        )

    faulthandler.cancel_dump_traceback_later()
    if args.quick:
        print("--quick: fewer steps and seeds; the targets are for the full run.")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(results, fh, indent=1, default=float)
        print(f"saved {args.json}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
