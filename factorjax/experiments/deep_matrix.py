"""Arora, Cohen, Hu and Luo, "Implicit Regularization in Deep Matrix Factorization" (NeurIPS
2019): depth sharpens the low-rank bias of gradient descent.

Setup (the paper and its code): a ``100 x 100`` ground truth of rank 5, ``X* = U V^T`` from
Gaussian factors, scaled to Frobenius norm 100 (entries of root mean square 1); matrix
completion from ``m`` entries drawn uniformly without replacement, and matrix sensing from
``m`` Gaussian measurements ``<A_j, X>`` with i.i.d. ``N(0, 1 / n^2)`` entries in every ``A_j``.
The model is a deep matrix factorization ``W = W_N ... W_1`` with ``100 x 100`` factors,
each factor with i.i.d. ``N(0, s^(2/N) / n)`` entries for an init scale ``s``, so that the
end-to-end product has entries of standard deviation ``s / sqrt(n)`` and Frobenius norm about
``s sqrt(n)`` (the paper's Gaussian init). The loss is the paper's mean squared error
``(1/m) ||A(W) - y||^2``; factorjax's problems minimise ``1/2 ||A(W) - y||^2``, which has the
same gradient direction, so under `group_rmsprop` (one global RMS-normalised step) the iterates
are the same up to ``eps``; a run stops once the paper's loss is at or below ``stop_loss``
(1e-6), i.e. factorjax's loss at ``m/2 * stop_loss``. The baseline is the minimum nuclear norm
matrix that fits the observations exactly (`factorjax.dynamics.nuclear.min_nuclear_norm`).

Each ``(problem, m, depth)`` is one group of the runner: its seeds and init scales are one
compiled ``jax.jit(jax.vmap(one_run))`` program; the nuclear norm baseline is the group
``depth = 0`` (vmapped over seeds). The records hold the relative reconstruction error
``||W - X*||_F / ||X*||_F``, the Roy-Vetterli effective rank and all singular values of ``W``
every ``log_every`` steps.
"""

import dataclasses
import functools
import math
import platform
import time
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import Array
from jaxtyping import Float

from factorjax.dynamics import MatrixCompletion, MatrixSensing, RunStore, run_sweep, train
from factorjax.dynamics.metrics import metrics
from factorjax.dynamics.nuclear import min_nuclear_norm
from factorjax.dynamics.optim import group_rmsprop
from factorjax.experiments._common import pyplot, read_run
from factorjax.experiments._registry import Experiment, register
from factorjax.factorizations import DeepLowRank

__all__ = ["DeepMatrixConfig", "effective_rank_of", "make_problem"]

PROBLEMS = ("completion", "sensing")


