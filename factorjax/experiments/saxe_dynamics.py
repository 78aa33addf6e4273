"""Saxe, McClelland and Ganguli, "Exact solutions to the nonlinear dynamics of learning in deep
linear neural networks" (ICLR 2014): the sigmoidal learning of each singular mode.

A two-layer linear network ``y = W2 W1 x`` (``W1: hidden x n_in``, ``W2: n_out x hidden``) is
trained by full-batch gradient descent with step ``lr`` on

    loss = 1/(2P) sum_mu ||y_mu - W2 W1 x_mu||^2,

with whitened inputs (``Sigma_xx = X X^T / P = I``) and targets ``y = Sigma_yx x``,
``Sigma_yx = U S V^T``, ``S = diag(s_1 > s_2 > ...)``. The gradient then depends on the data
only through ``Sigma_yx``:

    W1 <- W1 + lr W2^T (Sigma_yx - W2 W1),    W2 <- W2 + lr (Sigma_yx - W2 W1) W1^T.

Closed form. Take the decoupled, aligned and balanced initial condition ``W1 = sqrt(u0) R V^T``,
``W2 = sqrt(u0) U R^T`` (``R``: ``hidden x modes`` with orthonormal columns), so that
``W2 W1 = u0 U V^T``. Then ``W1 = R diag(a) V^T``, ``W2 = U diag(a) R^T`` for all time (the
update keeps this form), each mode with a scalar ``a_alpha``, and with ``u = a^2`` gradient flow
in time ``t = step * lr`` (``tau = 1``) reads ``du/dt = 2 u (s - u)``: a logistic equation,

    u(t) = s e^{2 s t} / (e^{2 s t} - 1 + s / u0),

which rises from ``u0`` to ``s`` and passes ``s / 2`` at ``t_half = ln(s / u0 - 1) / (2 s)``
(about ``ln(s / u0) / (2 s)`` for ``u0 << s``): stronger modes are learned first. Gradient
descent follows the exact map ``u <- u (1 + lr (s - u))^2``; to first order in ``lr`` it lags
the flow by ``delta u(t) = lr u (s - u) / s * (2 s^2 t - (3 s / 2) ln(u / u0))`` (negative
until about ``1.5 t_half``; `first_order_deviation`), which gives the tolerance of the
comparison.

Random small init (``inits`` holds ``"random"``): ``W1``, ``W2`` with i.i.d. Gaussian entries
of variance ``u0 / sqrt(hidden)``, so that each mode's initial strength ``u_a^T W2 W1 v_a`` has
standard deviation ``u0`` (and either sign), and the modes start coupled. The paper's claim is
that the modes then still follow the sigmoid, shifted in time. The check fits, per mode, the
one free parameter of the closed form, an effective ``u0`` that puts its midpoint at the
simulated ``t_half`` (``u0_eff = s / (1 + e^{2 s t_half})``), and reports the largest gap
between the whole simulated trajectory and that sigmoid.

All runs of a hidden width and init (seeds draw ``U``, ``V``, ``R`` and the random init;
``a0s`` the initial strengths) are one compiled ``jit(vmap(...))`` program through the runner's
`run_sweep`.
"""

import dataclasses
import functools
import itertools
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
    "SaxeDynamicsConfig",
    "closed_form",
    "correlation_grads",
    "data_loss",
    "first_order_deviation",
    "half_time",
    "plot_saxe_dynamics",
    "run_saxe_dynamics",
]


INITS = ("aligned", "random")


