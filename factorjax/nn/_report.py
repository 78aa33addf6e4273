"""What `factorize` shares between Equinox and Flax NNX: layer paths, the ``where`` selection,
per-layer settings, error messages, and the per-layer report.

Nothing here imports Flax: `factorjax.nn` (Equinox) and `factorjax.nnx` both use it.

A layer's *path* is the dotted string of attribute names, sequence indices and dict keys from
the model to the layer: ``"layers.0"`` for the first layer of an ``eqx.nn.MLP`` (or of an
``nnx.List`` attribute ``layers``), ``"blocks.2.attn.query"``, ``"heads.cls"``. A model that
is itself the layer has the path ``""``. The same structure gives the same paths in both
frameworks.
"""

import contextlib
import dataclasses
import fnmatch
import math
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from factorjax.factorizations._lookup import lookup
from factorjax.factorizations._masks import rank_axes

__all__ = ["LayerReport", "Reports", "format_table"]


@dataclasses.dataclass(frozen=True)
class LayerReport:
    """What `factorize` (or a ``from_*`` conversion) did to one layer.

    Fields:
        path: the layer's dotted path in the model (``"layers.0"``; ``""`` for the model
            itself).
        layer: the type name of the layer replaced (``"Linear"``, ``"Conv2d"``, ``"Embed"``).
        format: the format of its factorization (``"lowrank"``, ``"tt"``, ...).
        rank: the size of each rank axis of the factorization (an int for one axis: the rank of
            ``lowrank``, ``cp``, ``kronecker``; a tuple for several: the inner ranks of ``tt``,
            the core shape of ``tucker``).
        params_before, params_after: the layer's parameter count (weight and bias) before and
            after.
        error: the relative Frobenius reconstruction error of the weight,
            ``||W - W_hat||_F / ||W||_F``, of the dense weight as the layer stores it (0 for an
            exact factorization, up to float rounding).
        flops_before, flops_after: FLOPs per example (a multiply-add counts 2; the bias is
            left out). A linear layer's example is one input vector: ``2 d_in d_out`` dense,
            ``plan(1).flops`` (the planned order) factorized. A convolution's is one output
            position: ``2 C_out C_in prod(k)`` dense; factorized, the planned order's FLOPs
            on an unpadded input with 32 output positions a side, divided by their number. An
            embedding's is one looked-up row: 0 dense (a gather), and factorized the FLOPs
            XLA's cost analysis counts for computing one row from the factors.
    """

    path: str
    layer: str
    format: str
    rank: Any
    params_before: int
    params_after: int
    error: float
    flops_before: int
    flops_after: int

    @property
    def compression(self) -> float:
        """``params_before / params_after`` (above 1 when the layer shrank)."""
        return self.params_before / max(1, self.params_after)

    def __str__(self) -> str:
        return format_table([self])


_HEAD = ("path", "layer", "format", "rank", "params", "after", "x", "rel. error", "FLOPs", "after")


def _row(r: LayerReport) -> tuple[str, ...]:
    return (
        r.path or "(model)", r.layer, r.format, str(r.rank), f"{r.params_before:,}",
        f"{r.params_after:,}", f"{r.compression:.2f}", f"{r.error:.3e}",
        f"{r.flops_before:,}", f"{r.flops_after:,}",
    )  # fmt: skip


def format_table(reports: Sequence[LayerReport]) -> str:
    """The reports as a text table, one row per layer and a total row: parameters before and
    after and their ratio (``x``), the relative weight error, and FLOPs per example before and
    after."""
    reports = list(reports)
    rows = [_HEAD, *(_row(r) for r in reports)]
    if len(reports) > 1:
        before = sum(r.params_before for r in reports)
        after = sum(r.params_after for r in reports)
        fb, fa = sum(r.flops_before for r in reports), sum(r.flops_after for r in reports)
        rows.append(
            ("total", "", "", "", f"{before:,}", f"{after:,}", f"{before / max(1, after):.2f}",
             "", f"{fb:,}", f"{fa:,}")
        )  # fmt: skip
    widths = [max(len(row[j]) for row in rows) for j in range(len(_HEAD))]
    lines = []
    for row in rows:
        cells = [
            c.ljust(w) if j < 4 else c.rjust(w)
            for j, (c, w) in enumerate(zip(row, widths, strict=True))
        ]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


class Reports(tuple):
    """The `LayerReport`s of a `factorize` call, in model order: a tuple whose ``str`` is the
    table of `format_table`."""

    __slots__ = ()

    def table(self) -> str:
        """The reports as a text table (see `format_table`)."""
        return format_table(self)

    def __str__(self) -> str:
        return self.table()


# --- paths and selection -------------------------------------------------------------------


def path_str(parts: Sequence[Any]) -> str:
    """The dotted path of a sequence of attribute names, indices and keys."""
    return ".".join(str(p) for p in parts)


_GLOB = frozenset("*?[")


