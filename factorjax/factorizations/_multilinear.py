"""The multilinear algebra under `factorjax.factorizations.tucker.Tucker`.

Multilinear ranks (`resolve_ranks`), mode products in their cheapest order (`chain_plan`,
`run_chain`) or as a cyclic sweep of matmuls (`trailing_plan`, `multiply_trailing`), and the
decompositions of a dense tensor: sequentially truncated HOSVD (`st_hosvd`) and higher-order
orthogonal iteration (`hooi`).
"""

import functools
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import Array, lax

from factorjax import _lapack
from factorjax._checks import check_positive_int, check_tolerance, describe
from factorjax.factorizations._cost import flop_score, matmul_gemm_flops

# ---------------------------------------------------------------------------------------------
# Ranks, mode products and their order
# ---------------------------------------------------------------------------------------------


def _clip_to_others(ranks: list[int]) -> tuple[int, ...]:
    changed = True
    while changed:
        changed = False
        for k, r in enumerate(ranks):
            others = math.prod(ranks) // r
            if r > others:
                ranks[k], changed = others, True
    return tuple(ranks)


def resolve_ranks(rank: Any, caps: tuple[int, ...], what: str = "size") -> tuple[int, ...]:
    """The multilinear rank asked for.

    ``None``: ``caps``; an int: a cap on every mode; both clipped so that
    ``r_k <= prod_{j != k} r_j``. A tuple is taken as is and validated: ``1 <= r_k <= caps[k]``
    and ``r_k <= prod_{j != k} r_j``.
    """
    d = len(caps)
    if rank is None:
        return _clip_to_others(list(caps))
    if isinstance(rank, (int, np.integer)) and not isinstance(rank, bool):
        rank = check_positive_int("rank", rank)
        return _clip_to_others([min(rank, c) for c in caps])
    if not hasattr(rank, "__iter__"):
        raise TypeError(
            f"`rank` must be None, an int or a tuple of {d} ints; got {describe(rank)}."
        )
    rank = tuple(rank)
    if len(rank) != d:
        raise ValueError(f"`rank` must have one entry per mode ({d}); got {rank!r}.")
    ranks = tuple(check_positive_int(f"rank[{k}]", r) for k, r in enumerate(rank))
    for k, (r, c) in enumerate(zip(ranks, caps, strict=True)):
        if r > c:
            raise ValueError(
                f"`rank[{k}]` must be an int in [1, {c}] (the {what} of mode {k}); got {r}."
            )
        others = math.prod(ranks) // r
        if r > others:
            raise ValueError(
                f"`rank[{k}]` = {r} exceeds {others}, the product of the other ranks: a core "
                f"with that rank on mode {k} has mode-{k} rank at most {others}; got rank={ranks}."
            )
    return ranks


def mode_product(y: Array, axis: int, mat: Array, contract: int) -> Array:
    """Replace axis ``axis`` of ``y`` by the other axis of ``mat``, contracting ``mat``'s axis
    ``contract`` with it (``contract=1``: ``y ×_axis mat``; ``0``: ``y ×_axis mat^T``)."""
    labels = list(range(y.ndim))
    out = [*labels]
    out[axis] = y.ndim
    m = [axis, y.ndim] if contract == 0 else [y.ndim, axis]
    return jnp.einsum(y, labels, mat, m, out)


def chain_plan(src, dst, fixed: int) -> tuple[tuple[int, ...], int, list[int]]:
    """The order of mode products turning axis sizes ``src`` into ``dst`` (beside ``fixed``
    untouched entries) with the fewest FLOPs (exact, by dynamic programming over subsets).

    Returns:
        ``(order, flops, sizes)``: the modes in turn, the FLOPs, and the size of each result.
    """
    n = len(src)
    best: dict[int, tuple[int, tuple[int, ...]]] = {0: (0, ())}
    for mask in sorted(range(1 << n), key=lambda m: bin(m).count("1")):
        flops, order = best[mask]
        size = fixed * math.prod(dst[j] if mask >> j & 1 else src[j] for j in range(n))
        for j in range(n):
            if not mask >> j & 1:
                new, cand = mask | 1 << j, (flops + 2 * size * dst[j], (*order, j))
                if new not in best or cand[0] < best[new][0]:
                    best[new] = cand
    flops, order = best[(1 << n) - 1]
    cur, sizes = list(src), []
    for j in order:
        cur[j] = dst[j]
        sizes.append(fixed * math.prod(cur))
    return order, flops, sizes


