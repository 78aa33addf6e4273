"""Tests of the symmetric gradient, the Gram matrix of `TubalSensing.with_gram`, the ``"lifted"``
training method and the resumable `TrainState` / `advance`.

References are written here from the definitions, in NumPy and float64: the t-product as a
circular convolution of tubes, ``C[i, j, t] = sum_l sum_s A[i, l, s] B[l, j, (t - s) mod k]``;
the t-transpose ``A^T[:, :, 0] = A[:, :, 0].T``, ``A^T[:, :, j] = A[:, :, k - j].T``; the gradient
of ``1/2 ||G x - y||^2`` as ``G^T (G x - y)``; and gradient descent on ``X = U * U^T`` as
``U <- U - mu (M + M^T) * U`` with ``M`` that gradient at ``X``.
"""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from factorjax import LowRank, SymmetricTubalLowRank, TubalLowRank
from factorjax.dynamics import (
    MatrixSensing,
    TrainState,
    TubalSensing,
    advance,
    metrics,
    reference_bases,
    train,
)

F64 = jnp.float64
HISTORY_KEYS = (
    "train_loss",
    "test_error",
    "singular_values",
    "angle_spectral",
    "angle_truth",
    "rank",
    "step",
)


# ---------------------------------------------------------------------------------------------
# NumPy references
# ---------------------------------------------------------------------------------------------


def np_tprod(A, B):
    """``C[i, j, t] = sum_l sum_s A[i, l, s] B[l, j, (t - s) mod k]``."""
    A, B = np.asarray(A, np.float64), np.asarray(B, np.float64)
    k = A.shape[-1]
    C = np.zeros((A.shape[0], B.shape[1], k))
    for s in range(k):
        # np.roll(B, s)[..., t] = B[..., (t - s) mod k]
        C += np.einsum("il,ljt->ijt", A[:, :, s], np.roll(B, s, axis=-1))
    return C


def np_ttranspose(A):
    A = np.asarray(A, np.float64)
    k = A.shape[-1]
    out = np.empty((A.shape[1], A.shape[0], k))
    out[:, :, 0] = A[:, :, 0].T
    for j in range(1, k):
        out[:, :, j] = A[:, :, k - j].T
    return out


def np_grad(problem, X):
    """``M = G^T (G x - y)``, reshaped like ``X``, from the operator of ``problem``."""
    G, y = np.asarray(problem.G, np.float64), np.asarray(problem.y, np.float64)
    X = np.asarray(X, np.float64)
    return (G.T @ (G @ X.ravel() - y)).reshape(X.shape)


def np_symmetric_grad(problem, X):
    M = np_grad(problem, X)
    Mt = np_ttranspose(M) if M.ndim == 3 else M.T
    return 0.5 * (M + Mt)


def np_gd(problem, U, mu, steps):
    """Gradient descent on ``1/2 ||A(U * U^T) - y||^2`` in ``U``."""
    U = np.asarray(U, np.float64).copy()
    for _ in range(steps):
        M = np_grad(problem, np_tprod(U, np_ttranspose(U)))
        U = U - mu * np_tprod(M + np_ttranspose(M), U)
    return U


def num_sym_free(n, k):
    c = 1 if k % 2 else 2
    return n * (n * k + c) // 2


def assert_rel(actual, desired, rtol):
    """``max |actual - desired| <= rtol * max |desired|`` (a norm-wise relative error)."""
    actual, desired = np.asarray(actual, np.float64), np.asarray(desired, np.float64)
    assert actual.shape == desired.shape
    scale = max(float(np.max(np.abs(desired))), np.finfo(np.float64).tiny)
    err = float(np.max(np.abs(actual - desired)))
    assert err <= rtol * scale, f"relative error {err / scale:.3e} > {rtol:.1e}"


def sym_tensor(rng, n, k, width=2):
    U = rng.standard_normal((n, width, k))
    return np_tprod(U, np_ttranspose(U))


def tubal_problem(seed=0, n=4, k=3, r=1, m=40, dtype=F64, **kwargs):
    return TubalSensing.make(n, k, r, m, key=jax.random.key(seed), dtype=dtype, **kwargs)


def sym_model(seed=1, n=4, k=3, R=3, alpha=1e-2, dtype=F64):
    return SymmetricTubalLowRank.init(
        n, k, R, key=jax.random.key(seed), init="small", alpha=alpha, dtype=dtype
    )


