"""Incremental learning across factorizations: when each component is learned, against init scale.

Three problems share one ground-truth spectrum ``strengths = (s_1 > s_2 > ...)``:

- *matrix*: matrix sensing (`factorjax.dynamics.MatrixSensing`, ``A_j`` with ``N(0, 1/m)``
  entries) of ``X* = U diag(s) V^T`` (orthonormal ``U``, ``V``), fitted by a `DeepLowRank`
  of depth ``matrix_depth`` from ``init="small"`` with scale ``alpha``, by gradient descent;
- *tubal*: tubal sensing (`factorjax.dynamics.TubalSensing`) of ``X* = Ubar * S * Ubar^T``
  (``S`` f-diagonal with first frontal slice ``diag(s)``: every Fourier slice of ``X*`` has
  singular values ``s``), fitted by a `SymmetricTubalLowRank` ``U * U^T`` from
  ``init="small"`` with scale ``alpha``, by gradient descent (the lifted method);
- *cp*: CP tensor completion (`factorjax.dynamics.cp_completion.CPCompletion`) of an
  order-``cp_order`` tensor whose rank-one components have norms ``s``, fitted by a CP model
  with i.i.d. ``N(0, std^2)`` factor entries, by gradient descent on ``n^d / 2`` times the mean
  squared error over the observed entries (so that the expected gradient in ``X`` is the
  residual, as in the two sensing problems).

The learned values recorded every ``log_every`` steps are the top singular values (matrix),
the top Fourier singular values, smallest over the Fourier slices (tubal), and the largest
component norms (cp). Component ``k`` counts as learned at the first record where its learned
value reaches ``threshold * s_k`` (`learned_times`).

Each family's sweep over init scales and seeds is one ``jax.jit(jax.vmap(run))`` program,
through the runner's `run_sweep` (resumable; diverged runs recorded).
"""

import dataclasses
import functools
import itertools
import math
import platform
import time
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, Real

from factorjax import tubal
from factorjax.dynamics import MatrixSensing, RunStore, TubalSensing, run_sweep, train
from factorjax.dynamics.cp_completion import CPCompletion, component_norms, cp_dense, init_factors
from factorjax.experiments._common import pyplot, read_run
from factorjax.experiments._registry import Experiment, register
from factorjax.factorizations import DeepLowRank, SymmetricTubalLowRank

__all__ = [
    "CompareFamiliesConfig",
    "learned_times",
    "plot_compare_families",
    "run_compare_families",
    "scaling_fit",
    "theory",
]

FAMILIES = ("matrix", "tubal", "cp")