def run_chain(y: Array, mats, axes, order, contract: int) -> Array:
    """The mode products of `chain_plan`'s ``order``: ``mats[j]`` on axis ``axes[j]``."""
    for j in order:
        y = mode_product(y, axes[j], mats[j], contract)
    return y


def trailing_plan(src, dst, lead: int) -> tuple[Any, int, int, list[int]]:
    """How `multiply_trailing` takes a tensor ``(lead, *src)`` to ``(*dst, lead)``: as a
    cyclic sweep, or as `chain_plan`'s cheapest chain of mode products followed by one move
    of the ``lead`` entries to the end, whichever the cost model scores lower (ties go to the
    sweep).

    The cyclic sweep multiplies the last axis at each step, ``A_k @ y^T`` with ``y`` viewed as
    ``(rest, r_k)``, and the new axis comes out first: after the last step the axes are in
    order with ``lead`` behind them, and no axis was ever moved (the mode products of a chain
    each transpose the whole tensor). Its steps with no side below ``GEMM_MIN_DIM`` count at
    the matmul rate. Its order is fixed (last mode first), so where the ranks are well below
    the modes it can cost many times the cheapest chain; the chain is taken there. Measured
    on a 2-core CPU (run 12 in docs/benchmarks.md), a full-rank Tucker ``W`` of 1024 x 1024
    applied to 4096 inputs through its dense rebuild, forward and backward: 95 to 101 ms with
    the sweep, 114 to 116 ms with the chain, whose copies between mode products took about
    25 ms.

    Returns:
        ``(how, flops, gemm_flops, sizes)``: ``"cyclic"`` or the chain's order of modes; its
        FLOPs, the part at the matmul rate, and the size of each intermediate.
    """
    m = len(src)
    flops, gemm, sizes, done = 0, 0, [], 1  # done: the product of the modes already expanded
    for k in reversed(range(m)):
        rest = lead * done * math.prod(src[:k])
        flops += 2 * dst[k] * src[k] * rest
        gemm += matmul_gemm_flops(dst[k], src[k], rest)
        done *= dst[k]
        sizes.append(dst[k] * rest)
    order, chain_flops, chain_sizes = chain_plan(src, dst, lead)
    if flop_score(flops, gemm) <= flop_score(chain_flops, 0):
        return "cyclic", flops, gemm, sizes
    return order, chain_flops, 0, chain_sizes


def multiply_trailing(y: Array, mats, how) -> Array:
    """``y`` of shape ``(*lead, r_1, ..., r_m)`` times ``mats[k]`` ``(n_k, r_k)`` on its last
    ``m`` axes, returned as ``(n_1, ..., n_m, *lead)``, the way `trailing_plan` chose."""
    m = len(mats)
    lead = y.shape[: y.ndim - m]
    shape = (*(a.shape[0] for a in mats), *lead)
    if how != "cyclic":
        y = run_chain(y, mats, range(len(lead), y.ndim), how, 1)
        return jnp.moveaxis(y.reshape(-1, math.prod(shape[:m])), 0, 1).reshape(shape)
    for a in reversed(mats):
        y = a @ y.reshape(-1, a.shape[1]).T
    return y.reshape(shape)


def kron(mats) -> Array:
    """The Kronecker product of matrices ``(n_k, r_k)``: ``(prod n_k, prod r_k)``, row-major
    like the modes."""
    return functools.reduce(jnp.kron, mats)


def kron_flops(mats) -> int:
    """Multiplications of `kron`, left to right (each entry of a partial product is one)."""
    sizes = [m.shape[0] * m.shape[1] for m in mats]
    return sum(math.prod(sizes[:k]) for k in range(2, len(sizes) + 1))


# ---------------------------------------------------------------------------------------------
# ST-HOSVD and HOOI
# ---------------------------------------------------------------------------------------------


def _tail_rank(s: np.ndarray, budget: float) -> int:
    """The smallest r >= 1 whose discarded squared singular values sum to at most ``budget``."""
    tail = np.concatenate([np.cumsum((s**2)[::-1])[::-1], [0.0]])
    return int(max(1, np.nonzero(tail <= budget)[0][0]))


@functools.partial(jax.jit, static_argnums=1)
def _unfold_svd(core: Array, k: int) -> tuple[Array, Array, Array]:
    return _lapack.svd(jnp.moveaxis(core, k, 0).reshape(core.shape[k], -1), full_matrices=False)


