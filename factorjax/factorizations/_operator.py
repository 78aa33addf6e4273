"""Factorized matrix operators and the planner that chooses how to apply them.

A format that represents a weight ``W`` of shape ``(d_out, d_in)`` (TT-matrix, CP, Tucker,
tensor ring, Kronecker) is an `AbstractOperator`. It lists the sensible ways of computing
``x W^T`` for a batch of ``B`` inputs (core by core from either end, pairwise trees, or
rebuilding ``W`` then one matmul), each with its FLOP count and the size of its largest
intermediate for that ``B``; `AbstractOperator.plan` picks the cheapest, and
`AbstractOperator.apply` runs it. The batch size is read from the input's shape at trace time,
so one operator applied to one example and to a batch of 4096 may take different orders.
The cost model (`Order`, `Plan`, `choose` and its constants) is in ``_cost.py``; the measured
plans of `AbstractOperator.tune` and `autotune` are in ``_tune.py``.

Example:
    >>> import jax, jax.numpy as jnp
    >>> from factorjax import TTMatrix
    >>> W = TTMatrix.init(4096, 4096, 16, key=jax.random.key(0), out_modes=(16, 16, 16),
    ...                   in_modes=(16, 16, 16))
    >>> W.plan(1).order, W.plan(4096).order
    ('right-to-left', 'dense')
    >>> x = jnp.ones((8, 4096))
    >>> W.apply(x).shape                 # x: (..., d_in) -> (..., d_out), planned for B = 8
    (8, 4096)
    >>> y = W.apply(x, order="right-to-left")   # forced
"""

import abc
import functools
import math
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import opt_einsum
from jax import Array
from jax.typing import ArrayLike

from factorjax._checks import as_real_array, describe
from factorjax.factorizations._base import AbstractFactorization
from factorjax.factorizations._cost import (
    Candidate,
    Order,
    Plan,
    choose,
    gemm_flops,
    score,
)
from factorjax.factorizations._tune import autotune, autotuning, tuned_plan

__all__ = [
    "AbstractOperator",
    "Candidate",
    "Network",
    "Order",
    "Plan",
    "autotune",
    "choose",
    "dense_candidate",
    "left_matmul",
    "matmul_t",
    "network_candidates",
    "pairwise_path",
    "sequential_path",
]