def assert_histories_close(h1, h2, rtol=1e-8, atol_angle=1e-8):
    for name in HISTORY_KEYS:
        a, b = np.asarray(h1[name]), np.asarray(h2[name])
        assert a.shape == b.shape, name
        if name in ("rank", "step"):
            np.testing.assert_array_equal(a, b, err_msg=name)
        elif name.startswith("angle_"):
            np.testing.assert_allclose(a, b, rtol=0, atol=atol_angle, err_msg=name)
        elif name == "singular_values":
            # tiny singular values (rank-deficient iterates) agree only relative to the top one
            for i in range(a.shape[0]):
                np.testing.assert_allclose(
                    a[i], b[i], rtol=rtol, atol=rtol * float(np.max(b[i])), err_msg=name
                )
        else:
            np.testing.assert_allclose(a, b, rtol=rtol, err_msg=name)


# ---------------------------------------------------------------------------------------------
# symmetric_grad and the Gram matrix
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("scale", ["paper", "authors"])
@pytest.mark.parametrize("symmetric", [False, True])
@pytest.mark.parametrize("k", [1, 2, 3, 4, 5])
def test_gram_symmetric_grad_matches_reference(k, symmetric, scale, rng, x64):
    n, m = 3, 25
    problem = tubal_problem(
        seed=k, n=n, k=k, r=2, m=m, symmetric=symmetric, scale=scale, noise=0.1
    )
    with_gram = problem.with_gram()
    Ns = num_sym_free(n, k)
    assert with_gram.gram.H.shape == (Ns, Ns)
    assert with_gram.gram.b.shape == (Ns,)
    assert problem.gram is None  # with_gram returns a new problem

    X = sym_tensor(rng, n, k)
    np.testing.assert_allclose(X, np_ttranspose(X), atol=1e-12)  # t-symmetric by construction
    ref = np_symmetric_grad(problem, X)
    assert_rel(with_gram.symmetric_grad(jnp.asarray(X)), ref, 1e-11)
    assert_rel(jax.jit(lambda p, x: p.symmetric_grad(x))(with_gram, jnp.asarray(X)), ref, 1e-11)
    # A batch of iterates against one problem.
    Xb = np.stack([X, sym_tensor(rng, n, k)])
    out = with_gram.symmetric_grad(jnp.asarray(Xb))
    assert out.shape == (2, n, n, k)
    for i in range(2):
        assert_rel(out[i], np_symmetric_grad(problem, Xb[i]), 1e-11)
    # The plain problem, for the same t-symmetric X.
    assert_rel(problem.symmetric_grad(jnp.asarray(X)), ref, 1e-11)


@pytest.mark.parametrize("k", [2, 3])
def test_gram_under_vmap_over_problems(k, rng, x64):
    n, m, batch = 3, 20, 3
    keys = jax.random.split(jax.random.key(11), batch)

    def make(key):
        return TubalSensing.make(
            n, k, 1, m, key=key, symmetric=True, noise=0.05, dtype=F64
        ).with_gram()

    problems = jax.jit(jax.vmap(make))(keys)
    Ns = num_sym_free(n, k)
    assert problems.gram.H.shape == (batch, Ns, Ns)
    X = np.stack([sym_tensor(rng, n, k) for _ in range(batch)])
    out = jax.jit(jax.vmap(lambda p, x: p.symmetric_grad(x)))(problems, jnp.asarray(X))
    for i in range(batch):
        one = jax.tree.map(lambda a, i=i: a[i], problems)
        assert_rel(out[i], np_symmetric_grad(one, X[i]), 1e-11)
        # the batched Gram is the one built from that problem alone
        np.testing.assert_allclose(one.with_gram().gram.H, problems.gram.H[i], rtol=1e-12)


@pytest.mark.parametrize("k", [1, 2, 5])
def test_plain_symmetric_grad_any_tensor(k, rng, x64):
    n = 3
    problem = tubal_problem(n=n, k=k, r=1, m=30, noise=0.1)
    X = rng.standard_normal((n, n, k))  # not t-symmetric
    assert np.max(np.abs(X - np_ttranspose(X))) > 0.1
    out = problem.symmetric_grad(jnp.asarray(X))
    assert_rel(out, np_symmetric_grad(problem, X), 1e-11)
    # the result itself is t-symmetric
    np.testing.assert_allclose(out, np_ttranspose(out), rtol=0, atol=1e-12)


