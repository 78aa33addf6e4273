"""Tests of `CP` against references written from the definition.

References (float64 NumPy on the values the module sees): the explicit sum over components of
products of factor entries, entry by entry; tensorly's ``cp_to_tensor`` on the same factors;
``x @ W^T`` with ``W`` from that sum; FLOP counts from ``opt_einsum.contract_path`` along the
same pairwise order.

Tolerances (``eps`` of the computing dtype): an entry of a CP is a sum of ``R`` products of
``d + 1`` numbers; whatever the order of the operations it is within ``(d + R) eps`` times the
same sum of absolute values (Higham 3.1, first order). Applying it to ``x`` adds ``d_in`` terms
to the sums (at most ``sum(in_modes) + R`` in the mode-by-mode order) and one product.
"""

import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import opt_einsum
import pytest
import tensorly
from jax.test_util import check_grads

from factorjax.factorizations import _cost
from factorjax.factorizations.cp import CP

EPS32 = float(np.finfo(np.float32).eps)
EPS64 = float(np.finfo(np.float64).eps)


def f64(x):
    return np.asarray(x, np.float64)


def random_cp(rng, shape, rank, n_out=None, dtype=jnp.float32):
    weights = rng.uniform(0.5, 2.0, rank)
    factors = [rng.standard_normal((n, rank)) for n in shape]
    return CP(jnp.asarray(weights, dtype), tuple(jnp.asarray(f, dtype) for f in factors), n_out)


def cp_loops(weights, factors):
    """``T[i] = sum_r w_r prod_k A_k[i_k, r]``, entry by entry."""
    w, fs = f64(weights), [f64(f) for f in factors]
    out = np.zeros(tuple(f.shape[0] for f in fs))
    for idx in np.ndindex(*out.shape):
        out[idx] = sum(
            w[r] * math.prod(fs[k][i, r] for k, i in enumerate(idx)) for r in range(len(w))
        )
    return out


def cp_abs(cp):
    """The reference of the same CP with every entry replaced by its absolute value."""
    return cp_loops(np.abs(f64(cp.weights)), [np.abs(f64(f)) for f in cp.factors])


def assert_within(actual, ref, bound):
    err = np.abs(f64(actual) - ref)
    assert actual.shape == ref.shape
    assert np.all(err <= bound), (err.max(), np.max(bound))


# ---------------------------------------------------------------------------------------------
# The tensor
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(3, 4), (3, 4, 5), (2, 3, 2, 3)])
def test_to_dense_equals_explicit_sum_and_tensorly(rng, shape):
    R = 3
    cp = random_cp(rng, shape, R)
    ref = cp_loops(cp.weights, cp.factors)
    tl = tensorly.cp_to_tensor((f64(cp.weights), [f64(f) for f in cp.factors]))
    np.testing.assert_allclose(tl, ref, rtol=0, atol=(len(shape) + R) * EPS64 * np.max(cp_abs(cp)))
    dense = cp.to_dense()
    assert dense.dtype == jnp.float32 and cp.shape == shape and cp.rank == R
    assert cp.num_params == R * (1 + sum(shape))
    assert_within(dense, ref, (len(shape) + R) * EPS32 * cp_abs(cp))
    # the matrix view is the row-major reshape of the tensor
    W = cp.with_n_out(1).to_matrix()
    assert W.shape == (shape[0], math.prod(shape[1:]))
    np.testing.assert_array_equal(W, np.asarray(dense).reshape(W.shape))


OUT, IN, R = (2, 3), (4, 2, 3), 5


