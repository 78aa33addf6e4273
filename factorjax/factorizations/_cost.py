"""The cost model of the planner: what an order of applying an operator costs, and which
order it picks.

An `Order` carries its FLOPs (split into those of plain matmuls and those of chains of small
contractions), its largest intermediate and the bytes of all its intermediates; `choose` picks
the one with the lowest `score`. `Plan` is what `AbstractOperator.plan` and `.tune` return.
"""

import math
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

from jax import Array

__all__ = [
    "BYTE_COST",
    "CHAIN_PENALTY",
    "GEMM_MIN_DIM",
    "Candidate",
    "Order",
    "Plan",
    "choose",
    "flop_score",
    "gemm_flops",
    "matmul_gemm_flops",
    "score",
]


class Order(NamedTuple):
    """One way of applying an operator to a batch, and its cost.

    Fields:
        name: the order's name (``"dense"``, ``"left-to-right"``, ...), as `apply` accepts it.
        flops: floating-point operations (a multiply-add counts 2) for the whole batch.
        peak_bytes: bytes of the largest intermediate it holds (the dense ``W`` for
            ``"dense"``, the input and output excluded).
        gemm_flops: the part of ``flops`` done by plain products of two matrices (the
            ``(B, d_in) x (d_in, d_out)`` product of ``"dense"``, the product with a
            Khatri-Rao matrix or a merged Tucker core, those of low-rank factors, the steps
            of a contraction path with no side below `GEMM_MIN_DIM`), which run at a higher
            rate than chains of small contractions (see `CHAIN_PENALTY`).
        traffic_bytes: bytes of all the intermediates it writes (and reads back); 0 where
            an order does not count them: its ``peak_bytes`` stands in.
    """

    name: str
    flops: int
    peak_bytes: int
    gemm_flops: int = 0
    traffic_bytes: int = 0


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
        candidates: every candidate `Order`, cheapest first (fastest first when measured).
        seconds: for a measured plan (`AbstractOperator.tune`), the time of each candidate,
            aligned with ``candidates`` (``inf`` for those it did not time: scored by the cost
            model above 16 times its cheapest); ``None`` for a modelled one.
    """

    order: str
    flops: int
    peak_bytes: int
    batch: int
    candidates: tuple[Order, ...]
    seconds: tuple[float, ...] | None = None

    def table(self) -> str:
        """The candidates as a text table (FLOPs, peak intermediate, relative cost; and the
        measured time of a tuned plan)."""
        best = max(1, self.flops)
        timed = self.seconds is not None
        rows = [
            f"{'order':<20} {'GFLOP':>10} {'peak MB':>10} {'x chosen':>9}"
            + (f" {'ms':>9}" if timed else "")
        ]
        for k, o in enumerate(self.candidates):
            mark = " *" if o.name == self.order else ""
            ms = f" {self.seconds[k] * 1e3:9.3f}" if timed else ""
            rows.append(
                f"{o.name:<20} {o.flops / 1e9:10.4f} {o.peak_bytes / 2**20:10.3f} "
                f"{o.flops / best:9.2f}{ms}{mark}"
            )
        return "\n".join(rows)


# The cost model: time ~ FLOPs at the rate of the kind of work, plus memory traffic. A chain
# of small contractions (einsum paths, mode products, the reconstruction of W inside "dense")
# runs at a lower FLOP rate than a plain product of two matrices: it reshapes and
# transposes between steps and its operands are small, so its FLOPs count CHAIN_PENALTY times.
# Every byte of an order's intermediates is written, transposed and read back (twice more
# under a gradient), and counts as BYTE_COST FLOPs. Fitted on the grid of
# benchmarks/layers.py on a 2-core CPU (run 5 in docs/benchmarks.md, with
# benchmarks/fit_cost_model.py): the order picked was within 10% of the fastest at 75 of 81
# points, against 69 with the earlier model (chains at 4x, the largest intermediate alone at
# 256 FLOPs a byte, no matmul but dense's counted as one). BYTE_COST refitted from 128 to 64
# on runs 11 and 12 (81 points each, rechecked times where measured, CP's Khatri-Rao products
# with a side below GEMM_MIN_DIM counted as chains): 8 points below 0.9 of the fastest in
# each run against 10, the worst 0.79 and 0.75 against 0.62 and 0.58. 48 does as well, 32
# and 80 leave 10: the fit is not sharp. Out of sample, on run 13: 5 points below 0.9, the
# worst 0.79. With the steps of einsum paths counted at the matmul rate too, the three
# constants are still the best of benchmarks/fit_cost_model.py's grid on runs 11 to 14
# together (324 points, 26 below 0.9, the worst 0.74).
CHAIN_PENALTY = 6.0
BYTE_COST = 64.0

# The smallest side (rows, columns, contracted length) at which a step of a path run as matmuls
# (`left_matmul`, the TT-matrix sweeps) counts at the matmul rate. Fitted with CHAIN_PENALTY and
# BYTE_COST on the grid of benchmarks/layers.py (run 8 in docs/benchmarks.md): 32 or 16 put the
# pick within 10% of the fastest at 75 of 81 points, against 74 with every such step a chain.
GEMM_MIN_DIM = 32


def score(
    order: Order, chain_penalty: float | None = None, byte_cost: float | None = None
) -> tuple[float, int]:
    """The cost model's score of ``order`` (lower is better), then its peak for ties; the
    constants default to `CHAIN_PENALTY` and `BYTE_COST`."""
    byte_cost = BYTE_COST if byte_cost is None else byte_cost
    moved = order.traffic_bytes or order.peak_bytes
    flops = flop_score(order.flops, order.gemm_flops, chain_penalty)
    return (flops + byte_cost * moved, order.peak_bytes)


def flop_score(flops: int, gemm_flops: int, chain_penalty: float | None = None) -> float:
    """The FLOP part of `score`: ``flops``, of which ``gemm_flops`` at the matmul rate and
    the rest `CHAIN_PENALTY` times (or ``chain_penalty``)."""
    chain_penalty = CHAIN_PENALTY if chain_penalty is None else chain_penalty
    return (flops - gemm_flops) * chain_penalty + gemm_flops


def choose(candidates: Sequence[Candidate], order: Any = "auto") -> Candidate:
    """The candidate named ``order``, or with ``order="auto"`` the cheapest under the cost
    model: FLOPs (those of chains of small contractions weighted by `CHAIN_PENALTY` against
    those of plain matmuls) plus `BYTE_COST` per byte of its intermediates; ties go to the
    smaller peak."""
    names = tuple(c.order.name for c in candidates)
    if order == "auto":
        return min(candidates, key=lambda c: score(c.order))
    if not isinstance(order, str) or order not in names:
        allowed = ", ".join(repr(n) for n in ("auto", "tuned", *names))
        raise ValueError(f"`order` must be one of {allowed}; got {order!r}.")
    return candidates[names.index(order)]


def gemm_flops(info: Any) -> int:
    """The FLOPs of the steps of an opt_einsum path that are products of matrices no side of
    which is below `GEMM_MIN_DIM` (rows, columns and the contracted length, batch axes
    aside): they run at the rate of a plain matmul."""

    def size(labels):
        return math.prod(info.size_dict[c] for c in labels)

    total = 0
    for _, _, step, _, _ in info.contraction_list:
        inputs, output = step.split("->")
        terms = inputs.split(",")
        if len(terms) != 2:
            continue
        a, b = set(terms[0]), set(terms[1])
        m, n, k = size(a - b), size(b - a), size((a & b) - set(output))
        total += matmul_gemm_flops(m, k, n) * size(a & b & set(output))
    return total


def matmul_gemm_flops(m: int, k: int, n: int) -> int:
    """The FLOPs of an ``(m, k) x (k, n)`` product if none of its sides is below
    `GEMM_MIN_DIM` (it runs at the matmul rate), else 0."""
    return 2 * m * k * n if min(m, k, n) >= GEMM_MIN_DIM else 0
