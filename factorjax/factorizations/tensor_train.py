"""Tensor trains, and the TT algorithms (TT-SVD, rounding, contraction) that `TTMatrix` shares.

A tensor train (Oseledets 2011) writes a tensor of shape ``(n_1, ..., n_d)`` as a product of
cores ``G_k`` of shape ``(r_{k-1}, n_k, r_k)`` with ``r_0 = r_d = 1``:
``A[j_1, ..., j_d] = G_1[:, j_1, :] G_2[:, j_2, :] ... G_d[:, j_d, :]``. A TT-matrix (a matrix
product operator) does the same for a weight ``W`` of shape ``(d_out, d_in)`` tensorized as
``out_modes`` and ``in_modes`` (row-major), with cores ``(r_{k-1}, out_k, in_k, r_k)``:
``W[(o_1 ... o_d), (i_1 ... i_d)] = G_1[:, o_1, i_1, :] ... G_d[:, o_d, i_d, :]``.

The inner ranks ``r_1, ..., r_{d-1}`` (`ranks`) obey ``r_k <= r_{k-1} n_k`` and
``r_k <= n_{k+1} r_{k+1}``, hence ``r_k <= min(n_1 ... n_k, n_{k+1} ... n_d)``: a larger rank
carries no information. An int rank is a cap, clipped at each bond to what the modes allow; a
tuple of ranks is validated against these bounds.
"""

import functools
import math
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import Array
from jax.typing import ArrayLike
from jaxtyping import Float, PRNGKeyArray

from factorjax import _lapack
from factorjax._checks import as_real_array, check_positive_int, describe
from factorjax.factorizations._base import AbstractFactorization
from factorjax.factorizations._init import small_std, target_variance
from factorjax.factorizations._tensorize import factor_std

# Scalar arguments validated at the boundary (ranks, modes, tolerances, scales) are annotated
# `Any`, as in lowrank.py: the docstrings state the contract and `factorjax._checks` the errors.

# Jitted here so that an eager factorization runs one cached program per shape.
_svd = jax.jit(lambda m: _lapack.svd(m, full_matrices=False))
_qr = jax.jit(_lapack.qr)

# ---------------------------------------------------------------------------------------------
# Ranks
# ---------------------------------------------------------------------------------------------


def _fit_ranks(caps: Sequence[int], modes: Sequence[int]) -> list[int]:
    """The largest ranks ``<= caps`` with ``r_k <= r_{k-1} n_k`` and ``r_k <= n_{k+1} r_{k+1}``
    (a forward then a backward pass; the backward pass keeps the forward bounds)."""
    t, prev = list(caps), 1
    for k in range(len(t)):
        t[k] = prev = min(t[k], prev * modes[k])
    nxt = 1
    for k in reversed(range(len(t))):
        t[k] = nxt = min(t[k], modes[k + 1] * nxt)
    return t