@pytest.mark.parametrize("lead", [(1,), (7,), (2, 3)])
def test_every_candidate_equals_dense_matmul(rng, lead):
    cp = random_cp(rng, OUT + IN, R, n_out=2)
    d_out, d_in = math.prod(OUT), math.prod(IN)
    assert (cp.out_features, cp.in_features, cp.out_modes, cp.in_modes) == (d_out, d_in, OUT, IN)
    x = rng.standard_normal((*lead, d_in)).astype(np.float32)
    W, W_abs = cp_loops(cp.weights, cp.factors), cp_abs(cp)
    W, W_abs = W.reshape(d_out, d_in), W_abs.reshape(d_out, d_in)
    ref = f64(x) @ W.T
    bound = (len(OUT + IN) + 2 + R + d_in + sum(IN)) * EPS32 * (np.abs(f64(x)) @ W_abs.T)
    batch = math.prod(lead)
    cands = cp.candidates(batch)
    assert {c.order.name for c in cands} == {
        "factored",
        "khatri-rao",
        "einsum-optimal",
        "einsum-greedy",
        "dense",
    }
    for c in cands:
        y = cp.apply(x, order=c.order.name)
        assert y.shape == (*lead, d_out) and y.dtype == jnp.float32
        assert_within(y, ref, bound)
        if lead == (7,):
            jitted = jax.jit(lambda m, x, n=c.order.name: m.apply(x, order=n))
            assert_within(jitted(cp, x), ref, bound)
    assert_within(cp.apply(x), ref, bound)
    plan = cp.plan(batch)
    best = min((c.order for c in cands), key=_cost.score)
    assert plan.order == best.name and plan.flops == best.flops
    # one unbatched input, and vmap of it
    xs = x.reshape(-1, d_in)
    assert_within(cp(xs[0]), ref.reshape(-1, d_out)[0], bound.reshape(-1, d_out)[0])
    assert_within(jax.vmap(cp)(xs), ref.reshape(-1, d_out), bound.reshape(-1, d_out))


def test_flop_counts_match_opt_einsum(rng):
    cp = random_cp(rng, OUT + IN, R, n_out=2)
    B = 5
    orders = {c.order.name: c.order for c in cp.candidates(B)}

    def cost(expr, *shapes, path):
        return opt_einsum.contract_path(expr, *shapes, shapes=True, optimize=path)[1].opt_cost

    # factored: absorb the input modes largest first (4, then 3, then 2) ...
    absorb = cost(
        "bijk,ir,kr,jr->br", (B, *IN), (4, R), (3, R), (2, R), path=[(0, 1), (0, 2), (0, 1)]
    )
    # ... then (B, R) times the Khatri-Rao product of the output factors (first one weighted)
    kr_out = cost("r,ar,br->abr", (R,), (2, R), (3, R), path=[(0, 1), (0, 1)])
    expand = cost("br,or->bo", (B, R), (6, R), path=[(0, 1)])
    assert orders["factored"].flops == absorb + kr_out + expand
    kr_in = cost("ir,jr,kr->ijkr", (4, R), (2, R), (3, R), path=[(0, 1), (0, 1)])
    matmul = cost("bi,ir->br", (B, 24), (24, R), path=[(0, 1)])
    assert orders["khatri-rao"].flops == kr_in + matmul + kr_out + expand
    # dense: split (2, 3, 4 | 2, 3) (the cheapest), weights into the first factor, one matmul
    recon = cost(
        "r,ar,br,cr,dr,er->abcde",
        (R,),
        (2, R),
        (3, R),
        (4, R),
        (2, R),
        (3, R),
        path=[(0, 1), (0, 4), (0, 3), (0, 1), (0, 1)],
    )
    assert cp.reconstruction_flops() == recon
    assert orders["dense"].flops == recon + 2 * B * 24 * 6
    assert orders["dense"].peak_bytes == 24 * 6 * 4
    # factored peak: (B, 2, 3, R) after absorbing the mode of size 4
    assert orders["factored"].peak_bytes == max(B * 6 * R, 6 * R) * 4


def test_truncate_keeps_largest_components(rng):
    shape = (3, 4, 5)
    fs = [rng.standard_normal((n, 4)) for n in shape]
    fs = [f / np.linalg.norm(f, axis=0) for f in fs]
    fs[1][:, 1] *= 10.0  # component 1: weight 1 but a column of norm 10, score 10
    w = np.array([5.0, 1.0, 0.1, 3.0])  # scores 5, 10, 0.1, 3
    cp = CP(jnp.asarray(w), tuple(jnp.asarray(f) for f in fs), 1)
    for rank, keep in [(1, [1]), (3, [1, 0, 3]), (4, [1, 0, 3, 2])]:
        t = cp.truncate(rank)
        assert t.rank == rank and t.n_out == 1
        np.testing.assert_array_equal(t.weights, w[keep].astype(np.float32))
        for a, b in zip(t.factors, fs, strict=True):
            np.testing.assert_array_equal(a, b[:, keep].astype(np.float32))
    assert jax.jit(lambda c: c.truncate(2))(cp).rank == 2


