"""Tests of the symmetric gradient, the Gram matrix of `TubalSensing.with_gram`, the ``"lifted"``
training method and the resumable `TrainState` / `advance`.

References are written here from the definitions, in NumPy and float64: the t-product as a
circular convolution of tubes, ``C[i, j, t] = sum_l sum_s A[i, l, s] B[l, j, (t - s) mod k]``;
the t-transpose ``A^T[:, :, 0] = A[:, :, 0].T``, ``A^T[:, :, j] = A[:, :, k - j].T``; the gradient
of ``1/2 ||G x - y||^2`` as ``G^T (G x - y)``; and gradient descent on ``X = U * U^T`` as
``U <- U - mu (M + M^T) * U`` with ``M`` that gradient at ``X``.

Every test runs in float64 (the ``x64`` fixture), with the library's results computed under one
``jax.jit`` per test, models drawn with NumPy and keys of the ``"rbg"`` implementation:
compilation dominates the run time of such small problems, and these cut it several times over.
"""

import dataclasses
import functools

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

pytestmark = pytest.mark.usefixtures("x64")

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


def key(seed):
    return jax.random.key(seed, impl="rbg")


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


def np_grad(G, y, X):
    """``M = G^T (G x - y)``, reshaped like ``X``."""
    G, y, X = (np.asarray(a, np.float64) for a in (G, y, X))
    return (G.T @ (G @ X.ravel() - y)).reshape(X.shape)


def np_symmetric_grad(G, y, X):
    M = np_grad(G, y, X)
    Mt = np_ttranspose(M) if M.ndim == 3 else M.T
    return 0.5 * (M + Mt)


def np_gd(problem, U, mu, steps):
    """Gradient descent on ``1/2 ||A(U * U^T) - y||^2`` in ``U``."""
    U = np.asarray(U, np.float64).copy()
    for _ in range(steps):
        M = np_grad(problem.G, problem.y, np_tprod(U, np_ttranspose(U)))
        U = U - mu * np_tprod(M + np_ttranspose(M), U)
    return U


def np_loss(problem, X):
    res = np.asarray(problem.G) @ np.asarray(X).ravel() - np.asarray(problem.y)
    return 0.5 * res @ res


def num_sym_free(n, k):
    c = 1 if k % 2 else 2  # real Fourier slices: DC, and Nyquist for even k
    return n * (n * k + c) // 2


def assert_rel(actual, desired, rtol):
    """``max |actual - desired| <= rtol * max |desired|`` (a norm-wise relative error)."""
    actual, desired = np.asarray(actual, np.float64), np.asarray(desired, np.float64)
    assert actual.shape == desired.shape, (actual.shape, desired.shape)
    scale = max(float(np.max(np.abs(desired))), np.finfo(np.float64).tiny)
    err = float(np.max(np.abs(actual - desired)))
    assert err <= rtol * scale, f"relative error {err / scale:.3e} > {rtol:.1e}"


def sym_tensor(rng, n, k, width=2):
    """A t-symmetric tensor ``U * U^T``, from the NumPy t-product."""
    U = rng.standard_normal((n, width, k))
    return np_tprod(U, np_ttranspose(U))


@functools.cache
def _maker(n, k, r, m, noise):
    return jax.jit(lambda kk: TubalSensing.make(n, k, r, m, key=kk, noise=noise, dtype=F64))


def tubal_problem(seed, n, k, r, m, noise=0.0):
    """A float64 `TubalSensing` instance (paper scale); one compilation per set of sizes."""
    return _maker(n, k, r, m, noise)(key(seed))


@functools.cache
def matrix_problem():
    """A float64 symmetric `MatrixSensing` instance ``(5, 5)`` of rank 2, shared."""
    make = jax.jit(
        lambda kk: MatrixSensing.make(5, 5, 2, 60, key=kk, symmetric=True, noise=0.1, dtype=F64)
    )
    return make(key(2))