class AbstractOperator(AbstractFactorization):
    """A factorization that represents a matrix ``W`` of shape ``(d_out, d_in)`` and applies
    it to inputs along a planned contraction order.

    Subclasses implement `in_features`, `out_features`, `to_matrix` and `candidates`.
    """

    @property
    @abc.abstractmethod
    def in_features(self) -> int:
        """``d_in``."""

    @property
    @abc.abstractmethod
    def out_features(self) -> int:
        """``d_out``."""

    @abc.abstractmethod
    def to_matrix(self) -> Array:
        """The dense weight ``W``, ``(d_out, d_in)``."""

    @abc.abstractmethod
    def reconstruction_flops(self) -> int:
        """FLOPs of `to_matrix` in its cheapest order (part of the ``"dense"`` order's cost)."""

    def reconstruction_gemm_flops(self) -> int:
        """The part of `reconstruction_flops` done by plain matmuls no side of which is below
        `GEMM_MIN_DIM` (counted at the matmul rate; the rest counts as a chain). 0 unless a
        format says otherwise."""
        return 0

    @abc.abstractmethod
    def candidates(self, batch: int) -> tuple[Candidate, ...]:
        """Every sensible order of computing ``x W^T`` for ``x`` of shape ``(batch, d_in)``,
        with its cost; one of them is named ``"dense"`` (rebuild ``W``, then one matmul)."""

    def plan(self, batch: Any, order: Any = "auto") -> Plan:
        """The order `apply` takes for a batch of ``batch`` inputs, and the costs it weighed.

        Arguments:
            batch: the number of inputs (an int >= 1).
            order: ``"auto"`` (the cheapest under the cost model), ``"tuned"`` (the fastest
                measured: `tune`), or the name of a candidate, to see its cost.
        """
        batch = _check_batch(batch)
        if order == "tuned":
            return self.tune(batch)
        cands = self.candidates(batch)
        chosen = choose(cands, order).order
        ranked = tuple(sorted((c.order for c in cands), key=score))
        return Plan(chosen.name, chosen.flops, chosen.peak_bytes, batch, ranked)

    def tune(self, batch: Any, *, grad: bool = True) -> Plan:
        """Measure the candidate orders for a batch of ``batch`` inputs, on random data of
        this operator's shapes and dtype on the default backend, and return the plan of the
        fastest (``Plan.seconds`` holds every time; orders the cost model scores above 16
        times its cheapest are not timed). The cost model of `plan` ranks orders by
        FLOPs and memory; their actual speed also depends on layouts and on the backend's
        kernels, which only a measurement sees (FFTW's "measure" against its "estimate").

        The result is cached per (format, shapes, dtype, batch, ``grad``, backend), so each
        shape is measured once per process; under `autotune`, ``apply(x)`` uses it. Each
        candidate is compiled and timed in interleaved rounds; those whose call takes under
        10 ms are compiled three times and timed by the median over their compilations, as
        one compilation of a small call can run 15% faster than another. A few seconds to
        some ten seconds per new shape (TT-matrix d=1024 r=4 B=64, seven orders: 11 s on a
        2-core CPU, against 3.6 s with one compilation each).

        Arguments:
            batch: the number of inputs (an int >= 1).
            grad: time the forward and backward pass (the gradient with respect to the
                factors, as in training; default) instead of the forward pass alone.
        """
        return tuned_plan(self, _check_batch(batch), bool(grad))

    def apply(self, x: ArrayLike, *, order: Any = "auto") -> Array:
        """``x W^T`` for ``x`` of shape ``(..., d_in)``: every leading axis is batch.

        Arguments:
            x: real inputs ``(..., d_in)``.
            order: ``"auto"`` (plan for the batch size of ``x`` with the cost model, or under
                `autotune` with measurements; see `plan`), ``"tuned"`` (measured: `tune`), or
                the name of a candidate order, to force it.

        Returns:
            ``(..., d_out)``.
        """
        x = as_real_array("x", x, min_ndim=1)
        if x.shape[-1] != self.in_features:
            raise ValueError(
                f"`x` must have d_in = {self.in_features} features on its last axis; got "
                f"{describe(x)}."
            )
        lead = x.shape[:-1]
        batch = max(math.prod(lead), 1)
        if order == "tuned" or (order == "auto" and autotuning()):
            order = self.tune(batch).order
        xb = x.reshape(batch, self.in_features)
        y = choose(self.candidates(batch), order).fn(xb.astype(self.dtype))
        return y.reshape(*lead, self.out_features)

    def __call__(self, x: ArrayLike) -> Array:
        """``W x`` for one unbatched input ``(d_in,)`` (batch with `apply`, or ``jax.vmap``)."""
        x = as_real_array("x", x)
        if x.shape != (self.in_features,):
            raise ValueError(
                f"`x` must be one unbatched input of shape ({self.in_features},); got "
                f"{describe(x)}. Batch with .apply(x) or jax.vmap."
            )
        return self.apply(x)


def matmul_t(x: ArrayLike, m: ArrayLike) -> Array:
    """``x @ m.T`` for ``x`` of shape ``(B, k)`` and ``m`` of shape ``(n, k)``, in the layouts
    that XLA's CPU backend runs fastest.

    - A single row (``B = 1``) goes as the matrix-vector product ``m @ x[0]``: XLA's CPU
      backend runs ``x @ m.T`` with one row 10-25x slower for large ``m`` (measured, jax 0.10
      and 0.12, ``m`` of 4096 x 4096: 42 ms against 2 ms; its gradient 71 ms against 29 ms),
      while from two rows on both forms run at the same speed.
    - The gradient with respect to ``m``, ``g^T x``, contracts the batch, the leading axis of
      both operands. On CPU, ``g^T`` is first written out (a copy of ``g``), so that the
      product contracts a minor axis: at ``(4096, 256)`` this takes 3.5 ms against 5.2 ms
      for the same product with the transpose folded into it (jax 0.10; PyTorch takes 2.9
      ms). Other backends get the plain form.
    """
    x, m = jnp.asarray(x), jnp.asarray(m)
    if x.shape[0] == 1:
        return (m @ x[0])[None]
    return _matmul_t(x, m)