def _resolve_ranks(rank: Any, modes: Sequence[int], cap: Sequence[int] | None = None):
    """Inner TT ranks from an int cap (clipped) or a tuple (validated) for these modes.

    ``cap`` (the ranks of an existing train, for rounding) bounds a tuple from above and
    clips an int.
    """
    d = len(modes)
    if isinstance(rank, (int, np.integer)) and not isinstance(rank, bool):
        rank = check_positive_int("rank", rank)
        caps = [rank] * (d - 1) if cap is None else [min(rank, c) for c in cap]
        return tuple(_fit_ranks(caps, modes))
    if isinstance(rank, str) or not isinstance(rank, Sequence):
        raise TypeError(
            f"`rank` must be an int (a cap on every TT rank) or a tuple of the {d - 1} inner "
            f"TT ranks; got {describe(rank)}."
        )
    if len(rank) != d - 1:
        raise ValueError(
            f"`rank` as a tuple must hold the {d - 1} inner TT ranks (r_1, ..., r_{d - 1}) of a "
            f"train of {d} cores; got {len(rank)}: {tuple(rank)!r}."
        )
    ranks = tuple(check_positive_int(f"rank[{k}]", r) for k, r in enumerate(rank))
    full = [1, *ranks, 1]
    for k in range(d - 1):
        left, right = math.prod(modes[: k + 1]), math.prod(modes[k + 1 :])
        if ranks[k] > min(left, right):
            raise ValueError(
                f"`rank[{k}]` = {ranks[k]} exceeds the largest TT rank the modes {tuple(modes)} "
                f"allow at that bond, min(n_1 ... n_{k + 1}, n_{k + 2} ... n_{d}) = "
                f"min({left}, {right}) = {min(left, right)}."
            )
        allowed = min(full[k] * modes[k], modes[k + 1] * full[k + 2])
        if ranks[k] > allowed:
            raise ValueError(
                f"`rank[{k}]` = {ranks[k]} exceeds what its neighbours allow: a TT rank is at "
                f"most r_(k-1) n_k and n_(k+1) r_(k+1), here min({full[k]} * {modes[k]}, "
                f"{modes[k + 1]} * {full[k + 2]}) = {allowed} (ranks {ranks}, modes "
                f"{tuple(modes)})."
            )
        if cap is not None and ranks[k] > cap[k]:
            raise ValueError(
                f"`rank[{k}]` = {ranks[k]} exceeds the current TT rank {cap[k]}: rounding "
                f"cannot raise a rank (current ranks {tuple(cap)})."
            )
    return ranks


def _check_rtol(rtol: Any) -> float:
    if isinstance(rtol, bool) or not isinstance(rtol, (int, float, np.integer, np.floating)):
        raise TypeError(f"`rtol` must be a float; got {describe(rtol)}.")
    if not (math.isfinite(rtol) and rtol > 0):
        raise ValueError(
            f"`rtol` must be a finite float > 0; got {rtol}. For the exact train pass neither "
            "`rank` nor `rtol`."
        )
    return float(rtol)


def _concrete(x: Array) -> np.ndarray:
    """``x`` as a float64 NumPy array; a clear error under ``jit``, where it is traced."""
    if isinstance(x, jax.core.Tracer):
        raise ValueError(
            "`rtol` chooses the TT ranks from the singular values, and the ranks set the shapes "
            "of the cores, so it needs concrete values; under `jax.jit` pass `rank=` instead."
        )
    return np.asarray(x, np.float64)


def _rank_for_delta(s: Array, delta: float) -> int:
    """The smallest rank whose discarded singular values have norm at most ``delta``."""
    s = _concrete(s)
    tail = np.concatenate([np.cumsum((s**2)[::-1])[::-1], [0.0]])  # tail[r] = sum_{i >= r}
    return int(max(1, np.nonzero(tail <= delta**2)[0][0]))


def _split_rank_rtol(rank: Any, rtol: Any) -> float | None:
    if rank is not None and rtol is not None:
        raise ValueError(f"pass at most one of `rank` and `rtol`; got rank={rank}, rtol={rtol}.")
    return None if rtol is None else _check_rtol(rtol)


# ---------------------------------------------------------------------------------------------
# Algorithms on trains of 3-d cores (r_{k-1}, n_k, r_k)
# ---------------------------------------------------------------------------------------------


def _svd_sweep(c: Array, modes: Sequence[int], rank_of) -> tuple[Array, ...]:
    """The TT-SVD sweep (Oseledets 2011, Alg. 1): sequential truncated SVDs of the unfoldings
    of ``c``; ``rank_of(k, s)`` picks the rank of step ``k`` from its singular values."""
    cores, r_prev = [], 1
    for k in range(len(modes) - 1):
        U, s, Vh = _svd(c.reshape(r_prev * modes[k], -1))
        r = rank_of(k, s)
        core, c = _split(U, s, Vh, r)
        cores.append(core.reshape(r_prev, modes[k], r))
        r_prev = r
    cores.append(c.reshape(r_prev, modes[-1], 1))
    return tuple(cores)


@functools.partial(jax.jit, static_argnums=3)
def _split(U: Array, s: Array, Vh: Array, r: int) -> tuple[Array, Array]:
    """``(U_r, S_r Vh_r)``: the truncated SVD split into the left factor and the rest."""
    return U[:, :r], s[:r, None] * Vh[:r]


