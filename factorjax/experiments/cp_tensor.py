"""Incremental learning in CP tensor completion (Razin, Maman, Cohen, ICML 2021).

An order-4 ground truth, every mode of size 10, CP rank 5, unit Frobenius norm, of which 2000
entries are observed (`factorjax.dynamics.cp_completion.CPCompletion`), is fitted by a CP model
of 1000 components (a plain tuple of four factor matrices ``(10, 1000)``) from i.i.d.
``N(0, std^2)`` factor entries, with `factorjax.dynamics.group_rmsprop` (step 1e-2) on the mean
squared error over the observed entries. Recorded every ``log_every`` steps: the train loss, the
relative reconstruction error ``||X - X*|| / ||X*||``, the ``top_k`` largest component norms
(the norm of a rank-one component is the product of its factor columns' norms), and the
coefficient of each ground-truth component in the learned tensor (least squares onto the five
ground-truth rank-one tensors: 0 before the component is learned, 1 once it is).

The sweep over init scales and seeds is one ``jax.jit(jax.vmap(run))`` program (the runs share
shapes), through the runner's `run_sweep` (resumable; a run whose loss goes non-finite is
frozen and recorded as diverged).
"""

import dataclasses
import functools
import math
import platform
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax

from factorjax.dynamics import RunStore, group_rmsprop, run_sweep
from factorjax.dynamics.cp_completion import CPCompletion, component_norms, init_factors
from factorjax.experiments._common import pyplot, read_run
from factorjax.experiments._registry import Experiment, register

__all__ = ["CPTensorConfig", "plot_cp_tensor", "run_cp_tensor", "switch_on_steps", "truth_fit"]

PAPER = {
    "switch_on": (4200, 5300, 7000, 9800, 11300),
    "error_steps": (1.0, 0.82, 0.56, 0.39, 0.22, 0.005),
    "final_error": {5e-3: 0.005, 1e-2: 0.03, 5e-2: 0.08},
}


@dataclasses.dataclass(frozen=True)
class CPTensorConfig:
    """CP tensor completion from small init, over init scales and seeds.

    Fields:
        order, n, rank, m: the ground truth (order, mode size, CP rank) and observed entries.
        components: the columns of the model's factor matrices.
        stds: the init scales (std of the factor entries).
        seeds: problems and inits per scale (seed ``s`` draws the same problem at every scale).
        steps: group_rmsprop steps (a multiple of ``log_every``).
        lr, eps: the step and the epsilon of `group_rmsprop`.
        log_every: steps between records.
        top_k: the number of largest component norms recorded.
        on_threshold: a ground-truth component counts as learned once its coefficient in the
            learned tensor exceeds this.
        float64: train in float64 (applied by the command before tracing).
    """

    order: int = 4
    n: int = 10
    rank: int = 5
    m: int = 2000
    components: int = 1000
    stds: tuple[float, ...] = (5e-3, 1e-2, 5e-2)
    seeds: int = 1
    steps: int = 12000
    lr: float = 1e-2
    eps: float = 1e-6
    log_every: int = 100
    top_k: int = 10
    on_threshold: float = 0.5
    float64: bool = True

    def __post_init__(self):
        for name in ("order", "n", "rank", "m", "components", "seeds", "steps", "log_every",
                     "top_k"):  # fmt: skip
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"`{name}` must be an int >= 1; got {v!r}.")
        if self.order < 2:
            raise ValueError(f"`order` must be an int >= 2; got {self.order!r}.")
        if self.m > self.n**self.order:
            raise ValueError(f"`m` must be at most n^order = {self.n**self.order}; got {self.m}.")
        if self.top_k > self.components:
            raise ValueError(f"`top_k` must be at most `components`; got {self.top_k}.")
        if self.steps % self.log_every:
            raise ValueError(
                f"`steps` must be a multiple of `log_every` = {self.log_every}; got {self.steps}."
            )
        if not self.stds or not all(isinstance(s, float) and s > 0 for s in self.stds):
            raise ValueError(f"`stds` must be a non-empty tuple of floats > 0; got {self.stds!r}.")
        for name in ("lr", "eps", "on_threshold"):
            v = getattr(self, name)
            if not (isinstance(v, float) and math.isfinite(v) and v > 0):
                raise ValueError(f"`{name}` must be a finite float > 0; got {v!r}.")


def truth_fit(x: jax.Array, truth_factors) -> jax.Array:
    """Least-squares coefficients of ``x`` on the ground truth's rank-one components.

    Arguments:
        x: a dense tensor ``(n,) * d``.
        truth_factors: ``d`` factor matrices ``(n, R*)``; component ``r`` is the outer product
            of their columns ``r``.

    Returns:
        ``c`` ``(R*,)`` minimizing ``||x - sum_r c_r u_r||`` (``u_r`` the components): ``X*``
        itself gives all ones.
    """
    d = len(truth_factors)
    letters = "abcdefghij"[:d]
    spec = letters + "," + ",".join(f"{c}z" for c in letters) + "->z"
    inner = jnp.einsum(spec, x, *truth_factors, precision=jax.lax.Precision.HIGHEST)
    gram = math.prod(f.T @ f for f in truth_factors)
    return jnp.linalg.solve(gram, inner)