@functools.partial(jax.jit, static_argnums=(1, 2))
def _truncate_mode(core: Array, k: int, r: int, usv) -> tuple[Array, Array]:
    """The leading ``r`` left singular vectors of mode ``k``, and the core projected on them
    (``S_r V_r^T`` folded back: no product with ``U``)."""
    u, s, vh = usv
    rest = core.shape[:k] + core.shape[k + 1 :]
    return u[:, :r], jnp.moveaxis((s[:r, None] * vh[:r]).reshape(r, *rest), 0, k)


@functools.partial(jax.jit, static_argnums=1)
def _st_hosvd_ranks(a: Array, ranks: tuple[int, ...]) -> tuple[Array, list[Array]]:
    core, factors = a, []
    for k, r in enumerate(ranks):
        u, core = _truncate_mode(core, k, r, _unfold_svd(core, k))
        factors.append(u)
    return core, factors


def st_hosvd(a: Array, ranks=None, rtol: float | None = None) -> tuple[Array, list[Array]]:
    """Sequentially truncated HOSVD (Vannieuwenhoven, Vandebril and Meerbergen 2012), modes
    in order. With ``rtol``, each mode discards at most ``rtol^2 ||a||^2 / d`` of squared
    singular values, so ``||a - T||_F^2 = sum of all discarded <= rtol^2 ||a||^2``."""
    if rtol is None:
        return _st_hosvd_ranks(a, tuple(ranks))
    if isinstance(a, jax.core.Tracer):
        raise ValueError(
            "`rtol` chooses the ranks from the singular values, and the ranks set the shapes "
            "of the core and factors, so it needs concrete values; under `jax.jit` pass "
            "`rank=` instead."
        )
    budget = rtol**2 * float(np.sum(np.asarray(a, np.float64) ** 2)) / a.ndim
    core, factors = a, []
    for k in range(a.ndim):
        usv = _unfold_svd(core, k)
        r = _tail_rank(np.asarray(usv[1], np.float64), budget)
        u, core = _truncate_mode(core, k, r, usv)
        factors.append(u)
    return core, factors


def decompose(t: Array, rank: Any, rtol: Any, caps, what: str):
    """ST-HOSVD of ``t`` to ``rank`` or ``rtol`` (at most one); ranks valid for a Tucker."""
    if rank is not None and rtol is not None:
        raise ValueError(f"pass at most one of `rank` and `rtol`; got rank={rank}, rtol={rtol}.")
    if rtol is None:
        return st_hosvd(t, resolve_ranks(rank, caps, what))
    core, factors = st_hosvd(t, rtol=check_tolerance("rtol", rtol))
    ranks = _clip_to_others(list(core.shape))
    if ranks != core.shape:
        # r_k > prod of the others: the core's mode-k unfolding has rank <= that product, so
        # re-truncating the core to it discards only zero singular values.
        sub, us = st_hosvd(core, ranks)
        core, factors = sub, [f @ u for f, u in zip(factors, us, strict=True)]
    return core, factors


@functools.partial(jax.jit, static_argnums=2)
def hooi(a: Array, factors, n_iter: int) -> tuple[Array, tuple[Array, ...]]:
    """``n_iter`` sweeps of higher-order orthogonal iteration from orthonormal factors; each
    update maximizes the core's norm given the other factors, so the error never grows."""
    d, shape = a.ndim, a.shape
    ranks = [f.shape[1] for f in factors]

    def sweep(_, fs):
        fs = list(fs)
        for k in range(d):
            others = [j for j in range(d) if j != k]
            order, _, _ = chain_plan(
                [shape[j] for j in others], [ranks[j] for j in others], shape[k]
            )
            y = run_chain(a, [fs[j] for j in others], others, order, 0)
            u, _, _ = _lapack.svd(jnp.moveaxis(y, k, 0).reshape(shape[k], -1), full_matrices=False)
            fs[k] = u[:, : ranks[k]]
        return tuple(fs)

    factors = lax.fori_loop(0, n_iter, sweep, tuple(factors))
    order, _, _ = chain_plan(shape, ranks, 1)
    return run_chain(a, factors, range(d), order, 0), factors


@jax.jit
def orthonormalize(core: Array, factors) -> tuple[tuple[Array, ...], Array]:
    """``A_k = Q_k R_k`` and ``G ×_1 R_1 ... ×_d R_d``: the same tensor, orthonormal factors."""
    qs, rs = zip(*(_lapack.qr(f) for f in factors), strict=True)
    for k, r in enumerate(rs):
        core = mode_product(core, k, r, 1)
    return qs, core