# ---------------------------------------------------------------------------------------------
# CP-ALS
# ---------------------------------------------------------------------------------------------


def rounding_slack(cp, a, eps):
    """How far a computed relative error ||a - CP|| / ||a|| can sit from the exact one: the
    reconstruction's rounding, (d + R) eps |CP|_abs, relative to ||a||."""
    d, r = len(cp.shape), cp.rank
    abs_dense = tensorly.cp_to_tensor(
        (np.abs(f64(cp.weights)), [np.abs(f64(f)) for f in cp.factors])
    )
    return 2 * (d + r + 2) * eps * np.linalg.norm(abs_dense) / np.linalg.norm(f64(a))


def test_als_recovers_exact_low_rank_float64(rng, x64):
    # ALS converges linearly at a rate set by the collinearity of the components (near-collinear
    # ones make "swamps" of hundreds of sweeps): the truth has well-separated components,
    # orthonormal columns plus a 0.3 / sqrt(n) Gaussian perturbation. From the HOSVD init such
    # tensors reach the rounding floor within 50 sweeps (30 of 30 seeds tried); 100 are run.
    shape, rank = (5, 6, 7), 3
    factors = [
        np.linalg.qr(rng.standard_normal((n, rank)))[0]
        + 0.3 * rng.standard_normal((n, rank)) / np.sqrt(n)
        for n in shape
    ]
    truth = CP(jnp.asarray(rng.uniform(0.5, 2, rank)), tuple(map(jnp.asarray, factors)))
    a = truth.to_dense()
    n_iter = 100
    cp, report = CP.als(a, rank, n_iter=n_iter)  # HOSVD init (the random one: float32 below)
    assert cp.weights.dtype == jnp.float64 and cp.rank == rank
    err = np.linalg.norm(f64(cp.to_dense()) - f64(a)) / np.linalg.norm(f64(a))
    slack = rounding_slack(cp, a, EPS64)
    # an exact tensor: ALS converges (linearly) to the rounding floor; 1e3 slacks allow for the
    # conditioning of the components
    assert err <= 1e3 * slack, (err, slack)
    errors = np.asarray(report.errors)
    assert errors.shape == (n_iter,) and int(report.iterations) == n_iter
    assert abs(float(report.error) - err) <= slack
    # each sweep solves its least-squares problems exactly: non-increasing up to rounding
    assert np.all(np.diff(errors) <= slack), np.diff(errors).max()
    # weights sorted and non-negative, factors with unit columns
    w = np.asarray(cp.weights)
    assert np.all(np.diff(w) <= 0) and np.all(w >= 0)
    for f in cp.factors:
        np.testing.assert_allclose(np.linalg.norm(f64(f), axis=0), 1, rtol=0, atol=10 * EPS64)

    # the components are those of the truth (the CP is essentially unique), up to order
    def components(c):
        return [
            tensorly.cp_to_tensor(
                (f64(c.weights[r : r + 1]), [f64(f[:, r : r + 1]) for f in c.factors])
            )
            for r in range(rank)
        ]

    got = components(cp)
    for t in components(truth):
        dist = min(np.linalg.norm(g - t) for g in got)
        assert dist <= 1e3 * slack * np.linalg.norm(f64(a)), dist


