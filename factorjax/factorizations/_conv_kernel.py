"""Convolution kernels held as CP, Tucker or tensor-train factorizations, and the orders of
applying them to an input: the pure functions behind `factorjax.nn.FactorizedConv` and its
Flax NNX twin, so that both frameworks compute the same thing from the same factors.

A kernel has shape ``(C_out, C_in, k_1, ..., k_d)`` (``d`` spatial dimensions, as
``lax.conv_general_dilated`` and ``eqx.nn.Conv`` take it). Its formats:

- ``"cp"``: a `CP` over those ``d + 2`` modes (``n_out=1``), rank ``R``;
- ``"tucker"``: a `Tucker` over them (``n_out=1``); an int rank ``r`` is Tucker-2, the
  channel ranks ``(min(r, C_out), min(r, C_in))`` with every spatial mode kept (rank ``k_i``);
  a tuple is ``(R_out, R_in)`` (Tucker-2) or one rank per mode (a spatial rank ``k_i`` keeps
  that mode, a smaller one compresses it);
- ``"tt"``: a `TensorTrain` over the modes in the order ``(C_out, k_1, ..., k_d, C_in)``, so that
  the channel cores sit at the ends of the train and the spatial cores between them; its rank
  is an int cap or the tuple of the ``d + 1`` inner ranks.

Every format applies to an input ``(B, C_in, *spatial)`` along one of its `conv_candidates`
(``"dense"``: rebuild the kernel, one convolution; ``"sequence"``: a chain of small
convolutions that never builds it), chosen by the library's cost model (`_operator.choose`).

Example:
    >>> import jax
    >>> w = init_kernel("tt", (64, 32, 3, 3), 8, key=jax.random.key(0))
    >>> w.shape                    # the modes of a TT kernel: (C_out, k_1, k_2, C_in)
    (64, 3, 3, 32)
    >>> [c.order.name for c in conv_candidates(w, (16, 32, 64, 64), (1, 1), "SAME", (1, 1))]
    ['dense', 'sequence']
"""

import functools
import itertools
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import Array, lax
from jaxtyping import PRNGKeyArray

from factorjax._checks import as_real_array, check_positive_int, describe
from factorjax.factorizations._cost import Candidate, Order, Plan, choose, score
from factorjax.factorizations._init import target_variance
from factorjax.factorizations.cp import CP
from factorjax.factorizations.tensor_train import TensorTrain, _chain_order
from factorjax.factorizations.tucker import Tucker, resolve_ranks

__all__ = [
    "KERNEL_FORMATS",
    "check_kernel_format",
    "conv_apply",
    "conv_candidates",
    "conv_plan",
    "init_kernel",
    "kernel_format",
    "kernel_from_dense",
    "kernel_shape",
    "resolve_kernel_rank",
    "to_kernel",
]

KERNEL_FORMATS = ("cp", "tucker", "tt")
Kernel = CP | Tucker | TensorTrain

# ---------------------------------------------------------------------------------------------
# Formats
# ---------------------------------------------------------------------------------------------


def check_kernel_format(format: Any) -> str:
    if format not in KERNEL_FORMATS:
        raise ValueError(
            f"`format` must be one of {KERNEL_FORMATS} for a conv kernel; got {format!r}."
        )
    return format


def kernel_format(weight: Any) -> str:
    """The format name of a kernel factorization; a `TypeError` for anything else."""
    for cls, name in ((CP, "cp"), (Tucker, "tucker"), (TensorTrain, "tt")):
        if isinstance(weight, cls):
            if len(weight.shape) < 3:
                raise ValueError(
                    f"a conv kernel has at least 3 modes (C_out, C_in, k_1, ...); got a {name} "
                    f"of shape {weight.shape}."
                )
            return name
    raise TypeError(
        f"a conv kernel must be a CP, Tucker or TensorTrain (modes (C_out, k_1, ..., k_d, C_in) "
        f"for a TensorTrain); got {type(weight).__name__}."
    )


def kernel_shape(weight: Kernel) -> tuple[int, ...]:
    """``(C_out, C_in, k_1, ..., k_d)`` of a kernel factorization."""
    s = weight.shape
    return (s[0], s[-1], *s[1:-1]) if kernel_format(weight) == "tt" else tuple(s)


def to_kernel(weight: Kernel) -> Array:
    """The dense kernel ``(C_out, C_in, k_1, ..., k_d)``."""
    t = weight.to_dense()
    return jnp.moveaxis(t, -1, 1) if kernel_format(weight) == "tt" else t