@dataclasses.dataclass(frozen=True)
class SaxeDynamicsConfig:
    """A two-layer linear network on whitened inputs, from small init.

    Fields:
        strengths: the target's singular values ``s_1 > s_2 > ... > 0`` (one mode each).
        n_in, hidden, n_out: layer widths (each at least ``len(strengths)``).
        a0s: initial mode strengths ``u0`` (the same for every mode), each with every seed.
        inits: ``"aligned"`` (the decoupled, aligned, balanced init of the closed form) and/or
            ``"random"`` (i.i.d. Gaussian entries; each mode's initial strength has std ``u0``).
        seeds: random bases ``U``, ``V``, ``R`` per initial strength.
        lr: gradient-descent step (time ``t = step * lr`` in units of ``tau``).
        time: the simulated time, in units of ``tau`` (``time / lr`` steps).
        log_every: record the mode strengths every this many steps.
        float64: compute in float64 (the command applies it before anything is traced).
    """

    strengths: tuple[float, ...] = (4.0, 2.0, 1.0, 0.5)
    n_in: int = 8
    hidden: int = 6
    n_out: int = 8
    a0s: tuple[float, ...] = (1e-3, 1e-2)
    inits: tuple[str, ...] = ("aligned", "random")
    seeds: int = 2
    lr: float = 1e-3
    time: float = 12.0
    log_every: int = 20
    float64: bool = True

    def __post_init__(self):
        for name in ("n_in", "hidden", "n_out", "seeds", "log_every"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"`{name}` must be an int >= 1; got {v!r}.")
        s = self.strengths
        if (
            not s
            or any(not (math.isfinite(x) and x > 0) for x in s)
            or any(a <= b for a, b in itertools.pairwise(s))
        ):
            raise ValueError(
                f"`strengths` must be a non-empty, strictly decreasing tuple of floats > 0; "
                f"got {s!r}."
            )
        for name in ("n_in", "hidden", "n_out"):
            if getattr(self, name) < len(s):
                raise ValueError(
                    f"`{name}` must be at least len(strengths) = {len(s)}; got "
                    f"{getattr(self, name)}."
                )
        if not self.a0s or any(not (0 < a < min(s)) for a in self.a0s):
            raise ValueError(
                f"`a0s` must be a non-empty tuple of floats in (0, min(strengths) = {min(s)}); "
                f"got {self.a0s!r}."
            )
        if not self.inits or any(i not in INITS for i in self.inits):
            raise ValueError(
                f"`inits` must be a non-empty tuple of {', '.join(map(repr, INITS))}; got "
                f"{self.inits!r}."
            )
        if not (math.isfinite(self.lr) and 0 < self.lr < 1 / max(s)):
            raise ValueError(
                f"`lr` must be a float in (0, 1 / max(strengths) = {1 / max(s):g}); got "
                f"{self.lr!r}."
            )
        if not (math.isfinite(self.time) and self.time > 0):
            raise ValueError(f"`time` must be a finite float > 0; got {self.time!r}.")
        if self.steps < self.log_every:
            raise ValueError(
                f"`time / lr` = {self.steps} steps must be at least `log_every` = {self.log_every}."
            )

    @property
    def steps(self) -> int:
        """Gradient steps, ``time / lr`` rounded down to a multiple of ``log_every``."""
        return round(self.time / self.lr) // self.log_every * self.log_every


# ---------------------------------------------------------------------------------------------
# The problem and its closed form
# ---------------------------------------------------------------------------------------------


def correlation_grads(
    w1: Float[ArrayLike, "hidden n_in"],
    w2: Float[ArrayLike, "n_out hidden"],
    sigma_yx: Float[ArrayLike, "n_out n_in"],
) -> tuple[Float[Array, "hidden n_in"], Float[Array, "n_out hidden"]]:
    """The gradient of `data_loss` in ``(W1, W2)`` when ``X X^T / P = I``, written out by hand.

    Arguments:
        w1, w2: the layers.
        sigma_yx: the input-output correlation ``Y X^T / P``.

    Returns:
        ``(-W2^T E, -E W1^T)`` with ``E = Sigma_yx - W2 W1``.
    """
    w1, w2 = jnp.asarray(w1), jnp.asarray(w2)
    e = jnp.asarray(sigma_yx) - w2 @ w1
    return -w2.T @ e, -e @ w1.T


