"""A worked example on real data: factorized MLPs on scikit-learn's handwritten digits.

The MLP ``64 -> H -> H -> 10`` (ReLU) classifies the 1,797 8x8 digits of
``sklearn.datasets.load_digits`` (shipped inside scikit-learn: nothing is downloaded), on a
fixed train/test split (``split_seed``), pixels standardized with the training statistics. Its
two hidden layers (``64 -> H`` and ``H -> H``) are

- dense (``eqx.nn.Linear`` / ``nnx.Linear``): the baseline;
- trained factorized: a `factorjax.nn.FactorizedLinear` (Equinox) or
  `factorjax.nnx.FactorizedLinear` (Flax NNX) of each format at each parameter budget (a
  fraction of the dense weight's parameter count, the ``rank`` of the layers), from scratch;
- post-hoc factorized: the trained dense model through `factorjax.nn.factorize` /
  `factorjax.nnx.factorize` at the same budgets, scored as it comes out and again after a short
  fine-tune.

The classifier head ``H -> 10`` stays dense. Both frameworks train from the same initial
weights (the NNX model is built from the Equinox model's arrays) with the same minibatches, so
their accuracies agree up to float rounding.

Computation. The runs of one ``(stage, framework, format)`` share one compiled program: every
run is padded with zeros to the largest budget's ranks and masked back to its own (the layers'
``rank=`` argument), which changes nothing in the function or its gradient (a zero-padded
component has zero gradient), so budgets and seeds are one batch, mapped with ``lax.map`` (or
``jax.vmap``, ``batching="vmap"``) and split over the local devices by `map_runs`. The trained
and post-hoc runs of a format reuse the same program. Runs are recorded group by group in the
runner's `RunStore` (``runs.jsonl``, per-run trajectories), so an interrupted run resumes
without redoing finished runs; a run whose loss or parameters become non-finite is frozen,
recorded as diverged, and left out of the table.
"""

import dataclasses
import functools
import math
import platform
import time
from pathlib import Path
from typing import Any, Literal

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax

from factorjax.dynamics import RunStore, run_sweep
from factorjax.dynamics.parallel import is_writer, map_runs
from factorjax.dynamics.storage import save_npz_atomic
from factorjax.experiments._digits_report import plot_digits
from factorjax.experiments._registry import Experiment, register
from factorjax.factorizations._masks import rank_axes
from factorjax.factorizations._registry import FORMATS, resolve_rank
from factorjax.nn import FactorizedLinear

__all__ = ["FRAMEWORKS", "DigitsConfig", "layer_shapes"]

FRAMEWORKS = ("equinox", "nnx")
HIDDEN_LAYERS = "layers.[01]"  # the `where` of factorize: the two hidden layers
N_IN, N_CLASSES = 64, 10