def test_matrix_sensing_symmetric_grad(rng, x64):
    problem = MatrixSensing.make(4, 4, 2, 30, key=jax.random.key(2), noise=0.1, dtype=F64)
    X = rng.standard_normal((4, 4))
    M = np_grad(problem, X)
    out = problem.symmetric_grad(jnp.asarray(X))
    assert_rel(out, 0.5 * (M + M.T), 1e-11)
    assert_rel(jax.jit(lambda p, x: p.symmetric_grad(x))(problem, jnp.asarray(X)), 0.5 * (M + M.T), 1e-11)


# ---------------------------------------------------------------------------------------------
# "lifted" against "factors" and against a NumPy loop
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("R", [2, 4, 9])
@pytest.mark.parametrize(("k", "r"), [(3, 1), (4, 2)])
def test_lifted_equals_factors(k, r, R, x64):
    n, steps, log_every, mu = 4, 60, 20, 0.05
    problem = tubal_problem(seed=k + R, n=n, k=k, r=r, m=40)
    model = sym_model(seed=R, n=n, k=k, R=R)

    def run(p, method):
        return train(p, model, steps=steps, log_every=log_every, step_size=mu, method=method)

    f_fac, h_fac = run(problem, "factors")
    f_lift, h_lift = run(problem, "lifted")
    f_gram, h_gram = run(problem.with_gram(), "lifted")

    # a stable step: the loss decreases
    loss = np.asarray(h_fac["train_loss"])
    assert np.all(np.diff(loss) < 0) and loss[-1] < 0.5 * loss[0]
    np.testing.assert_array_equal(h_fac["step"], [0, 20, 40, 60])
    assert f_lift.u.shape == (n, R, k) and f_lift.u.dtype == F64
    for f, h in ((f_lift, h_lift), (f_gram, h_gram)):
        assert_histories_close(h, h_fac)
        assert not bool(h["diverged"]) and int(h["diverged_at"]) == -1
        assert_rel(f.to_dense(), f_fac.to_dense(), 1e-8)
        assert_rel(f.u, f_fac.u, 1e-8)  # the factor itself: U_t = L_t * Q exactly


@pytest.mark.parametrize(("R", "gram"), [(3, False), (6, False), (6, True)])
def test_lifted_matches_numpy_gradient_descent(R, gram, x64):
    n, k, mu, steps = 3, 4, 0.05, 30
    problem = tubal_problem(seed=3, n=n, k=k, r=1, m=30, noise=0.01)
    model = sym_model(seed=4, n=n, k=k, R=R, alpha=0.1)
    p = problem.with_gram() if gram else problem
    final, hist = train(p, model, steps=steps, log_every=10, step_size=mu, method="lifted")
    U = np_gd(problem, model.u, mu, steps)
    assert np.max(np.abs(U - np.asarray(model.u))) > 1e-3  # it moved
    assert_rel(final.u, U, 1e-9)
    # the last record is of that iterate
    X = np_tprod(U, np_ttranspose(U))
    res = np.asarray(problem.G) @ X.ravel() - np.asarray(problem.y)
    np.testing.assert_allclose(hist["train_loss"][-1], 0.5 * res @ res, rtol=1e-9)


def test_lifted_under_jit_and_vmap_over_step_sizes(x64):
    problem = tubal_problem(seed=5, n=3, k=3, r=1, m=30).with_gram()
    model = sym_model(seed=6, n=3, k=3, R=5, alpha=0.1)
    mus = jnp.asarray([0.02, 0.05], F64)

    def one(mu):
        return train(problem, model, steps=20, log_every=10, step_size=mu, method="lifted")

    finals, hist = jax.jit(jax.vmap(one))(mus)
    for i in range(2):
        U = np_gd(problem, model.u, float(mus[i]), 20)
        assert_rel(finals.u[i], U, 1e-9)
        f, h = one(mus[i])
        assert_histories_close(jax.tree.map(lambda a, i=i: a[i], hist), h, rtol=1e-10)


# ---------------------------------------------------------------------------------------------
# Choosing the method
# ---------------------------------------------------------------------------------------------