def data_loss(
    w1: Float[ArrayLike, "hidden n_in"],
    w2: Float[ArrayLike, "n_out hidden"],
    x: Float[ArrayLike, "n_in P"],
    y: Float[ArrayLike, "n_out P"],
) -> Float[Array, ""]:
    """``1/(2P) sum_mu ||y_mu - W2 W1 x_mu||^2`` over the columns of ``x`` and ``y``."""
    x = jnp.asarray(x)
    return 0.5 * jnp.sum((jnp.asarray(y) - jnp.asarray(w2) @ jnp.asarray(w1) @ x) ** 2) / x.shape[1]


def closed_form(t: ArrayLike, s: ArrayLike, u0: ArrayLike) -> np.ndarray | np.floating:
    """``u(t) = s e^{2st} / (e^{2st} - 1 + s/u0)``: the mode strength under gradient flow.

    Written as ``s / (1 + (s/u0 - 1) e^{-2st})``, which cannot overflow.

    Arguments:
        t: times, in units of ``tau`` (``step * lr``).
        s: the mode's singular value (> 0).
        u0: its strength at ``t = 0`` (in ``(0, s)``).

    Returns:
        ``u(t)``, broadcast over the arguments (NumPy).
    """
    t, s, u0 = np.asarray(t, float), np.asarray(s, float), np.asarray(u0, float)
    return s / (1.0 + (s / u0 - 1.0) * np.exp(-2.0 * s * t))


def half_time(s: ArrayLike, u0: ArrayLike) -> np.ndarray | np.floating:
    """The time at which the closed form passes ``s / 2``.

    Returns:
        ``ln(s / u0 - 1) / (2 s)`` (NumPy), about the paper's ``ln(s / u0) / (2 s)``.
    """
    s, u0 = np.asarray(s, float), np.asarray(u0, float)
    return np.log(s / u0 - 1.0) / (2.0 * s)


def first_order_deviation(
    t: ArrayLike, s: ArrayLike, u0: ArrayLike, lr: float
) -> np.ndarray | np.floating:
    """Gradient descent minus the closed form, to first order in the step ``lr``.

    In log-odds ``z = ln(u / (s - u))`` the flow advances ``2 s dt``; one step of the map
    ``u <- u (1 + lr (s - u))^2`` advances ``2 s lr + lr^2 s (3u - s) + O(lr^3)``. Summed along
    the flow (``integral u dt = s t - ln(u / u0) / 2``) and mapped back with
    ``du/dz = u (s - u) / s``: ``lr u (s - u) / s * (2 s^2 t - (3 s / 2) ln(u / u0))``.

    Returns:
        The deviation at times ``t`` (NumPy, broadcast over the arguments).
    """
    u = closed_form(t, s, u0)
    t = np.asarray(t, float)
    return lr * u * (s - u) / s * (2.0 * s * s * t - 1.5 * s * np.log(u / u0))


# ---------------------------------------------------------------------------------------------
# Simulation: every run of a width in one program
# ---------------------------------------------------------------------------------------------


def _orthonormal(key, n: int, k: int, dtype) -> Array:
    q, r = jnp.linalg.qr(jax.random.normal(key, (n, k), dtype))
    return q * jnp.sign(jnp.diagonal(r))