@dataclasses.dataclass(frozen=True)
class DigitsConfig:
    """Factorized MLPs on scikit-learn's digits.

    Fields:
        hidden: the width ``H`` of the two hidden layers.
        formats: the formats of the factorized hidden layers (`factorjax.factorizations.FORMATS`).
        budgets: parameter budgets, fractions in ``(0, 1]`` of each hidden weight's dense
            parameter count (the layers' ``rank``).
        frameworks: ``"equinox"`` and/or ``"nnx"``.
        seeds: runs per setting (initial weights and minibatch order; the split is fixed).
        steps: Adam steps of training, on minibatches of ``batch_size``.
        batch_size: examples per step (drawn without replacement at every step).
        lr: Adam's learning rate for training.
        posthoc: also factorize the trained dense models (`factorjax.nn.factorize`).
        finetune_steps: Adam steps of the fine-tune after the post-hoc factorization.
        finetune_lr: its learning rate.
        log_every: metrics (full train loss and accuracy, test accuracy) every this many steps;
            ``steps`` and ``finetune_steps`` are multiples of it.
        test_fraction: the share of the 1,797 images held out for testing.
        split_seed: the seed of the train/test split.
        seed_offset: the first seed.
        batching: the runs of a group as ``lax.map`` (one after another: the faster on a CPU)
            or ``vmap`` (all at once: for an accelerator).
    """

    hidden: int = 256
    formats: tuple[str, ...] = FORMATS
    budgets: tuple[float, ...] = (0.02, 0.05, 0.1, 0.25)
    frameworks: tuple[str, ...] = FRAMEWORKS
    seeds: int = 3
    steps: int = 400
    batch_size: int = 128
    lr: float = 3e-3
    posthoc: bool = True
    finetune_steps: int = 200
    finetune_lr: float = 1e-3
    log_every: int = 50
    test_fraction: float = 0.25
    split_seed: int = 0
    seed_offset: int = 0
    batching: Literal["map", "vmap"] = "map"

    def __post_init__(self):
        for name in ("hidden", "seeds", "steps", "batch_size", "finetune_steps", "log_every"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"`{name}` must be an int >= 1; got {value!r}.")
        for name, allowed in (("formats", FORMATS), ("frameworks", FRAMEWORKS)):
            values = getattr(self, name)
            bad = [v for v in values if v not in allowed]
            if bad or not values or len(set(values)) != len(values):
                raise ValueError(
                    f"`{name}` must be a non-empty tuple of distinct names from {allowed}; got "
                    f"{values!r}" + (f" (unknown: {bad})." if bad else ".")
                )
        b = self.budgets
        if not b or len(set(b)) != len(b) or any(not 0.0 < x <= 1.0 for x in b):
            raise ValueError(
                f"`budgets` must be a non-empty tuple of distinct fractions in (0, 1]; got {b!r}."
            )
        for name in ("lr", "finetune_lr"):
            if not (getattr(self, name) > 0 and math.isfinite(getattr(self, name))):
                raise ValueError(f"`{name}` must be a finite float > 0; got {getattr(self, name)}.")
        if not 0.0 < self.test_fraction < 1.0:
            raise ValueError(f"`test_fraction` must be in (0, 1); got {self.test_fraction!r}.")
        for name in ("steps", "finetune_steps"):
            if getattr(self, name) % self.log_every:
                raise ValueError(
                    f"`{name}` must be a multiple of `log_every` = {self.log_every}; got "
                    f"{getattr(self, name)}."
                )
        if self.batching not in ("map", "vmap"):
            raise ValueError(f"`batching` must be 'map' or 'vmap'; got {self.batching!r}.")

    def check_budgets(self) -> None:
        """Refuse a budget too small for a format (even rank 1 exceeds it)."""
        for fmt in self.formats:
            for d_out, d_in in layer_shapes(self.hidden)[:2]:
                for b in self.budgets:
                    try:
                        resolve_rank(fmt, d_out, d_in, float(b))
                    except ValueError as e:
                        raise ValueError(f"budget {b} with format {fmt!r}: {e}") from None

    def settings(self) -> list[dict]:
        """One dict per run, ``stage, framework, format, budget, seed``, in run order: the
        trained models (dense first), then the post-hoc factorizations."""
        seeds = range(self.seed_offset, self.seed_offset + self.seeds)
        out = []
        for fw in self.frameworks:
            out += [dict(stage="train", framework=fw, format="dense", budget=1.0, seed=s)
                    for s in seeds]  # fmt: skip
            out += [dict(stage="train", framework=fw, format=f, budget=float(b), seed=s)
                    for f in self.formats for b in self.budgets for s in seeds]  # fmt: skip
        if self.posthoc:
            for fw in self.frameworks:
                out += [dict(stage="posthoc", framework=fw, format=f, budget=float(b), seed=s)
                        for f in self.formats for b in self.budgets for s in seeds]  # fmt: skip
        return out


def layer_shapes(hidden: int) -> list[tuple[int, int]]:
    """The ``(d_out, d_in)`` of the MLP's three weights (the first two are factorized)."""
    return [(hidden, N_IN), (hidden, hidden), (N_CLASSES, hidden)]


# ---------------------------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------------------------