def sym_model(seed, n, k, R, alpha=1e-2):
    """``init="small"`` of `SymmetricTubalLowRank.init` (entries ``N(0, alpha^2 / R)``), drawn
    with NumPy: no compilation per shape."""
    u = np.random.default_rng(seed).standard_normal((n, R, k)) * (alpha / np.sqrt(R))
    return SymmetricTubalLowRank(jnp.asarray(u, F64))


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


def index(tree, i):
    return jax.tree.map(lambda a: a[i], tree)


# ---------------------------------------------------------------------------------------------
# symmetric_grad and the Gram matrix
# ---------------------------------------------------------------------------------------------

# Two of the four (symmetric measurements, scale) variants per k, every variant for odd and
# even k (all four per k would double the compilation time of these tests).
VARIANTS = {
    1: [(False, "paper"), (True, "authors")],
    2: [(True, "paper"), (False, "authors")],
    3: [(True, "paper"), (False, "authors")],
    4: [(False, "paper"), (True, "authors")],
    5: [(False, "authors"), (True, "paper")],
}


# odd and even tube lengths in the default run; the others are slow (compile-heavy)
@pytest.mark.parametrize("k", [1, 2, *(pytest.param(k, marks=pytest.mark.slow) for k in (3, 4, 5))])
def test_gram_symmetric_grad_matches_reference(k, rng):
    """With the Gram matrix, exact on t-symmetric tensors (one and a batch); without it, exact
    on any tensor."""
    n, m = 3, 25
    X = sym_tensor(rng, n, k)
    np.testing.assert_allclose(X, np_ttranspose(X), rtol=0, atol=1e-12)  # t-symmetric
    Xb = np.stack([sym_tensor(rng, n, k, width=1), sym_tensor(rng, n, k, width=3)])
    Xany = rng.standard_normal((n, n, k))
    assert np.max(np.abs(Xany - np_ttranspose(Xany))) > 0.1  # not t-symmetric

    @jax.jit
    def run(kk, X, Xb, Xany):
        out = []
        for symmetric, scale in VARIANTS[k]:
            p = TubalSensing.make(
                n, k, 2, m, key=kk, symmetric=symmetric, scale=scale, noise=0.1, dtype=F64
            )
            pg = p.with_gram()
            sg = (pg.symmetric_grad(X), pg.symmetric_grad(Xb), p.symmetric_grad(Xany))
            out.append((pg, sg))
        return out

    results = run(key(k), *(jnp.asarray(a) for a in (X, Xb, Xany)))
    Ns = num_sym_free(n, k)
    for (symmetric, scale), (pg, (sg, sgb, sg_any)) in zip(VARIANTS[k], results, strict=True):
        assert (pg.symmetric, pg.scale) == (symmetric, scale)
        assert pg.gram.H.shape == (Ns, Ns) and pg.gram.b.shape == (Ns,)
        G, y = pg.G, pg.y
        assert_rel(sg, np_symmetric_grad(G, y, X), 1e-11)
        assert sgb.shape == (2, n, n, k)
        for i in range(2):
            assert_rel(sgb[i], np_symmetric_grad(G, y, Xb[i]), 1e-11)
        assert_rel(sg_any, np_symmetric_grad(G, y, Xany), 1e-11)
        np.testing.assert_allclose(sg_any, np_ttranspose(sg_any), rtol=0, atol=1e-12)

    # eagerly too, on the last variant: the Gram path, and the plain one after dropping it
    pg = results[-1][0]
    plain = eqx.tree_at(lambda p: p.gram, pg, None)
    assert plain.gram is None
    ref = np_symmetric_grad(pg.G, pg.y, X)
    assert_rel(pg.symmetric_grad(jnp.asarray(X)), ref, 1e-11)
    assert_rel(plain.symmetric_grad(jnp.asarray(X)), ref, 1e-11)