@dataclasses.dataclass(frozen=True)
class CompareFamiliesConfig:
    """Learning time of each component against init scale, for three factorizations.

    Fields:
        strengths: the ground truth's component strengths, decreasing (shared by the families).
        seeds: problems and inits per scale (seed ``s`` draws the same problem at every scale).
        threshold: component ``k`` is learned once its learned value reaches
            ``threshold * strengths[k]``.
        log_every: steps between records (every family).
        matrix_n, matrix_m, matrix_depth: matrix size ``n x n``, measurements, depth.
        matrix_scales: the ``alpha`` of ``DeepLowRank.init(init="small")``.
        matrix_lr, matrix_steps: gradient descent step and number of steps.
        tubal_n, tubal_k, tubal_m: ``X*`` is ``(n, n, k)``; measurements.
        tubal_scales: the ``alpha`` of ``SymmetricTubalLowRank.init(init="small")``.
        tubal_lr, tubal_steps: gradient descent step and number of steps.
        cp_order, cp_n, cp_m, cp_components: the tensor's order and mode size, the observed
            entries, the model's components.
        cp_scales: the std of the factor entries.
        cp_lr, cp_steps: gradient descent step and number of steps.
        float64: train in float64 (applied by the command before tracing).
    """

    strengths: tuple[float, ...] = (3.0, 2.0, 1.0)
    seeds: int = 3
    threshold: float = 0.5
    log_every: int = 5
    matrix_n: int = 16
    matrix_m: int = 200
    matrix_depth: int = 2
    matrix_scales: tuple[float, ...] = (1e-1, 1e-2, 1e-3, 1e-4)
    matrix_lr: float = 0.01
    matrix_steps: int = 2000
    tubal_n: int = 8
    tubal_k: int = 4
    tubal_m: int = 200
    tubal_scales: tuple[float, ...] = (1e-1, 1e-2, 1e-3, 1e-4)
    tubal_lr: float = 0.01
    tubal_steps: int = 1000
    cp_order: int = 3
    cp_n: int = 8
    cp_m: int = 300
    cp_components: int = 20
    cp_scales: tuple[float, ...] = (1e-1, 3e-2, 1e-2, 3e-3)
    cp_lr: float = 0.05
    cp_steps: int = 5000
    float64: bool = True

    def __post_init__(self):
        ints = ("seeds", "log_every", "matrix_n", "matrix_m", "matrix_depth", "matrix_steps",
                "tubal_n", "tubal_k", "tubal_m", "tubal_steps", "cp_order", "cp_n", "cp_m",
                "cp_components", "cp_steps")  # fmt: skip
        for name in ints:
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"`{name}` must be an int >= 1; got {v!r}.")
        r = len(self.strengths)
        s = self.strengths
        if not s or not all(isinstance(x, float) and math.isfinite(x) and x > 0 for x in s):
            raise ValueError(f"`strengths` must be a non-empty tuple of floats > 0; got {s!r}.")
        if any(a <= b for a, b in itertools.pairwise(s)):
            raise ValueError(f"`strengths` must be strictly decreasing; got {s!r}.")
        for name, lo in (("matrix_depth", 2), ("cp_order", 3)):
            if getattr(self, name) < lo:
                raise ValueError(f"`{name}` must be >= {lo}; got {getattr(self, name)!r}.")
        for name, size in (("matrix_n", self.matrix_n), ("tubal_n", self.tubal_n),
                           ("cp_n", self.cp_n), ("cp_components", self.cp_components)):  # fmt: skip
            if size < r:
                raise ValueError(f"`{name}` must be >= len(strengths) = {r}; got {size}.")
        if self.cp_m > self.cp_n**self.cp_order:
            raise ValueError(f"`cp_m` must be at most cp_n^cp_order; got {self.cp_m}.")
        for fam in FAMILIES:
            steps = getattr(self, f"{fam}_steps")
            if steps % self.log_every:
                raise ValueError(f"`{fam}_steps` must be a multiple of `log_every`; got {steps}.")
            scales = getattr(self, f"{fam}_scales")
            if not scales or not all(isinstance(x, float) and x > 0 for x in scales):
                raise ValueError(
                    f"`{fam}_scales` must be a non-empty tuple of floats > 0; got {scales!r}."
                )
            lr = getattr(self, f"{fam}_lr")
            if not (isinstance(lr, float) and math.isfinite(lr) and lr > 0):
                raise ValueError(f"`{fam}_lr` must be a finite float > 0; got {lr!r}.")
        if not (isinstance(self.threshold, float) and 0 < self.threshold <= 1):
            raise ValueError(f"`threshold` must be a float in (0, 1]; got {self.threshold!r}.")


def learned_times(
    values: Float[np.ndarray, "records K"],
    steps: Real[np.ndarray, " records"],
    targets: Float[np.ndarray, " K"],
    threshold: float = 0.5,
) -> Float[np.ndarray, " K"]:
    """The step at which each component is learned.

    Arguments:
        values: the learned value of component ``k`` (column ``k``) at each record.
        steps: the step of each record.
        targets: the ground truth's value of each component.
        threshold: component ``k`` is learned at the first record where
            ``values[:, k] >= threshold * targets[k]``.

    Returns:
        ``(K,)`` steps, NaN for a component never learned.
    """
    above = np.asarray(values) >= threshold * np.asarray(targets)[None, :]
    first = np.argmax(above, axis=0)
    return np.where(above.any(axis=0), np.asarray(steps, dtype=float)[first], np.nan)


# ---------------------------------------------------------------------------------------------
# The three problems, with the ground truth's spectrum set to `strengths`
# ---------------------------------------------------------------------------------------------


def _orthonormal(key, n: int, r: int, dtype) -> Array:
    return jnp.linalg.qr(jax.random.normal(key, (n, r), dtype))[0]


