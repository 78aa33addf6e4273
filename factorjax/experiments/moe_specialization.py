"""Expert specialization of a multilinear mixture of experts on scikit-learn's digits.

A small classifier ``64 -> layer -> ReLU -> Linear -> 10`` on the 8x8 digits (shipped inside
scikit-learn; the split and standardization of `factorjax.experiments.digits`), whose first
layer is

- ``mumoe``: a `factorjax.moe.MultilinearMoE` (CP form, ``experts`` experts of rank ``rank``,
  the authors' entmax-1.5 gate, gates initialized at zero) into ``hidden`` features;
- ``dense``: a dense layer, its width chosen so that the whole model has about as many
  parameters as the ``mumoe`` model;
- ``lowrank``: a low-rank layer into ``hidden`` features, its rank chosen to match the
  ``mumoe`` layer's parameters (capped at full rank).

Each is trained with Adam from ``seeds`` initializations (all seeds of a model in one compiled,
vmapped program, through the runner's `run_sweep`: resumable, diverging runs recorded). For the
``mumoe`` runs, specialization is measured on the test set: the gate vectors ``a(x)`` over the
experts define a joint distribution of class and expert, ``p(c, e) = sum_{x in c} a_e(x) / N``,
and its mutual information ``I(class; expert)`` (bits; at most ``log2 10 = 3.32``) says how much
the choice of experts tells about the class. The control: the same model's gate vectors with the
class labels shuffled (``permutations`` draws), which gives the value expected from no
specialization at this sample size. Also reported: the share of each class's gate mass on its
single most-used expert (mean over classes), against the same shuffled control.
"""

import dataclasses
import math
import platform
import time
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax

from factorjax.dynamics import RunStore, run_sweep
from factorjax.dynamics.storage import save_npz_atomic
from factorjax.experiments._common import pyplot, read_run
from factorjax.experiments._registry import Experiment, register
from factorjax.experiments.digits import load_data

__all__ = ["MODELS", "MoESpecializationConfig", "class_expert_mass", "mutual_information"]

MODELS = ("mumoe", "dense", "lowrank")
N_IN, N_CLASSES = 64, 10


@dataclasses.dataclass(frozen=True)
class MoESpecializationConfig:
    """A multilinear MoE layer against parameter-matched dense and low-rank layers on digits.

    Fields:
        models: which first layers to train (``"mumoe"``, ``"dense"``, ``"lowrank"``).
        hidden: the output width of the ``mumoe`` and ``lowrank`` layers.
        experts: the number of experts of the ``mumoe`` layer.
        rank: its CP rank.
        gate: its gate (``"entmax15"``, ``"softmax"``, ``"sparsemax"``).
        seeds: initializations per model.
        steps: Adam steps on minibatches of ``batch_size``.
        batch_size: examples per step.
        lr: Adam's learning rate.
        log_every: test accuracy every this many steps (``steps`` is a multiple of it).
        permutations: label shuffles of the specialization control.
        test_fraction, split_seed: the train/test split (as the digits experiment).
    """

    models: tuple[str, ...] = MODELS
    hidden: int = 128
    experts: int = 64
    rank: int = 32
    gate: str = "entmax15"
    seeds: int = 5
    steps: int = 600
    batch_size: int = 128
    lr: float = 3e-3
    log_every: int = 100
    permutations: int = 200
    test_fraction: float = 0.25
    split_seed: int = 0

    def __post_init__(self):
        for name in ("hidden", "experts", "rank", "seeds", "steps", "batch_size", "log_every",
                     "permutations"):  # fmt: skip
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"`{name}` must be an int >= 1; got {v!r}.")
        bad = [m for m in self.models if m not in MODELS]
        if bad or not self.models or len(set(self.models)) != len(self.models):
            raise ValueError(
                f"`models` must be a non-empty tuple of distinct names from {MODELS}; got "
                f"{self.models!r}."
            )
        if self.gate not in ("entmax15", "softmax", "sparsemax"):
            raise ValueError(
                f"`gate` must be one of ('entmax15', 'softmax', 'sparsemax'); got {self.gate!r}."
            )
        if self.steps % self.log_every:
            raise ValueError(
                f"`steps` must be a multiple of `log_every` = {self.log_every}; got {self.steps}."
            )
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ValueError(f"`lr` must be a finite float > 0; got {self.lr!r}.")
        if not 0.0 < self.test_fraction < 1.0:
            raise ValueError(f"`test_fraction` must be in (0, 1); got {self.test_fraction!r}.")