def tampered(problem):
    """The problem with a Gram matrix built from other observations: only the lifted method
    (through `symmetric_grad`) sees the difference, which makes it observable which method ran."""
    other = eqx.tree_at(lambda p: p.y, problem, 3.0 * problem.y)
    return eqx.tree_at(
        lambda p: p.gram, problem, other.with_gram().gram, is_leaf=lambda x: x is None
    )


def test_auto_picks_lifted_for_symmetric_gradient_descent():
    problem = tampered(tubal_problem(seed=7, n=3, k=3, r=1, m=30, dtype=None))
    model = sym_model(seed=8, n=3, k=3, R=4, alpha=0.1, dtype=None)
    kw = {"steps": 10, "log_every": 5}

    f_auto, h_auto = train(problem, model, step_size=0.05, **kw)  # method="auto" by default
    f_lift, h_lift = train(problem, model, step_size=0.05, method="lifted", **kw)
    f_fac, h_fac = train(problem, model, step_size=0.05, method="factors", **kw)
    np.testing.assert_array_equal(f_auto.u, f_lift.u)
    for name in HISTORY_KEYS:
        np.testing.assert_array_equal(h_auto[name], h_lift[name])
    # the tampered Gram makes the two methods differ: auto is not factors
    assert float(jnp.max(jnp.abs(f_auto.u - f_fac.u))) > 1e-3

    # with an optimizer, auto takes the factors
    opt = optax.sgd(0.05)
    f_opt, _ = train(problem, model, optimizer=opt, **kw)
    f_opt_fac, _ = train(problem, model, optimizer=opt, method="factors", **kw)
    np.testing.assert_array_equal(f_opt.u, f_opt_fac.u)
    np.testing.assert_allclose(f_opt.u, f_fac.u, rtol=1e-5, atol=1e-6)


def test_auto_takes_factors_for_other_models():
    problem = tubal_problem(seed=9, n=3, k=3, r=1, m=30, dtype=None).with_gram()
    model = TubalLowRank.init(3, 3, 3, 2, key=jax.random.key(0), init="small", alpha=0.1)
    kw = {"steps": 4, "log_every": 2, "step_size": 0.05}
    f_auto, h_auto = train(problem, model, **kw)
    f_fac, h_fac = train(problem, model, method="factors", **kw)
    np.testing.assert_array_equal(f_auto.u, f_fac.u)
    np.testing.assert_array_equal(f_auto.v, f_fac.v)
    np.testing.assert_array_equal(h_auto["train_loss"], h_fac["train_loss"])


def test_method_errors():
    problem = tubal_problem(seed=10, n=3, k=3, r=1, m=30, dtype=None)
    model = sym_model(n=3, k=3, R=2, dtype=None)
    kw = {"steps": 4, "log_every": 2}
    with pytest.raises(ValueError, match="method"):
        train(problem, model, optimizer=optax.sgd(0.1), method="lifted", **kw)
    with pytest.raises(ValueError, match="method"):
        advance(
            problem,
            TrainState.create(model, optimizer=optax.adam(0.1)),
            optimizer=optax.adam(0.1),
            method="lifted",
            **kw,
        )
    tubal_model = TubalLowRank.init(3, 3, 3, 2, key=jax.random.key(0))
    with pytest.raises(ValueError, match="method"):
        train(problem, tubal_model, step_size=0.1, method="lifted", **kw)
    matrix_problem = MatrixSensing.make(3, 3, 1, 20, key=jax.random.key(0))
    matrix_model = LowRank.init(3, 3, 2, key=jax.random.key(0))
    with pytest.raises(ValueError, match="method"):
        train(matrix_problem, matrix_model, step_size=0.1, method="lifted", **kw)
    for bad in ("lift", "Lifted", "", None):
        with pytest.raises(ValueError, match="`method`"):
            train(problem, model, step_size=0.1, method=bad, **kw)


# ---------------------------------------------------------------------------------------------
# TrainState and advance
# ---------------------------------------------------------------------------------------------


def concat(h1, h2):
    return {name: np.concatenate([np.asarray(h1[name]), np.asarray(h2[name])]) for name in h1}