# ---------------------------------------------------------------------------------------------
# Ranks and construction
# ---------------------------------------------------------------------------------------------


def _int_rank(rank: Any) -> bool:
    return isinstance(rank, (int, np.integer)) and not isinstance(rank, bool)


def _tucker_ranks(shape: tuple[int, ...], rank: Any) -> tuple[int, ...]:
    if _int_rank(rank):
        r = check_positive_int("rank", rank)
        return resolve_ranks(None, (min(r, shape[0]), min(r, shape[1]), *shape[2:]))
    if isinstance(rank, tuple) and len(rank) == 2:
        rank = (*rank, *shape[2:])
    if not isinstance(rank, tuple) or len(rank) != len(shape):
        raise ValueError(
            f"`rank` of a tucker kernel of shape {shape} must be an int, a pair (R_out, R_in) "
            f"(spatial modes kept) or a tuple of {len(shape)} ranks; got {rank!r}."
        )
    return resolve_ranks(rank, shape)


def _check_rank_kind(format: str, shape: tuple[int, ...], rank: Any) -> Any:
    if format == "cp" and not _int_rank(rank):
        raise TypeError(f"`rank` of a cp kernel must be an int; got {describe(rank)}.")
    if format == "tt" and isinstance(rank, tuple) and len(rank) != len(shape) - 1:
        raise ValueError(
            f"`rank` of a tt kernel as a tuple holds the {len(shape) - 1} inner ranks of the "
            f"train (C_out, k_1, ..., k_d, C_in); got {rank!r}."
        )
    return _tucker_ranks(shape, rank) if format == "tucker" else rank


def _build(format: str, shape: tuple[int, ...], rank: Any, key: PRNGKeyArray, **kw) -> Kernel:
    """The format's ``init`` for a kernel of ``shape`` at an int or tuple rank."""
    rank = _check_rank_kind(format, shape, rank)
    if format == "tt":
        return TensorTrain.init((shape[0], *shape[2:], shape[1]), rank, key=key, **kw)
    return (CP if format == "cp" else Tucker).init(shape, rank, key=key, n_out=1, **kw)


@functools.lru_cache(maxsize=4096)
def _count(format: str, shape: tuple[int, ...], rank: Any) -> int:
    built = jax.eval_shape(
        lambda: _build(format, shape, rank, jax.random.key(0), init="std", std=1.0)
    )
    return sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(built))


def resolve_kernel_rank(format: Any, shape: Any, rank: Any) -> Any:
    """The int or tuple rank meant by a rank specification for a kernel of ``shape``: an int
    or a tuple as given, or for a float in ``(0, 1]`` (``"same"``: 1) the largest int rank
    whose factorization holds at most that fraction of ``prod(shape)`` parameters."""
    format = check_kernel_format(format)
    if isinstance(rank, tuple) or _int_rank(rank):
        return rank
    if rank == "same":
        fraction = 1.0
    elif isinstance(rank, float) and 0.0 < rank <= 1.0:
        fraction = rank
    else:
        raise ValueError(
            "`rank` must be an int, a tuple of ints, a float in (0, 1] (a fraction of the dense "
            f"kernel's parameter count) or 'same'; got {rank!r}."
        )
    budget = fraction * math.prod(shape)
    last = _count(format, shape, 1)
    if last > budget:
        raise ValueError(
            f"`rank` {rank!r} asks for at most {budget:.0f} parameters (of {math.prod(shape)} "
            f"in the dense kernel {shape}), but a rank-1 {format!r} kernel already holds "
            f"{last}: give a larger fraction or an int rank."
        )
    lo, hi = 1, 2  # double to bracket the budget (or until the format clips), then bisect
    while True:
        n = _count(format, shape, hi)
        if n > budget:
            break
        if n == last or hi >= 1 << 20:
            return hi
        lo, hi, last = hi, hi * 2, n
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if _count(format, shape, mid) <= budget else (lo, mid)
    return lo