# ---------------------------------------------------------------------------------------------
# Models
# ---------------------------------------------------------------------------------------------


class Classifier(eqx.Module):
    """``layer -> ReLU -> head``, called on a batch ``(n, 64)``."""

    layer: eqx.Module
    head: eqx.nn.Linear

    def __call__(self, x):
        h = self.layer(x) if not isinstance(self.layer, eqx.nn.Linear) else jax.vmap(self.layer)(x)
        return jax.vmap(self.head)(jax.nn.relu(h))


def _count(tree) -> int:
    """The entries of the array leaves (arrays or `jax.ShapeDtypeStruct`s)."""
    return sum(math.prod(a.shape) for a in jax.tree.leaves(tree) if hasattr(a, "shape"))


def _mumoe(cfg, key):
    from factorjax.moe import MultilinearMoE

    return MultilinearMoE(N_IN, cfg.hidden, cfg.experts, cfg.rank, format="cp", gate=cfg.gate,
                          key=key)  # fmt: skip


def matched_sizes(cfg: MoESpecializationConfig) -> dict[str, int]:
    """The dense width and the low-rank rank that match the ``mumoe`` model's parameters."""
    moe_layer = _count(eqx.filter_eval_shape(_mumoe, cfg, jax.random.key(0)))
    total = moe_layer + (cfg.hidden + 1) * N_CLASSES
    # dense: (64 + 1) h + (h + 1) 10 = total
    width = max(1, round((total - N_CLASSES) / (N_IN + 1 + N_CLASSES)))
    # low rank: r (64 + hidden) + hidden = moe_layer, at most full rank
    rank = max(1, min(min(N_IN, cfg.hidden), round((moe_layer - cfg.hidden) / (N_IN + cfg.hidden))))
    return {"width": width, "rank": rank, "mumoe_layer_params": moe_layer}


def make_model(cfg: MoESpecializationConfig, model: str, key) -> Classifier:
    from factorjax.nn import FactorizedLinear

    k_layer, k_head = jax.random.split(key)
    sizes = matched_sizes(cfg)
    if model == "mumoe":
        layer, width = _mumoe(cfg, k_layer), cfg.hidden
    elif model == "dense":
        width = sizes["width"]
        layer = eqx.nn.Linear(N_IN, width, key=k_layer)
    else:
        layer, width = FactorizedLinear(N_IN, cfg.hidden, "lowrank", sizes["rank"],
                                        key=k_layer), cfg.hidden  # fmt: skip
    return Classifier(layer, eqx.nn.Linear(width, N_CLASSES, key=k_head))


# ---------------------------------------------------------------------------------------------
# Specialization
# ---------------------------------------------------------------------------------------------


def class_expert_mass(gates: np.ndarray, labels: np.ndarray, classes: int = N_CLASSES):
    """The joint distribution ``p(c, e) = sum_{x in c} a_e(x) / N`` of class and expert, from
    gate vectors ``(N, E)`` on the simplex and labels ``(N,)``."""
    one_hot = np.eye(classes)[labels]
    return one_hot.T @ gates / len(labels)


def mutual_information(joint: np.ndarray) -> float:
    """``I(C; E)`` in bits of a joint distribution ``(classes, experts)``."""
    pc, pe = joint.sum(1, keepdims=True), joint.sum(0, keepdims=True)
    nz = joint > 0
    return float(np.sum(joint[nz] * np.log2(joint[nz] / (pc @ pe)[nz])))