@jax.custom_jvp
def _matmul_t(x: Array, m: Array) -> Array:
    return x @ m.T


def _tangent_m_cpu(x: Array, dm: Array) -> Array:
    # ``x dm^T`` written so that its transpose, the gradient, is ``barrier(g^T) @ x``: the
    # barrier keeps XLA from folding the transpose back into the product.
    return jax.lax.optimization_barrier(dm @ x.T).T


@functools.partial(_matmul_t.defjvp, symbolic_zeros=True)
def _matmul_t_jvp(primals, tangents):
    (x, m), (dx, dm) = primals, tangents
    zero = jax.custom_derivatives.SymbolicZero
    terms = []
    if not isinstance(dx, zero):
        terms.append(dx @ m.T)
    if not isinstance(dm, zero):
        plain = lambda x, dm: x @ dm.T  # noqa: E731
        terms.append(jax.lax.platform_dependent(x, dm, cpu=_tangent_m_cpu, default=plain))
    return x @ m.T, sum(terms[1:], terms[0])


def left_matmul(a: Array, y: Array) -> Array:
    """``a @ y[p]`` for every ``p``: ``a`` of shape ``(m, n)``, ``y`` of shape ``(P, n, Q)``,
    the result ``(P, m, Q)``; ``a`` is broadcast over ``P`` (one plain matmul where ``P = 1``).

    It contracts a middle axis of a row-major tensor without moving any of its axes: a chain
    of such steps over a batch-last tensor (``(modes..., B)``) runs as large matmuls, with no
    copy of the batch-sized tensor into another layout, forward or backward. Where ``y`` has
    fewer columns ``Q`` than ``a`` (a batch of one) the broadcast would cost more than the
    copy, and ``jnp.einsum`` contracts it."""
    lead, m, n = y.shape[0], a.shape[0], a.shape[1]
    if lead == 1:
        return (a @ y[0])[None]
    if n > y.shape[2]:  # few columns (a batch of one): broadcasting ``a`` would cost more
        return jnp.einsum("pkq,mk->pmq", y, a)  # than moving the output's axes
    return jax.lax.dot_general(jnp.broadcast_to(a, (lead, m, n)), y, (((2,), (1,)), ((0,), (0,))))


def dense_candidate(op: AbstractOperator, batch: int) -> Candidate:
    """The ``"dense"`` order: build ``W`` (its reconstruction FLOPs are the caller's to add
    through `reconstruction_flops`), then one ``(B, d_in) x (d_in, d_out)`` matmul."""
    d_out, d_in = op.out_features, op.in_features
    itemsize = jnp.dtype(op.dtype).itemsize
    gemm = 2 * batch * d_in * d_out
    return Candidate(
        Order(
            "dense",
            gemm + op.reconstruction_flops(),
            d_out * d_in * itemsize,
            gemm + op.reconstruction_gemm_flops(),
        ),
        lambda x: matmul_t(x, op.to_matrix()),
    )


class Network(NamedTuple):
    """An operator as one tensor network with its input: ``x W^T`` is
    ``einsum(subscripts, x.reshape(B, *in_shape), *operands)`` reshaped to ``(B, d_out)``.

    Fields:
        subscripts: the einsum equation; its first operand is the input, whose first label is
            the batch, and its output is the batch then the output modes (row-major).
        operands: the factors, in the order of the equation.
        in_shape: the input modes that ``d_in`` is reshaped into.
    """

    subscripts: str
    operands: tuple[Array, ...]
    in_shape: tuple[int, ...]


def sequential_path(n: int, order: Sequence[int]) -> tuple[tuple[int, int], ...]:
    """The opt_einsum path that contracts operand ``order[0]`` with ``order[1]``, the result
    with ``order[2]``, and so on (indices among ``n`` operands; opt_einsum appends each
    result to the end of the list)."""
    return pairwise_path(n, [(order[0], k) for k in order[1:]])