@pytest.mark.slow  # compile-heavy: over 5 s on 2 cores (the default run's budget)
def test_gram_and_lifted_under_vmap_over_problems(rng):
    """A batch of problems from `jax.vmap` over keys, their Gram matrices, and lifted runs on
    them with (traced) step sizes of their own."""
    n, k, m, batch, R = 3, 4, 20, 3, 4
    keys = jax.random.split(key(11), batch)
    mus = np.asarray([0.02, 0.05, 0.1])
    X = np.stack([sym_tensor(rng, n, k) for _ in range(batch)])
    model = sym_model(12, n, k, R, alpha=0.1)

    def one(kk, mu, X):
        p = TubalSensing.make(n, k, 1, m, key=kk, symmetric=True, noise=0.05, dtype=F64)
        p = p.with_gram()
        final, hist = train(p, model, steps=10, log_every=5, step_size=mu, method="lifted")
        return p, p.symmetric_grad(X), final, hist

    problems, out, finals, hist = jax.jit(jax.vmap(one))(
        keys, jnp.asarray(mus, F64), jnp.asarray(X)
    )
    Ns = num_sym_free(n, k)
    assert problems.gram.H.shape == (batch, Ns, Ns)
    with pytest.raises(ValueError, match="vmap"):
        problems.with_gram()  # a batch: one instance at a time
    for i in range(batch):
        p = index(problems, i)
        assert_rel(out[i], np_symmetric_grad(p.G, p.y, X[i]), 1e-11)
        U = np_gd(p, model.u, mus[i], 10)
        assert_rel(finals.u[i], U, 1e-9)
        X_last = np_tprod(U, np_ttranspose(U))
        np.testing.assert_allclose(hist["train_loss"][i, -1], np_loss(p, X_last), rtol=1e-9)
    assert not np.any(hist["diverged"])
    np.testing.assert_array_equal(hist["step"], [[0, 5, 10]] * batch)


def test_matrix_sensing_symmetric_grad(rng):
    problem = matrix_problem()
    X = rng.standard_normal((5, 5))
    M = np_grad(problem.G, problem.y, X)
    assert_rel(problem.symmetric_grad(jnp.asarray(X)), 0.5 * (M + M.T), 1e-11)


# ---------------------------------------------------------------------------------------------
# "lifted" against "factors" and against a NumPy loop
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("k", "r", "R", "gram"),
    [
        (3, 1, 2, False),
        (4, 2, 4, True),
        pytest.param(3, 1, 9, True, marks=pytest.mark.slow),
        pytest.param(4, 2, 9, False, marks=pytest.mark.slow),
    ],
)
def test_lifted_equals_factors(k, r, R, gram):
    """The lifted method on the plain problem, or on the one with its Gram matrix, against
    autodiff through the factors: R < n, R = n and R > n (where U_0 = L_0 * Q)."""
    n, steps, log_every, mu = 4, 60, 20, 0.05
    problem = tubal_problem(0, n, k, r, 40)
    model = sym_model(R, n, k, R)

    @jax.jit
    def run(problem, model):
        kw = {"steps": steps, "log_every": log_every, "step_size": mu}
        p = problem.with_gram() if gram else problem
        return train(problem, model, method="factors", **kw), train(p, model, method="lifted", **kw)

    (f_fac, h_fac), (f, h) = run(problem, model)

    # a stable step: the loss decreases
    loss = np.asarray(h_fac["train_loss"])
    assert np.all(np.diff(loss) < 0) and loss[-1] < 0.5 * loss[0]
    np.testing.assert_array_equal(h_fac["step"], [0, 20, 40, 60])
    U = np_gd(problem, model.u, mu, steps)
    assert_rel(f_fac.u, U, 1e-9)
    assert f.u.shape == (n, R, k) and f.u.dtype == F64
    assert_histories_close(h, h_fac)
    assert not bool(h["diverged"]) and int(h["diverged_at"]) == -1
    assert_rel(f.to_dense(), f_fac.to_dense(), 1e-8)
    assert_rel(f.u, f_fac.u, 1e-8)  # the factor itself: U_t = L_t * Q exactly
    assert_rel(f.u, U, 1e-9)