def init_kernel(
    format: Any,
    shape: tuple[int, ...],
    rank: Any,
    *,
    key: PRNGKeyArray,
    init: Any = "he",
    std: Any = None,
    alpha: Any = None,
    dtype: Any = None,
) -> Kernel:
    """A random kernel ``(C_out, C_in, k_1, ..., k_d)`` whose reconstructed entries have the
    variance of ``init`` with the fans of a convolution: ``fan_in = C_in prod(k)``,
    ``fan_out = C_out prod(k)`` (``"he"``: ``2 / fan_in``, ``"glorot"``:
    ``2 / (fan_in + fan_out)``, ``"lecun"``: ``1 / fan_in``, ``"std"``: ``std^2``); the format
    gets that target as ``init="std"``. ``"small"`` is the format's small-scale init."""
    format = check_kernel_format(format)
    rank = resolve_kernel_rank(format, shape, rank)
    if init == "small":
        kw = {"init": "small", "alpha": alpha, "std": std}
    else:
        window = math.prod(shape[2:])
        var = target_variance(
            init, fan_in=shape[1] * window, fan_out=shape[0] * window, std=std, alpha=alpha
        )
        kw = {"init": "std", "std": std if init == "std" else var**0.5}
    return _build(format, shape, rank, key, dtype=dtype, **kw)


def kernel_from_dense(format: Any, kernel: Any, rank: Any = None, **options) -> Kernel:
    """The format's decomposition of a dense kernel ``(C_out, C_in, k_1, ..., k_d)``: CP-ALS
    (``rank`` required; ``options``: ``n_iter``, ``tol``, ``key``: the ALS starts from the
    HOSVD when the rank is at most every mode size but the first, else from random factors
    drawn from ``key``, by default ``jax.random.key(0)``), ST-HOSVD (``options``: ``rtol``,
    ``n_iter`` of HOOI; ``rank=None``: exact), TT-SVD (``options``: ``rtol``; ``rank=None``:
    exact). ``rank`` as in `resolve_kernel_rank`."""
    format = check_kernel_format(format)
    kernel = as_real_array("kernel", kernel)
    if kernel.ndim < 3:
        raise ValueError(
            "`kernel` must have shape (C_out, C_in, k_1, ..., k_d), d >= 1; got "
            f"{describe(kernel)}."
        )
    shape = tuple(kernel.shape)
    if rank is None and format == "cp":
        raise ValueError("`rank` is required for format 'cp' (CP-ALS has no exact default).")
    if rank is not None:
        rank = _check_rank_kind(format, shape, resolve_kernel_rank(format, shape, rank))
    if format == "cp":
        if "key" not in options and rank > min(shape[1:]):
            options["key"] = jax.random.key(0)
        return CP.from_dense(kernel, rank, n_out=1, **options)
    if format == "tucker":
        return Tucker.from_dense(kernel, rank, n_out=1, **options)
    return TensorTrain.from_dense(jnp.moveaxis(kernel, 1, -1), rank, **options)


# ---------------------------------------------------------------------------------------------
# Application
# ---------------------------------------------------------------------------------------------


def _out_size(n: int, k: int, s: int, dil: int, pad: tuple[int, int]) -> int:
    return (n + pad[0] + pad[1] - dil * (k - 1) - 1) // s + 1


def _mix(m: Array, z: Array) -> Array:
    """Channel mixing (a 1x1 convolution): ``m (C_new, C_old)`` on ``z (B, C_old, *S)``."""
    return jnp.einsum("oc,bc...->bo...", m, z)


def _conv_along(z, rhs, j, stride, pads, dilation, groups=1) -> Array:
    """The convolution of ``z (B, C, *S)`` along spatial dimension ``j`` only, with
    ``rhs (O, C / groups, k)`` and that dimension's stride, padding and dilation."""
    d = z.ndim - 2
    only = lambda v, rest: tuple(v if i == j else rest for i in range(d))  # noqa: E731
    rhs = rhs.reshape(*rhs.shape[:2], *only(rhs.shape[-1], 1))
    return lax.conv_general_dilated(
        z, rhs, only(stride[j], 1), only(pads[j], (0, 0)), rhs_dilation=only(dilation[j], 1),
        feature_group_count=groups,
    )  # fmt: skip


class _Cost:
    """FLOPs (all, and those at the rate of one large product), and the largest intermediate."""

    def __init__(self, itemsize: int):
        self.flops, self.gemm, self.peak, self.itemsize = 0, 0, 0, itemsize

    def add(self, flops: int, held: int = 0, gemm: bool = False):
        self.flops += flops
        self.gemm += flops if gemm else 0
        self.peak = max(self.peak, held * self.itemsize)

    def order(self, name: str) -> Order:
        return Order(name, self.flops, self.peak, self.gemm)


