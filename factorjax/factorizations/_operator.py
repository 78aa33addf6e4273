"""Factorized matrix operators and the planner that chooses how to apply them.

A format that represents a weight ``W`` of shape ``(d_out, d_in)`` (TT-matrix, CP, Tucker,
tensor ring, Kronecker) is an `AbstractOperator`. It lists the sensible ways of computing
``x W^T`` for a batch of ``B`` inputs (core by core from either end, pairwise trees, or
rebuilding ``W`` then one matmul), each with its FLOP count and the size of its largest
intermediate for that ``B``; `AbstractOperator.plan` picks the cheapest, and
`AbstractOperator.apply` runs it. The batch size is read from the input's shape at trace time,
so one operator applied to one example and to a batch of 4096 may take different orders.

Example:
    >>> W.plan(4096)                     # doctest: +SKIP
    Plan(order='dense', flops=..., peak_bytes=..., candidates=(...))
    >>> y = W.apply(x)                   # x: (..., d_in) -> (..., d_out), planned
    >>> y = W.apply(x, order="right-to-left")   # forced
"""

import abc
import math
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax.numpy as jnp
from jax import Array
from jax.typing import ArrayLike

from factorjax._checks import as_real_array, describe
from factorjax.factorizations._base import AbstractFactorization

__all__ = ["AbstractOperator", "Candidate", "Order", "Plan", "choose", "dense_candidate"]


class Order(NamedTuple):
    """One way of applying an operator to a batch, and its cost.

    Fields:
        name: the order's name (``"dense"``, ``"left-to-right"``, ...), as `apply` accepts it.
        flops: floating-point operations (a multiply-add counts 2) for the whole batch.
        peak_bytes: bytes of the largest intermediate it holds (the dense ``W`` for
            ``"dense"``, the input and output excluded).
        gemm_flops: the part of ``flops`` done by one large matrix product (the
            ``(B, d_in) x (d_in, d_out)`` product of ``"dense"``), which runs at a higher rate
            than chains of small contractions (see `CHAIN_PENALTY`).
    """

    name: str
    flops: int
    peak_bytes: int
    gemm_flops: int = 0


class Candidate(NamedTuple):
    """An `Order` with the function that computes it: ``fn(x)`` maps ``(B, d_in)`` to
    ``(B, d_out)``."""

    order: Order
    fn: Callable[[Array], Array]


class Plan(NamedTuple):
    """The order `AbstractOperator.plan` chose, its cost, and every candidate it weighed.

    Fields:
        order, flops, peak_bytes: the chosen order and its cost.
        batch: the batch size it was planned for.
        candidates: every candidate `Order`, cheapest first.
    """

    order: str
    flops: int
    peak_bytes: int
    batch: int
    candidates: tuple[Order, ...]

    def table(self) -> str:
        """The candidates as a text table (FLOPs, peak intermediate, relative cost)."""
        best = max(1, self.flops)
        rows = [f"{'order':<20} {'GFLOP':>10} {'peak MB':>10} {'x chosen':>9}"]
        for o in self.candidates:
            mark = " *" if o.name == self.order else ""
            rows.append(
                f"{o.name:<20} {o.flops / 1e9:10.4f} {o.peak_bytes / 2**20:10.3f} "
                f"{o.flops / best:9.2f}{mark}"
            )
        return "\n".join(rows)


# The cost model: time ~ FLOPs at the rate of the kind of work, plus memory traffic. A chain
# of small contractions (every order but the final matmul of "dense", and the reconstruction
# of W inside "dense") runs at a lower FLOP rate than one large matmul: it reshapes and
# transposes between steps and its operands are small, so its FLOPs count CHAIN_PENALTY times.
# Every byte of an order's largest intermediate is written, transposed and read back (twice
# more under a gradient), and counts as BYTE_COST FLOPs. Fitted on the grid of
# benchmarks/layers.py on a 2-core CPU (see docs/benchmarks.md): chains reached 1/3 to 1/4 of
# the dense matmul's GFLOP/s, and orders with large intermediates ran memory-bound.
CHAIN_PENALTY = 4.0
BYTE_COST = 256.0


def _score(order: Order) -> tuple[float, int]:
    chain = order.flops - order.gemm_flops
    cost = chain * CHAIN_PENALTY + order.gemm_flops + BYTE_COST * order.peak_bytes
    return (cost, order.peak_bytes)


def choose(candidates: Sequence[Candidate], order: Any = "auto") -> Candidate:
    """The candidate named ``order``, or with ``order="auto"`` the cheapest under the cost
    model: FLOPs (those of chains of small contractions weighted by `CHAIN_PENALTY` against
    those of one large matmul) plus `BYTE_COST` per byte of the largest intermediate; ties go
    to the smaller peak."""
    names = tuple(c.order.name for c in candidates)
    if order == "auto":
        return min(candidates, key=lambda c: _score(c.order))
    if not isinstance(order, str) or order not in names:
        allowed = ", ".join(repr(n) for n in ("auto", *names))
        raise ValueError(f"`order` must be one of {allowed}; got {order!r}.")
    return candidates[names.index(order)]


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

    @abc.abstractmethod
    def candidates(self, batch: int) -> tuple[Candidate, ...]:
        """Every sensible order of computing ``x W^T`` for ``x`` of shape ``(batch, d_in)``,
        with its cost; one of them is named ``"dense"`` (rebuild ``W``, then one matmul)."""

    def plan(self, batch: Any, order: Any = "auto") -> Plan:
        """The order `apply` takes for a batch of ``batch`` inputs, and the costs it weighed.

        Arguments:
            batch: the number of inputs (an int >= 1).
            order: ``"auto"`` (the cheapest) or the name of a candidate, to see its cost.
        """
        if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
            raise ValueError(f"`batch` must be an int >= 1; got {batch!r}.")
        cands = self.candidates(batch)
        chosen = choose(cands, order).order
        ranked = tuple(sorted((c.order for c in cands), key=_score))
        return Plan(chosen.name, chosen.flops, chosen.peak_bytes, batch, ranked)

    def apply(self, x: ArrayLike, *, order: Any = "auto") -> Array:
        """``x W^T`` for ``x`` of shape ``(..., d_in)``: every leading axis is batch.

        Arguments:
            x: real inputs ``(..., d_in)``.
            order: ``"auto"`` (plan for the batch size of ``x``; see `plan`) or the name of a
                candidate order, to force it.

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
        batch = math.prod(lead)
        xb = x.reshape(max(batch, 1), self.in_features)
        y = choose(self.candidates(max(batch, 1)), order).fn(xb.astype(self.dtype))
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


def dense_candidate(op: AbstractOperator, batch: int) -> Candidate:
    """The ``"dense"`` order: build ``W`` (its reconstruction FLOPs are the caller's to add
    through `reconstruction_flops`), then one ``(B, d_in) x (d_in, d_out)`` matmul."""
    d_out, d_in = op.out_features, op.in_features
    itemsize = jnp.dtype(op.dtype).itemsize
    gemm = 2 * batch * d_in * d_out
    return Candidate(
        Order("dense", gemm + op.reconstruction_flops(), d_out * d_in * itemsize, gemm),
        lambda x: x @ op.to_matrix().T,
    )