def matrix_problem(cfg: CompareFamiliesConfig, seed) -> MatrixSensing:
    """Matrix sensing of ``X* = U diag(strengths) V^T``, instance ``seed`` (traceable)."""
    key = jax.random.fold_in(jax.random.key(11), seed)
    dtype = jnp.float64 if cfg.float64 else jnp.float32
    n, r = cfg.matrix_n, len(cfg.strengths)
    p = MatrixSensing.make(n, n, r, cfg.matrix_m, key=jax.random.fold_in(key, 0), dtype=dtype)
    u = _orthonormal(jax.random.fold_in(key, 1), n, r, dtype)
    v = _orthonormal(jax.random.fold_in(key, 2), n, r, dtype)
    x = (u * jnp.asarray(cfg.strengths, dtype)) @ v.T
    return eqx.tree_at(lambda q: (q.ground_truth, q.y), p, (x, p.measure(x)))


def tubal_problem(cfg: CompareFamiliesConfig, seed) -> TubalSensing:
    """Tubal sensing of ``X* = Ubar * S * Ubar^T`` (Fourier singular values ``strengths`` in
    every slice), instance ``seed``, with its Gram matrix (traceable)."""
    key = jax.random.fold_in(jax.random.key(12), seed)
    dtype = jnp.float64 if cfg.float64 else jnp.float32
    n, k, r = cfg.tubal_n, cfg.tubal_k, len(cfg.strengths)
    p = TubalSensing.make(n, k, r, cfg.tubal_m, key=jax.random.fold_in(key, 0), dtype=dtype)
    u = tubal.tsvd(jax.random.normal(jax.random.fold_in(key, 1), (n, n, k), dtype), rank=r)[0]
    s = jnp.zeros((r, r, k), dtype).at[:, :, 0].set(jnp.diag(jnp.asarray(cfg.strengths, dtype)))
    x = tubal.tprod(tubal.tprod(u, s), tubal.ttranspose(u))
    return eqx.tree_at(lambda q: (q.ground_truth, q.y), p, (x, p.measure(x))).with_gram()


def cp_problem(cfg: CompareFamiliesConfig, seed) -> CPCompletion:
    """CP completion of a tensor whose components have norms ``strengths``, instance ``seed``
    (traceable)."""
    key = jax.random.fold_in(jax.random.key(13), seed)
    dtype = jnp.float64 if cfg.float64 else jnp.float32
    r = len(cfg.strengths)
    p = CPCompletion.make(cfg.cp_order, cfg.cp_n, r, cfg.cp_m, key=key, dtype=dtype)
    unit = tuple(f / jnp.linalg.norm(f, axis=0) for f in p.truth_factors)
    factors = (unit[0] * jnp.asarray(cfg.strengths, dtype), *unit[1:])
    truth = cp_dense(factors)
    return eqx.tree_at(lambda q: (q.truth_factors, q.ground_truth, q.y), p,
                       (factors, truth, truth.reshape(-1)[p.idx]))  # fmt: skip


# ---------------------------------------------------------------------------------------------
# One compiled program per family: (scales, seeds) -> batched history
# ---------------------------------------------------------------------------------------------


