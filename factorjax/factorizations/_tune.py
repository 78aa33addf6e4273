"""Measured plans: `AbstractOperator.tune` times the candidate orders of an operator for a
batch size and keeps the fastest, cached per shape; under `autotune`, ``apply`` takes it."""

import contextlib
import contextvars
import math
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import Array

from factorjax.factorizations._cost import Plan, score

__all__ = ["autotune", "autotuning", "tuned_plan"]

_TUNED: dict = {}
_AUTOTUNE: contextvars.ContextVar[bool] = contextvars.ContextVar("autotune", default=False)
# A timed block of calls lasts at least this long; the best of this many blocks counts.
_MIN_BLOCK_S = 0.05
_ROUNDS = 5
# Candidates whose call took under this long in the warm-up round are compiled this many
# times, and their time is the median over compilations: one compilation of a millisecond
# call can run 15% faster than another of the same program (measured in the layers
# benchmark: six compilations of CP d=1024 r=4 B=1 `einsum-optimal`, 0.062 to 0.082 ms),
# which is more than the gap between the orders there. Longer calls do not vary so.
_SMALL_CALL_S = 0.01
_COMPILES = 3
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


def autotuning() -> bool:
    """Whether the caller is within `autotune`."""
    return _AUTOTUNE.get()


def tuned_plan(op: Any, batch: int, grad: bool) -> Plan:
    """`AbstractOperator.tune`: the measured plan of ``op`` for ``batch`` inputs, measured
    once per (format, shapes, dtype, batch, ``grad``, backend)."""
    leaves, treedef = jax.tree.flatten(op)
    key = (
        type(op),
        treedef,
        tuple((np.shape(leaf), jnp.result_type(leaf).name) for leaf in leaves),
        batch,
        grad,
        jax.default_backend(),
    )
    if key not in _TUNED:
        _TUNED[key] = _measure(op, batch, grad)
    return _TUNED[key]


def _output_and_grad(w: Any, x: Array, g: Array, order: str):
    """``y = w.apply(x)`` and the gradient of ``sum(g * y)`` with respect to ``w`` (the
    gradient alone would let XLA skip the forward product of some orders)."""
    y, vjp = jax.vjp(lambda w: w.apply(x, order=order), w)
    return y, vjp(g)[0]


def _measure(op: Any, batch: int, grad: bool) -> Plan:
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
        orders = sorted((c.order for c in op.candidates(batch)), key=score)
        cheapest = score(orders[0])[0]
        timed = [o.name for o in orders if score(o)[0] <= _UNTIMED_ABOVE * cheapest]

        def compiled(name):
            if grad:  # the output and the gradient, as a training step needs both
                f = jax.jit(lambda w, x, g: _output_and_grad(w, x, g, name))
            else:
                f = jax.jit(lambda w, x, g: w.apply(x, order=name))
            jax.block_until_ready(f(twin, x, g))  # compile outside the timing
            return f

        def block(f):
            calls, t0 = 0, time.perf_counter()
            while True:
                jax.block_until_ready(f(twin, x, g))
                calls += 1
                elapsed = time.perf_counter() - t0
                if elapsed >= _MIN_BLOCK_S:
                    return elapsed / calls

        # A warm-up round (measured: right after compilation, calls run up to 1.7x slower)
        # that also finds the small calls, which get more compilations; then interleaved
        # rounds, the order reversed every other round.
        fns = [(name, compiled(name)) for name in timed]
        small = [name for name, f in fns if block(f) < _SMALL_CALL_S]
        for name in small:
            for _ in range(_COMPILES - 1):
                f = compiled(name)
                block(f)
                fns.append((name, f))
        fastest = [math.inf] * len(fns)  # of each compilation
        for k in range(_ROUNDS):
            for i in range(len(fns))[:: 1 if k % 2 else -1]:
                fastest[i] = min(fastest[i], block(fns[i][1]))
    seconds = {
        name: float(np.median([t for (n, _), t in zip(fns, fastest, strict=True) if n == name]))
        for name in timed
    }
    best = {o.name: seconds.get(o.name, math.inf) for o in orders}
    ranked = tuple(sorted(orders, key=lambda o: best[o.name]))
    top = ranked[0]
    return Plan(
        top.name, top.flops, top.peak_bytes, batch, ranked, tuple(best[o.name] for o in ranked)
    )
