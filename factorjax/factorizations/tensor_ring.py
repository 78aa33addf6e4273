"""Tensor rings ``A[i_1, ..., i_d] = trace(G_1[:, i_1, :] G_2[:, i_2, :] ... G_d[:, i_d, :])``.

A tensor ring (Zhao et al., "Tensor Ring Decomposition", 2016) is a tensor train whose first
and last bonds are joined: core ``k`` (0-based here) has shape ``(r_k, n_k, r_{k+1})`` with
``r_d = r_0``, and the chain of matrices closes with a trace. With ``n_out`` set, the leading
``n_out`` modes index the rows of a matrix view ``W (d_out, d_in)`` (the weight tensorized as
``out_modes + in_modes``, row-major, see `factorjax.factorizations._tensorize`), and the ring is
a linear operator.
"""

import functools
import math
from typing import Any, ClassVar

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import opt_einsum
from jax import Array
from jax.typing import ArrayLike
from jaxtyping import Float, PRNGKeyArray

from factorjax import _lapack
from factorjax._checks import as_real_array, check_positive_int, describe
from factorjax.factorizations._init import small_std
from factorjax.factorizations._operator import (
    Candidate,
    Order,
    dense_candidate,
    network_candidates,
)
from factorjax.factorizations._tensor_operator import (
    AbstractTensorOperator,
    check_n_out,
    check_shape,
    matrix_target,
)
from factorjax.factorizations._tensorize import factor_std

# Scalar arguments validated by `factorjax._checks` are annotated `Any` (see lowrank.py); the
# docstrings state the contract.

__all__ = ["TensorRing"]


# ---------------------------------------------------------------------------------------------
# Validation
# ---------------------------------------------------------------------------------------------


def _check_ranks(name: str, rank: Any, d: int) -> tuple[int, ...]:
    """An int (every bond) or a tuple of ``d`` ints ``(r_0, ..., r_{d-1})``, all >= 1."""
    if isinstance(rank, (int, np.integer)) and not isinstance(rank, bool):
        return (check_positive_int(name, rank),) * d
    if isinstance(rank, bool) or not hasattr(rank, "__iter__"):
        raise TypeError(f"`{name}` must be an int or a tuple of {d} ints; got {describe(rank)}.")
    rank = tuple(rank)
    if len(rank) != d:
        raise ValueError(
            f"`{name}` must be an int or a tuple of d = {d} ranks (r_0, ..., r_{d - 1}), one per "
            f"bond of the ring; got {rank!r} ({len(rank)} ranks)."
        )
    return tuple(check_positive_int(f"{name}[{k}]", r) for k, r in enumerate(rank))


def _check_rtol(rtol: Any) -> float:
    if isinstance(rtol, bool) or not isinstance(rtol, (int, float, np.integer, np.floating)):
        raise TypeError(f"`rtol` must be a float; got {describe(rtol)}.")
    if not (math.isfinite(rtol) and rtol > 0):
        raise ValueError(
            f"`rtol` must be a finite float > 0; got {rtol}. For the exact decomposition pass "
            "neither `rank` nor `rtol`."
        )
    return float(rtol)


# ---------------------------------------------------------------------------------------------
# Contractions and their costs
# ---------------------------------------------------------------------------------------------


# from_dense with `rtol` runs eagerly (its ranks come from singular values): one compiled SVD
# per shape, reused across calls.
_svd = jax.jit(functools.partial(_lapack.svd, full_matrices=False))


def _merge(cores) -> Array:
    """Contract an open chain ``(a, n_1, r_1), ..., (r_{m-1}, n_m, b)`` into
    ``(a, n_1 ... n_m, b)``, left to right (each step one matmul, no transposes)."""
    t = cores[0]
    for c in cores[1:]:
        a, n, _ = t.shape
        t = jnp.einsum("anr,rms->anms", t, c).reshape(a, n * c.shape[1], c.shape[2])
    return t


def _merge_cost(shapes) -> tuple[int, int]:
    """FLOPs and largest intermediate (elements) of `_merge` on cores of these shapes."""
    a, n, r = shapes[0]
    flops = peak = 0
    for _, m, s in shapes[1:]:
        flops += 2 * a * n * r * m * s
        n, r = n * m, s
        peak = max(peak, a * n * r)
    return flops, peak