def make_problem(cfg: SaxeDynamicsConfig, seed, a0, dtype=None, init: str = "aligned") -> dict:
    """The bases, target correlation and init of one run (jittable).

    Arguments:
        cfg: the experiment's config (strengths and widths).
        seed: draws the orthonormal ``U``, ``V``, ``R`` and the random init (from
            ``fold_in(key(7), seed)``).
        a0: the initial strength ``u0`` of every mode (``"random"``: its std).
        dtype: float dtype; float64 when x64 is enabled, else float32, by default.
        init: ``"aligned"`` (``W1 = sqrt(u0) R V^T``, ``W2 = sqrt(u0) U R^T``) or ``"random"``
            (i.i.d. ``N(0, u0 / sqrt(hidden))`` entries).

    Returns:
        A dict with ``U (n_out, m)``, ``V (n_in, m)``, ``R (hidden, m)``, ``sigma_yx``,
        ``w1``, ``w2``.
    """
    dtype = dtype or (jnp.float64 if jax.config.jax_enable_x64 else jnp.float32)
    m = len(cfg.strengths)
    key = jax.random.fold_in(jax.random.key(7), seed)
    ku, kv, kr, k1, k2 = jax.random.split(key, 5)
    u = _orthonormal(ku, cfg.n_out, m, dtype)
    v = _orthonormal(kv, cfg.n_in, m, dtype)
    r = _orthonormal(kr, cfg.hidden, m, dtype)
    s = jnp.asarray(cfg.strengths, dtype)
    a = jnp.sqrt(jnp.asarray(a0, dtype))
    if init == "aligned":
        w1, w2 = a * r @ v.T, a * u @ r.T
    else:
        std = a / cfg.hidden**0.25
        w1 = std * jax.random.normal(k1, (cfg.hidden, cfg.n_in), dtype)
        w2 = std * jax.random.normal(k2, (cfg.n_out, cfg.hidden), dtype)
    return {"U": u, "V": v, "R": r, "sigma_yx": (u * s) @ v.T, "w1": w1, "w2": w2}


@functools.cache
def _program(cfg: SaxeDynamicsConfig, init: str):
    def one(seed, a0):
        p = make_problem(cfg, seed, a0, init=init)
        lr = jnp.asarray(cfg.lr, p["w1"].dtype)

        def step(carry, _):
            w1, w2 = carry
            g1, g2 = correlation_grads(w1, w2, p["sigma_yx"])
            return (w1 - lr * g1, w2 - lr * g2), None

        def measure(w1, w2):
            w = w2 @ w1
            modes = jnp.einsum("im,ij,jm->m", p["U"], w, p["V"])
            leak = jnp.linalg.norm(w - (p["U"] * modes) @ p["V"].T)
            return modes, leak, 0.5 * jnp.sum((p["sigma_yx"] - w) ** 2)

        def chunk(carry, _):
            carry, _ = jax.lax.scan(step, carry, None, length=cfg.log_every)
            return carry, measure(*carry)

        n = cfg.steps // cfg.log_every
        _, (modes, leak, loss) = jax.lax.scan(chunk, (p["w1"], p["w2"]), None, length=n)
        modes0, leak0, loss0 = measure(p["w1"], p["w2"])
        modes = jnp.concatenate([modes0[None], modes])
        bad = ~jnp.all(jnp.isfinite(modes))
        return {
            "step": jnp.arange(n + 1) * cfg.log_every,
            "modes": modes,
            "leak": jnp.concatenate([leak0[None], leak]),
            "loss": jnp.concatenate([loss0[None], loss]),
            "diverged": bad,
            "diverged_at": jnp.where(bad, 0, -1),
        }

    return jax.jit(jax.vmap(one))


def _summaries(cfg: SaxeDynamicsConfig, init: str, a0: float, modes: np.ndarray) -> dict:
    """Learning times of one run's ``(records, m)`` mode strengths, and the largest gap to
    the closed form: from ``u0 = a0`` (``"aligned"``), or from the effective ``u0`` that puts
    the sigmoid's midpoint at the simulated ``t_half`` (``"random"``)."""
    t = np.arange(modes.shape[0]) * cfg.log_every * cfg.lr
    out = {}
    for i, s in enumerate(cfg.strengths):
        u = modes[:, i]
        up = np.nonzero(u < s / 2)[0]  # the last record below s/2, then the crossing after it
        k = int(up[-1]) + 1 if up.size and up[-1] + 1 < u.size else -1
        t_half = (
            np.nan
            if k < 1
            else t[k - 1] + (s / 2 - u[k - 1]) / (u[k] - u[k - 1]) * (t[k] - t[k - 1])
        )
        u0 = a0 if init == "aligned" else s / (1.0 + np.exp(2.0 * s * t_half))
        out[f"u0_{i}"] = float(u0)
        out[f"max_dev_{i}"] = float(np.max(np.abs(u - closed_form(t, s, u0))))
        out[f"pred_dev_{i}"] = float(np.max(np.abs(first_order_deviation(t, s, u0, cfg.lr))))
        out[f"t_half_{i}"] = float(t_half)
    return out