def switch_on_steps(values: np.ndarray, steps: np.ndarray, threshold: float) -> np.ndarray:
    """The first step at which each column of ``values`` ``(records, K)`` exceeds ``threshold``
    (NaN where it never does)."""
    above = np.asarray(values) > threshold
    first = np.argmax(above, axis=0)
    return np.where(above.any(axis=0), np.asarray(steps)[first], np.nan)


@functools.cache
def _batched(cfg: CPTensorConfig):
    """One compiled program for every (std, seed) run of the config."""
    opt = group_rmsprop(cfg.lr, eps=cfg.eps)
    n_chunks = cfg.steps // cfg.log_every

    def one_run(std, seed):
        key = jax.random.fold_in(jax.random.key(7), seed)
        problem = CPCompletion.make(cfg.order, cfg.n, cfg.rank, cfg.m,
                                    key=jax.random.fold_in(key, 0))  # fmt: skip
        factors = init_factors(cfg.order, cfg.n, cfg.components, std,
                               key=jax.random.fold_in(key, 1))  # fmt: skip
        factors = jax.tree.map(lambda f: f.astype(problem.y.dtype), factors)

        def step(carry, _):
            a, state, bad = carry
            loss, grads, _ = problem.loss_and_grad(a)
            updates, new_state = opt.update(grads, state)
            new_a = optax.apply_updates(a, updates)
            now_bad = bad | ~jnp.isfinite(loss)
            keep = functools.partial(jax.tree.map, lambda o, n: jnp.where(now_bad, o, n))
            return (keep(a, new_a), keep(state, new_state), now_bad), now_bad

        def chunk(carry, _):
            carry, bad = jax.lax.scan(step, carry, None, length=cfg.log_every)
            a = carry[0]
            x = problem.loss_and_grad(a)[2]
            rec = {
                "train_loss": problem.loss(a),
                "error": problem.error(a),
                "top_norms": jax.lax.top_k(component_norms(a), cfg.top_k)[0],
                "truth_fit": truth_fit(x, problem.truth_factors),
            }
            return carry, (rec, jnp.sum(~bad))

        carry = (factors, opt.init(factors), jnp.asarray(False))
        (_, _, bad), (hist, good) = jax.lax.scan(chunk, carry, None, length=n_chunks)
        hist["diverged"] = bad
        hist["diverged_at"] = jnp.where(bad, jnp.sum(good), -1)
        hist["strengths"] = problem.strengths()
        return hist

    return jax.jit(jax.vmap(one_run))