@pytest.mark.parametrize(("k", "R", "gram"), [(1, 5, False), (2, 6, True)])
def test_lifted_matches_numpy_gradient_descent(k, R, gram):
    n, mu, steps = 3, 0.05, 30
    problem = tubal_problem(3, n, k, 1, 30, noise=0.01)
    model = sym_model(4, n, k, R, alpha=0.1)

    @jax.jit
    def run(problem, model):
        p = problem.with_gram() if gram else problem
        return train(p, model, steps=steps, log_every=10, step_size=mu, method="lifted")

    final, hist = run(problem, model)
    U = np_gd(problem, model.u, mu, steps)
    assert np.max(np.abs(U - np.asarray(model.u))) > 1e-3  # it moved
    assert_rel(final.u, U, 1e-9)
    # the last record is of that iterate
    np.testing.assert_allclose(
        hist["train_loss"][-1], np_loss(problem, np_tprod(U, np_ttranspose(U))), rtol=1e-9
    )


# ---------------------------------------------------------------------------------------------
# Choosing the method
# ---------------------------------------------------------------------------------------------


def tampered(problem):
    """The problem with a Gram matrix built from other observations: only the lifted method
    (through `symmetric_grad`) sees the difference, which shows which method ran."""
    other = eqx.tree_at(lambda p: p.y, problem, 3.0 * problem.y)
    return eqx.tree_at(
        lambda p: p.gram, problem, other.with_gram().gram, is_leaf=lambda x: x is None
    )


def test_auto_picks_lifted_for_symmetric_gradient_descent():
    problem = tubal_problem(7, 3, 3, 1, 30)
    model = sym_model(8, 3, 3, 4, alpha=0.1)
    kw = {"steps": 10, "log_every": 5}
    opt = optax.sgd(0.05)

    @jax.jit
    def run(problem, model):
        p = tampered(problem)
        return {
            "auto": train(p, model, step_size=0.05, **kw),  # method="auto" by default
            "lifted": train(p, model, step_size=0.05, method="lifted", **kw),
            "opt_auto": train(p, model, optimizer=opt, method="auto", **kw),
        }

    out = run(problem, model)
    (f_auto, h_auto), (f_lift, h_lift) = out["auto"], out["lifted"]
    np.testing.assert_array_equal(f_auto.u, f_lift.u)
    for name in HISTORY_KEYS:
        np.testing.assert_array_equal(h_auto[name], h_lift[name])
    # with an optimizer, auto takes the factors: sgd there is plain descent on the factors,
    # which ignores the tampered Gram; auto with a step size did not run the factors
    f_opt = out["opt_auto"][0]
    assert_rel(f_opt.u, np_gd(problem, model.u, 0.05, 10), 1e-9)
    assert float(jnp.max(jnp.abs(f_auto.u - f_opt.u))) > 1e-3


def test_auto_takes_factors_for_other_models():
    problem = tubal_problem(9, 3, 3, 1, 30)
    rng = np.random.default_rng(0)
    model = TubalLowRank(*(jnp.asarray(0.1 * rng.standard_normal((3, 2, 3))) for _ in "uv"))
    kw = {"steps": 4, "log_every": 2, "step_size": 0.05}

    @jax.jit
    def run(problem, model):
        p = tampered(problem)
        return train(p, model, **kw), train(p, model, method="factors", **kw)

    (f_auto, h_auto), (f_fac, h_fac) = run(problem, model)
    np.testing.assert_array_equal(f_auto.u, f_fac.u)
    np.testing.assert_array_equal(f_auto.v, f_fac.v)
    np.testing.assert_array_equal(h_auto["train_loss"], h_fac["train_loss"])
    assert float(jnp.max(jnp.abs(f_auto.u - model.u))) > 1e-4  # it trained


