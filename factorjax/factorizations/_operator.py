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
import contextlib
import contextvars
import functools
import math
import time
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import opt_einsum
from jax import Array
from jax.typing import ArrayLike

from factorjax._checks import as_real_array, describe
from factorjax.factorizations._base import AbstractFactorization

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
    "sequential_path",
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
            Khatri-Rao matrix or a merged Tucker core, those of low-rank factors), which run
            at a higher rate than chains of small contractions (see `CHAIN_PENALTY`).
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
# 256 FLOPs a byte, no matmul but dense's counted as one).
CHAIN_PENALTY = 6.0
BYTE_COST = 128.0


def _score(
    order: Order, chain_penalty: float | None = None, byte_cost: float | None = None
) -> tuple[float, int]:
    """The cost model's score of ``order`` (lower is better), then its peak for ties; the
    constants default to `CHAIN_PENALTY` and `BYTE_COST`."""
    chain_penalty = CHAIN_PENALTY if chain_penalty is None else chain_penalty
    byte_cost = BYTE_COST if byte_cost is None else byte_cost
    chain = order.flops - order.gemm_flops
    moved = order.traffic_bytes or order.peak_bytes
    return (chain * chain_penalty + order.gemm_flops + byte_cost * moved, order.peak_bytes)


def choose(candidates: Sequence[Candidate], order: Any = "auto") -> Candidate:
    """The candidate named ``order``, or with ``order="auto"`` the cheapest under the cost
    model: FLOPs (those of chains of small contractions weighted by `CHAIN_PENALTY` against
    those of plain matmuls) plus `BYTE_COST` per byte of its intermediates; ties go to the
    smaller peak."""
    names = tuple(c.order.name for c in candidates)
    if order == "auto":
        return min(candidates, key=lambda c: _score(c.order))
    if not isinstance(order, str) or order not in names:
        allowed = ", ".join(repr(n) for n in ("auto", "tuned", *names))
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
            order: ``"auto"`` (the cheapest under the cost model), ``"tuned"`` (the fastest
                measured: `tune`), or the name of a candidate, to see its cost.
        """
        batch = _check_batch(batch)
        if order == "tuned":
            return self.tune(batch)
        cands = self.candidates(batch)
        chosen = choose(cands, order).order
        ranked = tuple(sorted((c.order for c in cands), key=_score))
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
        candidate is compiled and timed once: a second or a few per new shape.

        Arguments:
            batch: the number of inputs (an int >= 1).
            grad: time the forward and backward pass (the gradient with respect to the
                factors, as in training; default) instead of the forward pass alone.
        """
        batch = _check_batch(batch)
        leaves, treedef = jax.tree.flatten(self)
        key = (
            type(self),
            treedef,
            tuple((np.shape(leaf), jnp.result_type(leaf).name) for leaf in leaves),
            batch,
            bool(grad),
            jax.default_backend(),
        )
        if key not in _TUNED:
            _TUNED[key] = _measure(self, batch, bool(grad))
        return _TUNED[key]

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
        if order == "tuned" or (order == "auto" and _AUTOTUNE.get()):
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
        Order("dense", gemm + op.reconstruction_flops(), d_out * d_in * itemsize, gemm),
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
    ids, acc, path = list(range(n)), order[0], []
    for k in order[1:]:
        i, j = sorted((ids.index(acc), ids.index(k)))
        path.append((i, j))
        ids = [t for t in ids if t not in (acc, k)] + [acc]
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
    caller computes it as matmuls (`left_matmul`, batch last): there its steps no side of
    which is below `GEMM_MIN_DIM` count as matmul FLOPs (`Order.gemm_flops`)."""
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
        gemm = _gemm_flops(info) if name in runners else 0
        order = Order(name, int(info.opt_cost), int(peak), gemm, int(traffic))
        out.append(Candidate(order, runners.get(name, fn)))
    return tuple(out)


def _gemm_flops(info: Any) -> int:
    """The FLOPs of the steps of an opt_einsum path that are products of matrices no side of
    which is below `GEMM_MIN_DIM` (rows, columns and the contracted length, batch axes
    aside): they run at the rate of a plain matmul."""
    total = 0
    for _, _, step, _, _ in info.contraction_list:
        inputs, output = step.split("->")
        terms = inputs.split(",")
        if len(terms) != 2:
            continue
        a, b = set(terms[0]), set(terms[1])
        size = lambda labels: math.prod(info.size_dict[c] for c in labels)  # noqa: E731
        m, n, k = size(a - b), size(b - a), size((a & b) - set(output))
        if min(m, n, k) >= GEMM_MIN_DIM:
            total += 2 * m * n * k * size(a & b & set(output))
    return total


# The smallest side (rows, columns, contracted length) at which a step of a path run as matmuls
# (`left_matmul`, the TT-matrix sweeps) counts at the matmul rate. Fitted with CHAIN_PENALTY and
# BYTE_COST on the grid of benchmarks/layers.py (run 8 in docs/benchmarks.md): 32 or 16 put the
# pick within 10% of the fastest at 75 of 81 points, against 74 with every such step a chain.
GEMM_MIN_DIM = 32


# -- measured plans ---------------------------------------------------------------------------

_TUNED: dict = {}
_AUTOTUNE: contextvars.ContextVar[bool] = contextvars.ContextVar("autotune", default=False)
# A timed block of calls lasts at least this long; the best of this many blocks counts.
_MIN_BLOCK_S = 0.05
_ROUNDS = 5
# Candidates the cost model scores above this many times its cheapest are not timed. In the
# layers benchmark such orders (token-by-token chains at large batch) ran 40x slower than the
# best, and at d=4096, r=64, B=4096 each held 4 GB; the model's worst miss was 3.3x.
_UNTIMED_ABOVE = 16.0


@contextlib.contextmanager
def autotune(enabled: bool = True):
    """Within this context, ``apply(x)`` (``order="auto"``), and so every layer over an
    operator, takes the order that `AbstractOperator.tune` measured fastest for the batch
    size, instead of the cost model's choice. It acts when a function is traced: wrap the
    first call of a jitted step (its compilation), not later calls.

    Example:
        >>> with autotune():                    # doctest: +SKIP
        ...     loss, grads = step(params, batch)   # traced here: orders are measured
    """
    token = _AUTOTUNE.set(bool(enabled))
    try:
        yield
    finally:
        _AUTOTUNE.reset(token)


def _check_batch(batch: Any) -> int:
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise ValueError(f"`batch` must be an int >= 1; got {batch!r}.")
    return batch


def _output_and_grad(w: AbstractOperator, x: Array, g: Array, order: str):
    """``y = w.apply(x)`` and the gradient of ``sum(g * y)`` with respect to ``w`` (the
    gradient alone would let XLA skip the forward product of some orders)."""
    y, vjp = jax.vjp(lambda w: w.apply(x, order=order), w)
    return y, vjp(g)[0]


def _measure(op: AbstractOperator, batch: int, grad: bool) -> Plan:
    """Time every candidate of ``op`` for ``batch`` inputs on random data of its shapes. It
    runs eagerly even while a caller is being traced (``ensure_compile_time_eval``), so the
    operator's arrays may be tracers: only their shapes are used."""
    rng = np.random.default_rng(0)

    def rand(shape, dtype):
        return jnp.asarray(rng.standard_normal(shape), dtype)

    leaves, treedef = jax.tree.flatten(op)
    with jax.ensure_compile_time_eval():
        twin = jax.tree.unflatten(
            treedef, [rand(np.shape(leaf), jnp.result_type(leaf)) for leaf in leaves]
        )
        x = rand((batch, op.in_features), op.dtype)
        g = rand((batch, op.out_features), op.dtype)
        orders = sorted((c.order for c in op.candidates(batch)), key=_score)
        cheapest = _score(orders[0])[0]
        fns = {}
        for o in orders:
            if _score(o)[0] > _UNTIMED_ABOVE * cheapest:
                continue
            if grad:  # the output and the gradient, as a training step needs both
                f = jax.jit(lambda w, x, g, n=o.name: _output_and_grad(w, x, g, n))
            else:
                f = jax.jit(lambda w, x, g, n=o.name: w.apply(x, order=n))
            jax.block_until_ready(f(twin, x, g))  # compile outside the timing
            fns[o.name] = f
        # Interleaved rounds, the order reversed every other round; the first round only
        # warms up (measured: right after compilation, calls run up to 1.7x slower).
        best = dict.fromkeys((o.name for o in orders), math.inf)
        for k in range(_ROUNDS + 1):
            for name, f in list(fns.items())[:: 1 if k % 2 else -1]:
                calls, t0 = 0, time.perf_counter()
                while True:
                    jax.block_until_ready(f(twin, x, g))
                    calls += 1
                    elapsed = time.perf_counter() - t0
                    if elapsed >= _MIN_BLOCK_S:
                        break
                if k:
                    best[name] = min(best[name], elapsed / calls)
    ranked = tuple(sorted(orders, key=lambda o: best[o.name]))
    top = ranked[0]
    return Plan(
        top.name, top.flops, top.peak_bytes, batch, ranked, tuple(best[o.name] for o in ranked)
    )