def _group_runner(cfg: SaxeDynamicsConfig):
    def run_group(group: dict, batch: dict) -> dict:
        t0 = time.perf_counter()
        init = group["init"]
        fn = _program(cfg, init)
        out = {k: np.asarray(v) for k, v in jax.device_get(
            fn(jnp.asarray(batch["seed"]), jnp.asarray(batch["a0"]))).items()}  # fmt: skip
        runs = len(batch["seed"])
        sums = [
            _summaries(cfg, init, float(a0), out["modes"][j]) for j, a0 in enumerate(batch["a0"])
        ]
        for k in sums[0]:
            out[k] = np.asarray([x[k] for x in sums])
        out["max_leak"] = out["leak"].max(1)
        out["final_leak"] = out["leak"][:, -1]
        seconds = time.perf_counter() - t0
        out["seconds"] = np.full(runs, seconds / runs)
        print(
            f"saxe-dynamics ({init} init): {runs} runs x {cfg.steps:,} steps in {seconds:.1f} s",
            flush=True,
        )
        return out

    return run_group


def run_saxe_dynamics(cfg: SaxeDynamicsConfig, out_dir: Path) -> list[dict]:
    """Run (or resume) the experiment into ``out_dir``, then write its table and figure."""
    require_float64(cfg.float64)
    out_dir = Path(out_dir)
    store = RunStore(out_dir)
    store.write_config(
        {"experiment": "saxe-dynamics", "config": dataclasses.asdict(cfg), "steps": cfg.steps,
         "versions": {"python": platform.python_version(), "jax": jax.__version__}},
        volatile=("versions",),
    )  # fmt: skip
    settings = [{"hidden": cfg.hidden, "init": i, "a0": a0, "seed": s} for i in cfg.inits
                for a0 in cfg.a0s for s in range(cfg.seeds)]  # fmt: skip
    records = run_sweep(store, settings, _group_runner(cfg), group_keys=("hidden", "init"))
    for p in plot_saxe_dynamics(out_dir):
        print(f"figure: {p}")
    print((out_dir / "results.md").read_text())
    return records


# ---------------------------------------------------------------------------------------------
# Table and figure
# ---------------------------------------------------------------------------------------------