def _concrete(x: Array) -> None:
    if isinstance(x, jax.core.Tracer):
        raise ValueError(
            "`rtol` chooses the ranks from singular values, and the ranks set the shapes of the "
            "cores, so it needs concrete values; under `jax.jit` pass `rank=` instead."
        )


def _svd_rank(s: Array, delta: float) -> int:
    """Smallest ``r >= 1`` with ``sqrt(sum_{i >= r} s_i^2) <= delta`` (concrete ``s``)."""
    _concrete(s)
    s = np.asarray(s, np.float64)
    tail = np.concatenate([np.sqrt(np.cumsum((s**2)[::-1])[::-1]), [0.0]])
    return int(max(1, np.nonzero(tail <= delta)[0][0]))


def _split(R: int, cap: int | None = None) -> tuple[int, int]:
    """``(r_0, r_1)`` with ``r_0 <= r_1 <= cap`` and ``r_0 r_1 <= R`` as large as possible,
    then as balanced as possible (``R`` itself, split balanced, when ``cap`` is None)."""
    best = (1, 1)
    for r1 in range(1, R + 1):
        r0 = min(r1, R // r1)
        if cap is not None and r1 > cap:
            break
        if cap is None and r0 * r1 != R:
            continue
        if (r0 * r1, r0) > (best[0] * best[1], best[0]):
            best = (r0, r1)
    return best


def _tt_round(cores: list, targets: list) -> list:
    """TT-rounding of an open chain with boundary bonds 1 (Oseledets 2011): orthogonalize right
    to left by QR, then truncate bond ``k`` (between cores ``k`` and ``k + 1``) to
    ``targets[k]`` by SVD, left to right."""
    cores = list(cores)
    for k in range(len(cores) - 1, 0, -1):
        r, n, s = cores[k].shape
        Q, R = _lapack.qr(cores[k].reshape(r, n * s).T)
        cores[k] = Q.T.reshape(Q.shape[1], n, s)
        cores[k - 1] = jnp.einsum("anr,qr->anq", cores[k - 1], R)
    for k in range(len(cores) - 1):
        r, n, s = cores[k].shape
        U, S, Vh = _lapack.svd(cores[k].reshape(r * n, s), full_matrices=False)
        t = min(targets[k], S.shape[0])
        cores[k] = U[:, :t].reshape(r, n, t)
        cores[k + 1] = jnp.einsum("ts,snq->tnq", S[:t, None] * Vh[:t], cores[k + 1])
    return cores


@functools.partial(jax.jit, static_argnums=1)
def _round_ring(cores: tuple, target: tuple) -> tuple:
    """`TensorRing.truncate` (compiled once per shape when called eagerly)."""
    d = len(cores)
    if d == 1:  # A[i] = trace(G[:, i, :]) is exactly a ring of rank 1
        core = jnp.einsum("aia->i", cores[0])
        out = jnp.zeros((target[0], core.shape[0], target[0]), core.dtype)
        return (out.at[0, :, 0].set(core),)
    cores = list(cores)
    for c in (d // 2, 0):
        order = [(c + j) % d for j in range(d)]
        chain = [cores[k] for k in order]
        first, last = chain[0], chain[-1]
        chain[0] = first.reshape(1, first.shape[0] * first.shape[1], first.shape[2])
        chain[-1] = last.reshape(last.shape[0], last.shape[1] * last.shape[2], 1)
        chain = _tt_round(chain, [target[k] for k in order[1:]])
        chain[0] = chain[0].reshape(first.shape[0], first.shape[1], chain[0].shape[2])
        chain[-1] = chain[-1].reshape(chain[-1].shape[0], last.shape[1], last.shape[2])
        for k, core in zip(order, chain, strict=True):
            cores[k] = core
    return tuple(cores)


# ---------------------------------------------------------------------------------------------
# The format
# ---------------------------------------------------------------------------------------------


class TensorRing(AbstractTensorOperator):
    """A tensor ring: ``A[i_0, ..., i_{d-1}] = trace(G_0[:, i_0, :] ... G_{d-1}[:, i_{d-1}, :])``.

    ``cores[k]`` has shape ``(r_k, n_k, r_{k+1})`` with ``r_d = r_0``: the ring closes with a
    trace. ``ranks = (r_0, ..., r_{d-1})``. With ``n_out`` set, the tensor is the weight
    ``W (d_out, d_in)`` tensorized as ``out_modes + in_modes`` (``out_modes = shape[:n_out]``,
    row-major) and applies to inputs ``(..., d_in)`` by a planned contraction order (see
    `candidates`); with ``n_out=None`` it is a plain tensor without a matrix view. The matrix
    view (`out_modes`, `in_modes`, `to_matrix`), `init_matrix` and `with_n_out` are those of
    `factorjax.factorizations._tensor_operator.AbstractTensorOperator`.

    Example:
        >>> import jax
        >>> from factorjax.factorizations.tensor_ring import TensorRing
        >>> W = TensorRing.init_matrix(64, 32, 3, key=jax.random.key(0))
        >>> W.shape, W.ranks, W.n_out
        ((8, 8, 4, 8), (3, 3, 3, 3), 2)
        >>> W.apply(jax.numpy.ones((5, 32))).shape
        (5, 64)
    """

    # Each core has its own shape: `_`-prefixed names are not bound across the tuple.
    cores: tuple[Float[Array, "_r _n _s"], ...]
    n_out: int | None = eqx.field(static=True, default=None)

    # `init_matrix` and `from_matrix` balance a side whose modes are not given into 2 modes,
    # whatever the length of the other side's.
    _default_order: ClassVar[int | None] = 2

    def __check_init__(self):
        if not isinstance(self.cores, tuple) or len(self.cores) == 0:
            if isinstance(self.cores, tuple):
                got = "an empty tuple"
            elif isinstance(self.cores, list):
                got = "a list (pass tuple(cores))"
            else:
                got = describe(self.cores)
            raise ValueError(
                f"`cores` must be a non-empty tuple of 3-D arrays (r_k, n_k, r_(k+1)); got {got}."
            )
        d = len(self.cores)
        for k, c in enumerate(self.cores):
            if c.ndim != 3:
                raise ValueError(
                    f"`cores[{k}]` must be 3-D (r_k, n_k, r_(k+1)); got {describe(c)}."
                )
        for k, c in enumerate(self.cores):
            nxt = self.cores[(k + 1) % d]
            if c.shape[2] != nxt.shape[0]:
                raise ValueError(
                    f"the ring does not close: `cores[{k}]` of shape {c.shape} ends in a bond of "
                    f"{c.shape[2]} but `cores[{(k + 1) % d}]` of shape {nxt.shape} starts with "
                    f"{nxt.shape[0]} (core k is (r_k, n_k, r_(k+1)) with r_d = r_0)."
                )

    # --- construction ---------------------------------------------------------------------

    @classmethod
    def init(
        cls,
        shape: Any,
        rank: Any,
        *,
        key: PRNGKeyArray,
        n_out: Any = None,
        init: Any = "glorot",
        std: Any = None,
        alpha: Any = None,
        dtype=None,
    ) -> "TensorRing":
        """Random cores.

        Arguments:
            shape: the mode sizes ``(n_0, ..., n_{d-1})``.
            rank: an int (every bond) or a tuple of ``d`` ranks ``(r_0, ..., r_{d-1})``.
            key: a JAX PRNG key.
            n_out: the number of leading output modes of the matrix view, or None for a plain
                tensor.
            init: ``"glorot"``, ``"he"``, ``"lecun"`` (fans of the matrix view: need
                ``n_out``) or ``"std"`` target the variance of the entries of the tensor: every
                core gets the same entry std ``s`` with ``Var = r_0 r_1 ... r_{d-1} s^(2d)``.
                ``"small"``: core ``k`` has entries ``N(0, alpha^2 / r_k)``, ``r_k`` its
                leading bond, as for tensor trains (every bond counted once around the ring:
                ``Var = alpha^(2d)``).
            std: the target standard deviation for ``init="std"``.
            alpha: the scale for ``init="small"``.
            dtype: floating dtype of the cores.

        Returns:
            A `TensorRing`.
        """
        shape = check_shape("shape", shape, min_order=1)
        d = len(shape)
        ranks = _check_ranks("rank", rank, d)
        n_out = check_n_out(n_out, d)
        dtype = jnp.result_type(float) if dtype is None else dtype
        if init == "small":
            if std is not None:
                raise ValueError("`std` is only used with init='std'; got init='small'.")
            scales = [small_std(alpha, ranks[k]) for k in range(d)]
        else:
            var = matrix_target(init, shape, n_out, std, alpha)
            scales = [factor_std(var, math.prod(ranks), d)] * d
        shapes = [(ranks[k], shape[k], ranks[(k + 1) % d]) for k in range(d)]
        # One draw for all cores (one PRNG kernel to compile, not d), cut into the cores.
        flat = jax.random.normal(key, (sum(math.prod(s) for s in shapes),), dtype)
        cores, start = [], 0
        for k, s in enumerate(shapes):
            cores.append(scales[k] * flat[start : start + math.prod(s)].reshape(s))
            start += math.prod(s)
        return cls(tuple(cores), n_out)

    @classmethod
    def from_dense(
        cls, a: ArrayLike, rank: Any = None, *, rtol: Any = None, n_out: Any = None
    ) -> "TensorRing":
        """TR-SVD (Zhao et al. 2016, Algorithm 1).

        The first unfolding ``A_(1) (n_0, n_1 ... n_{d-1})`` is truncated by SVD to rank
        ``R = r_0 r_1``, split as balanced as ``R`` allows (``r_0 <= r_1``, ``|r_1 - r_0|``
        smallest); ``U`` gives the first core and ``S V^T``, with the ``r_0`` index moved last,
        is split by sequential truncated SVDs (TT-SVD) into the other cores, the last one closing
        the ring on ``r_0``.

        Arguments:
            a: real tensor ``(n_0, ..., n_{d-1})``.
            rank: an int ``r`` (every bond at most ``r``; ``r_0 r_1`` as large as fits), or a
                tuple ``(r_0, ..., r_{d-1})`` of exact ranks, which must fit:
                ``r_0 r_1 <= min(n_0, n_1 ... n_{d-1})`` and
                ``r_{k+1} <= min(r_k n_k, n_{k+1} ... n_{d-1} r_0)`` for ``1 <= k <= d - 2``
                (a single core, ``d = 1``, has rank 1). Jittable.
            rtol: instead of ``rank``: a relative Frobenius error ``> 0``. The first SVD is
                truncated at absolute error ``sqrt(2) rtol ||A|| / sqrt(d)`` and the others at
                ``rtol ||A|| / sqrt(d)``, so that ``||A - TR||_F <= rtol ||A||_F`` (Zhao et al.,
                Theorem 1). Needs concrete values (not under ``jit``). With neither, the exact
                decomposition (every SVD at full rank).
            n_out: the number of leading output modes of a matrix view, or None.

        Returns:
            A `TensorRing`.
        """
        a = as_real_array("a", a, min_ndim=1)
        shape, d = a.shape, a.ndim
        n_out = check_n_out(n_out, d)
        if rank is not None and rtol is not None:
            raise ValueError(
                f"pass at most one of `rank` and `rtol`; got rank={rank}, rtol={rtol}."
            )
        exact = None if rank is None else _check_ranks("rank", rank, d)
        cap = exact[0] if isinstance(rank, (int, np.integer)) else None
        if cap is not None:
            exact = None
        if rtol is not None:
            rtol = _check_rtol(rtol)
            _concrete(a)
            delta = rtol * float(jnp.linalg.norm(a)) / math.sqrt(d) if d > 1 else 0.0
        if d == 1:
            if exact is not None and exact != (1,):
                raise ValueError(f"`rank` of a single-core ring must be 1; got {rank!r}.")
            return cls((a.reshape(1, shape[0], 1),), n_out)

        if exact is not None:  # the bounds of each SVD, checked before any is computed
            bounds = [min(shape[0], math.prod(shape[1:]))]
            bounds += [
                min(exact[k] * shape[k], math.prod(shape[k + 1 :]) * exact[0])
                for k in range(1, d - 1)
            ]
            sizes = [exact[0] * exact[1], *exact[2:]]
            for k, (size, bound) in enumerate(zip(sizes, bounds, strict=True)):
                if size > bound:
                    what = "r_0 r_1 (the rank of the first unfolding)" if k == 0 else f"r_{k + 1}"
                    raise ValueError(
                        f"`rank` does not fit shape {tuple(shape)}: {what} must be at most "
                        f"{bound} here; got {size} (rank={rank!r})."
                    )

        rest = math.prod(shape[1:])
        U, s, Vh = _svd(a.reshape(shape[0], rest))
        if rtol is not None:
            r0, r1 = _split(_svd_rank(s, math.sqrt(2) * delta))
        elif exact is not None:
            r0, r1 = exact[0], exact[1]
        else:
            r0, r1 = _split(s.shape[0], cap)
        R = r0 * r1
        cores = [U[:, :R].reshape(shape[0], r0, r1).transpose(1, 0, 2)]
        C = jnp.moveaxis((s[:R, None] * Vh[:R]).reshape(r0, r1, rest), 0, -1)  # (r1, rest, r0)
        prev = r1
        for k in range(1, d - 1):
            rest //= shape[k]
            U, s, Vh = _svd(C.reshape(prev * shape[k], rest * r0))
            if rtol is not None:
                r = _svd_rank(s, delta)
            elif exact is not None:
                r = exact[k + 1]
            else:
                r = s.shape[0] if cap is None else min(cap, s.shape[0])
            cores.append(U[:, :r].reshape(prev, shape[k], r))
            C = s[:r, None] * Vh[:r]
            prev = r
        cores.append(C.reshape(prev, shape[-1], r0))
        return cls(tuple(cores), n_out)

    @classmethod
    def from_matrix(
        cls,
        w: ArrayLike,
        rank: Any = None,
        *,
        rtol: Any = None,
        out_modes: Any = None,
        in_modes: Any = None,
        order: Any = None,
    ) -> "TensorRing":
        """TR-SVD (`from_dense`) of a weight ``(d_out, d_in)`` tensorized as
        ``out_modes + in_modes`` (defaults as in `init_matrix`).

        Returns:
            A `TensorRing` with ``n_out = len(out_modes)``.
        """
        t, n_out = cls._tensorize(w, out_modes, in_modes, order)
        return cls.from_dense(t, rank, rtol=rtol, n_out=n_out)

    # --- properties -----------------------------------------------------------------------

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(c.shape[1] for c in self.cores)

    @property
    def ranks(self) -> tuple[int, ...]:
        """``(r_0, ..., r_{d-1})``: core ``k`` is ``(r_k, n_k, r_{k+1})``, ``r_d = r_0``."""
        return tuple(c.shape[0] for c in self.cores)

    @property
    def rank(self) -> int:
        """The largest bond ``max(ranks)``."""
        return max(self.ranks)

    # --- dense ----------------------------------------------------------------------------

    def _dense_order(self) -> list[int]:
        """Cores in ring order from the smallest bond: the trace is taken over it."""
        d, r = len(self.cores), self.ranks
        s = min(range(d), key=lambda k: r[k])
        return [(s + j) % d for j in range(d)]

    def to_dense(self) -> Float[Array, "..."]:
        """The tensor: the cores merged from the smallest bond around the ring, the last
        contraction closing the trace."""
        if len(self.cores) == 1:
            return jnp.einsum("aia->i", self.cores[0])
        order = self._dense_order()
        t = _merge([self.cores[k] for k in order[:-1]])
        out = jnp.einsum("aNr,rma->Nm", t, self.cores[order[-1]])
        out = out.reshape([self.shape[k] for k in order])
        if order[0] == 0:
            return out
        return jnp.transpose(out, [(k - order[0]) % len(order) for k in range(len(order))])

    def reconstruction_flops(self) -> int:
        """FLOPs of `to_dense` (a multiply-add counts 2)."""
        if len(self.cores) == 1:
            return self.ranks[0] * self.shape[0]
        order = self._dense_order()
        shapes = [self.cores[k].shape for k in order]
        flops, _ = _merge_cost(shapes[:-1])
        a = shapes[0][0]
        N = math.prod(s[1] for s in shapes[:-1])
        r, m, _ = shapes[-1]
        return flops + 2 * a * N * r * m

    # --- truncation -----------------------------------------------------------------------

    def truncate(self, rank: Any) -> "TensorRing":
        """Lower the ranks from the cores, without the dense tensor.

        The ring is cut at bond ``c = d // 2``, the cut bond folded into the first and last
        modes, and the open chain TT-rounded (QR sweep, then SVD truncation); then the same with
        the cut at bond 0, which rounds bond ``c``. In each pass the open chain's error is at
        most ``sqrt(d - 1)`` times its best at these ranks (Oseledets 2011), and the ring's error
        at most ``sqrt(r_cut)`` times the chain's (the trace over the cut bond). A ring has no
        best approximation of given ranks in general, so this is a heuristic with an exact case:
        a ring with a representation at the given ranks, padded or gauged to larger ones, is
        recovered (up to rounding, for generic cores). Jittable. The dense tensor is never
        built: QRs and SVDs of the cores, ``O(d n r^3)``.

        Arguments:
            rank: an int ``1 <= rank <= self.rank`` (every bond at most ``rank``) or a tuple
                of ``d`` ranks with ``1 <= rank[k] <= ranks[k]``.

        Returns:
            A `TensorRing` with bond ranks at most the requested ones (less where the shapes
            force it).
        """
        d, ranks = len(self.cores), self.ranks
        target = _check_ranks("rank", rank, d)
        for k, (t, r) in enumerate(zip(target, ranks, strict=True)):
            if t > (self.rank if isinstance(rank, (int, np.integer)) else r):
                raise ValueError(
                    f"`rank` must be at most the current ranks {ranks} (an int: at most "
                    f"{self.rank}); got {rank!r} (bond {k})."
                )
        target = tuple(min(t, r) for t, r in zip(target, ranks, strict=True))
        return TensorRing(_round_ring(self.cores, target), self.n_out)

    # --- application ----------------------------------------------------------------------

    def candidates(self, batch: int) -> tuple[Candidate, ...]:
        """Orders of ``x W^T`` for ``x (batch, d_in)``, with input cores ``n_out .. d-1`` and
        output cores ``0 .. n_out-1``:

        - ``"inputs-first"``: ``x`` through the input cores from the last one back, carrying
          the bond pair ``(r_0, r_k)``; then the output cores from the first one on, carrying
          ``(r_{n_out}, r_k)``; the last contraction closes the trace.
        - ``"inputs-first-reversed"``: the mirror: input cores from the first, output cores
          from the last (cheaper when the modes or ranks are lopsided).
        - ``"merged"``: merge the input cores into ``(r_{n_out}, d_in, r_0)`` and the output
          cores into ``(r_0, d_out, r_{n_out})`` (batch-independent), then two matmuls through
          the ``r_0 r_{n_out}`` bond pair: a low-rank product.
        - ``"dense"``: rebuild ``W``, then one matmul.
        """
        self._view()
        return (
            self._inputs_first(batch),
            self._inputs_first_reversed(batch),
            self._merged(batch),
            *network_candidates(self.network(), batch, self.dtype),
            dense_candidate(self, batch),
        )

    def tensor_network(self) -> tuple[tuple[str, ...], tuple[Array, ...], str]:
        """The cores ``(r_(k-1), n_k, r_k)``, the last bond closing the ring on the first."""
        sym, d = opt_einsum.get_symbol, len(self.cores)
        modes, bonds = "".join(sym(1 + k) for k in range(d)), [sym(1 + d + k) for k in range(d)]
        terms = tuple(bonds[k] + modes[k] + bonds[(k + 1) % d] for k in range(d))
        return terms, self.cores, modes

    def _candidate(self, name: str, batch: int, steps: list) -> Candidate:
        """A candidate from its steps ``(shape, equation, k)``: reshape the state to ``shape``
        and contract it with core ``k`` by ``equation``. The FLOPs (2 per multiply-add: twice
        the size of each step's index space) and the largest intermediate (elements) come from
        the same steps as the function."""
        flops = peak = 0
        for i, (shape, eq, k) in enumerate(steps):
            (left, right), out = eq.split("->")[0].split(","), eq.split("->")[1]
            sizes = dict(zip(left, shape, strict=True)) | dict(
                zip(right, self.cores[k].shape, strict=True)
            )
            flops += 2 * math.prod(sizes.values())
            if i < len(steps) - 1:
                peak = max(peak, math.prod(sizes[c] for c in out))

        def fn(x):
            for shape, eq, k in steps:
                x = jnp.einsum(eq, x.reshape(shape), self.cores[k])
            return x.reshape(batch, -1)

        return Candidate(Order(name, flops, peak * jnp.dtype(self.dtype).itemsize), fn)

    def _inputs_first(self, B: int) -> Candidate:
        p, d, n, r = self.n_out, len(self.cores), self.shape, (*self.ranks, self.ranks[0])
        N = math.prod(n[p : d - 1])  # input modes not yet contracted, before the current one
        steps = [((B, N, n[d - 1]), "bNn,rnc->bcNr", d - 1)]  # state (B, r_0, N, r_k)
        for k in range(d - 2, p - 1, -1):
            N //= n[k]
            steps.append(((B, r[0], N, n[k], r[k + 1]), "bcNnr,anr->bcNa", k))
        if p == 1:
            steps.append(((B, r[0], r[p]), "bca,coa->bo", 0))
            return self._candidate("inputs-first", B, steps)
        steps.append(((B, r[0], r[p]), "bca,cor->baor", 0))  # state (B, r_p, O, r_k)
        o = n[0]  # output modes produced so far
        for k in range(1, p - 1):
            steps.append(((B, r[p], o, r[k]), "baOr,rms->baOms", k))
            o *= n[k]
        steps.append(((B, r[p], o, r[p - 1]), "baOr,rma->bOm", p - 1))
        return self._candidate("inputs-first", B, steps)

    def _inputs_first_reversed(self, B: int) -> Candidate:
        p, d, n, r = self.n_out, len(self.cores), self.shape, (*self.ranks, self.ranks[0])
        N = math.prod(n[p + 1 :])  # input modes after the current one
        steps = [((B, n[p], N), "bnN,anr->barN", p)]  # state (B, r_p, r_k, N)
        for k in range(p + 1, d):
            N //= n[k]
            steps.append(((B, r[p], r[k], n[k], N), "barnN,rns->basN", k))
        if p == 1:
            steps.append(((B, r[p], r[0]), "bac,cma->bm", 0))
            return self._candidate("inputs-first-reversed", B, steps)
        steps.append(((B, r[p], r[0]), "bac,rma->bcrm", p - 1))  # state (B, r_0, r_k, O)
        o = n[p - 1]
        for k in range(p - 2, 0, -1):
            steps.append(((B, r[0], r[k + 1], o), "bcsO,rms->bcrmO", k))
            o *= n[k]
        steps.append(((B, r[0], r[1], o), "bcsO,cms->bmO", 0))
        return self._candidate("inputs-first-reversed", B, steps)

    def _merged(self, B: int) -> Candidate:
        p, n, r = self.n_out, self.shape, self.ranks
        d_out, d_in = math.prod(n[:p]), math.prod(n[p:])
        f_in, p_in = _merge_cost([c.shape for c in self.cores[p:]])
        f_out, p_out = _merge_cost([c.shape for c in self.cores[:p]])
        flops = f_in + f_out + 2 * B * d_in * r[p] * r[0] + 2 * B * r[0] * r[p] * d_out
        peak = max(p_in, p_out, B * r[0] * r[p]) * jnp.dtype(self.dtype).itemsize

        def fn(x):
            m = jnp.einsum("bi,aic->bac", x, _merge(self.cores[p:]))  # (B, r_p, r_0)
            return jnp.einsum("bac,coa->bo", m, _merge(self.cores[:p]))

        return Candidate(Order("merged", flops, peak), fn)