def test_method_errors():
    problem = tubal_problem(10, 3, 3, 1, 30)
    model = sym_model(0, 3, 3, 2)
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
    tubal_model = TubalLowRank(jnp.ones((3, 2, 3), F64), jnp.ones((3, 2, 3), F64))
    with pytest.raises(ValueError, match="method"):
        train(problem, tubal_model, step_size=0.1, method="lifted", **kw)
    with pytest.raises(ValueError, match="method"):
        advance(problem, TrainState.create(tubal_model), step_size=0.1, method="lifted", **kw)
    matrix_model = LowRank(jnp.ones((3, 2), F64), jnp.ones((3, 2), F64))
    with pytest.raises(ValueError, match="method"):
        train(problem, matrix_model, step_size=0.1, method="lifted", **kw)
    for bad in ("lift", "Lifted", "", None):
        with pytest.raises(ValueError, match="`method`"):
            train(problem, model, step_size=0.1, method=bad, **kw)
        with pytest.raises(ValueError, match="`method`"):
            advance(problem, TrainState.create(model), step_size=0.1, method=bad, **kw)


# ---------------------------------------------------------------------------------------------
# TrainState and advance
# ---------------------------------------------------------------------------------------------


def concat(h1, h2):
    return {name: np.concatenate([np.asarray(h1[name]), np.asarray(h2[name])]) for name in h1}


@pytest.mark.slow  # compile-heavy: over 5 s on 2 cores (the default run's budget)
def test_advance_in_pieces_factors_adam():
    problem = tubal_problem(12, 3, 4, 1, 30)
    model = sym_model(13, 3, 4, 4, alpha=0.1)
    opt = optax.adam(1e-2)
    kw = {"log_every": 3, "optimizer": opt, "method": "factors"}

    s0 = TrainState.create(model, optimizer=opt)
    assert int(s0.step) == 0 and not bool(s0.diverged) and int(s0.diverged_at) == -1
    assert s0.opt_state is not None

    @jax.jit
    def run(problem, s0):
        whole = advance(problem, s0, steps=12, **kw)
        s1, h1 = advance(problem, s0, steps=6, **kw)
        s2, h2 = advance(problem, s1, steps=6, **kw)
        # restarting adam at step 6 gives another run: the pieces must carry its state
        restarted = eqx.tree_at(
            lambda s: s.opt_state, s1, opt.init(eqx.filter(s1.model, eqx.is_array))
        )
        bad = advance(problem, restarted, steps=6, **kw)
        # create(model) without the optimizer: advance initialises its state
        lazy = advance(problem, TrainState.create(s0.model), steps=12, **kw)
        return whole, (s1, h1), (s2, h2), bad, lazy

    (whole, h_whole), (s1, h1), (s2, h2), (s_bad, _), (s_lazy, _) = run(problem, s0)
    assert int(s1.step) == 6 and int(s2.step) == int(whole.step) == 12
    np.testing.assert_array_equal(h1["step"], [3, 6])
    np.testing.assert_array_equal(h2["step"], [9, 12])
    np.testing.assert_array_equal(h_whole["step"], [3, 6, 9, 12])
    assert_histories_close(concat(h1, h2), h_whole, rtol=1e-12, atol_angle=1e-12)
    assert_rel(s2.model.u, whole.model.u, 1e-12)
    leaves2, leaves_whole = jax.tree.leaves(s2.opt_state), jax.tree.leaves(whole.opt_state)
    assert len(leaves2) == len(leaves_whole) > 0
    for a, b in zip(leaves2, leaves_whole, strict=True):
        assert_rel(a, b, 1e-12)
    assert float(jnp.max(jnp.abs(s_bad.model.u - whole.model.u))) > 1e-6
    assert_rel(s_lazy.model.u, whole.model.u, 1e-12)