@functools.cache
def _program(cfg: CompareFamiliesConfig, family: str):
    r = len(cfg.strengths)

    def one_matrix(scale, seed):
        p = matrix_problem(cfg, seed)
        n, depth = cfg.matrix_n, cfg.matrix_depth
        model = DeepLowRank.init(n, n, (n,) * (depth - 1), key=jax.random.key(seed), init="small",
                                 alpha=scale, dtype=p.y.dtype)  # fmt: skip
        _, h = train(p, model, steps=cfg.matrix_steps, log_every=cfg.log_every,
                     step_size=cfg.matrix_lr, method="factors")  # fmt: skip
        return {"values": h["singular_values"][:, :r], "train_loss": h["train_loss"],
                "error": h["test_error"], "step": h["step"], "diverged": h["diverged"],
                "diverged_at": h["diverged_at"]}  # fmt: skip

    def one_tubal(scale, seed):
        p = tubal_problem(cfg, seed)
        n, k = cfg.tubal_n, cfg.tubal_k
        model = SymmetricTubalLowRank.init(n, k, n, key=jax.random.key(seed), init="small",
                                           alpha=scale, dtype=p.y.dtype)  # fmt: skip
        _, h = train(p, model, steps=cfg.tubal_steps, log_every=cfg.log_every,
                     step_size=cfg.tubal_lr)  # fmt: skip
        return {"values": jnp.min(h["singular_values"][..., :r], axis=1),
                "train_loss": h["train_loss"], "error": h["test_error"], "step": h["step"],
                "diverged": h["diverged"], "diverged_at": h["diverged_at"]}  # fmt: skip

    def one_cp(scale, seed):
        p = cp_problem(cfg, seed)
        a = init_factors(cfg.cp_order, cfg.cp_n, cfg.cp_components, scale,
                         key=jax.random.key(seed))  # fmt: skip
        a = tuple(f.astype(p.y.dtype) for f in a)
        lr = cfg.cp_lr * cfg.cp_n**cfg.cp_order / 2.0

        def step(carry, _):
            a, bad, at, t = carry
            _, grads, _ = p.loss_and_grad(a)
            new = tuple(f - lr * g for f, g in zip(a, grads, strict=True))
            ok = jnp.all(jnp.asarray([jnp.all(jnp.isfinite(f)) for f in new]))
            now_bad = bad | ~ok
            at = jnp.where(now_bad & ~bad, t, at)
            a = tuple(jnp.where(now_bad, o, f) for o, f in zip(a, new, strict=True))
            return (a, now_bad, at, t + 1), None

        def record(a):
            return {"values": jax.lax.top_k(component_norms(a), r)[0],
                    "train_loss": p.loss(a), "error": p.error(a)}  # fmt: skip

        def chunk(carry, _):
            carry, _ = jax.lax.scan(step, carry, None, length=cfg.log_every)
            return carry, record(carry[0])

        carry = (a, jnp.asarray(False), jnp.asarray(-1), jnp.asarray(0))
        n_chunks = cfg.cp_steps // cfg.log_every
        (_, bad, at, _), hist = jax.lax.scan(chunk, carry, None, length=n_chunks)
        hist = jax.tree.map(lambda x0, h: jnp.concatenate([x0[None], h]), record(a), hist)
        hist["step"] = cfg.log_every * jnp.arange(n_chunks + 1)
        hist["diverged"], hist["diverged_at"] = bad, at
        return hist

    one = {"matrix": one_matrix, "tubal": one_tubal, "cp": one_cp}[family]
    return jax.jit(jax.vmap(one))


def _run_group(cfg: CompareFamiliesConfig):
    def run_group(group: dict, batch: dict) -> dict:
        t0 = time.perf_counter()
        dtype = np.float64 if cfg.float64 else np.float32
        fn = _program(cfg, group["family"])
        h = jax.device_get(fn(jnp.asarray(batch["scale"], dtype), jnp.asarray(batch["seed"])))
        out = {k: np.asarray(v) for k, v in h.items()}
        runs = len(batch["seed"])
        seconds = time.perf_counter() - t0
        out["seconds"] = np.full(runs, seconds)
        print(f"compare-families: {group['family']}: {runs} runs in {seconds:.1f} s", flush=True)
        return out

    return run_group


def settings_of(cfg: CompareFamiliesConfig) -> list[dict]:
    """The sweep: every (family, scale, seed)."""
    return [
        {"family": fam, "scale": s, "seed": k}
        for fam in FAMILIES
        for s in getattr(cfg, f"{fam}_scales")
        for k in range(cfg.seeds)
    ]