def select(
    modules: Sequence[tuple[str, Any]],
    where: Any,
    is_candidate: Callable[[Any], bool],
    check: Callable[[Any], None],
    supported: str,
) -> list[tuple[str, Any]]:
    """The ``(path, layer)`` pairs of ``modules`` (every module of the model with its path)
    that ``where`` selects; see `factorjax.nn.factorize` for the rules.

    ``is_candidate(layer)`` says whether a layer's type is one `factorize` converts;
    ``check(layer)`` raises (`ValueError`) when that layer's configuration cannot be converted
    (a grouped convolution); ``supported`` names the supported types for error messages.
    """
    candidates = [(p, m) for p, m in modules if is_candidate(m)]
    if where is None:
        chosen = [(p, m) for p, m in candidates if _convertible(check, m)]
    elif isinstance(where, str):
        if not _GLOB & set(where):
            for p, m in modules:
                if p == where and not is_candidate(m):
                    raise TypeError(
                        f"`where` {where!r} selects a {type(m).__name__}, which factorize "
                        f"cannot convert; it converts {supported}."
                    )
        chosen = [(p, m) for p, m in candidates if fnmatch.fnmatchcase(p, where)]
    elif callable(where):
        chosen = [(p, m) for p, m in candidates if where(p, m)]
    else:
        raise TypeError(
            "`where` must be None (every convertible layer), a glob pattern on the layers' "
            "dotted paths (a str, e.g. 'layers.*') or a predicate (path, layer) -> bool; got "
            f"{type(where).__name__} {where!r}."
        )
    if not chosen:
        available = ", ".join(repr(p) for p, _ in candidates) or "(none)"
        raise ValueError(
            f"`where` {where!r} selects no layer. The layers factorize can convert ({supported}) "
            f"are at the paths: {available}."
        )
    for p, m in chosen:
        with prefixed(p, m):
            check(m)
    return sorted(chosen, key=lambda pm: path_key(pm[0]))


def path_key(path: str) -> tuple:
    """A sort key of dotted paths that orders indices as numbers (``layers.2`` before
    ``layers.10``)."""
    return tuple((0, int(s), "") if s.isdigit() else (1, 0, s) for s in path.split("."))


def _convertible(check: Callable[[Any], None], layer: Any) -> bool:
    try:
        check(layer)
    except (TypeError, ValueError):
        return False
    return True


def settings(
    path: str, layer: Any, format: Any, rank: Any, options: dict, config: Any
) -> dict[str, Any]:
    """The keyword arguments of the conversion of one layer: ``format`` (left out when None:
    the conversion's default), ``rank`` and ``options``, updated with what
    ``config(path, layer)`` returns (a dict, or None)."""
    kwargs = {"rank": rank, **options}
    if format is not None:
        kwargs["format"] = format
    if config is None:
        return kwargs
    if not callable(config):
        raise TypeError(
            f"`config` must be None or a callable (path, layer) -> dict; got "
            f"{type(config).__name__}."
        )
    extra = config(path, layer)
    if extra is None:
        return kwargs
    if not isinstance(extra, dict):
        raise TypeError(
            f"`config` must return a dict of settings (format=..., rank=..., options) or None; "
            f"for layer {path!r} it returned {type(extra).__name__} {extra!r}."
        )
    kwargs.update(extra)
    if kwargs.get("format", "") is None:
        del kwargs["format"]
    return kwargs


@contextlib.contextmanager
def prefixed(path: str, layer: Any) -> Iterator[None]:
    """Re-raise a `ValueError` or `TypeError` with the layer's path and type in front."""
    try:
        yield
    except (ValueError, TypeError) as e:
        where = f"layer {path!r}" if path else "the model"
        raise type(e)(f"{where} ({type(layer).__name__}): {e}") from e


# --- measures ---------------------------------------------------------------------------------


def relative_error(w: Any, w_hat: Any) -> float:
    """``||w - w_hat||_F / ||w||_F`` in float64 (0 when both are 0)."""
    w, w_hat = np.asarray(w, np.float64), np.asarray(w_hat, np.float64)
    num, den = float(np.linalg.norm(w - w_hat)), float(np.linalg.norm(w))
    if den == 0.0:
        return 0.0 if num == 0.0 else math.inf
    return num / den


def rank_of(weight: Any) -> Any:
    """The size of each rank axis of a factorization: an int for one axis, else a tuple."""
    try:
        sizes = tuple(int(n) for n in rank_axes(weight))
    except TypeError:
        ranks = getattr(weight, "ranks", None)
        sizes = tuple(int(n) for n in ranks) if ranks is not None else (int(weight.rank),)
    return sizes[0] if len(sizes) == 1 else sizes


def lookup_flops(weight: Any) -> int:
    """The FLOPs XLA counts for looking up one row of a factorized table (its cost analysis of
    the compiled lookup; 0 where the backend gives none)."""
    lowered = jax.jit(lookup).lower(weight, jnp.zeros((), jnp.int32))
    cost = lowered.cost_analysis()
    cost = cost[0] if isinstance(cost, list | tuple) else cost
    return int((cost or {}).get("flops", 0))


def count(leaves: Sequence[Any]) -> int:
    """The number of scalars in a list of arrays."""
    return sum(math.prod(np.shape(x)) for x in leaves)