def _passes(sizes, order, kernel, stride, dilation, pads) -> list[int]:
    """The number of spatial positions after each 1-D pass of ``order``."""
    cur, out = list(sizes), []
    for j in order:
        cur[j] = _out_size(cur[j], kernel[j], stride[j], dilation[j], pads[j])
        out.append(math.prod(cur))
    return out


def _dim_order(sizes, kernel, stride, dilation, pads) -> tuple[int, ...]:
    """The order of the 1-D passes that costs the fewest FLOPs (a pass that shrinks its
    dimension is cheaper early); every order is tried for d <= 4."""
    d = len(sizes)

    def flops(perm):
        ps = _passes(sizes, perm, kernel, stride, dilation, pads)
        return sum(kernel[j] * p for j, p in zip(perm, ps, strict=True))

    return min(itertools.permutations(range(d)) if d <= 4 else [tuple(range(d))], key=flops)


def conv_candidates(
    weight: Kernel, input_shape: tuple[int, ...], stride, padding, dilation
) -> tuple[Candidate, ...]:
    """The ways of convolving an input ``(B, C_in, *spatial)`` with the kernel, each with its
    FLOPs for that batch and spatial size and its largest intermediate: ``"dense"`` (rebuild
    the kernel, one ``lax.conv_general_dilated``) and ``"sequence"`` (CP: 1x1 conv to the ``R``
    components, one depthwise 1-D conv per spatial dimension, 1x1 conv with the weights folded
    in, Lebedev et al. 2015; Tucker: 1x1 conv to ``R_in``, a conv ``R_in -> R_out`` with the
    core (spatial factors merged into it), 1x1 conv, Kim et al. 2016; TT: the input core as a
    1x1 conv to the last bond, each spatial core as a 1-D conv bond to bond along its
    dimension (from ``k_d`` to ``k_1``), the output core as a 1x1 conv). Every 1-D pass takes
    only its own dimension's stride, dilation and padding, so padding equals the dense conv's.
    Each ``fn`` maps ``(B, C_in, *spatial)`` to ``(B, C_out, *out_spatial)``.

    Raises `ValueError` when the input is smaller than the dilated kernel after padding.
    """
    fmt = kernel_format(weight)
    c_out, c_in, *ks = kernel_shape(weight)
    b, _, *sizes = input_shape
    d = len(ks)
    if isinstance(padding, str):
        window = [(k - 1) * dl + 1 for k, dl in zip(ks, dilation, strict=True)]
        pads = tuple(tuple(p) for p in lax.padtype_to_pads(sizes, window, stride, padding))
    else:
        pads = padding
    outs = [_out_size(*a) for a in zip(sizes, ks, stride, dilation, pads, strict=True)]
    if min(outs) < 1:
        raise ValueError(
            f"`x` of spatial shape {tuple(sizes)} is smaller than the kernel {tuple(ks)} "
            f"(dilation {dilation}) after padding {pads}: no output position."
        )
    p_in, p_out, window = math.prod(sizes), math.prod(outs), math.prod(ks)
    itemsize = jnp.dtype(weight.dtype).itemsize

    dense = _Cost(itemsize)
    dense.add(_reconstruction_flops(weight, fmt), c_out * c_in * window)
    dense.add(2 * b * p_out * c_out * c_in * window, gemm=True)

    def dense_fn(x):
        return lax.conv_general_dilated(x, to_kernel(weight), stride, pads, rhs_dilation=dilation)

    seq = _Cost(itemsize)
    if fmt == "cp":
        r = weight.rank
        order = _dim_order(sizes, ks, stride, dilation, pads)
        seq.add(2 * b * p_in * c_in * r, b * r * p_in, gemm=True)
        for j, p in zip(order, _passes(sizes, order, ks, stride, dilation, pads), strict=True):
            seq.add(2 * b * r * ks[j] * p, b * r * p)
        seq.add(c_out * r)  # the weights folded into the output factor
        seq.add(2 * b * p_out * r * c_out, gemm=True)

        def seq_fn(x):
            a_out, a_in, *a_sp = weight.factors
            z = _mix(a_in.T, x)
            for j in order:
                z = _conv_along(z, a_sp[j].T[:, None, :], j, stride, pads, dilation, r)
            return _mix(a_out * weight.weights, z)

    elif fmt == "tucker":
        r_out, r_in, *r_sp = weight.ranks
        seq.add(2 * b * p_in * c_in * r_in, b * r_in * p_in, gemm=True)
        cur = [r_out, r_in, *r_sp]
        for j in range(d):  # merge the spatial factors into the core
            seq.add(2 * math.prod(cur) * ks[j], math.prod(cur) // cur[2 + j] * ks[j])
            cur[2 + j] = ks[j]
        seq.add(2 * b * p_out * r_out * r_in * window, b * r_out * p_out, gemm=True)
        seq.add(2 * b * p_out * r_out * c_out, gemm=True)

        def seq_fn(x):
            u_out, u_in, *u_sp = weight.factors
            core = weight.core
            for j, u in enumerate(u_sp):
                core = jnp.moveaxis(jnp.tensordot(u, core, axes=(1, 2 + j)), 0, 2 + j)
            z = _mix(u_in.T, x)
            z = lax.conv_general_dilated(z, core, stride, pads, rhs_dilation=dilation)
            return _mix(u_out, z)

    else:
        bonds = weight.ranks  # (a_0, ..., a_d): C_out | a_0 | k_1 | ... | k_d | a_d | C_in
        seq.add(2 * b * p_in * c_in * bonds[d], b * bonds[d] * p_in, gemm=True)
        steps = tuple(reversed(range(d)))
        for j, p in zip(steps, _passes(sizes, steps, ks, stride, dilation, pads), strict=True):
            seq.add(2 * b * bonds[j] * bonds[j + 1] * ks[j] * p, b * bonds[j] * p, gemm=True)
        seq.add(2 * b * p_out * bonds[0] * c_out, gemm=True)

        def seq_fn(x):
            cores = weight.cores
            z = _mix(cores[-1][:, :, 0], x)
            for j in steps:
                rhs = jnp.transpose(cores[j + 1], (0, 2, 1))  # (a_j, a_(j+1), k) -> O, I, k
                z = _conv_along(z, rhs, j, stride, pads, dilation)
            return _mix(cores[0][0], z)

    return (Candidate(dense.order("dense"), dense_fn), Candidate(seq.order("sequence"), seq_fn))


def _reconstruction_flops(weight: Kernel, fmt: str) -> int:
    if fmt != "tt":
        return weight.reconstruction_flops()
    ranks_full = [c.shape[0] for c in weight.cores] + [1]
    return _chain_order(ranks_full, list(weight.shape))[0]


def _batched_shape(input_shape: Any, c_in: int, d: int, name: str) -> tuple[int, ...]:
    shape = tuple(input_shape)
    if len(shape) not in (d + 1, d + 2):
        raise ValueError(
            f"`{name}` must be one example (C_in, *spatial) with {d} spatial dimensions, or a "
            f"batch (B, C_in, *spatial); got shape {shape}."
        )
    axis = len(shape) - d - 1
    if shape[axis] != c_in:
        raise ValueError(
            f"`{name}` must have in_channels = {c_in} on its channel axis (axis {axis}); got "
            f"shape {shape}."
        )
    return shape if axis == 1 else (1, *shape)


def conv_plan(
    weight: Kernel, input_shape: Any, stride, padding, dilation, order: Any = "auto"
) -> Plan:
    """The order `conv_apply` takes for an input of ``input_shape`` (``(C_in, *spatial)`` or
    ``(B, C_in, *spatial)``), and every candidate's cost, cheapest first."""
    _, c_in, *ks = kernel_shape(weight)
    shape = _batched_shape(input_shape, c_in, len(ks), "input_shape")
    cands = conv_candidates(weight, shape, stride, padding, dilation)
    chosen = choose(cands, order).order
    ranked = tuple(sorted((c.order for c in cands), key=score))
    return Plan(chosen.name, chosen.flops, chosen.peak_bytes, shape[0], ranked)


def conv_apply(weight: Kernel, x: Array, stride, padding, dilation, order: Any = "auto") -> Array:
    """The convolution of ``x`` (``(C_in, *spatial)`` or ``(B, C_in, *spatial)``) with the
    kernel, along the planned (or the named) order; no bias."""
    _, c_in, *ks = kernel_shape(weight)
    d = len(ks)
    shape = _batched_shape(x.shape, c_in, d, "x")
    xb = x.reshape(shape).astype(weight.dtype)
    y = choose(conv_candidates(weight, shape, stride, padding, dilation), order).fn(xb)
    return y if x.ndim == d + 2 else y[0]