@functools.partial(jax.jit, static_argnums=1)
def _tt_svd_fixed(a: Array, ranks: tuple[int, ...]) -> tuple[Array, ...]:
    return _svd_sweep(a, a.shape, lambda k, s: ranks[k])


def _tt_svd(a: Array, ranks: tuple[int, ...], rtol: float | None) -> tuple[Array, ...]:
    """TT-SVD of ``a`` to the given ranks (one compiled program), or with ``rtol``: step ``k``
    discards singular values of norm at most ``delta = rtol / sqrt(d - 1) ||A||_F``, so that
    ``||A - TT||_F <= rtol ||A||_F`` (Oseledets 2011, Thm. 2.2: the squared error is at most
    the sum of the squared discarded tails)."""
    if rtol is None or a.ndim == 1:
        return _tt_svd_fixed(a, ranks)
    delta = rtol / math.sqrt(a.ndim - 1) * float(np.linalg.norm(_concrete(a)))
    return _svd_sweep(a, a.shape, lambda k, s: _rank_for_delta(s, delta))


@jax.jit
def _orthogonalize(cores: tuple[Array, ...]) -> tuple[Array, ...]:
    """Right-to-left QR sweep: cores 2..d right-orthonormal, the same tensor."""
    cores = list(cores)
    for k in range(len(cores) - 1, 0, -1):
        r0, n, r1 = cores[k].shape
        q, rr = _qr(cores[k].reshape(r0, n * r1).T)  # G_k = rr^T q^T
        cores[k] = q.T.reshape(q.shape[1], n, r1)
        cores[k - 1] = jnp.einsum("anb,cb->anc", cores[k - 1], rr)
    return tuple(cores)


def _round_sweep(cores: tuple[Array, ...], rank_of) -> tuple[Array, ...]:
    """Left-to-right truncated SVDs of right-orthonormalized cores."""
    cores = list(cores)
    for k in range(len(cores) - 1):
        r0, n, r1 = cores[k].shape
        U, s, Vh = _svd(cores[k].reshape(r0 * n, r1))
        r = rank_of(k, s)
        left, rest = _split(U, s, Vh, r)
        cores[k] = left.reshape(r0, n, r)
        cores[k + 1] = _absorb(rest, cores[k + 1])
    return tuple(cores)


@jax.jit
def _absorb(m: Array, core: Array) -> Array:
    return jnp.einsum("ab,bnc->anc", m, core)


@functools.partial(jax.jit, static_argnums=1)
def _round_fixed(cores: tuple[Array, ...], targets: tuple[int, ...]) -> tuple[Array, ...]:
    return _round_sweep(_orthogonalize(cores), lambda k, s: min(targets[k], s.shape[0]))


def _tt_round(cores: Sequence[Array], rank: Any, rtol: Any) -> tuple[Array, ...]:
    """TT rounding (Oseledets 2011, Alg. 2): right-to-left QR orthogonalization, then
    left-to-right truncated SVDs of the cores (the dense tensor is never formed). With
    ``rtol`` the ranks are chosen as in `_tt_svd`, ``||A||_F`` being the norm of the first
    core once the others are orthonormal."""
    rtol = _split_rank_rtol(rank, rtol)
    cores = tuple(cores)
    modes = [c.shape[1] for c in cores]
    current = [c.shape[2] for c in cores[:-1]]
    if rtol is None or len(cores) == 1:
        if rank is None:
            targets = tuple(_fit_ranks(current, modes))  # exact: the ranks the modes allow
        else:
            targets = _resolve_ranks(rank, modes, current)
        return _round_fixed(cores, targets)
    cores = _orthogonalize(cores)
    delta = rtol / math.sqrt(len(cores) - 1) * float(np.linalg.norm(_concrete(cores[0])))
    return _round_sweep(cores, lambda k, s: _rank_for_delta(s, delta))