@dataclasses.dataclass(frozen=True)
class DeepMatrixConfig:
    """Deep matrix factorization against minimum nuclear norm (Arora et al. 2019).

    Fields:
        n: the ground truth is ``n x n``; the factors too.
        rank: its rank.
        norm: its Frobenius norm.
        completion_m: numbers of observed entries (matrix completion); may be empty.
        sensing_m: numbers of Gaussian measurements (matrix sensing); may be empty.
        depths: depths ``N >= 2`` of the factorization.
        scales: init scales ``s`` (end-to-end product of Frobenius norm about ``s sqrt(n)``).
        seeds: problem instances (each seed draws a ground truth and its observations, shared
            by every depth and scale) and inits.
        lr: the step of `group_rmsprop`.
        lr_final: the step is multiplied by this at the end of the run: constant for the first
            half, then exponential decay to ``lr * lr_final``; 1.0 keeps it constant.
        eps: `group_rmsprop`'s eps (the paper's 1e-4).
        steps: the most updates of a run (a multiple of ``log_every``).
        log_every: records every this many updates.
        stop_loss: stop a run once ``(1/m) ||A(W) - y||^2`` is at or below this.
        nuclear: whether to compute the minimum nuclear norm baseline.
        nuclear_iters: its most ADMM iterations (it stops earlier at a relative change of
            1e-5).
        float64: compute in float64 (float32 reaches the paper's loss of 1e-6: the entries are
            of order 1, and 1e-6 is a residual of 1e-3 per entry; but depth 4 from inits of
            1e-5 and below escapes later, or not at all, in float32: see the README).
    """

    n: int = 100
    rank: int = 5
    norm: float = 100.0
    completion_m: tuple[int, ...] = (2000, 5000)
    sensing_m: tuple[int, ...] = ()
    depths: tuple[int, ...] = (2, 3, 4)
    scales: tuple[float, ...] = (1e-3,)
    seeds: int = 1
    lr: float = 1e-3
    lr_final: float = 1.0
    eps: float = 1e-4
    steps: int = 100_000
    log_every: int = 500
    stop_loss: float = 1e-6
    nuclear: bool = True
    nuclear_iters: int = 1500
    float64: bool = False

    def __post_init__(self):
        for name in ("n", "rank", "seeds", "steps", "log_every", "nuclear_iters"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"`{name}` must be an int >= 1; got {v!r}.")
        if self.rank > self.n:
            raise ValueError(f"`rank` must be at most `n` = {self.n}; got {self.rank}.")
        for name in ("completion_m", "sensing_m"):
            ms = getattr(self, name)
            if any(isinstance(m, bool) or not isinstance(m, int) or not 1 <= m <= self.n**2
                   for m in ms) or len(set(ms)) != len(ms):  # fmt: skip
                raise ValueError(
                    f"`{name}` must hold distinct ints in [1, n^2 = {self.n**2}]; got {ms!r}."
                )
        if not self.completion_m and not self.sensing_m:
            raise ValueError("`completion_m` and `sensing_m` are both empty: nothing to run.")
        if not self.depths or any(isinstance(d, bool) or not isinstance(d, int) or d < 2
                                  for d in self.depths) or len(set(self.depths)) != len(
                                      self.depths):  # fmt: skip
            raise ValueError(f"`depths` must be distinct ints >= 2; got {self.depths!r}.")
        if not self.scales or any(not (isinstance(s, (int, float)) and 0 < s < math.inf)
                                  for s in self.scales):  # fmt: skip
            raise ValueError(f"`scales` must be floats > 0; got {self.scales!r}.")
        for name in ("norm", "lr", "eps", "stop_loss"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 < v < math.inf:
                raise ValueError(f"`{name}` must be a finite float > 0; got {v!r}.")
        if not 0 < self.lr_final <= 1:
            raise ValueError(f"`lr_final` must be in (0, 1]; got {self.lr_final!r}.")
        if self.steps % self.log_every:
            raise ValueError(
                f"`steps` must be a multiple of `log_every` = {self.log_every}; got {self.steps}."
            )


def make_problem(cfg: DeepMatrixConfig, problem: str, m: int, seed):
    """The paper's problem instance number ``seed``.

    Arguments:
        cfg: the config (``n``, ``rank``, ``norm``, ``float64``).
        problem: ``"completion"`` or ``"sensing"``.
        m: the number of observed entries or measurements.
        seed: an int or a traced integer scalar (to vmap over instances).

    Returns:
        A `MatrixCompletion` or `MatrixSensing` whose ground truth has Frobenius norm
        ``cfg.norm`` (factorjax draws it with norm 1; the observations are scaled with it) and,
        for sensing, whose measurement matrices have ``N(0, 1 / n^2)`` entries, as the paper's.
    """
    key = jax.random.fold_in(jax.random.key(7), seed)
    dtype = jnp.float64 if cfg.float64 else jnp.float32
    n, c = cfg.n, cfg.norm
    if problem == "completion":
        p = MatrixCompletion.make(n, n, cfg.rank, m, key=key, dtype=dtype)
        return eqx.tree_at(lambda q: (q.ground_truth, q.y), p, (c * p.ground_truth, c * p.y))
    p = MatrixSensing.make(n, n, cfg.rank, m, key=key, dtype=dtype)
    g = math.sqrt(m) / n  # N(0, 1/m) entries -> N(0, 1/n^2)
    return eqx.tree_at(
        lambda q: (q.ground_truth, q.y, q.G), p, (c * p.ground_truth, c * g * p.y, g * p.G)
    )


def effective_rank_of(s: Float[Array, "*batch k"]) -> Float[Array, "*batch"]:
    """Roy and Vetterli's effective rank from singular values.

    Arguments:
        s: non-negative singular values along the last axis.

    Returns:
        ``exp(-sum_i p_i log p_i)`` with ``p = s / sum(s)`` (``0 log 0 = 0``), one per row.
    """
    p = s / jnp.maximum(jnp.sum(s, axis=-1, keepdims=True), jnp.finfo(s.dtype).tiny)
    logp = jnp.log(jnp.where(p > 0, p, 1.0))
    return jnp.exp(-jnp.sum(p * logp, axis=-1))


def _schedule(cfg: DeepMatrixConfig):
    if cfg.lr_final == 1.0:
        return cfg.lr
    half = cfg.steps // 2
    return optax.exponential_decay(cfg.lr, max(cfg.steps - half, 1), cfg.lr_final,
                                   transition_begin=half)  # fmt: skip


@functools.cache
def _program(cfg: DeepMatrixConfig, problem: str, m: int, depth: int):
    """One compiled program per group: ``(seeds, scales) -> batched history``."""

    def one_deep(seed, scale):
        p = make_problem(cfg, problem, m, seed)
        key = jax.random.fold_in(jax.random.key(8), seed)
        model = DeepLowRank.init(cfg.n, cfg.n, (cfg.n,) * (depth - 1), key=key, init="small",
                                 alpha=scale ** (1.0 / depth), dtype=p.y.dtype)  # fmt: skip
        # factorjax's loss is m/2 times the paper's (1/m)||A(W) - y||^2: the stop and eps scale
        # with it (GroupRMSprop's update is unchanged when the loss and eps scale alike)
        loss_scale = 0.5 * m
        opt = group_rmsprop(_schedule(cfg), eps=loss_scale * cfg.eps)
        _, h = train(p, model, steps=cfg.steps, log_every=cfg.log_every, optimizer=opt,
                     stop_loss=loss_scale * cfg.stop_loss)  # fmt: skip
        return h

    def one_nuclear(seed, scale):
        del scale
        p = make_problem(cfg, problem, m, seed)
        X, info = min_nuclear_norm(p, max_iters=cfg.nuclear_iters, tol=1e-5)
        rec = jax.tree.map(lambda a: a[None], metrics(p, X))
        rec["step"] = info["iters"][None]
        rec["diverged"] = ~jnp.isfinite(info["nuclear_norm"])
        rec["diverged_at"] = jnp.asarray(-1)
        return rec

    one = one_deep if depth else one_nuclear

    def run(seeds, scales):
        h = jax.vmap(one)(seeds, scales)
        h["mse"] = 2.0 * h["train_loss"] / m  # the paper's loss
        h["effective_rank"] = effective_rank_of(h["singular_values"])
        done = h["mse"] <= cfg.stop_loss
        first = jnp.argmax(done, axis=1)
        h["stop_step"] = jnp.where(done.any(axis=1), jnp.take_along_axis(
            h["step"], first[:, None], axis=1)[:, 0], -1)  # fmt: skip
        return h

    return jax.jit(run)


def _run_group(cfg: DeepMatrixConfig):
    def run_group(group: dict, batch: dict) -> dict:
        t0 = time.perf_counter()
        fn = _program(cfg, group["problem"], int(group["m"]), int(group["depth"]))
        dtype = np.float64 if cfg.float64 else np.float32
        h = jax.device_get(fn(jnp.asarray(batch["seed"]), jnp.asarray(batch["scale"], dtype)))
        runs = len(batch["seed"])
        seconds = time.perf_counter() - t0
        h = dict(h, seconds=np.full(runs, seconds / runs))
        name = "nuclear" if group["depth"] == 0 else f"depth {group['depth']}"
        print(f"deep-matrix: {group['problem']} m={group['m']} {name}: {runs} runs in "
              f"{seconds:5.1f} s", flush=True)  # fmt: skip
        return h

    return run_group


def settings_of(cfg: DeepMatrixConfig) -> list[dict]:
    """The sweep: every (problem, m, depth, scale, seed); depth 0 is the nuclear baseline."""
    out = []
    for problem, ms in (("completion", cfg.completion_m), ("sensing", cfg.sensing_m)):
        for m in ms:
            for d in cfg.depths:
                out += [{"problem": problem, "m": m, "depth": d, "scale": float(s), "seed": k}
                        for s in cfg.scales for k in range(cfg.seeds)]  # fmt: skip
            out += [{"problem": problem, "m": m, "depth": 0, "scale": 0.0, "seed": k}
                    for k in range(cfg.seeds) if cfg.nuclear]  # fmt: skip
    return out


def run_deep_matrix(cfg: DeepMatrixConfig, out_dir: Path) -> list[dict]:
    """Run (or resume) the experiment into ``out_dir``, then write its table and figures.

    Arguments:
        cfg: the config.
        out_dir: the run folder (``config.json``, ``runs.jsonl``, trajectories, figures).

    Returns:
        The records of every run, as `factorjax.dynamics.run_sweep` returns them.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    store = RunStore(out_dir)
    store.write_config(
        {"experiment": "deep-matrix", "config": dataclasses.asdict(cfg),
         "versions": {"python": platform.python_version(), "jax": jax.__version__}},
        volatile=("versions",),
    )  # fmt: skip
    records = run_sweep(store, settings_of(cfg), _run_group(cfg),
                        group_keys=("problem", "m", "depth"))  # fmt: skip
    for p in plot_deep_matrix(out_dir):
        print(f"figure: {p}")
    print((out_dir / "results.md").read_text())
    return records


# ---------------------------------------------------------------------------------------------
# Table and figures
# ---------------------------------------------------------------------------------------------


def _by(records: list[dict]) -> dict:
    """``{(problem, m, depth): [records]}`` of the finished runs."""
    out: dict = {}
    for r in records:
        out.setdefault((r["problem"], r["m"], r["depth"]), []).append(r)
    return out


def _stat(rs: list[dict], key: str, fmt: str = ".3g") -> str:
    v = np.asarray([r["final"][key] for r in rs], float)
    if len(v) == 1:
        return format(v[0], fmt)
    return f"{format(v.mean(), fmt)} ± {format(v.std(ddof=1), fmt)}"


def plot_deep_matrix(out_dir: Path) -> list[Path]:
    """(Re)write ``results.md``, ``recovery.png`` and ``singular_values.png`` from a run folder.

    Arguments:
        out_dir: a folder written by `run_deep_matrix` (finished or partial).

    Returns:
        The paths of the PNG files written.
    """
    plt = pyplot()

    out_dir = Path(out_dir)
    store, stored = read_run(out_dir)
    cfg = stored["config"]
    records = list(store.finished().values())
    groups = _by(records)
    wall = sum(r["final"]["seconds"] for r in records)
    lines = [
        "# deep-matrix: implicit regularization in deep matrix factorization",
        "",
        f"Ground truth {cfg['n']} x {cfg['n']}, rank {cfg['rank']}, Frobenius norm "
        f"{cfg['norm']:g}; depths {tuple(cfg['depths'])}, init scales {tuple(cfg['scales'])}, "
        f"{cfg['seeds']} seed(s); GroupRMSprop lr {cfg['lr']:g} (x {cfg['lr_final']:g} by the "
        f"end), at most {cfg['steps']} steps, stop at (1/m)‖A(W) - y‖² <= "
        f"{cfg['stop_loss']:g}. Mean ± std over seeds and scales.",
        "",
        "| problem | m | model | rel. error ‖W - X*‖/‖X*‖ | effective rank | "
        "stopped at step | final (1/m)‖A(W) - y‖² | runs |",
        "|---|---|---|---|---|---|---|---|",
    ]
    order = sorted(groups, key=lambda k: (k[0], k[1], k[2] or 99))  # nuclear norm last
    for problem, m, depth in order:
        rs = groups[(problem, m, depth)]
        ok = [r for r in rs if r["status"] == "ok"]
        name = "min nuclear norm" if depth == 0 else f"depth {depth}"
        stop = "-" if depth == 0 else ", ".join(
            str(int(r["final"]["stop_step"])) if r["final"]["stop_step"] >= 0 else "not reached"
            for r in ok)  # fmt: skip
        lines.append(f"| {problem} | {m} | {name} | {_stat(ok, 'test_error')} | "
                     f"{_stat(ok, 'effective_rank', '.2f')} | {stop} | {_stat(ok, 'mse', '.2g')} "
                     f"| {len(ok)}/{len(rs)} |")  # fmt: skip
    lines += ["", f"Wall time: {wall:.0f} s (sum over groups, compilation included)."]
    (out_dir / "results.md").write_text("\n".join(lines) + "\n")

    paths = []
    problems = [p for p in PROBLEMS if any(k[0] == p for k in groups)]
    fig, axes = plt.subplots(2, len(problems), figsize=(5.5 * len(problems), 7), squeeze=False)
    for j, problem in enumerate(problems):
        ms = sorted({k[1] for k in groups if k[0] == problem})
        for depth in [*cfg["depths"], 0]:
            pts = [(m, groups[(problem, m, depth)]) for m in ms if (problem, m, depth) in groups]
            if not pts:
                continue
            label = "min nuclear norm" if depth == 0 else f"depth {depth}"
            style = dict(marker="o", ls="--" if depth == 0 else "-", label=label)
            for i, key in enumerate(("test_error", "effective_rank")):
                y = [np.mean([r["final"][key] for r in rs]) for _, rs in pts]
                axes[i, j].plot([m for m, _ in pts], y, **style)
        axes[0, j].set_title(f"matrix {problem}")
        axes[0, j].set_ylabel("||W - X*||_F / ||X*||_F")
        axes[1, j].set_ylabel("effective rank")
        axes[1, j].set_xlabel("observed entries" if problem == "completion" else "measurements")
        axes[0, j].set_yscale("log")
        axes[0, j].legend()
    fig.tight_layout()
    paths.append(out_dir / "recovery.png")
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)

    # Singular values over the iterations: the fewest observations, smallest scale, seed 0.
    problem = problems[0]
    m0 = min(k[1] for k in groups if k[0] == problem)
    depths = [d for d in cfg["depths"] if (problem, m0, d) in groups]
    fig, axes = plt.subplots(1, len(depths), figsize=(4.5 * len(depths), 3.6), squeeze=False)
    for ax, depth in zip(axes[0], depths, strict=True):
        rs = [r for r in groups[(problem, m0, depth)] if r["seed"] == 0]
        r = min(rs, key=lambda r: r["scale"])
        tr = store.load_trajectory(r["run_id"])
        sv, step = tr["singular_values"], tr["step"]
        stop = int(r["final"]["stop_step"])
        keep = step <= stop if stop >= 0 else np.ones_like(step, bool)
        for i in range(min(10, sv.shape[1])):
            ax.plot(step[keep], sv[keep, i], lw=1.2)
        ax.set_yscale("log")
        ax.set_title(f"depth {depth}, init {r['scale']:g}")
        ax.set_xlabel("iteration")
    axes[0, 0].set_ylabel(f"top singular values of W ({problem}, m={m0})")
    fig.tight_layout()
    paths.append(out_dir / "singular_values.png")
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)
    return paths


register(
    Experiment(
        "deep-matrix",
        "Arora et al. 2019: deeper matrix factorizations recover from fewer entries than "
        "depth 2 and minimum nuclear norm",
        DeepMatrixConfig,
        {
            "n": 40,
            "rank": 3,
            "norm": 40.0,
            "completion_m": (480,),  # twice the 231 degrees of freedom, as 2000 for n = 100
            "depths": (2, 3),
            "steps": 30_000,
            "log_every": 250,
            "nuclear": False,
        },
        run_deep_matrix,
        plot_deep_matrix,
    )
)
