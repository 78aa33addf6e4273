"""Matrix formats by name, and ranks given as a parameter budget.

The layers of `factorjax.nn` and `factorjax.nnx` build their weights through `make_operator`
and `operator_from_dense`, so that both frameworks (and user code) share one mapping from a
format name and a rank specification to a factorization:

- ``"lowrank"`` `LowRank`, ``"deep_lowrank"`` `DeepLowRank`, ``"tt"`` `TTMatrix`, ``"cp"`` `CP`,
  ``"tucker"`` `Tucker`, ``"tensor_ring"`` `TensorRing`, ``"kronecker"`` `Kronecker`;
- a rank is an int, a tuple (per-mode or per-bond ranks, hidden widths of a deep factorization),
  a float in ``(0, 1]`` (the largest int rank whose parameter count is at most that fraction of
  the dense ``d_out d_in``), or ``"same"`` (the fraction 1: as many parameters as dense).

Example:
    >>> import jax
    >>> from factorjax.factorizations._registry import make_operator
    >>> W = make_operator("tt", 256, 256, 0.1, key=jax.random.key(0))
    >>> W.num_params <= 0.1 * 256 * 256
    True
"""

import functools
import math
from collections.abc import Callable
from typing import Any

import jax
from jaxtyping import PRNGKeyArray

from factorjax._checks import as_real_array, check_positive_int, describe
from factorjax.factorizations._operator import AbstractOperator
from factorjax.factorizations.cp import CP
from factorjax.factorizations.deep_lowrank import DeepLowRank
from factorjax.factorizations.kronecker import Kronecker
from factorjax.factorizations.lowrank import LowRank
from factorjax.factorizations.tensor_ring import TensorRing
from factorjax.factorizations.tt_matrix import TTMatrix
from factorjax.factorizations.tucker import Tucker

__all__ = ["FORMATS", "make_operator", "operator_from_dense", "resolve_rank"]

# The options each format takes beside the rank (passed on by `make_operator` and
# `operator_from_dense`; anything else is refused by name).
_TENSORIZED = ("out_modes", "in_modes", "order")
FORMAT_OPTIONS: dict[str, tuple[str, ...]] = {
    "lowrank": (),
    "deep_lowrank": ("depth",),
    "tt": _TENSORIZED,
    "cp": _TENSORIZED,
    "tucker": _TENSORIZED,
    "tensor_ring": _TENSORIZED,
    "kronecker": ("shapes",),
}
FORMATS: tuple[str, ...] = tuple(FORMAT_OPTIONS)


def check_format(format: Any) -> str:
    if format not in FORMAT_OPTIONS:
        allowed = ", ".join(repr(f) for f in FORMATS)
        raise ValueError(f"`format` must be one of {allowed}; got {format!r}.")
    return format


def _check_options(format: str, options: dict) -> dict:
    allowed = FORMAT_OPTIONS[format]
    for name in options:
        if name not in allowed:
            raise ValueError(
                f"format {format!r} takes the options {allowed or '(none)'}; got `{name}`."
            )
    return options


def _deep_widths(rank: Any, options: dict) -> tuple:
    """Hidden widths of a `DeepLowRank`: a tuple as given, or an int repeated ``depth - 1``
    times (``depth`` defaults to 2, one hidden layer)."""
    if isinstance(rank, tuple):
        return rank
    depth = check_positive_int("depth", options.get("depth", 2))
    if depth < 2:
        raise ValueError(f"`depth` of a deep_lowrank layer must be >= 2; got {depth}.")
    return (rank,) * (depth - 1)


def _builder(format: str, d_out: int, d_in: int, options: dict) -> Callable:
    """``build(rank, key, **init_kwargs)`` for a format with its options bound."""
    if format == "lowrank":
        return lambda r, key, **kw: LowRank.init(d_out, d_in, r, key=key, **kw)
    if format == "deep_lowrank":
        return lambda r, key, **kw: DeepLowRank.init(
            d_out, d_in, _deep_widths(r, options), key=key, **kw
        )
    if format == "kronecker":
        return lambda r, key, **kw: Kronecker.init(d_out, d_in, r, key=key, **options, **kw)
    if format == "tt":
        return lambda r, key, **kw: TTMatrix.init(d_out, d_in, r, key=key, **options, **kw)
    cls = {"cp": CP, "tucker": Tucker, "tensor_ring": TensorRing}[format]
    return lambda r, key, **kw: cls.init_matrix(d_out, d_in, r, key=key, **options, **kw)


@functools.cache
def _count_cached(format: str, d_out: int, d_in: int, options: tuple, rank: Any) -> int:
    build = _builder(format, d_out, d_in, dict(options))
    shapes = jax.eval_shape(lambda: build(rank, jax.random.key(0)))
    return sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(shapes))