def _chain_order(ranks_full: Sequence[int], sizes: Sequence[int]):
    """Cheapest pairwise order of contracting a train (matrix-chain dynamic programming).

    Merging the contracted segments ``[a, m]`` and ``[m + 1, b]`` costs
    ``2 r_a (n_a ... n_m) r_(m+1) (n_(m+1) ... n_b) r_(b+1)`` FLOPs. Returns the total FLOPs
    and the split table.
    """
    d = len(sizes)
    cost = {(k, k): 0 for k in range(d)}
    split: dict[tuple[int, int], int] = {}
    for length in range(2, d + 1):
        for a in range(d - length + 1):
            b = a + length - 1
            outer = 2 * ranks_full[a] * math.prod(sizes[a : b + 1]) * ranks_full[b + 1]
            cost[a, b], split[a, b] = min(
                (cost[a, m] + cost[m + 1, b] + outer * ranks_full[m + 1], m) for m in range(a, b)
            )
    return cost[0, d - 1], split


@jax.jit
def _contract(cores: tuple[Array, ...]) -> Array:
    """The full train as an array ``(n_1 ... n_d,)`` (row-major), in the cheapest order."""
    ranks_full = [c.shape[0] for c in cores] + [1]
    _, split = _chain_order(ranks_full, [c.shape[1] for c in cores])

    def seg(a: int, b: int) -> Array:
        if a == b:
            return cores[a]
        m = split[a, b]
        left, right = seg(a, m), seg(m + 1, b)
        out = jnp.einsum("anm,mkb->ankb", left, right)
        return out.reshape(out.shape[0], -1, out.shape[-1])

    return seg(0, len(cores) - 1).reshape(-1)


def _check_train(cores: Any, ndim: int, layout: str) -> tuple[Array, ...]:
    if not isinstance(cores, Sequence) or len(cores) == 0:
        raise ValueError(
            f"`cores` must be a non-empty sequence of {ndim}-d cores {layout}; got "
            f"{describe(cores)}."
        )
    for k, c in enumerate(cores):
        if getattr(c, "ndim", None) != ndim:
            raise ValueError(f"`cores[{k}]` must be a {ndim}-d core {layout}; got {describe(c)}.")
    if cores[0].shape[0] != 1 or cores[-1].shape[-1] != 1:
        raise ValueError(
            f"the boundary TT ranks must be 1 (r_0 = r_d = 1); got cores[0] of shape "
            f"{tuple(cores[0].shape)} and cores[-1] of shape {tuple(cores[-1].shape)}."
        )
    for k in range(1, len(cores)):
        if cores[k - 1].shape[-1] != cores[k].shape[0]:
            raise ValueError(
                f"`cores[{k}]` of shape {tuple(cores[k].shape)} does not chain after "
                f"`cores[{k - 1}]` of shape {tuple(cores[k - 1].shape)}: the last axis of one "
                "core is the first of the next (r_k)."
            )
    return tuple(cores)


def _init_cores(shapes, key, init, std, alpha, dtype, fan_in, fan_out) -> tuple[Array, ...]:
    """Cores of the given shapes, i.i.d. normal. Variance targets: ``Var = (r_1 ... r_(d-1))
    s^(2d)`` (every entry is a sum over that many rank paths of products of ``d`` independent
    entries). ``"small"``: core ``k`` has entries ``N(0, alpha^2 / r_(k-1))``, so
    ``Var = alpha^(2d)`` whatever the ranks."""
    d = len(shapes)
    dtype = jnp.result_type(float) if dtype is None else dtype
    if init == "small":
        if std is not None:
            raise ValueError("`std` is only used with init='std'; got init='small'.")
        scales = [small_std(alpha, shp[0]) for shp in shapes]
    else:
        var = target_variance(init, fan_in=fan_in, fan_out=fan_out, std=std, alpha=alpha)
        terms = math.prod(shp[-1] for shp in shapes[:-1])
        scales = [factor_std(var, terms, d)] * d
    # One draw for all cores (one random-bits kernel, not d of them), split into the cores.
    sizes = [math.prod(shp) for shp in shapes]
    flat = jax.random.normal(key, (sum(sizes),), dtype)
    offsets = np.cumsum([0, *sizes])
    return tuple(
        s * flat[a:b].reshape(shp)
        for s, a, b, shp in zip(scales, offsets[:-1], offsets[1:], shapes, strict=True)
    )