def plot_saxe_dynamics(out_dir: Path) -> list[Path]:
    """(Re)write ``results.md`` and ``saxe_dynamics.png`` from a run folder."""
    plt = pyplot()

    out_dir = Path(out_dir)
    store, stored = read_run(out_dir)
    cfg = stored["config"]
    strengths, lr = cfg["strengths"], cfg["lr"]
    records = sorted(
        store.finished().values(), key=lambda r: (r.get("init", "aligned"), r["a0"], r["seed"])
    )
    by_a0: dict[tuple[str, float], list] = {}
    for r in records:
        by_a0.setdefault((r.get("init", "aligned"), r["a0"]), []).append(r)
    wall = sum(r["final"]["seconds"] for r in records)
    lines = [
        "# saxe-dynamics: mode strengths of a two-layer linear network against the closed form",
        "",
        f"Widths {cfg['n_in']} -> {cfg['hidden']} -> {cfg['n_out']}, singular values "
        f"{', '.join(f'{s:g}' for s in strengths)}, step {lr:g} (time = step x {lr:g}, tau = "
        f"1), {stored['steps']:,} steps, {cfg['seeds']} seeds (random bases) per initial "
        f"strength; float64. Compute: {wall:.2f} s (all runs, compile included).",
        "",
        "t_half: the time the mode passes s/2; closed form ln(s/u0 - 1)/(2s), the paper's "
        "estimate ln(s/u0)/(2s). Deviation: max over time of abs(simulation - closed form), "
        "largest over seeds, beside its first-order prediction in the step. Aligned init: the "
        "closed form from u0; random init (entries of variance u0/sqrt(hidden), so each mode "
        "starts at about +-u0): from the effective u0 that puts the sigmoid's midpoint at the "
        "simulated t_half (median over seeds shown). Off-mode leak: the norm of W2 W1 outside "
        "the modes, largest over time / at the end.",
        "",
        "| init | u0 | s | effective u0 | t_half closed form | ln(s/u0)/(2s) | "
        "t_half simulated | max deviation | first-order prediction | off-mode leak max / end |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for (init, a0), runs in by_a0.items():
        leak = max(r["final"]["max_leak"] for r in runs)
        end = max(r["final"].get("final_leak", leak) for r in runs)
        for i, s in enumerate(strengths):
            th = [r["final"][f"t_half_{i}"] for r in runs]
            dev = max(r["final"][f"max_dev_{i}"] for r in runs)
            pred = runs[0]["final"][f"pred_dev_{i}"]
            u0 = float(np.median([r["final"].get(f"u0_{i}", a0) for r in runs]))
            lines.append(
                f"| {init} | {a0:g} | {s:g} | {u0:.3g} | {float(half_time(s, a0)):.4f} | "
                f"{math.log(s / a0) / (2 * s):.4f} | {np.median(th):.4f} | {dev:.2e} | "
                f"{pred:.2e} | {leak:.1e} / {end:.1e} |"
            )
    (out_dir / "results.md").write_text("\n".join(lines) + "\n")

    cols = len(by_a0)
    fig, axes = plt.subplots(2, cols, figsize=(6 * cols, 7.5), squeeze=False,
                             gridspec_kw={"height_ratios": [2, 1]})  # fmt: skip
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for c, ((init, a0), runs) in enumerate(by_a0.items()):
        traj = store.load_trajectory(runs[0]["run_id"])
        t = np.asarray(traj["step"]) * lr
        tt = np.linspace(0, t[-1], 600)
        for i, s in enumerate(strengths):
            u0 = runs[0]["final"].get(f"u0_{i}", a0)
            col = colors[i % len(colors)]
            axes[0, c].plot(t, traj["modes"][:, i], color=col, lw=3, alpha=0.45,
                            label=f"s = {s:g}: simulation")  # fmt: skip
            axes[0, c].plot(tt, closed_form(tt, s, u0), "--", color=col, lw=1.2,
                            label="closed form" if i == 0 else None)  # fmt: skip
            axes[0, c].axvline(float(half_time(s, u0)), color=col, ls=":", lw=1)
            axes[1, c].plot(t, traj["modes"][:, i] - closed_form(t, s, u0), color=col, lw=1.5)
            axes[1, c].plot(t, first_order_deviation(t, s, u0, lr), "k--", lw=0.8,
                            label="first order in the step" if i == 0 else None)  # fmt: skip
        title = (
            f"aligned init, u0 = {a0:g}"
            if init == "aligned"
            else f"random init, std u0 = {a0:g} (closed form: effective u0)"
        )
        axes[0, c].set_title(title + "\n(dotted: t_half = ln(s/u0 - 1)/(2s))", fontsize=9)
        axes[0, c].set_ylabel("mode strength u_alpha = u_alpha^T W2 W1 v_alpha")
        axes[1, c].set_ylabel("simulation - closed form")
        axes[1, c].set_xlabel("t / tau (= step x lr)")
        axes[0, c].legend(fontsize=7, loc="center right")
        axes[1, c].legend(fontsize=7)
    fig.tight_layout()
    path = out_dir / "saxe_dynamics.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return [path]


register(
    Experiment(
        "saxe-dynamics",
        "Saxe et al. 2014: deep linear network modes follow the sigmoidal closed form",
        SaxeDynamicsConfig,
        {"lr": 4e-3, "log_every": 10},
        run_saxe_dynamics,
        plot_saxe_dynamics,
    )
)