def _counter(format: str, d_out: int, d_in: int, options: dict) -> Callable[[Any], int]:
    """``count(rank)``: parameters of the factorization of that rank, from shapes only
    (nothing computed), cached (a budget search and the layers of a model ask again)."""
    try:
        key = tuple(sorted(options.items()))
        hash(key)
    except TypeError:  # unhashable options (lists): count without the cache
        build = _builder(format, d_out, d_in, options)
        return lambda r: sum(
            math.prod(leaf.shape)
            for leaf in jax.tree.leaves(jax.eval_shape(lambda: build(r, jax.random.key(0))))
        )
    return lambda r: _count_cached(format, d_out, d_in, key, r)


def resolve_rank(format: Any, d_out: Any, d_in: Any, rank: Any, **options) -> Any:
    """The int or tuple rank meant by a rank specification (see the module docstring).

    A fraction or ``"same"`` gives the largest int rank whose factorization holds at most
    ``fraction * d_out * d_in`` parameters (for a tuple-ranked format, the same rank on every
    mode or bond, clipped where the format clips). A budget that even rank 1 exceeds is
    refused.
    """
    format = check_format(format)
    d_out, d_in = check_positive_int("d_out", d_out), check_positive_int("d_in", d_in)
    _check_options(format, options)
    if isinstance(rank, tuple) or (isinstance(rank, int) and not isinstance(rank, bool)):
        return rank
    if rank == "same":
        fraction = 1.0
    elif isinstance(rank, float) and 0.0 < rank <= 1.0:
        fraction = rank
    else:
        raise ValueError(
            "`rank` must be an int, a tuple of ints, a float in (0, 1] (a fraction of the dense "
            f"parameter count) or 'same'; got {rank!r}."
        )
    budget = fraction * d_out * d_in
    count = _counter(format, d_out, d_in, options)
    if count(1) > budget:
        raise ValueError(
            f"`rank` {rank!r} asks for at most {budget:.0f} parameters (of {d_out * d_in} "
            f"dense), but a rank-1 {format!r} layer of shape ({d_out}, {d_in}) already holds "
            f"{count(1)}: give a larger fraction or an int rank."
        )
    # The count grows with the rank until the format clips it: double to bracket, then bisect.
    lo, hi, last = 1, 2, count(1)
    while True:
        n = count(hi)
        if n > budget:
            break
        if n == last or hi >= 1 << 20:  # saturated: every larger rank is clipped to this one
            return hi
        lo, hi, last = hi, hi * 2, n
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if count(mid) <= budget else (lo, mid)
    return lo


def make_operator(
    format: Any,
    d_out: Any,
    d_in: Any,
    rank: Any,
    *,
    key: PRNGKeyArray,
    init: Any = "glorot",
    std: Any = None,
    alpha: Any = None,
    dtype: Any = None,
    **options,
) -> AbstractOperator:
    """A random weight ``(d_out, d_in)`` of the named format.

    Arguments:
        format: one of `FORMATS`.
        d_out, d_in: the shape of the weight.
        rank: an int, a tuple, a fraction in ``(0, 1]`` of the dense parameter count, or
            ``"same"`` (see `resolve_rank`).
        key: a JAX PRNG key.
        init, std, alpha, dtype: as in the format's ``init`` (the variance targets the
            reconstructed weight).
        **options: the format's options: ``depth`` (deep_lowrank), ``out_modes``, ``in_modes``,
            ``order`` (tt, cp, tucker, tensor_ring), ``shapes`` (kronecker).
    """
    format = check_format(format)
    rank = resolve_rank(format, d_out, d_in, rank, **options)
    build = _builder(format, d_out, d_in, options)
    kw = {"init": init, "std": std, "alpha": alpha}
    if dtype is not None:
        kw["dtype"] = dtype
    return build(rank, key, **kw)


def operator_from_dense(format: Any, w: Any, rank: Any = None, **options) -> AbstractOperator:
    """The named format's decomposition of a dense ``w`` ``(d_out, d_in)`` (its ``from_dense``
    or ``from_matrix``: SVD, TT-SVD, CP-ALS, ST-HOSVD, TR-SVD, Van Loan-Pitsianis), with
    ``rank`` as in `make_operator` (``None``: the format's default, exact where it can be)."""
    format = check_format(format)
    w = as_real_array("w", w)
    if w.ndim != 2:
        raise ValueError(f"`w` must be a matrix (d_out, d_in); got {describe(w)}.")
    _check_options(format, options)
    if rank is not None:
        rank = resolve_rank(format, *w.shape, rank, **options)
    if format == "lowrank":
        return LowRank.from_dense(w, rank)
    if format == "deep_lowrank":
        depth = check_positive_int("depth", options.get("depth", 2))
        if isinstance(rank, tuple):
            depth, rank = len(rank) + 1, min(rank)
        return DeepLowRank.from_dense(w, rank, depth=depth)
    if format == "kronecker":
        return Kronecker.from_dense(w, rank, **options)
    if format == "tt":
        return TTMatrix.from_dense(w, rank, **options)
    if format == "cp":
        if rank is None:
            raise ValueError("`rank` is required for format 'cp' (CP-ALS has no exact default).")
        return CP.from_matrix(w, rank, **options)
    cls = {"tucker": Tucker, "tensor_ring": TensorRing}[format]
    return cls.from_matrix(w, rank, **options)