# ---------------------------------------------------------------------------------------------
# TensorTrain
# ---------------------------------------------------------------------------------------------


class TensorTrain(AbstractFactorization):
    """A tensor of shape ``(n_1, ..., n_d)`` as a train of cores ``(r_{k-1}, n_k, r_k)``.

    Example:
        >>> import jax
        >>> from factorjax import TensorTrain
        >>> A = TensorTrain.init((4, 5, 6), 3, key=jax.random.key(0))
        >>> A.shape, A.ranks, A.num_params
        ((4, 5, 6), (3, 3), 75)
    """

    # Each core has its own shape: `_`-prefixed names are not bound across the tuple.
    cores: tuple[Float[Array, "_r0 _n _r1"], ...]

    def __init__(self, cores: Sequence[Array]):
        self.cores = tuple(cores) if isinstance(cores, Sequence) else cores

    def __check_init__(self):
        _check_train(self.cores, 3, "(r_(k-1), n_k, r_k)")

    @classmethod
    def init(
        cls,
        shape: Any,
        rank: Any,
        *,
        key: PRNGKeyArray,
        init: Any = "glorot",
        std: Any = None,
        alpha: Any = None,
        dtype=None,
        fan_in: Any = None,
        fan_out: Any = None,
    ) -> "TensorTrain":
        """Random cores.

        Arguments:
            shape: the tensor shape ``(n_1, ..., n_d)``.
            rank: an int (a cap on every inner rank, clipped to what the modes allow) or the
                tuple of the ``d - 1`` inner ranks (validated: ``r_k <= r_{k-1} n_k`` and
                ``r_k <= n_{k+1} r_{k+1}``).
            key: a JAX PRNG key.
            init: ``"glorot"``, ``"he"``, ``"lecun"`` or ``"std"`` target the variance of the
                entries of the tensor; every core gets the entry std ``s`` with
                ``Var = (r_1 ... r_{d-1}) s^(2d)``. ``"small"``: core ``k`` has entries
                ``N(0, alpha^2 / r_{k-1})`` (so the tensor's entries have variance
                ``alpha^(2d)``).
            std: the target standard deviation for ``init="std"``.
            alpha: the scale for ``init="small"``.
            dtype: floating dtype of the cores.
            fan_in, fan_out: the fans of ``"glorot"``, ``"he"`` and ``"lecun"``. By default the
                tensor is read as the matrix ``(n_1, n_2 ... n_d)`` that maps its trailing
                modes to its first (as `__call__` applies it): ``fan_out = n_1`` and
                ``fan_in = n_2 ... n_d``.

        Returns:
            A `TensorTrain`.
        """
        modes = _check_shape(shape)
        ranks = _resolve_ranks(rank, modes)
        if init not in ("glorot", "he", "lecun") and (fan_in is not None or fan_out is not None):
            raise ValueError(
                f"`fan_in` and `fan_out` are only used with init='glorot', 'he' or 'lecun'; got "
                f"init={init!r}."
            )
        fan_out = modes[0] if fan_out is None else check_positive_int("fan_out", fan_out)
        fan_in = math.prod(modes[1:]) if fan_in is None else check_positive_int("fan_in", fan_in)
        full = [1, *ranks, 1]
        shapes = [(full[k], modes[k], full[k + 1]) for k in range(len(modes))]
        return cls(_init_cores(shapes, key, init, std, alpha, dtype, fan_in, fan_out))

    @classmethod
    def from_dense(cls, a: ArrayLike, rank: Any = None, *, rtol: Any = None) -> "TensorTrain":
        """TT-SVD of a dense tensor (Oseledets 2011, Alg. 1).

        Arguments:
            a: real tensor ``(n_1, ..., n_d)``.
            rank: an int cap on every inner rank (clipped) or the tuple of the ``d - 1`` inner
                ranks; jittable.
            rtol: instead of ``rank``: the ranks of the truncation with
                ``||A - TT||_F <= rtol ||A||_F`` (each of the ``d - 1`` SVDs discards at most
                ``rtol / sqrt(d - 1) ||A||_F``); needs concrete values (not under ``jit``).
                With neither, the exact train (ranks ``min(n_1 ... n_k, n_{k+1} ... n_d)``).

        Returns:
            A `TensorTrain` whose first ``d - 1`` cores are left-orthonormal.
        """
        a = as_real_array("a", a, min_ndim=1)
        modes = tuple(a.shape)
        tol = _split_rank_rtol(rank, rtol)
        ranks = _resolve_ranks(math.prod(modes) if rank is None else rank, modes)
        return cls(_tt_svd(a, ranks, tol))

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(c.shape[1] for c in self.cores)

    @property
    def ranks(self) -> tuple[int, ...]:
        """The inner TT ranks ``(r_1, ..., r_{d-1})``."""
        return tuple(c.shape[-1] for c in self.cores[:-1])

    @property
    def rank(self) -> int:
        """The largest inner TT rank (1 for a single core)."""
        return max(self.ranks, default=1)

    def to_dense(self) -> Array:
        return _contract(self.cores).reshape(self.shape)

    def round(self, rtol: Any = None, rank: Any = None) -> "TensorTrain":
        """TT rounding (Oseledets 2011, Alg. 2), from the cores: no dense tensor is formed.

        Arguments:
            rtol: the ranks of a train within ``rtol ||A||_F`` of this one (Frobenius norm);
                needs concrete values (not under ``jit``).
            rank: instead of ``rtol``: an int cap on every rank, or the tuple of the inner
                ranks (at most the current ones); jittable. With neither, only the ranks the
                modes allow (an exact re-orthogonalization).

        Returns:
            A `TensorTrain` whose first ``d - 1`` cores are left-orthonormal.
        """
        return TensorTrain(_tt_round(self.cores, rank, rtol))

    def truncate(self, rank: Any) -> "TensorTrain":
        """`round` to the max rank ``rank`` (an int in ``[1, self.rank]``)."""
        return self.round(rank=_check_cap(rank, self.rank))

    def __call__(self, x: ArrayLike) -> Float[Array, " n1"]:
        """The tensor read as the matrix ``(n_1, n_2 ... n_d)`` applied to ``x`` of shape
        ``(n_2, ..., n_d)``: ``y[j] = sum A[j, j_2, ..., j_d] x[j_2, ..., j_d]``, contracted
        core by core from the last (``x`` of shape ``()`` for a single core)."""
        x = as_real_array("x", x)
        if tuple(x.shape) != self.shape[1:]:
            raise ValueError(
                f"`x` must have the trailing modes {self.shape[1:]} of the tensor as its shape; "
                f"got {describe(x)}. Batch with jax.vmap."
            )
        x = x.astype(self.dtype)
        if len(self.cores) == 1:
            return self.cores[0][0, :, 0] * x
        z = x.reshape(-1, self.shape[-1], 1)
        for k in range(len(self.cores) - 1, 0, -1):
            z = jnp.einsum("pnr,snr->ps", z, self.cores[k])
            if k > 1:
                z = z.reshape(-1, self.shape[k - 1], z.shape[-1])
        return self.cores[0][0] @ z[0]


def _check_shape(shape: Any) -> tuple[int, ...]:
    if isinstance(shape, (int, np.integer)) or not isinstance(shape, Sequence) or not shape:
        raise TypeError(f"`shape` must be a non-empty tuple of ints; got {describe(shape)}.")
    return tuple(check_positive_int(f"shape[{k}]", n) for k, n in enumerate(shape))


def _check_cap(rank: Any, current: int) -> int:
    if isinstance(rank, bool) or not isinstance(rank, (int, np.integer)):
        raise TypeError(f"`rank` must be a Python int; got {describe(rank)}.")
    if not 1 <= rank <= current:
        raise ValueError(f"`rank` must be an int in [1, {current}]; got {rank}.")
    return int(rank)


__all__ = ["TensorTrain"]