@pytest.mark.parametrize("R", [2, 6])
def test_advance_in_pieces_lifted(R):
    problem = tubal_problem(14, 3, 3, 1, 30)
    model = sym_model(15, 3, 3, R, alpha=0.1)
    kw = {"log_every": 5, "step_size": 0.05}
    s0 = TrainState.create(model)
    assert s0.opt_state is None

    @jax.jit
    def run(problem, s0):
        whole = advance(problem, s0, steps=20, method="lifted", **kw)
        s1, h1 = advance(problem, s0, steps=5, method="lifted", **kw)
        s2, h2 = advance(problem, s1, steps=15, method="lifted", **kw)
        fac = advance(problem, s0, steps=20, method="factors", **kw)
        return whole, (s1, h1), (s2, h2), fac

    (whole, h_whole), (s1, h1), (s2, h2), (fac, h_fac) = run(problem, s0)
    assert int(s1.step) == 5 and int(s2.step) == int(whole.step) == 20
    np.testing.assert_array_equal(h1["step"], [5])
    np.testing.assert_array_equal(h2["step"], [10, 15, 20])
    assert_histories_close(concat(h1, h2), h_whole, rtol=1e-10, atol_angle=1e-10)
    assert_rel(s2.model.u, whole.model.u, 1e-10)
    # and all are the factors' iterates, and NumPy's
    assert_rel(whole.model.u, fac.model.u, 1e-9)
    assert_histories_close(h_whole, h_fac)
    assert_rel(whole.model.u, np_gd(problem, model.u, 0.05, 20), 1e-9)