def run_compare_families(cfg: CompareFamiliesConfig, out_dir: Path) -> list[dict]:
    """Run (or resume) the experiment into ``out_dir``, then write its table and figure.

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
        {"experiment": "compare-families", "config": dataclasses.asdict(cfg),
         "dtype": str(jnp.zeros(()).dtype),
         "versions": {"python": platform.python_version(), "jax": jax.__version__}},
        volatile=("versions",),
    )  # fmt: skip
    t0 = time.perf_counter()
    records = run_sweep(store, settings_of(cfg), _run_group(cfg), group_keys=("family",))
    wall = time.perf_counter() - t0
    for p in plot_compare_families(out_dir, wall_s=wall):
        print(f"figure: {p}")
    print((out_dir / "results.md").read_text())
    return records


# ---------------------------------------------------------------------------------------------
# Table and figure
# ---------------------------------------------------------------------------------------------

TITLES = {"matrix": "matrix (depth {matrix_depth})", "tubal": "tubal (U * U^T)",
          "cp": "CP (order {cp_order})"}  # fmt: skip
SCALE_NAMES = {"matrix": "alpha", "tubal": "alpha", "cp": "std"}


def learned_table(out_dir: Path) -> tuple[dict, list[dict]]:
    """The stored config and, per finished run, its learned times (``"times"``, ``(K,)``)."""
    store, stored = read_run(Path(out_dir))
    cfg = stored["config"]
    rows = []
    for r in store.finished().values():
        t = store.load_trajectory(r["run_id"])
        targets = np.asarray(cfg["strengths"], dtype=float)
        times = learned_times(t["values"], t["step"], targets, cfg["threshold"])
        rows.append(dict(r, times=times, final_error=float(t["error"][-1])))
    order = {f: i for i, f in enumerate(FAMILIES)}
    rows.sort(key=lambda r: (order[r["family"]], -r["scale"], r["seed"]))
    return stored, rows


def _mean(xs: list[float]) -> float:
    """The mean of the finite values of ``xs`` (NaN if none)."""
    xs = [x for x in xs if np.isfinite(x)]
    return float(np.mean(xs)) if xs else float("nan")


def _curves(rows: list[dict], family: str, K: int) -> tuple[list[float], np.ndarray]:
    """A family's init scales (increasing) and its mean learning times over seeds ``(K, S)``."""
    fam = [r for r in rows if r["family"] == family]
    scales = sorted({r["scale"] for r in fam})
    means = [[_mean([r["times"][k] for r in fam if r["scale"] == sc]) for sc in scales]
             for k in range(K)]  # fmt: skip
    return scales, np.asarray(means, dtype=float).reshape(K, len(scales))


def scaling_fit(
    scales: Float[np.ndarray, " S"], times: Float[np.ndarray, " S"]
) -> tuple[float, float]:
    """How learning times grow as the init scale shrinks.

    Arguments:
        scales: init scales (> 0).
        times: the learning time at each scale (NaN entries are left out).

    Returns:
        ``(per_decade, exponent)``: the least-squares slope of ``times`` against
        ``-log10(scales)`` (steps per decade, the constant of a ``log(1/scale)`` law) and of
        ``log(times)`` against ``log(scales)`` (the exponent of a power law); NaN with fewer
        than two finite points.
    """
    x, t = np.asarray(scales, dtype=float), np.asarray(times, dtype=float)
    ok = np.isfinite(t) & (t > 0)
    if ok.sum() < 2:
        return float("nan"), float("nan")
    per_decade = -np.polyfit(np.log10(x[ok]), t[ok], 1)[0]
    exponent = np.polyfit(np.log(x[ok]), np.log(t[ok]), 1)[0]
    return float(per_decade), float(exponent)


def theory(cfg: dict, family: str, strength: float) -> tuple[float, float]:
    """Small-init gradient-flow predictions ``(per_decade, exponent)`` (NaN where the law does
    not apply): a singular value ``sigma`` of a depth-``N`` product obeys
    ``dsigma/dt = N sigma^(2 - 2/N) (s - sigma)`` (Arora et al. 2019), from ``sigma_0 ~
    scale^N``. For ``N = 2`` the time to reach ``s / 2`` is ``log(s / sigma_0) / (2 s)``:
    ``ln(100) / (2 s lr)`` steps per decade of the factor scale; for ``N >= 3`` it is
    ``~ sigma_0^(-(N-2)/N) ~ scale^-(N-2)``. The tubal ``U * U^T`` follows the ``N = 2`` law in
    every Fourier slice with twice the rate (``(M + M^T) * U``); a CP component of order
    ``N`` follows the depth-``N`` law (Razin et al. 2021)."""
    if family == "matrix":
        depth, lr = cfg["matrix_depth"], cfg["matrix_lr"]
        if depth == 2:
            return math.log(100) / (2 * strength * lr), float("nan")
        return float("nan"), -(depth - 2.0)
    if family == "tubal":
        return math.log(100) / (4 * strength * cfg["tubal_lr"]), float("nan")
    return float("nan"), -(cfg["cp_order"] - 2.0)