def test_advance_in_pieces_factors_adam(x64):
    problem = tubal_problem(seed=12, n=3, k=4, r=1, m=30)
    model = sym_model(seed=13, n=3, k=4, R=4, alpha=0.1)
    opt = optax.adam(1e-2)
    kw = {"log_every": 3, "optimizer": opt, "method": "factors"}

    s0 = TrainState.create(model, optimizer=opt)
    assert int(s0.step) == 0 and not bool(s0.diverged) and int(s0.diverged_at) == -1
    assert s0.opt_state is not None
    whole, h_whole = advance(problem, s0, steps=12, **kw)
    s1, h1 = advance(problem, s0, steps=6, **kw)
    assert int(s1.step) == 6
    s2, h2 = advance(problem, s1, steps=6, **kw)
    assert int(s2.step) == int(whole.step) == 12
    np.testing.assert_array_equal(h1["step"], [3, 6])
    np.testing.assert_array_equal(h2["step"], [9, 12])
    pieces = concat(h1, h2)
    assert_histories_close(pieces, h_whole, rtol=1e-12, atol_angle=1e-12)
    assert_rel(s2.model.u, whole.model.u, 1e-12)
    for a, b in zip(jax.tree.leaves(s2.opt_state), jax.tree.leaves(whole.opt_state), strict=True):
        assert_rel(a, b, 1e-12)

    # the pieces carry the optimizer state: restarting adam at step 6 gives another run
    restarted = eqx.tree_at(lambda s: s.opt_state, s1, opt.init(eqx.filter(s1.model, eqx.is_array)))
    s2_bad, _ = advance(problem, restarted, steps=6, **kw)
    assert float(jnp.max(jnp.abs(s2_bad.model.u - whole.model.u))) > 1e-6

    # create(model) without the optimizer: advance initialises its state
    s_lazy, h_lazy = advance(problem, TrainState.create(model), steps=12, **kw)
    assert_rel(s_lazy.model.u, whole.model.u, 1e-12)

    # train is the first record followed by advance from a fresh state
    f_train, h_train = train(problem, model, steps=12, **kw)
    assert_rel(f_train.u, whole.model.u, 1e-12)
    np.testing.assert_array_equal(h_train["step"], [0, 3, 6, 9, 12])
    np.testing.assert_allclose(h_train["train_loss"][1:], h_whole["train_loss"], rtol=1e-12)


@pytest.mark.parametrize("R", [2, 6])
def test_advance_in_pieces_lifted(R, x64):
    problem = tubal_problem(seed=14, n=3, k=3, r=1, m=30)
    model = sym_model(seed=15, n=3, k=3, R=R, alpha=0.1)
    kw = {"log_every": 5, "step_size": 0.05, "method": "lifted"}
    s0 = TrainState.create(model)
    assert s0.opt_state is None
    whole, h_whole = advance(problem, s0, steps=20, **kw)
    s1, h1 = advance(problem, s0, steps=5, **kw)
    s2, h2 = advance(problem, s1, steps=15, **kw)
    assert int(s1.step) == 5 and int(s2.step) == int(whole.step) == 20
    np.testing.assert_array_equal(h2["step"], [10, 15, 20])
    assert_histories_close(concat(h1, h2), h_whole, rtol=1e-10, atol_angle=1e-10)
    assert_rel(s2.model.u, whole.model.u, 1e-10)
    # and both are the factors' iterates
    fac, h_fac = advance(problem, s0, steps=20, log_every=5, step_size=0.05, method="factors")
    assert_rel(whole.model.u, fac.model.u, 1e-9)
    assert_histories_close(h_whole, h_fac)
    assert_rel(whole.model.u, np_gd(problem, model.u, 0.05, 20), 1e-9)


def test_advance_step_offsets_records():
    """A state at step s gives records s + log_every, s + 2 log_every, ... for both methods."""
    problem = tubal_problem(seed=16, n=3, k=3, r=1, m=30, dtype=None)
    state = TrainState.create(sym_model(n=3, k=3, R=2, dtype=None))
    state = eqx.tree_at(lambda s: s.step, state, jnp.asarray(100))
    for method in ("factors", "lifted"):
        s, h = advance(problem, state, steps=4, log_every=2, step_size=0.05, method=method)
        np.testing.assert_array_equal(h["step"], [102, 104])
        assert int(s.step) == 104