def _run_group(cfg: CPTensorConfig):
    def run_group(group: dict, batch: dict) -> dict:
        t0 = time.perf_counter()
        stds = jnp.asarray(batch["std"], dtype=jnp.zeros(()).dtype)
        hist = jax.device_get(_batched(cfg)(stds, jnp.asarray(batch["seed"])))
        runs = len(batch["seed"])
        out = {k: np.asarray(v) for k, v in hist.items()}
        out["strengths"] = out["strengths"][:, None, :]  # one record: kept as a trajectory
        out["step"] = np.tile(cfg.log_every * np.arange(1, cfg.steps // cfg.log_every + 1),
                              (runs, 1))  # fmt: skip
        seconds = time.perf_counter() - t0
        out["seconds"] = np.full(runs, seconds)
        print(f"cp-tensor: {runs} runs x {cfg.steps} steps in {seconds:.1f} s", flush=True)
        return out

    return run_group


def run_cp_tensor(cfg: CPTensorConfig, out_dir: Path) -> list[dict]:
    """Run (or resume) the experiment into ``out_dir``, then write its table and figures.

    Arguments:
        cfg: the config.
        out_dir: the run folder (created if needed).

    Returns:
        The records of all runs (`run_sweep`).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    store = RunStore(out_dir)
    store.write_config(
        {"experiment": "cp-tensor", "config": dataclasses.asdict(cfg),
         "dtype": str(jnp.zeros(()).dtype),
         "versions": {"python": platform.python_version(), "jax": jax.__version__}},
        volatile=("versions",),
    )  # fmt: skip
    settings = [
        {"components": cfg.components, "std": s, "seed": k}
        for s in cfg.stds
        for k in range(cfg.seeds)
    ]
    t0 = time.perf_counter()
    records = run_sweep(store, settings, _run_group(cfg), group_keys=("components",))
    wall = time.perf_counter() - t0
    for p in plot_cp_tensor(out_dir, wall_s=wall):
        print(f"figure: {p}")
    print((out_dir / "results.md").read_text())
    return records


# ---------------------------------------------------------------------------------------------
# Table and figures
# ---------------------------------------------------------------------------------------------


def _fmt_steps(v) -> str:
    return ", ".join("-" if np.isnan(x) else f"{int(x)}" for x in v)


def plot_cp_tensor(out_dir: Path, wall_s: float | None = None) -> list[Path]:
    """(Re)write ``results.md``, ``norms.png`` and ``error.png`` from a run folder.

    Arguments:
        out_dir: a run folder of `run_cp_tensor`.
        wall_s: the wall time of the run, written into ``results.md`` when given.

    Returns:
        The paths of the figures.
    """
    plt = pyplot()

    out_dir = Path(out_dir)
    store, stored = read_run(out_dir)
    cfg = stored["config"]
    runs = sorted(store.finished().values(), key=lambda r: (r["std"], r["seed"]))
    lines = [
        "# cp-tensor: incremental learning in CP tensor completion",
        "",
        f"Order {cfg['order']}, mode size {cfg['n']}, CP rank {cfg['rank']} (unit norm), "
        f"{cfg['m']} observed entries; a CP model of {cfg['components']} components, "
        f"group_rmsprop (lr {cfg['lr']:g}, eps {cfg['eps']:g}), {cfg['steps']} steps, "
        f"{stored.get('dtype', '?')}.",
        "",
        "Switch-on step of each ground-truth component (strongest first): the first record "
        f"where its coefficient in the learned tensor exceeds {cfg['on_threshold']:g}; the "
        "error just before each switch-on (in time order), then at the end.",
        "",
        "| init std | seed | strengths | switch-on steps | error before each, final | "
        "final error | paper final | status |",
        "|---|---|---|---|---|---|---|---|",
    ]
    trajs = {}
    for r in runs:
        t = store.load_trajectory(r["run_id"])
        trajs[r["run_id"]] = t
        strengths = t["strengths"][0]
        order = np.argsort(-strengths)
        on = switch_on_steps(t["truth_fit"][:, order], t["step"], cfg["on_threshold"])
        on_sorted = np.sort(on[~np.isnan(on)])
        before = [max(int(np.searchsorted(t["step"], x)) - 1, 0) for x in on_sorted]
        plateaus = [float(t["error"][j]) for j in before] + [float(t["error"][-1])]
        paper = PAPER["final_error"].get(r["std"])
        lines.append(
            f"| {r['std']:g} | {r['seed']} | {', '.join(f'{x:.2f}' for x in strengths[order])} "
            f"| {_fmt_steps(on)} | {', '.join(f'{x:.2f}' for x in plateaus)} | "
            f"{t['error'][-1]:.3g} | {'-' if paper is None else paper} | {r['status']} |"
        )
    lines += [
        "",
        f"Paper (init std 5e-3): switch-on near {', '.join(map(str, PAPER['switch_on']))}; "
        f"error steps {', '.join(map(str, PAPER['error_steps']))}.",
    ]
    if wall_s is not None:
        lines += ["", f"Wall time of this call: {wall_s:.1f} s."]
    (out_dir / "results.md").write_text("\n".join(lines) + "\n")

    stds = sorted({r["std"] for r in runs})
    first = {s: next(r for r in runs if r["std"] == s) for s in stds}
    fig, axes = plt.subplots(1, len(stds), figsize=(4.2 * len(stds), 3.6), squeeze=False)
    for ax, s in zip(axes[0], stds, strict=True):
        t = trajs[first[s]["run_id"]]
        ax.plot(t["step"], t["top_norms"], lw=1.2)
        for v in t["strengths"][0]:
            ax.axhline(v, color="gray", ls=":", lw=0.8)
        ax.set_title(f"init std {s:g} (seed {first[s]['seed']})")
        ax.set_xlabel("iteration")
    axes[0][0].set_ylabel(f"top {cfg['top_k']} component norms")
    fig.tight_layout()
    norms_path = out_dir / "norms.png"
    fig.savefig(norms_path, dpi=120)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    for s in stds:
        t = trajs[first[s]["run_id"]]
        ax.plot(t["step"], t["error"], label=f"init std {s:g}")
    ax.set_xlabel("iteration")
    ax.set_ylabel("reconstruction error")
    ax.set_yscale("log")
    ax.legend()
    fig.tight_layout()
    error_path = out_dir / "error.png"
    fig.savefig(error_path, dpi=120)
    plt.close(fig)
    return [norms_path, error_path]


register(
    Experiment(
        "cp-tensor",
        "CP tensor completion from small init: components learned one at a time",
        CPTensorConfig,
        {"components": 100, "steps": 2000, "stds": (5e-2, 1e-1), "log_every": 50},
        run_cp_tensor,
        plot_cp_tensor,
    )
)