def top1_share(joint: np.ndarray) -> float:
    """The share of each class's gate mass on its most-used expert, averaged over classes."""
    return float(np.mean(joint.max(1) / joint.sum(1)))


def specialization(gates, labels, permutations, seed) -> dict:
    joint = class_expert_mass(gates, labels)
    rng = np.random.default_rng(seed)
    null_mi, null_top = [], []
    for _ in range(permutations):
        j = class_expert_mass(gates, rng.permutation(labels))
        null_mi.append(mutual_information(j))
        null_top.append(top1_share(j))
    return {
        "mi_bits": mutual_information(joint),
        "mi_null_mean": float(np.mean(null_mi)),
        "mi_null_std": float(np.std(null_mi, ddof=1)),
        "top1_share": top1_share(joint),
        "top1_null_mean": float(np.mean(null_top)),
        "joint": joint,
    }


# ---------------------------------------------------------------------------------------------
# Training: every seed of a model in one program
# ---------------------------------------------------------------------------------------------


def _train(cfg: MoESpecializationConfig, model: str, seeds: np.ndarray):
    data = {k: jnp.asarray(v) for k, v in load_data(cfg.test_fraction, cfg.split_seed).items()}
    n_train = data["y_train"].shape[0]
    keys = jnp.stack([jax.random.fold_in(jax.random.key(11), int(s)) for s in seeds])
    models = eqx.filter_vmap(lambda k: make_model(cfg, model, k))(keys)
    params, static = eqx.partition(models, eqx.is_inexact_array)
    opt = optax.adam(cfg.lr)

    def one(p, key):
        def loss_fn(p, x, y):
            logits = eqx.combine(p, static)(x)
            return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

        def accuracy(p):
            logits = eqx.combine(p, static)(data["x_test"])
            return jnp.mean(jnp.argmax(logits, -1) == data["y_test"])

        def step(carry, t):
            p, s, bad, bad_at = carry
            idx = jax.random.permutation(jax.random.fold_in(key, t), n_train)[: cfg.batch_size]
            loss, g = jax.value_and_grad(loss_fn)(p, data["x_train"][idx], data["y_train"][idx])
            u, s_new = opt.update(g, s, p)
            p_new = optax.apply_updates(p, u)
            now_bad = bad | ~jnp.isfinite(loss)
            bad_at = jnp.where(now_bad & ~bad, t, bad_at)
            keep = _keep_where(now_bad)  # a run that went non-finite stays where it was
            return (keep(p, p_new), keep(s, s_new), now_bad, bad_at), loss

        def chunk(carry, c):
            ts = c * cfg.log_every + jnp.arange(cfg.log_every)
            carry, losses = jax.lax.scan(step, carry, ts)
            return carry, (accuracy(carry[0]), losses[-1])

        carry = (p, opt.init(p), jnp.asarray(False), jnp.asarray(-1))
        (p, _, bad, bad_at), (acc, loss) = jax.lax.scan(
            chunk, carry, jnp.arange(cfg.steps // cfg.log_every)
        )
        return p, acc, loss, bad, bad_at

    data_keys = jnp.stack([jax.random.fold_in(jax.random.key(12), int(s)) for s in seeds])
    fn = eqx.filter_jit(eqx.filter_vmap(one))
    p, acc, loss, bad, bad_at = fn(params, data_keys)
    host = (np.asarray(a) for a in (acc, loss, bad, bad_at))
    return eqx.combine(p, static), *host, data


def _keep_where(flag):
    """``keep(old, new)``: the old tree where ``flag`` is set, else the new one."""
    return lambda old, new: jax.tree.map(lambda o, n: jnp.where(flag, o, n), old, new)


def _group_runner(cfg: MoESpecializationConfig, out_dir: Path):
    def run_group(group: dict, batch: dict) -> dict:
        model, seeds = group["model"], batch["seed"].astype(int)
        t0 = time.perf_counter()
        trained, acc, loss, bad, bad_at, data = _train(cfg, model, seeds)
        runs = len(seeds)
        out = {
            "step": np.tile(cfg.log_every * np.arange(1, acc.shape[1] + 1), (runs, 1)),
            "test_acc": acc,
            "train_loss": loss,
            "diverged": bad,
            "diverged_at": bad_at,
            "params": np.full(runs, _count(make_model(cfg, model, jax.random.key(0)))),
        }
        if model == "mumoe":
            stats = {k: [] for k in ("mi_bits", "mi_null_mean", "mi_null_std", "top1_share",
                                     "top1_null_mean")}  # fmt: skip
            labels = np.asarray(data["y_test"])
            for j, s in enumerate(seeds):
                layer = jax.tree.map(lambda a, j=j: a[j] if eqx.is_array(a) else a,
                                     trained.layer)  # fmt: skip
                gates = np.asarray(layer.gates(data["x_test"])[0], np.float64)
                spec = specialization(gates, labels, cfg.permutations, int(s))
                for k in stats:
                    stats[k].append(spec[k])
                save_npz_atomic(Path(out_dir) / "gates" / f"seed={s}.npz", joint=spec["joint"])
            out.update({k: np.asarray(v) for k, v in stats.items()})
        out["seconds"] = np.full(runs, (time.perf_counter() - t0) / runs)
        print(f"moe-specialization: {model:<8} {runs} runs in {time.perf_counter() - t0:5.1f} s",
              flush=True)  # fmt: skip
        return out

    return run_group


def run_moe_specialization(cfg: MoESpecializationConfig, out_dir: Path) -> list[dict]:
    """Run (or resume) the experiment into ``out_dir``, then write its table and figure."""
    try:
        import sklearn  # noqa: F401
    except ImportError:
        raise ImportError(
            "the moe-specialization experiment needs scikit-learn: pip install "
            "'factorjax[examples]'."
        ) from None
    out_dir = Path(out_dir)
    (out_dir / "gates").mkdir(parents=True, exist_ok=True)
    store = RunStore(out_dir)
    store.write_config(
        {"experiment": "moe-specialization", "config": dataclasses.asdict(cfg),
         "sizes": matched_sizes(cfg),
         "versions": {"python": platform.python_version(), "jax": jax.__version__}},
        volatile=("versions",),
    )  # fmt: skip
    settings = [{"model": m, "seed": s} for m in cfg.models for s in range(cfg.seeds)]
    records = run_sweep(store, settings, _group_runner(cfg, out_dir), group_keys=("model",))
    for p in plot_moe_specialization(out_dir):
        print(f"figure: {p}")
    print((out_dir / "results.md").read_text())
    return records


# ---------------------------------------------------------------------------------------------
# Table and figure
# ---------------------------------------------------------------------------------------------


def _mean_std(values) -> str:
    v = np.asarray(values, float)
    return f"{v.mean():.3f} ± {v.std(ddof=1) if len(v) > 1 else 0.0:.3f}"


def plot_moe_specialization(out_dir: Path) -> list[Path]:
    """(Re)write ``results.md`` and ``specialization.png`` from a run folder."""
    plt = pyplot()

    out_dir = Path(out_dir)
    store, stored = read_run(out_dir)
    cfg, sizes = stored["config"], stored["sizes"]
    records = list(store.finished().values())
    by_model: dict[str, list] = {}
    for r in records:
        by_model.setdefault(r["model"], []).append(r)
    describe = {
        "mumoe": f"μMoE CP, {cfg['experts']} experts, rank {cfg['rank']}, {cfg['gate']} gate "
        f"-> {cfg['hidden']}",
        "dense": f"dense -> {sizes['width']} (parameter-matched width)",
        "lowrank": f"low rank {sizes['rank']} -> {cfg['hidden']} (parameter-matched rank)",
    }
    lines = [
        "# moe-specialization: a multilinear MoE layer on digits",
        "",
        f"Classifier `64 -> layer -> ReLU -> 10`, {cfg['steps']} Adam steps (lr {cfg['lr']:g}, "
        f"batch {cfg['batch_size']}), {cfg['seeds']} seeds; test accuracy on "
        f"{round(1797 * cfg['test_fraction'])} held-out digits.",
        "",
        "| first layer | params (model) | test accuracy | diverged |",
        "|---|---|---|---|",
    ]
    for m in cfg["models"]:
        runs = by_model.get(m, [])
        ok = [r for r in runs if r["status"] == "ok"]
        if not runs:
            continue
        acc = _mean_std([r["final"]["test_acc"] for r in ok]) if ok else "-"
        lines.append(f"| {describe[m]} | {int(runs[0]['final']['params']):,} | {acc} | "
                     f"{len(runs) - len(ok)} |")  # fmt: skip
    moe = [r for r in by_model.get("mumoe", []) if r["status"] == "ok"]
    if moe:
        f = [r["final"] for r in moe]
        z = [(x["mi_bits"] - x["mi_null_mean"]) / x["mi_null_std"] for x in f]
        lines += [
            "",
            "Specialization of the μMoE experts on the test set (mean ± std over seeds): the "
            "mutual information between the class and the gate's choice of expert, and the "
            "share of a class's gate mass on its most-used expert, against the same gates with "
            f"the labels shuffled ({cfg['permutations']} shuffles).",
            "",
            "| measure | trained gates | shuffled labels (control) |",
            "|---|---|---|",
            f"| I(class; expert), bits (max {math.log2(N_CLASSES):.2f}) | "
            f"{_mean_std([x['mi_bits'] for x in f])} | {_mean_std([x['mi_null_mean'] for x in f])} "
            f"(std of a shuffle {np.mean([x['mi_null_std'] for x in f]):.4f}) |",
            f"| top-expert share of a class's mass | {_mean_std([x['top1_share'] for x in f])} | "
            f"{_mean_std([x['top1_null_mean'] for x in f])} |",
            "",
            f"The trained value lies {min(z):.0f} to {max(z):.0f} standard deviations of the "
            "shuffled control above its mean.",
        ]
    (out_dir / "results.md").write_text("\n".join(lines) + "\n")

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    names = [m for m in cfg["models"] if by_model.get(m)]
    for i, m in enumerate(names):
        accs = [r["final"]["test_acc"] for r in by_model[m] if r["status"] == "ok"]
        axes[0].bar(i, np.mean(accs), yerr=np.std(accs), capsize=4)
    axes[0].set_xticks(range(len(names)))
    axes[0].set_xticklabels(
        [f"{m}\n{int(by_model[m][0]['final']['params']):,} params" for m in names]
    )
    axes[0].set_ylim(0.8, 1.0)
    axes[0].set_ylabel("test accuracy")
    axes[0].set_title("parameter-matched first layers")
    joint_path = out_dir / "gates" / "seed=0.npz"
    if joint_path.exists():
        with np.load(joint_path) as z:
            joint = z["joint"]
        cond = joint / joint.sum(1, keepdims=True)
        order = np.argsort(np.argmax(cond, 0) * 10 - cond.max(0))
        im = axes[1].imshow(cond[:, order], aspect="auto", cmap="viridis")
        fig.colorbar(im, ax=axes[1], label="p(expert | class)")
        axes[1].set_xlabel("expert (sorted by the class it serves most)")
        axes[1].set_ylabel("class")
        axes[1].set_yticks(range(N_CLASSES))
        axes[1].set_title("μMoE gate mass by class (seed 0, test set)")
    fig.tight_layout()
    path = out_dir / "specialization.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return [path]


register(
    Experiment(
        "moe-specialization",
        "a multilinear MoE layer on digits: accuracy vs matched dense / low-rank, specialization",
        MoESpecializationConfig,
        {"seeds": 2, "steps": 200, "permutations": 50},
        run_moe_specialization,
        plot_moe_specialization,
    )
)