def test_als_float32_random_init_tol_and_jit(rng):
    truth = random_cp(rng, (4, 5, 6), 2)
    a = truth.to_dense()
    # tol: stop once a sweep improves the error by at most tol, then keep the factors
    tol = 1e-4
    als = lambda a: CP.als(a, 2, n_iter=40, key=jax.random.key(0), tol=tol)  # noqa: E731
    cp, rep = als(a)
    errors, it = np.asarray(rep.errors), int(rep.iterations)
    assert 1 < it < 40
    gains = -np.diff(errors[:it])
    assert np.all(gains[:-1] > tol) and gains[-1] <= tol
    assert np.all(errors[it - 1 :] == errors[it - 1]) and float(rep.error) == errors[-1]
    err = np.linalg.norm(f64(cp.to_dense()) - f64(a)) / np.linalg.norm(f64(a))
    slack = rounding_slack(cp, a, EPS32)
    assert abs(err - errors[-1]) <= slack
    assert np.all(np.diff(errors) <= slack)
    # under jit: the same sweeps, the same result up to rounding
    cp_j, rep_j = jax.jit(als)(a)
    assert int(rep_j.iterations) == it
    np.testing.assert_allclose(rep_j.errors, errors, rtol=0, atol=slack)
    np.testing.assert_allclose(
        cp_j.to_dense(), cp.to_dense(), rtol=0, atol=slack * np.linalg.norm(f64(a))
    )


def test_from_matrix(rng):
    truth = random_cp(rng, (2, 3, 4, 2), 2, n_out=2)
    w = truth.to_matrix()
    cp = CP.from_matrix(w, 2, out_modes=(2, 3), in_modes=(4, 2), n_iter=40)
    assert cp.shape == (2, 3, 4, 2) and cp.n_out == 2 and cp.to_matrix().shape == (6, 8)
    err = np.linalg.norm(f64(cp.to_matrix()) - f64(w)) / np.linalg.norm(f64(w))
    assert err <= 1e3 * rounding_slack(cp, w, EPS32)


# ---------------------------------------------------------------------------------------------
# init
# ---------------------------------------------------------------------------------------------

Z = 5.0  # standard errors allowed
# a 5% band on the std is [0.95^2, 1.05^2] on the variance: at least 9.75% either side
BAND = 1 - 0.95**2
SHAPES = {2: (48, 64), 3: (16, 20, 24), 4: (8, 10, 12, 9), 5: (8, 8, 8, 8, 8)}


def mean_square(cp):
    """Mean square of the entries of the reconstructed tensor, from the factors:
    ``||T||_F^2 = w^T (∘_k A_k^T A_k) w``."""
    g = math.prod(f.T @ f for f in cp.factors)
    return cp.weights @ g @ cp.weights / math.prod(cp.shape)