def plot_compare_families(out_dir: Path, wall_s: float | None = None) -> list[Path]:
    """(Re)write ``results.md`` and ``learning_times.png`` from a run folder.

    Arguments:
        out_dir: a run folder of `run_compare_families`.
        wall_s: the wall time of the run, written into ``results.md`` when given.

    Returns:
        The path of the figure.
    """
    plt = pyplot()

    out_dir = Path(out_dir)
    stored, rows = learned_table(out_dir)
    cfg = stored["config"]
    s = cfg["strengths"]
    lines = [
        "# compare-families: when each component is learned, against init scale",
        "",
        f"Ground-truth strengths {', '.join(f'{x:g}' for x in s)} in every family; component "
        f"k is learned at the first record where its learned value reaches {cfg['threshold']:g}"
        " x its strength (matrix: k-th singular value; tubal: k-th Fourier singular value, "
        "smallest over the slices; cp: k-th largest component norm). Records every "
        f"{cfg['log_every']} steps; {stored.get('dtype', '?')}.",
        "",
        "| family | init scale | seed | learned at step (k = 1, 2, ...) | final error | status |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        times = ", ".join("-" if np.isnan(x) else f"{int(x)}" for x in r["times"])
        name = f"{SCALE_NAMES[r['family']]} {r['scale']:g}"
        lines.append(f"| {r['family']} | {name} | {r['seed']} | {times} | "
                     f"{r['final_error']:.3g} | {r['status']} |")  # fmt: skip
    lines += [
        "",
        "Growth of the learning time (mean over seeds) as the init scale shrinks: steps per "
        "decade of the scale (slope of time against -log10 scale) and log-log exponent "
        "(slope of log time against log scale), measured and predicted (`theory`).",
        "",
        "| family | k | strength | steps per decade | theory | log-log exponent | theory |",
        "|---|---|---|---|---|---|---|",
    ]
    for fam in FAMILIES:
        scales, means = _curves(rows, fam, len(s))
        for k, sk in enumerate(s):
            per, ex = scaling_fit(np.asarray(scales), means[k])
            tper, tex = theory(cfg, fam, sk)
            cells = [f"{v:.3g}" if np.isfinite(v) else "-" for v in (per, tper, ex, tex)]
            lines.append(f"| {fam} | {k + 1} | {sk:g} | " + " | ".join(cells) + " |")
    if wall_s is not None:
        lines += ["", f"Wall time of this call: {wall_s:.1f} s."]
    (out_dir / "results.md").write_text("\n".join(lines) + "\n")

    fig, axes = plt.subplots(1, len(FAMILIES), figsize=(4.2 * len(FAMILIES), 3.6))
    for ax, fam in zip(axes, FAMILIES, strict=True):
        scales, means = _curves(rows, fam, len(s))
        for k in range(len(s)):
            ax.plot(scales, means[k], "o-", label=f"k = {k + 1} (s = {s[k]:g})")
        ax.set_xscale("log")
        power_law = bool(np.any(means > 0)) and np.isfinite(theory(cfg, fam, s[0])[1])
        ax.set_yscale("log" if power_law else "linear")  # a power law is a line in log-log
        ax.set_title(TITLES[fam].format(**cfg) + (" (log-log)" if power_law else ""))
        ax.set_xlabel(f"init scale ({SCALE_NAMES[fam]})")
    axes[0].set_ylabel("step at which component k is learned\n(mean over seeds)")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    path = out_dir / "learning_times.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return [path]


QUICK = {"seeds": 1, "log_every": 10, "matrix_steps": 1000, "tubal_steps": 600, "cp_steps": 1000,
         "matrix_scales": (1e-1, 1e-3), "tubal_scales": (1e-1, 1e-3),
         "cp_scales": (1e-1, 3e-2)}  # fmt: skip

register(
    Experiment(
        "compare-families",
        "Matrix, tubal and CP factorizations: when each component is learned vs init scale",
        CompareFamiliesConfig,
        QUICK,
        run_compare_families,
        plot_compare_families,
    )
)