@functools.cache
def load_data(test_fraction: float, split_seed: int) -> dict[str, np.ndarray]:
    """The digits split into ``x_train, y_train, x_test, y_test``, standardized by the training
    pixels' mean and standard deviation (a constant pixel is only centred)."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    x, y = digits.data.astype(np.float32), digits.target.astype(np.int32)
    perm = np.random.default_rng(split_seed).permutation(len(x))
    n_test = round(test_fraction * len(x))
    test, train = perm[:n_test], perm[n_test:]
    mean, std = x[train].mean(0), x[train].std(0)
    std[std == 0] = 1.0
    x = (x - mean) / std
    return {"x_train": x[train], "y_train": y[train], "x_test": x[test], "y_test": y[test]}


# ---------------------------------------------------------------------------------------------
# The models: a framework-free "spec" [(weight, bias)] * 3, and an Equinox or NNX MLP from it
# ---------------------------------------------------------------------------------------------


class MLP(eqx.Module):
    """``64 -> H -> H -> 10`` with ReLU; each layer an ``eqx.nn.Linear`` or a
    `FactorizedLinear`, called on a batch ``(n, 64)``. ``ranks`` masks the factorized layers
    to their first ``ranks[i]`` components (a traced int: padded runs share one program)."""

    layers: tuple

    def __call__(self, x, ranks=None):
        return _forward(self.layers, x, ranks)


def _forward(layers, x, ranks):
    for i, layer in enumerate(layers):
        if isinstance(layer, eqx.nn.Linear):
            x = jax.vmap(layer)(x)
        elif ranks is not None and _is_factorized(layer):
            x = layer(x, rank=ranks[i])
        else:
            x = layer(x)
        if i < len(layers) - 1:
            x = jax.nn.relu(x)
    return x


def _is_factorized(layer) -> bool:
    return type(layer).__name__ == "FactorizedLinear"


@functools.cache
def _nnx_mlp():
    from flax import nnx

    class NnxMLP(nnx.Module):
        """The same MLP in Flax NNX: ``nnx.Linear`` or `factorjax.nnx.FactorizedLinear`."""

        def __init__(self, layers):
            self.layers = nnx.List(layers)

        def __call__(self, x, ranks=None):
            return _forward(list(self.layers), x, ranks)

    return NnxMLP


def _eqx_dense(w, b) -> eqx.nn.Linear:
    d_out, d_in = w.shape
    layer = eqx.nn.Linear(d_in, d_out, key=jax.random.key(0))
    return eqx.tree_at(lambda m: (m.weight, m.bias), layer, (jnp.asarray(w), jnp.asarray(b)))


def build(framework: str, spec: list) -> Any:
    """The Equinox or NNX MLP holding ``spec`` (``[(weight, bias)] * 3``, each weight a dense
    ``(d_out, d_in)`` array or a factorization)."""
    if framework == "equinox":
        return MLP(tuple(
            _eqx_dense(w, b) if _is_array(w) else FactorizedLinear.from_weight(w, jnp.asarray(b))
            for w, b in spec
        ))  # fmt: skip
    from flax import nnx

    import factorjax.nnx

    layers = []
    for w, b in spec:
        if _is_array(w):
            layer = nnx.Linear(w.shape[1], w.shape[0], rngs=nnx.Rngs(0))
            layer.kernel[...] = jnp.asarray(w).T
            layer.bias[...] = jnp.asarray(b)
        else:
            layer = factorjax.nnx.FactorizedLinear.from_weight(w, jnp.asarray(b))
        layers.append(layer)
    return _nnx_mlp()(layers)


def spec_of(framework: str, model: Any) -> list:
    """The ``[(weight, bias)]`` of an MLP of either framework."""
    out = []
    for layer in model.layers:
        if framework == "equinox":
            out.append((layer.weight, layer.bias))
        elif _is_factorized(layer):
            out.append((layer.factorization, layer.bias[...]))
        else:
            out.append((layer.kernel[...].T, layer.bias[...]))
    return out


def _is_array(w) -> bool:
    return isinstance(w, np.ndarray | jax.Array)


def _count(tree) -> int:
    return sum(math.prod(np.shape(x)) for x in jax.tree.leaves(tree))


def _init_spec(cfg: DigitsConfig, fmt: str, budget: float, seeds: np.ndarray) -> list[list]:
    """The initial specs of a group's runs at one budget, drawn for all seeds at once
    (``eqx.filter_vmap`` over the seeds' keys; the same key per seed at every budget)."""
    shapes = layer_shapes(cfg.hidden)

    def make(seed):
        keys = jax.random.split(jax.random.fold_in(jax.random.key(1), seed), 3)
        layers = []
        for i, ((d_out, d_in), key) in enumerate(zip(shapes, keys, strict=True)):
            if fmt == "dense" or i == 2:
                layers.append(eqx.nn.Linear(d_in, d_out, key=key))
            else:
                layers.append(FactorizedLinear(d_in, d_out, fmt, budget, key=key))
        return MLP(tuple(layers))

    stacked = spec_of("equinox", eqx.filter_vmap(make)(jnp.asarray(seeds)))
    return [jax.tree.map(lambda a, j=j: np.asarray(a[j]), stacked) for j in range(len(seeds))]


def _template(cfg: DigitsConfig, fmt: str) -> list:
    """The spec every run of a format is padded to: the largest budget's layers."""
    if fmt == "dense":
        return _init_spec(cfg, "dense", 1.0, np.zeros(1, int))[0]
    return _init_spec(cfg, fmt, max(cfg.budgets), np.zeros(1, int))[0]


def _pad(spec: list, template: list) -> list:
    """``spec`` with every factor zero-padded to the template's shapes (in the template's
    pytree structure): the same function, and zero gradient on the padding."""
    out = []
    for (w, b), (tw, _) in zip(spec, template, strict=True):
        if _is_array(w):
            out.append((np.asarray(w), np.asarray(b)))
            continue
        leaves, tleaves = jax.tree.leaves(w), jax.tree.leaves(tw)
        if len(leaves) != len(tleaves) or any(
            np.ndim(a) != np.ndim(t)
            or any(s > u for s, u in zip(np.shape(a), np.shape(t), strict=True))
            for a, t in zip(leaves, tleaves, strict=True)
        ):
            raise ValueError(
                f"a {type(w).__name__} with factors {[np.shape(a) for a in leaves]} does not fit "
                f"in the group's padded layer {[np.shape(t) for t in tleaves]}."
            )
        padded = [
            np.pad(
                np.asarray(a), [(0, u - s) for s, u in zip(np.shape(a), np.shape(t), strict=True)]
            )
            for a, t in zip(leaves, tleaves, strict=True)
        ]
        out.append((jax.tree.unflatten(jax.tree.structure(tw), padded), np.asarray(b)))
    return out


def _mask_ranks(spec: list) -> list[int]:
    """Per layer, the rank its padded copy is masked to (0 for a dense layer: no mask)."""
    return [0 if _is_array(w) else max(rank_axes(w)) for w, _ in spec]


# ---------------------------------------------------------------------------------------------
# Training: one compiled program per (framework, format)
# ---------------------------------------------------------------------------------------------


def _flatten(framework: str, model: Any) -> tuple[list, Any, Any]:
    """The model's trainable arrays, their structure, and ``rebuild(leaves) -> model``."""
    if framework == "equinox":
        params, static = eqx.partition(model, eqx.is_inexact_array)
        leaves, treedef = jax.tree.flatten(params)
        return leaves, treedef, lambda ls: eqx.combine(jax.tree.unflatten(treedef, ls), static)
    from flax import nnx

    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    leaves, treedef = jax.tree.flatten(params)
    return (
        leaves,
        (graphdef, treedef),
        lambda ls: nnx.merge(graphdef, jax.tree.unflatten(treedef, ls), rest),
    )


@functools.cache
def _program(cfg: DigitsConfig, framework: str, fmt: str):
    """The batched chunk of ``log_every`` Adam steps of every run of a group (cached: the same
    function object for every call, so that `map_runs` compiles it once per batch size)."""
    template = _template(cfg, fmt)
    _, structure, rebuild = _flatten(framework, build(framework, template))
    data = {k: jnp.asarray(v) for k, v in load_data(cfg.test_fraction, cfg.split_seed).items()}
    n_train = data["y_train"].shape[0]

    def loss_fn(leaves, x, y, ranks):
        logits = rebuild(leaves)(x, ranks)
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    def evaluate(leaves, ranks):
        model = rebuild(leaves)
        logits = model(data["x_train"], ranks)
        loss = optax.softmax_cross_entropy_with_integer_labels(logits, data["y_train"]).mean()
        train_acc = jnp.mean(jnp.argmax(logits, -1) == data["y_train"])
        test_acc = jnp.mean(jnp.argmax(model(data["x_test"], ranks), -1) == data["y_test"])
        return {"train_loss": loss, "train_acc": train_acc, "test_acc": test_acc}

    def one(run):
        opt = optax.adam(run["lr"])
        data_key = jax.random.fold_in(jax.random.fold_in(jax.random.key(2), run["seed"]),
                                      run["stream"])  # fmt: skip

        def step(carry, t):
            leaves, opt_state, diverged, diverged_at = carry
            idx = jax.random.permutation(jax.random.fold_in(data_key, t), n_train)
            idx = idx[: cfg.batch_size]
            x, y = data["x_train"][idx], data["y_train"][idx]
            loss, grads = jax.value_and_grad(loss_fn)(leaves, x, y, run["ranks"])
            updates, new_opt = opt.update(grads, opt_state, leaves)
            new = optax.apply_updates(leaves, updates)
            bad = ~jnp.isfinite(loss)
            for a in new:
                bad = bad | ~jnp.all(jnp.isfinite(a))
            keep = diverged | bad
            pick = functools.partial(jax.tree.map, lambda o, n: jnp.where(keep, o, n))
            diverged_at = jnp.where(bad & ~diverged, t, diverged_at)
            return (pick(leaves, new), pick(opt_state, new_opt), keep, diverged_at), None

        start = jax.lax.cond(
            run["step"] == 0,
            lambda: evaluate(run["leaves"], run["ranks"]),
            lambda: {k: jnp.zeros((), jnp.float32) for k in ("train_loss", "train_acc",
                                                             "test_acc")},
        )  # fmt: skip
        carry = (run["leaves"], run["opt"], run["diverged"], run["diverged_at"])
        ts = run["step"] + jnp.arange(cfg.log_every)
        (leaves, opt_state, diverged, diverged_at), _ = jax.lax.scan(step, carry, ts)
        new_run = {**run, "leaves": leaves, "opt": opt_state, "diverged": diverged,
                   "diverged_at": diverged_at, "step": run["step"] + cfg.log_every}  # fmt: skip
        return new_run, {"start": start, "end": evaluate(leaves, run["ranks"])}

    def batched(batch):
        if cfg.batching == "vmap":
            return jax.vmap(one)(batch)
        return jax.lax.map(one, batch)

    return batched, structure, rebuild


def _train(cfg, framework, fmt, specs, seeds, *, lr, steps, stream) -> tuple[dict, list]:
    """Train the runs of ``specs`` (padded to the group's template) for ``steps`` steps.

    Returns the history (``step``, ``train_loss``, ``train_acc``, ``test_acc``: ``(runs,
    records)``; ``diverged``, ``diverged_at``: ``(runs,)``) and the trained leaves per run."""
    fn, structure, _ = _program(cfg, framework, fmt)
    template = _template(cfg, fmt)
    leaves = []
    for spec in specs:
        ls, st, _ = _flatten(framework, build(framework, _pad(spec, template)))
        if st != structure:  # pragma: no cover - _pad guarantees it
            raise ValueError("a run's model does not match its group's compiled structure.")
        leaves.append(ls)
    stacked = [np.stack([np.asarray(ls[i]) for ls in leaves]) for i in range(len(leaves[0]))]
    runs = len(specs)
    state = {
        "leaves": stacked,
        "opt": jax.vmap(optax.adam(lr).init)(stacked),
        "ranks": np.asarray([_mask_ranks(s) for s in specs], np.int32),
        "seed": np.asarray(seeds, np.int32),
        "stream": np.full(runs, stream, np.int32),
        "step": np.zeros(runs, np.int32),
        "lr": np.full(runs, lr, np.float32),
        "diverged": np.zeros(runs, bool),
        "diverged_at": np.full(runs, -1, np.int32),
    }
    history = []
    for c in range(steps // cfg.log_every):
        state, metrics = map_runs(fn, state)
        if c == 0:
            history.append({"step": np.zeros(runs, np.int32), **metrics["start"]})
        history.append({"step": state["step"], **metrics["end"]})
    out = {k: np.stack([h[k] for h in history], axis=1) for k in history[0]}
    out["diverged"], out["diverged_at"] = state["diverged"], state["diverged_at"]
    trained = [[a[j] for a in state["leaves"]] for j in range(runs)]
    return out, trained


# ---------------------------------------------------------------------------------------------
# Post-hoc factorization of the trained dense models
# ---------------------------------------------------------------------------------------------


def _model_path(out_dir: Path, framework: str, seed: int) -> Path:
    return Path(out_dir) / "models" / f"dense_{framework}_seed={seed}.npz"


def _save_dense(out_dir: Path, framework: str, seed: int, spec: list) -> None:
    (Path(out_dir) / "models").mkdir(exist_ok=True)
    arrays = {}
    for i, (w, b) in enumerate(spec):
        arrays[f"w{i}"], arrays[f"b{i}"] = np.asarray(w), np.asarray(b)
    save_npz_atomic(_model_path(out_dir, framework, seed), **arrays)


def _load_dense(out_dir: Path, framework: str, seed: int) -> list:
    path = _model_path(out_dir, framework, seed)
    if not path.exists():
        raise FileNotFoundError(
            f"{path} is missing: the post-hoc runs factorize the trained dense model of seed "
            f"{seed}, saved there when it finished. Remove the dense runs of {framework!r} from "
            "runs.jsonl to train them again, or use a new output folder."
        )
    with np.load(path) as z:
        return [(z[f"w{i}"], z[f"b{i}"]) for i in range(3)]


def _relative_error(w, w_hat) -> float:
    w, w_hat = np.asarray(w, np.float64), np.asarray(w_hat, np.float64)
    return float(np.linalg.norm(w - w_hat) / np.linalg.norm(w))


def factorize_model(framework: str, model: Any, fmt: str, budget: float, *, seed: int = 0):
    """The model with its two hidden layers factorized at ``budget`` by the framework's
    `factorize`, and the relative reconstruction error of each layer's weight.

    ``factorize`` starts CP-ALS from the HOSVD, which needs a CP rank no larger than the
    tensorized weight's modes; above that (and only there) a ``"cp"`` layer is decomposed
    here by `CP.from_matrix` from a random start (``key`` from ``seed``), as `factorize`
    cannot take a key."""
    if framework == "equinox":
        from factorjax.nn import factorize
    else:
        from factorjax.nnx import factorize
    try:
        new, reports = factorize(model, HIDDEN_LAYERS, fmt, budget)
        return new, [r.error for r in reports]
    except ValueError as e:
        if fmt != "cp" or "key=" not in str(e):
            raise
    from factorjax.factorizations import CP

    spec, errors = spec_of(framework, model), []
    for i in range(2):
        w, b = spec[i]
        rank = resolve_rank("cp", *np.shape(w), budget)
        key = jax.random.fold_in(jax.random.fold_in(jax.random.key(3), seed), i)
        op = CP.from_matrix(jnp.asarray(w), rank, key=key)
        spec[i] = (op, b)
        errors.append(_relative_error(w, op.to_matrix()))
    return build(framework, spec), errors


# ---------------------------------------------------------------------------------------------
# The sweep
# ---------------------------------------------------------------------------------------------


def _group_runner(cfg: DigitsConfig, out_dir: Path):
    def run_group(group: dict, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        stage, fw, fmt = group["stage"], group["framework"], group["format"]
        budgets, seeds = batch["budget"], batch["seed"].astype(int)
        runs = len(seeds)
        t0 = time.perf_counter()
        extra: dict[str, Any] = {}
        if stage == "train":
            specs: list = [None] * runs
            for b in dict.fromkeys(budgets.tolist()):
                idx = np.nonzero(budgets == b)[0]
                for j, spec in zip(idx, _init_spec(cfg, fmt, b, seeds[idx]), strict=True):
                    specs[j] = spec
            hist, trained = _train(cfg, fw, fmt, specs, seeds, lr=cfg.lr, steps=cfg.steps, stream=0)
            if fmt == "dense" and is_writer():
                rebuild = _program(cfg, fw, fmt)[2]
                for s, leaves in zip(seeds, trained, strict=True):
                    spec = spec_of(fw, rebuild([jnp.asarray(a) for a in leaves]))
                    _save_dense(out_dir, fw, int(s), spec)
        else:
            specs, errors = [], []
            for b, s in zip(budgets.tolist(), seeds.tolist(), strict=True):
                model = build(fw, _load_dense(out_dir, fw, s))
                new, err = factorize_model(fw, model, fmt, b, seed=s)
                specs.append(spec_of(fw, new))
                errors.append(err)
            hist, _ = _train(
                cfg, fw, fmt, specs, seeds, lr=cfg.finetune_lr, steps=cfg.finetune_steps,
                stream=1,
            )  # fmt: skip
            extra["test_acc_factorized"] = hist["test_acc"][:, 0]
            extra["train_loss_factorized"] = hist["train_loss"][:, 0]
            for i in range(2):
                extra[f"rel_error{i}"] = np.asarray([e[i] for e in errors])
        extra["params"] = np.asarray([_count(s) for s in specs])
        for i in range(2):
            extra[f"weight_params{i}"] = np.asarray([_count(s[i][0]) for s in specs])
            extra[f"rank{i}"] = np.asarray([_mask_ranks(s)[i] for s in specs])
        seconds = time.perf_counter() - t0
        extra["seconds"] = np.full(runs, seconds / runs)
        extra["group_seconds"] = np.full(runs, seconds)
        if is_writer():
            print(f"digits: {stage:<7} {fw:<7} {fmt:<12} {runs:3d} runs in {seconds:6.1f} s",
                  flush=True)  # fmt: skip
        return {**hist, **extra}

    return run_group


def _environment() -> dict:
    versions = {"python": platform.python_version(), "jax": jax.__version__,
                "numpy": np.__version__, "optax": optax.__version__}  # fmt: skip
    for name in ("equinox", "flax", "sklearn"):
        try:
            versions[name] = __import__(name).__version__
        except (ImportError, AttributeError):
            versions[name] = None
    devices = {"process_count": jax.process_count(), "platform": jax.default_backend(),
               "local": [str(d) for d in jax.local_devices()]}  # fmt: skip
    return {"versions": versions, "devices": devices}


def run_digits(cfg: DigitsConfig, out_dir: Path) -> list[dict]:
    """Run (or resume) the experiment into ``out_dir``, then write its table and figure.

    Returns:
        The records of all runs.
    """
    for name, module, extra in (("sklearn", "scikit-learn", "examples"), ("flax", "flax", "flax")):
        if name == "flax" and "nnx" not in cfg.frameworks:
            continue
        try:
            __import__(name)
        except ImportError:
            raise ImportError(
                f"the digits experiment needs {module}: pip install 'factorjax[{extra}]'."
            ) from None
    cfg.check_budgets()
    out_dir = Path(out_dir)
    store = RunStore(out_dir)
    if is_writer():
        store.write_config(
            {"experiment": "digits", "config": dataclasses.asdict(cfg), **_environment()},
            volatile=("versions", "devices"),
        )
    settings = cfg.settings()
    from factorjax.dynamics import run_id

    done = store.finished()
    todo = sum(run_id(s) not in done for s in settings)
    if is_writer():
        print(f"digits: {todo} of {len(settings)} runs to do", flush=True)
    t0 = time.perf_counter()
    records = run_sweep(
        store, settings, _group_runner(cfg, out_dir), group_keys=("stage", "framework", "format")
    )
    if is_writer():
        if todo:
            print(f"digits: {todo} runs in {time.perf_counter() - t0:.1f} s (compile included)")
        for p in plot_digits(out_dir):
            print(f"figure: {p}")
        print((out_dir / "results.md").read_text())
    return records


register(
    Experiment(
        "digits",
        "worked example: factorized MLPs on scikit-learn's digits, trained or post-hoc",
        DigitsConfig,
        {
            "formats": ("lowrank", "tt"),
            "budgets": (0.05, 0.25),
            "seeds": 2,
            "steps": 200,
            "finetune_steps": 50,
        },
        run_digits,
        plot_digits,
    )
)