# ---------------------------------------------------------------------------------------------
# Divergence of the lifted method
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("R", [3, 9])
def test_lifted_divergence_freezes_at_last_finite_iterate(R):
    n, k, steps, log_every = 4, 3, 40, 4
    problem = tubal_problem(seed=17, n=n, k=k, r=1, m=40, dtype=None)
    model = sym_model(seed=18, n=n, k=k, R=R, alpha=1.0, dtype=None)
    final, hist = train(
        problem, model, steps=steps, log_every=log_every, step_size=1e3, method="lifted"
    )
    assert bool(hist["diverged"])
    at = int(hist["diverged_at"])
    assert 1 <= at <= steps
    assert bool(jnp.all(jnp.isfinite(final.u)))
    # the first record is the initial model, finite
    assert np.isfinite(float(hist["train_loss"][0]))
    # every record at or after the failed update is of the same (frozen) iterate
    step = np.asarray(hist["step"])
    after = np.flatnonzero(step >= at)
    assert after.size >= 2
    for name in HISTORY_KEYS[:-1]:
        for i in after[1:]:
            np.testing.assert_array_equal(hist[name][i], hist[name][after[0]], err_msg=name)
    # the frozen model is the iterate before the failed update
    if at == 1:
        np.testing.assert_array_equal(final.u, model.u)
    else:
        before, h_before = train(
            problem, model, steps=at - 1, log_every=1, step_size=1e3, method="lifted"
        )
        assert not bool(h_before["diverged"])
        np.testing.assert_allclose(final.u, before.u, rtol=1e-4)


def test_lifted_and_factors_diverge_alike(x64):
    problem = tubal_problem(seed=19, n=3, k=3, r=1, m=30)
    model = sym_model(seed=20, n=3, k=3, R=2, alpha=1.0)
    kw = {"steps": 20, "log_every": 5, "step_size": 1e3}
    f_l, h_l = train(problem, model, method="lifted", **kw)
    f_f, h_f = train(problem, model, method="factors", **kw)
    assert bool(h_l["diverged"]) and bool(h_f["diverged"])
    assert int(h_l["diverged_at"]) == int(h_f["diverged_at"]) >= 1
    assert bool(jnp.all(jnp.isfinite(f_l.u)))
    assert_rel(f_l.u, f_f.u, 1e-6)


# ---------------------------------------------------------------------------------------------
# Metrics
# ---------------------------------------------------------------------------------------------


def test_metrics_with_precomputed_bases(rng):
    problem = tubal_problem(seed=21, n=4, k=4, r=2, m=50, dtype=None)
    bases = reference_bases(problem)
    assert bases[0].shape == bases[1].shape == (3, 4, 2)
    for X in (rng.standard_normal((4, 4, 4)), sym_tensor(rng, 4, 4, width=3)):
        X = jnp.asarray(X, jnp.float32)
        a, b = metrics(problem, X), metrics(problem, X, bases=bases)
        assert a.keys() == b.keys()
        for name in a:
            np.testing.assert_allclose(a[name], b[name], rtol=1e-6, atol=1e-7, err_msg=name)
    mp = MatrixSensing.make(5, 4, 2, 30, key=jax.random.key(1))
    X = jnp.asarray(rng.standard_normal((5, 4)), jnp.float32)
    a, b = metrics(mp, X), metrics(mp, X, bases=reference_bases(mp))
    for name in a:
        np.testing.assert_allclose(a[name], b[name], rtol=1e-6, atol=1e-7, err_msg=name)


@pytest.mark.parametrize("kind", ["tubal", "matrix"])
def test_metrics_at_ground_truth(kind, rng):
    if kind == "tubal":
        problem = tubal_problem(seed=22, n=4, k=3, r=2, m=60, dtype=None)
    else:
        problem = MatrixSensing.make(5, 5, 2, 60, key=jax.random.key(2), symmetric=True)
    m = metrics(problem, problem.ground_truth)
    assert float(m["angle_truth"]) < 1e-3
    assert float(m["test_error"]) == 0.0
    assert int(m["rank"]) == problem.rank
    assert 0.0 <= float(m["angle_spectral"]) <= 1.0
    for _ in range(3):
        X = jnp.asarray(rng.standard_normal(problem.shape), jnp.float32)
        m = metrics(problem, X)
        for name in ("angle_spectral", "angle_truth"):
            assert 0.0 <= float(m[name]) <= 1.0, name
        assert 0 <= int(m["rank"]) <= min(problem.shape[:2])
