"""Tests of the gates of `factorjax.moe` against references written from their definitions.

Sparsemax is the Euclidean projection onto the simplex, ``p = max(z - tau, 0)`` with ``tau`` such
that ``sum(p) = 1``; 1.5-entmax is ``p = max(z / 2 - tau, 0)^2`` with ``sum(p) = 1``. Both sums
are continuous and decreasing in ``tau``, so the references find ``tau`` by bisection in float64
(60 halvings of an interval of length 1: ``tau`` to ~1e-18, far below float32 rounding), not by
the sort-based algorithms of the library. The float32 library values are compared within
``TOL = 1e-5``: each probability is a difference of O(1) float32 numbers (a few ulps of 6e-8)
and the threshold a cumulative sum of at most 8 of them.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from factorjax.moe import GATES, check_gate, entmax15, gate, sparsemax, topk_softmax

TOL = 1e-5


def bisect_tau(f, lo, hi):
    """The root of a decreasing ``f`` in ``[lo, hi]``."""
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if f(mid) > 0 else (lo, mid)
    return (lo + hi) / 2


def ref_sparsemax(z):
    z = np.asarray(z, np.float64)
    # sum max(z - tau, 0) is >= 1 at tau = max - 1 and 0 at tau = max
    tau = bisect_tau(lambda t: np.maximum(z - t, 0).sum() - 1, z.max() - 1, z.max())
    return np.maximum(z - tau, 0), tau


def ref_entmax15(z):
    z = np.asarray(z, np.float64) / 2
    tau = bisect_tau(lambda t: (np.maximum(z - t, 0) ** 2).sum() - 1, z.max() - 1, z.max())
    return np.maximum(z - tau, 0) ** 2, tau


def ref_softmax(z):
    e = np.exp(z - z.max())
    return e / e.sum()


def ref_topk(z, k):
    keep = np.argsort(-z, kind="stable")[:k]
    p = np.zeros_like(z, dtype=np.float64)
    p[keep] = ref_softmax(np.asarray(z, np.float64)[keep])
    return p


REFS = {
    "softmax": lambda z: ref_softmax(np.asarray(z, np.float64)),
    "sparsemax": lambda z: ref_sparsemax(z)[0],
    "entmax15": lambda z: ref_entmax15(z)[0],
    "topk": lambda z: ref_topk(z, 3),
}


def logits(rng, shape, scale=1.5):
    return (scale * rng.standard_normal(shape)).astype(np.float32)


@pytest.mark.parametrize("kind", GATES)
def test_gate_matches_reference(rng, kind):
    z = logits(rng, (5, 7))
    top_k = 3 if kind == "topk" else None
    p = np.asarray(gate(z, kind, top_k=top_k))
    ref = np.stack([REFS[kind](row) for row in z])
    np.testing.assert_allclose(p, ref, atol=TOL, rtol=0)
    assert np.all(p >= 0)
    np.testing.assert_allclose(p.sum(-1), 1, atol=TOL)
    # along another axis, under vmap and under jit: the same numbers
    np.testing.assert_allclose(np.asarray(gate(z.T, kind, top_k=top_k, axis=0)).T, p, atol=1e-7)
    vm = jax.vmap(lambda r: gate(r, kind, top_k=top_k))(z)
    jt = jax.jit(lambda r: gate(r, kind, top_k=top_k))(z)
    np.testing.assert_allclose(np.asarray(vm), p, atol=1e-7)
    np.testing.assert_allclose(np.asarray(jt), p, atol=1e-7)


def test_sparse_gates_are_sparse_and_named_functions_agree(rng):
    z = logits(rng, (4, 8), scale=3.0)  # spread logits: several zeros per row
    sp, en = np.asarray(sparsemax(z)), np.asarray(entmax15(z))
    assert (sp == 0).sum() > 0 and (en == 0).sum() > 0
    # entmax15 is less sparse than sparsemax (its support contains sparsemax's, Peters et al.)
    assert np.all((sp > 0) <= (en > 0))
    np.testing.assert_array_equal(sp, np.asarray(gate(z, "sparsemax")))
    np.testing.assert_array_equal(en, np.asarray(gate(z, "entmax15")))
    np.testing.assert_array_equal(
        np.asarray(topk_softmax(z, 2)), np.asarray(gate(z, "topk", top_k=2))
    )
    # a dominant logit takes everything (the support of size 1)
    for f in (sparsemax, entmax15):
        np.testing.assert_allclose(np.asarray(f(jnp.array([10.0, 0.0, -1.0]))), [1, 0, 0])


def test_sparsemax_is_the_projection_onto_the_simplex(rng):
    z = logits(rng, (6,)).astype(np.float64)
    p = np.asarray(sparsemax(z), np.float64)
    # argmin ||p - z||^2 over the simplex: no point of the simplex is closer to z ...
    q = rng.dirichlet(np.full(6, 0.5), size=2000)
    q = np.concatenate([q, np.eye(6)])  # ... the vertices included
    d_p = np.sum((p - z) ** 2)
    assert np.all(np.sum((q - z) ** 2, axis=1) >= d_p - 1e-5)
    # ... and moving along the simplex from p in any direction does not get closer
    for v in q[:50]:
        for t in (1e-3, 1e-2):
            assert np.sum(((1 - t) * p + t * v - z) ** 2) >= d_p - 1e-6


def test_topk_has_exactly_k_nonzeros(rng):
    z = logits(rng, (5, 8))
    for k in (1, 3, 8):
        p = np.asarray(gate(z, "topk", top_k=k))
        assert np.all((p > 0).sum(-1) == k)
        np.testing.assert_allclose(p, np.stack([ref_topk(r, k) for r in z]), atol=TOL)
    np.testing.assert_allclose(
        np.asarray(gate(z, "topk", top_k=8)), np.asarray(gate(z, "softmax")), atol=1e-7
    )
    # ties (all logits equal): still exactly k experts, each 1 / k
    p = np.asarray(gate(jnp.zeros(6), "topk", top_k=2))
    assert (p > 0).sum() == 2 and np.allclose(p[p > 0], 0.5)


def test_uniform_at_zero_logits():
    """The zero-initialized gates of `MultilinearMoE` start every expert at ``1 / E``."""
    for kind in ("softmax", "sparsemax", "entmax15"):
        np.testing.assert_allclose(np.asarray(gate(jnp.zeros(5), kind)), 0.2, atol=1e-7)
        g = jax.grad(lambda z, kind=kind: gate(z, kind) @ jnp.arange(5.0))(jnp.zeros(5))
        assert np.all(np.isfinite(np.asarray(g)))


def generic(z, kind):
    """Assert that no entry of ``z`` sits within 1e-3 of the gate's threshold (where the map is
    not differentiable), so that finite differences see one smooth piece."""
    if kind == "sparsemax":
        assert np.min(np.abs(z - ref_sparsemax(z)[1])) > 1e-3
    elif kind == "entmax15":
        assert np.min(np.abs(z / 2 - ref_entmax15(z)[1])) > 1e-3
    return z


@pytest.mark.parametrize("kind", ["softmax", "sparsemax", "entmax15", "topk"])
def test_gradients(x64, rng, kind):
    z = generic(1.5 * rng.standard_normal((3, 6)), kind)
    w = rng.standard_normal((3, 6))
    top_k = 3 if kind == "topk" else None

    def f(z):
        return gate(z, kind, top_k=top_k)

    # sparse at these points: several zeros, so the support and threshold both matter
    if kind != "softmax":
        assert (np.asarray(f(z)) == 0).sum() >= 3
    check_grads(f, (z,), order=1, modes=("fwd", "rev"))
    check_grads(lambda z: jnp.sum(w * f(z) ** 2), (z,), order=1, modes=("rev",))


def test_bad_input():
    z = jnp.zeros((2, 4))
    with pytest.raises(ValueError, match=r"`gate` must be one of .*'softmax'.*'topk'"):
        gate(z, "relu")
    with pytest.raises(ValueError, match="needs `top_k`"):
        gate(z, "topk")
    with pytest.raises(ValueError, match=r"`top_k` must be an int in \[1, 4\].*got 0"):
        gate(z, "topk", top_k=0)
    with pytest.raises(ValueError, match=r"`top_k` must be an int in \[1, 4\].*got 5"):
        gate(z, "topk", top_k=5)
    with pytest.raises(TypeError, match="`top_k` must be a Python int"):
        gate(z, "topk", top_k=2.0)
    with pytest.raises(ValueError, match="`top_k` is only used with gate='topk'"):
        gate(z, "softmax", top_k=2)
    with pytest.raises(ValueError, match=r"`top_k` must be an int in \[1, 2\].*per level"):
        check_gate("topk", 3, (4, 2))
    with pytest.raises(ValueError, match="`axis`"):
        gate(z, "softmax", axis=2)
    with pytest.raises(ValueError, match="`logits` must have at least 1 axes"):
        gate(jnp.float32(1.0), "softmax")
    with pytest.raises(TypeError, match="`logits` must be real"):
        gate(jnp.zeros(3, jnp.complex64), "softmax")
