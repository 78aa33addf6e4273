"""The planner of `AbstractOperator`: choosing among candidate orders, and its refusals."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from factorjax import Kronecker, TTMatrix
from factorjax.factorizations import _operator
from factorjax.factorizations._operator import Candidate, Order, choose


def _cands(*orders):
    return tuple(Candidate(o, lambda x, o=o: x) for o in orders)


def test_choose_weights_chains_against_one_matmul():
    """A chain is chosen over "dense" only when its cost (FLOPs times CHAIN_PENALTY, plus
    BYTE_COST per byte of its peak) is lower."""
    p, b = _operator.CHAIN_PENALTY, _operator.BYTE_COST
    gemm = 10**6
    dense = Order("dense", gemm + 100, 64, gemm)  # 100 FLOPs of reconstruction, also a chain
    dense_cost = 100 * p + gemm + 64 * b
    cheap = Order("chain", int((dense_cost - 8 * b) / p) - 1, 8)
    dear = Order("chain", int((dense_cost - 8 * b) / p) + 1, 8)
    assert choose(_cands(cheap, dense)).order.name == "chain"
    assert choose(_cands(dear, dense)).order.name == "dense"
    # A large intermediate costs: the same FLOPs with a peak of 1 MB lose to dense.
    heavy = Order("chain", cheap.flops, 2**20)
    assert choose(_cands(heavy, dense)).order.name == "dense"


def test_choose_breaks_ties_by_peak_memory():
    a, b = Order("a", 100, 64), Order("b", 100, 8)
    assert choose(_cands(a, b)).order.name == "b"


def test_forced_order_and_refusals():
    W = TTMatrix.init(64, 64, 4, key=jax.random.key(0))
    names = [o.name for o in W.plan(8).candidates]
    assert "dense" in names and len(names) >= 3
    assert W.plan(8, order="dense").order == "dense"
    with pytest.raises(
        ValueError, match=r"`order` must be one of 'auto', .*'dense'.*got 'fastest'"
    ):
        W.apply(jnp.ones((2, 64)), order="fastest")
    for bad in (0, -3, 2.0, True):
        with pytest.raises(ValueError, match="`batch` must be an int >= 1"):
            W.plan(bad)
    with pytest.raises(ValueError, match="d_in = 64 features"):
        W.apply(jnp.ones((2, 63)))
    with pytest.raises(ValueError, match="one unbatched input of shape"):
        W(jnp.ones((2, 64)))


def test_plan_follows_the_batch_size():
    """One operator, two batch sizes, two orders: the choice is made at trace time."""

    W = Kronecker.init(1024, 1024, 64, key=jax.random.key(0))
    small, large = W.plan(1), W.plan(1 << 16)
    assert small.order != "dense"
    assert large.order == "dense"
    x = jax.random.normal(jax.random.key(1), (3, 1024))
    want = np.asarray(x) @ np.asarray(W.to_matrix()).T
    # float32 sums of 1024 products: about 1024 eps = 1.2e-4 relative to the largest entry.
    np.testing.assert_allclose(W.apply(x), want, rtol=2e-4, atol=2e-4 * np.abs(want).max())