# ---------------------------------------------------------------------------------------------
# Divergence of the lifted method
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("R", [3, 9])
@pytest.mark.slow  # compile-heavy: over 5 s on 2 cores (the default run's budget)
def test_lifted_divergence_freezes_at_last_finite_iterate(R):
    n, k, steps, log_every, mu = 4, 3, 12, 2, 1e3
    problem = tubal_problem(17, n, k, 1, 40)
    model = sym_model(18, n, k, R, alpha=1.0)

    @jax.jit
    def run(problem, model):
        kw = {"log_every": log_every, "step_size": mu, "method": "lifted"}
        whole = train(problem, model, steps=steps, **kw)
        if R > n:  # in two pieces
            s1 = advance(problem, TrainState.create(model), steps=steps // 2, **kw)
            return whole, s1, advance(problem, s1[0], steps=steps // 2, **kw)
        kw["method"] = "factors"
        return whole, train(problem, model, steps=steps, **kw)

    (final, hist), *rest = run(problem, model)
    assert bool(hist["diverged"])
    at = int(hist["diverged_at"])
    assert 1 <= at <= steps // 2  # it blows up within a few steps
    assert bool(jnp.all(jnp.isfinite(final.u)))
    assert np.isfinite(float(hist["train_loss"][0]))  # the initial model
    # every record at or after the failed update is of the same (frozen) iterate
    step = np.asarray(hist["step"])
    after = np.flatnonzero(step >= at)
    assert after.size >= 2
    for name in HISTORY_KEYS[:-1]:
        for i in after[1:]:
            np.testing.assert_array_equal(hist[name][i], hist[name][after[0]], err_msg=name)
    # the frozen model is the iterate before the failed update
    assert_rel(final.u, np_gd(problem, model.u, mu, at - 1), 1e-6)
    if R < n:
        # the factors diverge at the same update, frozen at the same iterate
        ((f_fac, h_fac),) = rest
        assert bool(h_fac["diverged"]) and int(h_fac["diverged_at"]) == at
        assert_rel(f_fac.u, final.u, 1e-6)
        return
    (s1, h1), (s2, h2) = rest
    pieces = concat(h1, h2)
    assert_histories_close(pieces, {name: hist[name][1:] for name in HISTORY_KEYS}, rtol=1e-10)
    # a diverged state stays diverged in the next piece, with the same step
    assert at <= steps // 2
    assert bool(s1.diverged) and int(s1.diverged_at) == at
    assert bool(s2.diverged) and int(s2.diverged_at) == at
    # (frozen to rounding: each lifted piece maps the factor to spectral rows and back)
    assert_rel(s2.model.u, s1.model.u, 1e-12)
    assert_rel(s2.model.u, final.u, 1e-12)


# ---------------------------------------------------------------------------------------------
# Metrics
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["tubal", "matrix", "matrix-general"])
def test_metrics(kind, rng):
    """`reference_bases` passed to `metrics` change nothing; the bases against their
    definitions; the metrics at the ground truth and at random tensors."""
    problem = tubal_problem(22, 4, 4, 2, 60) if kind == "tubal" else matrix_problem()
    if kind == "matrix-general":  # the same instance, read as a general (unsymmetric) one
        problem = dataclasses.replace(problem, symmetric=False)
    Xs = rng.standard_normal((3, *problem.shape))
    if kind == "tubal":
        Xs[2] = sym_tensor(rng, 4, 4, width=4)

    @jax.jit
    def run(problem, Xs):
        bases = reference_bases(problem)
        pairs = [(metrics(problem, X), metrics(problem, X, bases=bases)) for X in Xs]
        return bases, metrics(problem, problem.ground_truth), pairs

    bases, m, pairs = run(problem, jnp.asarray(Xs))
    if kind == "tubal":
        assert bases[0].shape == bases[1].shape == (3, 4, 2)  # (k // 2 + 1, n, r)
    else:
        assert bases[0].shape == bases[1].shape == (5, 2)
    # the bases from their definitions, per Fourier slice of the half spectrum for a tubal
    # tensor: the top-r eigenvectors of the Hermitian part of A*(y) for a symmetric ground
    # truth (tubal problems, symmetric matrix ones), its top-r left singular vectors otherwise;
    # the top-r left singular vectors of X*
    aty = (np.asarray(problem.G).T @ np.asarray(problem.y)).reshape(problem.shape)
    assert problem.symmetric_truth == (kind != "matrix-general")
    for basis, target, eig in (
        (bases[0], aty, problem.symmetric_truth),
        (bases[1], np.asarray(problem.ground_truth), False),
    ):
        if kind == "tubal":
            slices = np.moveaxis(np.fft.fft(target, axis=-1)[:, :, : basis.shape[0]], -1, 0)
        else:
            slices = target[None]
        for Q, T in zip(np.asarray(basis).reshape(len(slices), -1, 2), slices, strict=True):
            if eig:
                w, V = np.linalg.eigh(0.5 * (T + T.conj().T))
                ref = V[:, np.argsort(w)[::-1][:2]]
            else:
                ref = np.linalg.svd(T)[0][:, :2]
            np.testing.assert_allclose(Q @ Q.conj().T, ref @ ref.conj().T, atol=1e-10)
    for a, b in pairs:
        assert a.keys() == b.keys()
        for name in a:
            np.testing.assert_allclose(a[name], b[name], rtol=1e-12, atol=1e-14, err_msg=name)
    others = [a for a, _ in pairs]
    assert float(m["angle_truth"]) < 1e-6
    assert float(m["test_error"]) == 0.0
    # the loss of the noise alone (none for the tubal problem)
    np.testing.assert_allclose(
        m["train_loss"], np_loss(problem, problem.ground_truth), rtol=1e-10, atol=1e-25
    )
    assert int(m["rank"]) == problem.rank
    assert 0.0 <= float(m["angle_spectral"]) <= 1.0
    for X, mo in zip(Xs, others, strict=True):
        for name in ("angle_spectral", "angle_truth"):
            assert 0.0 <= float(mo[name]) <= 1.0, name
        assert float(mo["angle_truth"]) > 1e-3  # a random tensor is not aligned
        # the rank: singular values above 1e-3 times the largest, the most over Fourier slices
        sv = np.linalg.svd(np.moveaxis(np.fft.fft(X, axis=-1), -1, 0) if X.ndim == 3 else X)[1]
        assert int(mo["rank"]) == np.max(np.sum(sv > 1e-3 * sv.max(), axis=-1))
