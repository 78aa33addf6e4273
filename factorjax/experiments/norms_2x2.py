"""Razin and Cohen, "Implicit Regularization in Deep Learning May Not Be Explainable by Norms"
(NeurIPS 2020): the 2 x 2 matrix completion counterexample.

Observed entries ``W_12 = W_21 = 1`` and ``W_22 = 0``; ``W_11`` is free. Every solution has
``det W = -1``, so a solution is reachable only across ``det W = 0``. A depth-``N`` matrix
factorization ``W = W_N ... W_1`` (2 x 2 factors) trained by gradient descent on

    loss(W) = 1/2 sum_{(i, j) observed} (W_ij - b_ij)^2

from a small balanced init with ``det W > 0`` stays at ``det W > 0`` (gradient flow). There
``W_11 W_22 > 1``, so as ``W_22 -> 0`` the unobserved ``|W_11|`` must grow like
``1 / |W_22| >= 1 / sqrt(2 loss)``: every norm and quasi-norm of ``W`` grows while the loss
falls, and the effective rank (Roy and Vetterli) falls to 1. Implicit regularization then
minimizes rank, not any norm.

The runs of one (depth, init, step size) are one compiled program (the step vmapped over the
seeds; through the runner's `run_sweep`): millions of steps as one `jax.lax.scan`, float64. A
run records the end-to-end matrix every ``log_every`` steps and, exactly, at the first step
where the loss falls below each of a geometric grid of levels; it stops (freezes) once the loss
reaches ``stop_loss``.

Initialization (`positive_det_init`): each factor has ``N(0, init_std^2)`` entries; a seed
draws attempts ``fold_in(fold_in(key(0), seed), attempt)`` for ``attempt = 0, 1, ...`` and
keeps the first whose end-to-end matrix has a positive determinant (the attempt is recorded).
The sign of ``det W`` is kept by gradient flow only for balanced factors
(``W_{j+1}^T W_{j+1} = W_j W_j^T``); independent Gaussian factors are not balanced, and at
this init scale the sign changes while ``W`` is still near the origin. ``init="balanced"`` draws
balanced factors whose entries are still ``N(0, init_std^2)``; ``init="gaussian"`` shows what
happens without.
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
from jax.typing import ArrayLike
from jaxtyping import Array, Float

from factorjax.dynamics import RunStore, run_sweep
from factorjax.experiments._common import pyplot, read_run, require_float64
from factorjax.experiments._registry import Experiment, register

__all__ = [
    "MASK",
    "PAPER",
    "TARGET",
    "Norms2x2Config",
    "end_to_end",
    "factor_grads",
    "loss_fn",
    "plot_norms_2x2",
    "positive_det_init",
    "run_norms_2x2",
    "schatten",
]

TARGET = np.array([[0.0, 1.0], [1.0, 0.0]])
MASK = np.array([[0.0, 1.0], [1.0, 1.0]])  # W_11 unobserved
# |W_11| at four losses, read off the paper's figure (depth 3, step 3e-3, init std 8e-3).
PAPER = {1e-1: 2.0, 1e-2: 6.0, 1e-3: 20.0, 1e-4: 60.0}
INITS = ("balanced", "gaussian")
QUICK = dict(inits=("balanced",), seeds=4, steps=400_000, log_every=10_000, stop_loss=1e-3)


@dataclasses.dataclass(frozen=True)
class Norms2x2Config:
    """Depth-``depth`` factorization of the 2 x 2 completion problem, several seeds and steps.

    Fields:
        depth: number of 2 x 2 factors (the paper: 3).
        inits: how the factors are drawn (`positive_det_init`): ``"balanced"`` keeps
            ``det W > 0`` along gradient flow, ``"gaussian"`` (independent factors) need not.
        lrs: gradient-descent step sizes (the paper: 3e-3); each with every init and seed.
        seeds: initializations per init and step size.
        init_std: standard deviation of each factor entry (the paper: 8e-3).
        steps: the most gradient steps of a run (a multiple of ``log_every``).
        log_every: record the end-to-end matrix every this many steps.
        stop_loss: a run freezes once its loss is at most this.
        levels_per_decade: loss levels ``10^(-i / levels_per_decade)``, ``i = 1, 2, ...``,
            down to ``stop_loss``, at which the end-to-end matrix is recorded (exact step).
        float64: compute in float64 (the command applies it before anything is traced).
    """

    depth: int = 3
    inits: tuple[str, ...] = INITS
    lrs: tuple[float, ...] = (3e-3,)
    seeds: int = 8
    init_std: float = 8e-3
    steps: int = 4_000_000
    log_every: int = 20_000
    stop_loss: float = 1e-4
    levels_per_decade: int = 8
    float64: bool = True

    def __post_init__(self):
        for name in ("depth", "seeds", "steps", "log_every", "levels_per_decade"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"`{name}` must be an int >= 1; got {v!r}.")
        if self.depth < 2:
            raise ValueError(f"`depth` must be >= 2 (a factorization); got {self.depth}.")
        if self.steps % self.log_every:
            raise ValueError(
                f"`steps` must be a multiple of `log_every` = {self.log_every}; got {self.steps}."
            )
        if not self.lrs or any(not (math.isfinite(x) and x > 0) for x in self.lrs):
            raise ValueError(f"`lrs` must be a non-empty tuple of floats > 0; got {self.lrs!r}.")
        if (
            not self.inits
            or len(set(self.inits)) != len(self.inits)
            or any(x not in INITS for x in self.inits)
        ):
            raise ValueError(
                f"`inits` must be a non-empty tuple of distinct names from {INITS}; got "
                f"{self.inits!r}."
            )
        if len(set(self.lrs)) != len(self.lrs):
            raise ValueError(f"`lrs` has a repeated value: {self.lrs!r}.")
        for name in ("init_std", "stop_loss"):
            v = getattr(self, name)
            if not (math.isfinite(v) and v > 0):
                raise ValueError(f"`{name}` must be a finite float > 0; got {v!r}.")
        if self.stop_loss > 10 ** (-1 / self.levels_per_decade):
            raise ValueError(
                f"`stop_loss` must be at most the first loss level 10^(-1/levels_per_decade) = "
                f"{10 ** (-1 / self.levels_per_decade):.3g}; got {self.stop_loss!r}."
            )


def loss_levels(cfg: Norms2x2Config) -> np.ndarray:
    """The loss levels ``10^(-i / levels_per_decade)``, ``i = 1, 2, ...``, not below
    ``stop_loss``."""
    n = math.floor(-math.log10(cfg.stop_loss) * cfg.levels_per_decade + 1e-9)
    return 10.0 ** (-np.arange(1, n + 1) / cfg.levels_per_decade)


# ---------------------------------------------------------------------------------------------
# The problem
# ---------------------------------------------------------------------------------------------


def end_to_end(factors: Float[Array, "depth 2 2"]) -> Float[Array, "2 2"]:
    """``W = W_N ... W_1`` of factors stacked as ``(W_1, ..., W_N)``."""
    w = factors[0]
    for j in range(1, factors.shape[0]):
        w = factors[j] @ w
    return w


def loss_fn(factors: Float[Array, "depth 2 2"]) -> Float[Array, ""]:
    """``1/2 sum_observed (W_ij - b_ij)^2`` of the end-to-end matrix."""
    r = jnp.asarray(MASK) * (end_to_end(factors) - jnp.asarray(TARGET))
    return 0.5 * jnp.sum(r**2)


def factor_grads(factors: Float[Array, "depth 2 2"]) -> tuple[Float[Array, "depth 2 2"], Array]:
    """The gradient of `loss_fn` in every factor, and the loss, written out by hand.

    With the residual ``R = mask * (W - b)``, ``d loss / d W_j = (W_N ... W_{j+1})^T R
    (W_{j-1} ... W_1)^T``.

    Arguments:
        factors: ``(W_1, ..., W_N)`` stacked, shape ``(N, 2, 2)``.

    Returns:
        ``(grads, loss)``: grads of shape ``(N, 2, 2)`` and the scalar loss.
    """
    n = factors.shape[0]
    eye = jnp.eye(2, dtype=factors.dtype)
    below = [eye]  # below[j] = W_j ... W_1 (below[0] = I)
    for j in range(n):
        below.append(factors[j] @ below[-1])
    above = [eye]  # above[k] = W_N ... W_{N-k+1}
    for j in range(n - 1, -1, -1):
        above.append(above[-1] @ factors[j])
    r = jnp.asarray(MASK, factors.dtype) * (below[n] - jnp.asarray(TARGET, factors.dtype))
    grads = jnp.stack([above[n - 1 - j].T @ r @ below[j].T for j in range(n)])
    return grads, 0.5 * jnp.sum(r**2)


def _haar(key, n: int = 2) -> np.ndarray:
    q, r = np.linalg.qr(np.asarray(jax.random.normal(key, (n, n)), np.float64))
    return q * np.sign(np.diagonal(r))


def positive_det_init(
    seed: int, depth: int, std: float, *, init: str = "balanced", max_attempts: int = 1000
):
    """Factors with ``N(0, std^2)`` entries whose product has a positive determinant.

    ``init="gaussian"``: independent factors. ``init="balanced"``: ``W_1 = Q_1 S Q_0^T`` is a
    Gaussian matrix (its SVD) and ``W_j = Q_j S Q_{j-1}^T`` with fresh Haar-random ``Q_j``: each
    factor is still a matrix of ``N(0, std^2)`` entries (a Gaussian matrix is invariant under
    orthogonal maps on both sides), and ``W_{j+1}^T W_{j+1} = W_j W_j^T`` (balanced). Attempt
    ``a = 0, 1, ...`` draws from ``fold_in(fold_in(key(0), seed), a)``; the first with
    ``det(W_N ... W_1) > 0`` is kept (about half the attempts qualify).

    Returns:
        ``(factors, attempt)``: a NumPy array ``(depth, 2, 2)`` and the attempt index kept.
    """
    if init not in INITS:
        raise ValueError(f"`init` must be one of {INITS}; got {init!r}.")
    base = jax.random.fold_in(jax.random.key(0), seed)
    for a in range(max_attempts):
        key = jax.random.fold_in(base, a)
        if init == "gaussian":
            f = np.asarray(std * jax.random.normal(key, (depth, 2, 2)), np.float64)
        else:
            keys = jax.random.split(key, depth)
            # the SVD in float64, so that the factors are balanced to float64 rounding
            g = np.asarray(jax.random.normal(keys[0], (2, 2)), np.float64)
            u, sv, vt = np.linalg.svd(std * g)
            qs = [vt.T, u] + [_haar(k) for k in keys[1:]]
            f = np.stack([qs[j + 1] @ np.diag(sv) @ qs[j].T for j in range(depth)])
        w = f[0]
        for j in range(1, depth):
            w = f[j] @ w
        if np.linalg.det(w) > 0:
            return f, a
    raise RuntimeError(f"no init with a positive determinant in {max_attempts} attempts.")


def schatten(s: ArrayLike, p: float) -> np.ndarray | np.floating:
    """Schatten ``p`` (quasi-)norm ``(sum_i s_i^p)^(1/p)`` of singular values ``(..., r)``."""
    return np.sum(np.asarray(s) ** p, axis=-1) ** (1.0 / p)


def effective_rank_np(s: ArrayLike) -> np.ndarray | np.floating:
    """Roy and Vetterli's effective rank ``exp(H(s / sum s))`` of singular values ``(..., r)``
    (as `factorjax.linalg.effective_rank`, in NumPy; ``0 log 0 = 0``)."""
    p = np.asarray(s, np.float64)
    p = p / np.sum(p, axis=-1, keepdims=True)
    return np.exp(-np.sum(np.where(p > 0, p * np.log(np.where(p > 0, p, 1.0)), 0.0), axis=-1))


# ---------------------------------------------------------------------------------------------
# Training: every run of a depth in one program
# ---------------------------------------------------------------------------------------------


@functools.cache
def _program(depth: int, steps: int, log_every: int, stop_loss: float, levels: tuple):
    """The jitted batched run: ``fn(factors (B, depth, 2, 2), lrs (B,)) -> history``.

    Each step is vmapped over the runs; a chunk of ``log_every`` steps is skipped once every
    run of the batch is done, so a batch costs the steps of its slowest run.
    """
    levels_j = jnp.asarray(levels)
    k = len(levels)

    def step(lr, carry, t):
        f, done, bad_at, hit_w, hit_t, nxt = carry
        g, loss = factor_grads(f)
        w = end_to_end(f)
        # only the next level is compared: at most one level is crossed per step
        i = jnp.minimum(nxt, k - 1)
        newly = (nxt < k) & (loss <= levels_j[i]) & ~done
        hit_w = hit_w.at[i].set(jnp.where(newly, w, hit_w[i]))
        hit_t = hit_t.at[i].set(jnp.where(newly, t, hit_t[i]))
        bad = ~jnp.isfinite(loss)
        bad_at = jnp.where(bad & ~done, t, bad_at)
        done = done | (loss <= stop_loss) | bad
        f = jnp.where(done, f, f - lr * g)
        return f, done, bad_at, hit_w, hit_t, nxt + newly

    def batched(factors, lrs):
        step_b = jax.vmap(step, in_axes=(0, 0, None))

        def steps_of(carry, ts):
            return jax.lax.scan(lambda c, t: (step_b(lrs, c, t), None), carry, ts)[0]

        def chunk(carry, c):
            ts = c * log_every + jnp.arange(log_every)
            carry = jax.lax.cond(jnp.all(carry[1]), lambda c, ts: c, steps_of, carry, ts)
            f = carry[0]
            return carry, (jnp.full(lrs.shape, (c + 1) * log_every), jax.vmap(loss_fn)(f),
                           jax.vmap(end_to_end)(f))  # fmt: skip

        b = lrs.shape[0]
        carry = (factors, jnp.zeros(b, bool), jnp.full(b, -1),
                 jnp.full((b, k, 2, 2), jnp.nan, factors.dtype), jnp.full((b, k), -1),
                 jnp.zeros(b, jnp.int32))  # fmt: skip
        carry, rec = jax.lax.scan(chunk, carry, jnp.arange(steps // log_every))
        rec_t, rec_loss, rec_w = (jnp.moveaxis(a, 0, 1) for a in rec)
        _, _, bad_at, hit_w, hit_t, _ = carry
        return {
            "step": rec_t,
            "loss": rec_loss,
            "W": rec_w,
            "level_W": hit_w,
            "level_step": hit_t,
            "diverged": bad_at >= 0,
            "diverged_at": bad_at,
        }

    return jax.jit(batched)


def _group_runner(cfg: Norms2x2Config):
    levels = tuple(float(x) for x in loss_levels(cfg))

    def run_group(group: dict, batch: dict) -> dict:
        t0 = time.perf_counter()
        inits = [positive_det_init(int(s), group["depth"], cfg.init_std, init=group["init"])
                 for s in batch["seed"]]  # fmt: skip
        factors = jnp.asarray(np.stack([f for f, _ in inits]))
        fn = _program(group["depth"], cfg.steps, cfg.log_every, cfg.stop_loss, levels)
        runs = len(batch["seed"])
        out = jax.device_get(fn(factors, jnp.full(runs, group["lr"], factors.dtype)))
        seconds = time.perf_counter() - t0
        out = {k: np.asarray(v) for k, v in out.items()}
        out["init_attempt"] = np.asarray([a for _, a in inits])
        out["level"] = np.tile(np.asarray(levels), (runs, 1))
        out["seconds"] = np.full(runs, seconds / runs)
        print(f"norms-2x2: depth {group['depth']}, {group['init']} init, step {group['lr']:g}, "
              f"{runs} runs in {seconds:.1f} s", flush=True)  # fmt: skip
        return out

    return run_group


def run_norms_2x2(cfg: Norms2x2Config, out_dir: Path) -> list[dict]:
    """Run (or resume) the experiment into ``out_dir``, then write its table and figure."""
    require_float64(cfg.float64)
    out_dir = Path(out_dir)
    store = RunStore(out_dir)
    store.write_config(
        {"experiment": "norms-2x2", "config": dataclasses.asdict(cfg),
         "versions": {"python": platform.python_version(), "jax": jax.__version__}},
        volatile=("versions",),
    )  # fmt: skip
    settings = [{"depth": cfg.depth, "init": i, "lr": lr, "seed": s} for i in cfg.inits
                for lr in cfg.lrs for s in range(cfg.seeds)]  # fmt: skip
    t0 = time.perf_counter()
    # one program per (init, step size): a batch runs until its slowest run is done
    records = run_sweep(store, settings, _group_runner(cfg), group_keys=("depth", "init", "lr"))
    print(f"norms-2x2: sweep done in {time.perf_counter() - t0:.1f} s")
    for p in plot_norms_2x2(out_dir):
        print(f"figure: {p}")
    print((out_dir / "results.md").read_text())
    return records


# ---------------------------------------------------------------------------------------------
# Table and figure
# ---------------------------------------------------------------------------------------------


def _level_metrics(traj: dict) -> dict:
    """|W_11|, effective rank and norms of the end-to-end matrix at each crossed loss level."""
    ok = np.asarray(traj["level_step"]) >= 0
    w = np.asarray(traj["level_W"])[ok]
    s = np.linalg.svd(w, compute_uv=False)
    return {
        "level": np.asarray(traj["level"])[ok],
        "step": np.asarray(traj["level_step"])[ok],
        "abs_w11": np.abs(w[:, 0, 0]),
        "erank": effective_rank_np(s),
        "det": np.linalg.det(w),
        "nuclear": schatten(s, 1.0),
        "frobenius": schatten(s, 2.0),
        "schatten_half": schatten(s, 0.5),
    }


def _median_range(values) -> str:
    v = np.asarray(values, float)
    if v.size == 0:
        return "-"
    if v.size == 1:
        return f"{v[0]:.3g}"
    return f"{np.median(v):.3g} ({v.min():.3g}-{v.max():.3g})"


def plot_norms_2x2(out_dir: Path) -> list[Path]:
    """(Re)write ``results.md`` and ``norms_2x2.png`` from a run folder."""
    plt = pyplot()

    out_dir = Path(out_dir)
    store, stored = read_run(out_dir)
    cfg = stored["config"]
    records = sorted(store.finished().values(),
                     key=lambda r: (INITS.index(r["init"]), -r["lr"], r["seed"]))  # fmt: skip
    by_lr: dict[tuple, list] = {}
    for r in records:
        by_lr.setdefault((r["init"], r["lr"]), []).append((r, store.load_trajectory(r["run_id"])))
    wall = sum(r["final"]["seconds"] for r in records)
    lines = [
        "# norms-2x2: 2 x 2 completion, W_12 = W_21 = 1, W_22 = 0 observed",
        "",
        f"Depth {cfg['depth']}, gradient descent, init std {cfg['init_std']:g} with det W > 0, "
        f"at most {cfg['steps']:,} steps, stop at loss {cfg['stop_loss']:g}; {cfg['seeds']} "
        f"seeds per init and step size; float64. Compute: {wall:.1f} s (all runs, compile "
        "included).",
        "",
        "Values at the first step with loss <= the level: median (min-max) over seeds that "
        "reach it.",
        "",
        "| init | step size | loss | paper abs(W_11) | abs(W_11) | 1/sqrt(2 loss) | "
        "effective rank | nuclear | Schatten-1/2 | det W | det W > 0 | steps | seeds |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for (init, lr), runs in by_lr.items():
        mets = [_level_metrics(t) for _, t in runs]
        for target, paper in PAPER.items():
            rows = []
            for m in mets:
                i = np.nonzero(np.isclose(m["level"], target, rtol=1e-6))[0]
                if i.size:
                    rows.append({k: v[i[0]] for k, v in m.items()})
            if not rows and target < cfg["stop_loss"] * 0.999:
                continue

            def col(k, rows=rows):
                return _median_range([x[k] for x in rows])

            lines.append(
                f"| {init} | {lr:g} | {target:g} | ~{paper:g} | {col('abs_w11')} | "
                f"{1 / math.sqrt(2 * target):.3g} | {col('erank')} | {col('nuclear')} | "
                f"{col('schatten_half')} | {col('det')} | {sum(x['det'] > 0 for x in rows)} | "
                f"{col('step')} | {len(rows)}/{len(runs)} |"
            )
    (out_dir / "results.md").write_text("\n".join(lines) + "\n")

    fig, axes = plt.subplots(1, 4, figsize=(18, 4.2))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for c, ((init, lr), runs) in enumerate(by_lr.items()):
        for j, (_, t) in enumerate(runs):
            m = _level_metrics(t)
            lab = f"{init}, step {lr:g}" if j == 0 else None
            kw = dict(color=colors[c % len(colors)], alpha=0.6, lw=1)
            axes[0].plot(m["level"], m["abs_w11"], label=lab, **kw)
            axes[1].plot(m["level"], m["erank"], label=lab, **kw)
            if j == 0:
                for name, ls in (("nuclear", "-"), ("frobenius", "--"), ("schatten_half", ":")):
                    axes[2].plot(m["level"], m[name], ls=ls, color=colors[c % len(colors)],
                                 label=f"{name} ({init}, seed {j})")  # fmt: skip
            ok = np.isfinite(t["loss"])
            axes[3].plot(t["step"][ok], t["loss"][ok], label=lab, **kw)
    grid = np.logspace(-1 / cfg["levels_per_decade"], math.log10(cfg["stop_loss"]), 50)
    axes[0].plot(grid, 1 / np.sqrt(2 * grid), "k--", lw=1, label="1/sqrt(2 loss)")
    for x, y in PAPER.items():
        axes[0].plot(x, y, "k*", ms=9, label="paper" if x == 1e-1 else None)
    for ax, title in zip(axes[:3], ("abs(W_11)", "effective rank", "norms of W"), strict=True):
        ax.set(xscale="log", xlabel="loss", title=title)
        ax.invert_xaxis()
    for ax in (axes[0], axes[2], axes[3]):
        ax.set_yscale("log")
    axes[3].set(xscale="log", xlabel="step", title="loss")
    for ax in axes:
        ax.legend(fontsize=7)
    fig.tight_layout()
    path = out_dir / "norms_2x2.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return [path]


register(
    Experiment(
        "norms-2x2",
        "Razin & Cohen 2020: 2x2 completion, |W_11| and every norm grow as the loss falls",
        Norms2x2Config,
        QUICK,
        run_norms_2x2,
        plot_norms_2x2,
    )
)