@pytest.mark.parametrize("order", [2, 3, 4, 5])
@pytest.mark.parametrize("rank", [2, 8, 64])
def test_init_variance(order, rank):
    """Each module's mean square is one estimate of the target variance. Entries share factors
    and are heavy-tailed products, so the estimates of independent modules are averaged; their
    coefficient of variation is about sqrt((prod_k (1 + 2 / n_k) - 1) / R) (the column norms'
    fluctuations; at most ~1 here), so B = 16384 / R modules (>= 512) put Z = 5 standard errors
    inside the 5% band; the test asserts that too, with the empirical standard error."""
    shape = SHAPES[order]
    n_out = order // 2
    target = 2 / (math.prod(shape[:n_out]) + math.prod(shape[n_out:]))  # glorot, the default
    keys = jax.random.split(jax.random.key(order * 100 + rank), max(512, 16384 // rank))
    draw = lambda k: CP.init(shape, rank, key=k, n_out=n_out)  # noqa: E731
    ms, one = jax.jit(lambda ks: (jax.vmap(lambda k: mean_square(draw(k)))(ks), draw(ks[0])))(keys)
    ms = f64(ms)
    se = ms.std(ddof=1) / np.sqrt(len(ms))
    assert Z * se <= BAND * target, (Z * se / target, len(ms))
    assert abs(np.sqrt(ms.mean() / target) - 1) <= 0.05, np.sqrt(ms.mean() / target)
    # the formula is the mean square of the dense tensor (float64 NumPy, same factors)
    dense = tensorly.cp_to_tensor((f64(one.weights), [f64(f) for f in one.factors]))
    abs_g = math.prod(np.abs(f64(f)).T @ np.abs(f64(f)) for f in one.factors)
    bound = (sum(shape) + 2 * rank + order) * EPS32 * (np.ones(rank) @ abs_g @ np.ones(rank))
    assert abs(ms[0] - np.mean(dense**2)) <= bound / math.prod(shape)


def test_init_schemes_and_small(rng):
    # "std" on a plain tensor (no fans needed), and "he" on a matrix view
    for kwargs, target in [
        (dict(init="std", std=0.3), 0.09),
        (dict(init="he", n_out=1), 2 / (20 * 24)),
    ]:
        keys = jax.random.split(jax.random.key(7), 2048)
        draw = jax.vmap(lambda k, kw=kwargs: mean_square(CP.init((16, 20, 24), 8, key=k, **kw)))
        ms = f64(jax.jit(draw)(keys))
        assert Z * ms.std(ddof=1) / np.sqrt(2048) <= BAND * target
        assert abs(np.sqrt(ms.mean() / target) - 1) <= 0.05
    # "small": every factor entry N(0, alpha^2 / R); mean square over N entries has standard
    # error sigma^2 sqrt(2 / N)
    cp = CP.init((30, 40, 50), 16, key=jax.random.key(3), init="small", alpha=0.5)
    np.testing.assert_array_equal(cp.weights, np.ones(16))
    entries = np.concatenate([f64(f).ravel() for f in cp.factors])
    var = 0.25 / 16
    assert abs(np.mean(entries**2) - var) <= Z * var * np.sqrt(2 / entries.size)
    m = CP.init_matrix(24, 12, 3, key=jax.random.key(0), order=3)
    assert m.shape == (2, 4, 3, 2, 3, 2) and m.n_out == 3 and m.dtype == jnp.float32


def test_stacked_init_and_filter_vmap(rng):
    keys = jax.random.split(jax.random.key(5), 3)
    stacked = jax.vmap(lambda k: CP.init_matrix(6, 8, 3, key=k))(keys)
    assert stacked.weights.shape == (3, 3) and stacked.factors[0].shape == (3, 2, 3)
    # member i is the module drawn with keys[i]
    first = CP.init_matrix(6, 8, 3, key=keys[0])
    np.testing.assert_allclose(stacked.factors[0][0], first.factors[0], rtol=4 * EPS32, atol=0)
    X = rng.standard_normal((3, 8)).astype(np.float32)
    Y = eqx.filter_vmap(lambda m, x: m(x))(stacked, X)
    for i in range(3):
        member = jax.tree.map(lambda a, i=i: a[i], stacked)
        W = cp_loops(member.weights, member.factors).reshape(6, 8)
        bound = (4 + 2 + 3 + 8 + 6) * EPS32 * (cp_abs(member).reshape(6, 8) @ np.abs(f64(X[i])))
        assert_within(Y[i], W @ f64(X[i]), bound)


# ---------------------------------------------------------------------------------------------
# Gradients and bad input
# ---------------------------------------------------------------------------------------------


def test_gradients(rng, x64):
    w = jnp.asarray(rng.uniform(0.5, 2, 2))
    fs = tuple(jnp.asarray(rng.standard_normal((n, 2))) for n in (2, 3, 2, 2))
    x = jnp.asarray(rng.standard_normal((2, 4)))
    make = lambda w, *fs: CP(jnp.asarray(w), tuple(jnp.asarray(f) for f in fs), 2)  # noqa: E731
    check_grads(jax.jit(lambda w, *fs: make(w, *fs).to_dense()), (w, *fs), order=1)
    for name in ("factored", "khatri-rao"):  # "dense" is to_dense, above
        f = jax.jit(lambda x, w, *fs, n=name: make(w, *fs).apply(x, order=n))
        check_grads(f, (x, w, *fs), order=1)


def test_bad_input(rng):
    cp = random_cp(rng, (2, 3, 4), 2)
    msg = "no matrix view.*with_n_out"
    with pytest.raises(ValueError, match=msg):
        cp.apply(jnp.ones((1, 12)))
    with pytest.raises(ValueError, match=msg):
        cp(jnp.ones(12))
    with pytest.raises(ValueError, match=msg):
        cp.to_matrix()
    with pytest.raises(ValueError, match=msg):
        _ = cp.in_features
    with pytest.raises(ValueError, match=msg):
        cp.plan(3)
    for bad in (0, 3):
        with pytest.raises(ValueError, match=r"`n_out`.*\[1, 2\]"):
            cp.with_n_out(bad)
    with pytest.raises(ValueError, match=r"`rank` must be an int in \[1, 2\]"):
        cp.truncate(3)
    m = cp.with_n_out(1)
    with pytest.raises(ValueError, match=r"d_in = 12"):
        m.apply(jnp.ones((2, 5)))
    with pytest.raises(ValueError, match="`order` must be one of"):
        m.apply(jnp.ones((2, 12)), order="tt")
    # factors that do not fit (the jaxtyping annotations may catch them first)
    with pytest.raises((ValueError, TypeError), match=r"factors\[1\]|'factors'"):
        CP(jnp.ones(2), (jnp.ones((2, 2)), jnp.ones((3, 3))))
    with pytest.raises(ValueError, match="at least 2"):
        CP(jnp.ones(2), (jnp.ones((2, 2)),))
    with pytest.raises(ValueError, match="`n_out`"):
        CP(jnp.ones(2), (jnp.ones((2, 2)), jnp.ones((3, 2))), 2)
    # from_dense
    a = jnp.ones((3, 4, 5))
    with pytest.raises(ValueError, match=r"`rank` must be an int in \[1, 12\]"):
        CP.from_dense(a, 13)
    with pytest.raises(TypeError, match="rank"):
        CP.from_dense(a, 2.0)
    with pytest.raises(ValueError, match=r"`rank` = 5 exceeds the size 4 of mode 1.*key="):
        CP.from_dense(a, 5)
    assert CP.from_dense(a, 5, key=jax.random.key(0), n_iter=1).rank == 5
    with pytest.raises(ValueError, match="`n_iter`"):
        CP.from_dense(a, 2, n_iter=0)
    for bad in (-1.0, float("nan")):
        with pytest.raises(ValueError, match="`tol`"):
            CP.from_dense(a, 2, tol=bad)
    with pytest.raises(ValueError, match="order >= 2"):
        CP.from_dense(jnp.ones(3), 1)
    with pytest.raises(TypeError, match="complex"):
        CP.from_dense(jnp.ones((2, 2), jnp.complex64), 1)
    with pytest.raises(ValueError, match=r"`n_out`.*\[1, 2\]"):
        CP.from_dense(a, 2, n_out=3)
    with pytest.raises(ValueError, match="`w` must be a matrix"):
        CP.from_matrix(a, 2)
    with pytest.raises(ValueError, match="product of `out_modes` must be 4"):
        CP.from_matrix(jnp.ones((4, 6)), 2, out_modes=(2, 3))
    # init
    key = jax.random.key(0)
    with pytest.raises(ValueError, match=r"n_out=None.*pass `n_out`"):
        CP.init((3, 4), 2, key=key)
    with pytest.raises(ValueError, match="at least 2 modes"):
        CP.init((3,), 2, key=key, init="std", std=1.0)
    with pytest.raises(ValueError, match=r"`shape\[1\]` must be an int >= 1"):
        CP.init((3, 0), 2, key=key, n_out=1)
    with pytest.raises(ValueError, match="`rank` must be an int >= 1"):
        CP.init((3, 4), 0, key=key, n_out=1)
    with pytest.raises(ValueError, match="`init` must be one of"):
        CP.init((3, 4), 2, key=key, n_out=1, init="xavier")
    with pytest.raises(ValueError, match="`std` is only used"):
        CP.init((3, 4), 2, key=key, init="small", alpha=1.0, std=1.0)
    with pytest.raises(ValueError, match="`alpha`"):
        CP.init((3, 4), 2, key=key, init="small", alpha=-1.0)