def pairwise_path(n: int, pairs: Sequence[tuple[int, int]]) -> tuple[tuple[int, int], ...]:
    """The opt_einsum path that contracts, for each ``(u, v)`` of ``pairs`` in turn, the
    intermediate holding operand ``u`` with the one holding operand ``v`` (indices among the
    ``n`` original operands; a pair whose two operands are already in one intermediate is
    skipped)."""
    nodes, path = [frozenset([k]) for k in range(n)], []
    for u, v in pairs:
        i, j = (next(k for k, s in enumerate(nodes) if t in s) for t in (u, v))
        if i == j:
            continue
        i, j = sorted((i, j))
        path.append((i, j))
        nodes = [s for k, s in enumerate(nodes) if k not in (i, j)] + [nodes[i] | nodes[j]]
    return tuple(path)


@functools.partial(jax.jit, static_argnums=(0, 1))
def _contract_path(subscripts: str, path: tuple, *operands: Array) -> Array:
    return jnp.einsum(subscripts, *operands, optimize=list(path))


def network_candidates(
    net: Network,
    batch: int,
    dtype: Any,
    named: dict[str, tuple] | None = None,
    runners: dict[str, Callable[[Array], Array]] | None = None,
) -> tuple[Candidate, ...]:
    """Orders that contract the network ``net`` with a batch of inputs pairwise along an
    opt_einsum path: each path of ``named`` under its name, then opt_einsum's cheapest path
    by FLOPs (``"einsum-optimal"``: its ``"optimal"`` search up to 5 operands, ``"dp"``
    beyond) and its ``"greedy"`` one (``"einsum-greedy"``). Pairwise trees (two cores merged
    before the input meets them) are among them. Every name is listed at every batch size,
    so that an order can be forced by name, even where two paths coincide. FLOPs and the
    largest intermediate are opt_einsum's count of the path, the output excluded.

    A path of ``named`` runs through ``jnp.einsum``, or through ``runners[name]`` where the
    caller computes it as matmuls (`left_matmul`, batch last). Either way its steps no side
    of which is below `GEMM_MIN_DIM` count as matmul FLOPs (`Order.gemm_flops`): jnp.einsum
    lowers each step to one `dot_general`, which runs at the matmul rate at that size.
    Counted as chains, they left CP d=1024 and 4096, r=64, B=64 on `khatri-rao`, at 0.79 to
    0.87 of the measured `einsum-optimal` (runs 11 to 13 of the layers benchmark)."""
    runners = runners or {}
    shapes = [(batch, *net.in_shape), *(o.shape for o in net.operands)]
    ways = {**(named or {}), "einsum-optimal": "optimal" if len(shapes) <= 5 else "dp"}
    ways["einsum-greedy"] = "greedy"
    item = jnp.dtype(dtype).itemsize
    label = net.subscripts[0]
    unbatched = net.subscripts.replace(label, "")
    out = []
    for name, way in ways.items():
        how = way if isinstance(way, str) else [tuple(p) for p in way]
        path, info = opt_einsum.contract_path(net.subscripts, *shapes, shapes=True, optimize=how)
        path = tuple(tuple(int(i) for i in p) for p in path)

        def fn(x, path=path):
            if x.shape[0] == 1:  # without the batch label: see `matmul_t`
                y = _contract_path(unbatched, path, x.reshape(net.in_shape), *net.operands)
                return y.reshape(1, -1)
            xt = x.reshape(x.shape[0], *net.in_shape)
            return _contract_path(net.subscripts, path, xt, *net.operands).reshape(x.shape[0], -1)

        peak = max(info.size_list[:-1], default=0) * item
        traffic = sum(info.size_list[:-1]) * item
        gemm = gemm_flops(info)
        order = Order(name, int(info.opt_cost), int(peak), gemm, int(traffic))
        out.append(Candidate(order, runners.get(name, fn)))
    return tuple(out)


def _check_batch(batch: Any) -> int:
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise ValueError(f"`batch` must be an int >= 1; got {batch!r}.")
    return batch
