"""Tests of the training loop `factorjax.dynamics.train`.

References are written here from the definitions: the gradient of ``0.5 ||A(U * U^T) - y||^2``
with respect to ``U`` is ``(A*(res) + A*(res)^T) * U`` (t-products), a plain gradient-descent
loop in Python, and an optax loop in Python. Tolerances: float32 iterates after ``s`` steps of
a contraction-like map differ by rounding only, a few hundred eps relative.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from factorjax import SymmetricTubalLowRank, tubal
from factorjax.dynamics.metrics import metrics
from factorjax.dynamics.problems import TubalSensing
from factorjax.dynamics.train import train

EPS32 = float(np.finfo(np.float32).eps)
N, K, R_TRUE, WIDTH, M = 5, 4, 2, 5, 60


def small_problem(seed=0, **kwargs):
    return TubalSensing.make(N, K, R_TRUE, M, key=jax.random.key(seed), **kwargs)


def small_model(seed=1, alpha=1e-2):
    return SymmetricTubalLowRank.init(
        N, K, WIDTH, key=jax.random.key(seed), init="small", alpha=alpha
    )


def naive_grad(problem, U):
    """(A*(res) + A*(res)^T) * U, from the definition of the loss."""
    X = tubal.tprod(U, tubal.ttranspose(U))
    G = problem.adjoint(problem.measure(X) - problem.y)
    return tubal.tprod(G + tubal.ttranspose(G), U)


def test_gradient_descent_matches_python_loop():
    problem, model = small_problem(), small_model()
    lr, steps = 0.05, 6
    final, hist = jax.jit(lambda p, m: train(p, m, steps=steps, log_every=2, step_size=lr))(
        problem, model
    )
    U = model.u
    for _ in range(steps):
        U = U - lr * naive_grad(problem, U)
    scale = float(jnp.max(jnp.abs(U)))
    np.testing.assert_allclose(final.u, U, rtol=0, atol=200 * EPS32 * scale)
    assert hist["step"].tolist() == [0, 2, 4, 6]
    assert not bool(hist["diverged"]) and int(hist["diverged_at"]) == -1


def test_optax_path_matches_manual_optax_loop():
    problem, model = small_problem(), small_model()
    opt = optax.adam(1e-2)
    final, _ = train(problem, model, steps=4, log_every=4, optimizer=opt)
    U, state = model.u, opt.init(model.u)
    for _ in range(4):
        upd, state = opt.update(naive_grad(problem, U), state, U)
        U = optax.apply_updates(U, upd)
    np.testing.assert_allclose(final.u, U, rtol=0, atol=200 * EPS32 * float(jnp.abs(U).max()))


@pytest.mark.slow  # a small recovery run to convergence
def test_small_init_recovers_ground_truth():
    """The implicit bias the runner exists to show, on a tiny instance: error falls well below 1."""
    problem = small_problem()
    _, hist = jax.jit(lambda p, m: train(p, m, steps=600, log_every=100, step_size=0.1))(
        problem, small_model(alpha=1e-3)
    )
    assert float(hist["test_error"][0]) > 0.99  # starts near 0
    assert float(hist["test_error"][-1]) < 0.05
    assert float(hist["train_loss"][-1]) < 1e-3 * float(hist["train_loss"][0])
    assert int(hist["rank"][-1]) == R_TRUE


def test_metrics_against_definitions():
    problem = small_problem()
    X = small_model(alpha=0.5).to_dense()
    m = metrics(problem, X)
    Xs = np.asarray(problem.ground_truth, np.float64)
    np.testing.assert_allclose(
        m["test_error"], np.linalg.norm(np.asarray(X) - Xs) / np.linalg.norm(Xs), rtol=1e-5
    )
    # Largest principal angle, per slice of numpy's FFT, from projections.
    Xh, Th = np.fft.fft(np.asarray(X, np.float64), axis=-1), np.fft.fft(Xs, axis=-1)
    sines = []
    for j in range(K // 2 + 1):
        qa = np.linalg.svd(Th[:, :, j])[0][:, :R_TRUE]
        qb = np.linalg.svd(Xh[:, :, j])[0][:, :R_TRUE]
        sines.append(np.linalg.norm(qb - qa @ (qa.conj().T @ qb), 2))
    np.testing.assert_allclose(m["angle_truth"], max(sines), atol=1e-4)
    assert float(metrics(problem, problem.ground_truth)["angle_truth"]) < 1e-3


def test_vmapped_sweep_equals_runs_one_by_one():
    problem = small_problem()
    alphas = jnp.asarray([1e-3, 1e-2, 1e-1])
    keys = jax.random.split(jax.random.key(5), 3)

    def one(key, alpha, lr):
        model = SymmetricTubalLowRank.init(N, K, WIDTH, key=key, init="small", alpha=alpha)
        return train(problem, model, steps=20, log_every=10, step_size=lr)

    lrs = jnp.asarray([0.05, 0.1, 0.02])
    finals, hist = jax.jit(jax.vmap(one))(keys, alphas, lrs)
    for i in range(3):
        f, h = jax.jit(one)(keys[i], alphas[i], lrs[i])
        np.testing.assert_allclose(finals.u[i], f.u, rtol=0, atol=100 * EPS32)
        np.testing.assert_allclose(hist["test_error"][i], h["test_error"], rtol=1e-5)


def test_diverging_run_is_recorded_and_others_go_on():
    problem = small_problem()
    keys = jax.random.split(jax.random.key(7), 2)

    def one(key, lr):
        model = SymmetricTubalLowRank.init(N, K, WIDTH, key=key, init="small", alpha=1.0)
        return train(problem, model, steps=40, log_every=10, step_size=lr)

    finals, hist = jax.jit(jax.vmap(one))(keys, jnp.asarray([1e3, 0.01]))
    assert bool(hist["diverged"][0]) and not bool(hist["diverged"][1])
    assert 1 <= int(hist["diverged_at"][0]) <= 40
    assert bool(jnp.all(jnp.isfinite(finals.u[0])))  # frozen at its last finite value
    assert bool(jnp.all(jnp.isfinite(hist["train_loss"][1])))
    # The healthy run is unaffected by its diverging neighbour.
    f, _ = jax.jit(one)(keys[1], 0.01)
    np.testing.assert_allclose(finals.u[1], f.u, rtol=0, atol=100 * EPS32)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"steps": 10, "log_every": 3, "step_size": 0.1}, "multiple of `log_every`"),
        ({"steps": 10, "log_every": 5}, "exactly one of `step_size`"),
        ({"steps": 10, "log_every": 5, "step_size": 0.1, "optimizer": optax.sgd(0.1)}, "exactly"),
        ({"steps": 0, "log_every": 1, "step_size": 0.1}, "steps"),
    ],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        train(small_problem(), small_model(), **kwargs)


def test_stop_loss_freezes_a_run_once_its_loss_is_reached():
    """A run stops at the first update where the loss is at or below `stop_loss`; until then it
    takes the iterates of a plain run, and under vmap each run stops on its own."""
    problem, model = small_problem(), small_model(alpha=0.3)
    lr, steps = 0.05, 40

    def one(stop):
        return train(
            problem,
            model,
            steps=steps,
            log_every=1,
            step_size=lr,
            method="factors",
            stop_loss=stop,
        )

    _, plain = jax.jit(
        lambda m: train(problem, m, steps=steps, log_every=1, step_size=lr, method="factors")
    )(model)
    loss = np.asarray(plain["train_loss"])
    assert loss[-1] < loss[0] / 10  # it does train
    stops = jnp.asarray([loss[10] * 1.0001, loss[25] * 1.0001, 0.0])
    _, hist = jax.jit(jax.vmap(one))(stops)
    for j, stop in enumerate(np.asarray(stops)):
        got = np.asarray(hist["train_loss"][j])
        below = np.nonzero(loss <= stop)[0]
        first = int(below[0]) if below.size else steps + 1
        # same iterates until the first record at or below the stop, frozen after it
        np.testing.assert_allclose(got[: first + 1], loss[: first + 1], rtol=1e-5)
        if first <= steps:
            np.testing.assert_array_equal(got[first:], got[first])
            assert got[-1] > loss[-1]
    assert not bool(np.any(hist["diverged"]))


def test_stop_loss_ends_the_loop_at_the_stopped_iterate_within_a_block():
    """With one record for all steps, the loop that ends early (``while_loop``) leaves each run
    at the iterate where its loss first reached the stop: the iterate of a plain run of that
    many updates, alone and under vmap beside runs that stop later or never."""
    problem, model = small_problem(), small_model(alpha=0.3)
    lr, steps = 0.05, 40

    def run(m, n, stop=None):
        return train(problem, m, steps=n, log_every=n, step_size=lr, method="factors",
                     stop_loss=stop)  # fmt: skip

    _, plain = jax.jit(lambda m: run(m, steps))(model)
    _, each = jax.jit(lambda m: train(problem, m, steps=steps, log_every=1, step_size=lr,
                                      method="factors"))(model)  # fmt: skip
    loss = np.asarray(each["train_loss"])
    stops = [loss[10] * 1.0001, loss[25] * 1.0001, 0.0]
    firsts = [int(np.nonzero(loss <= s)[0][0]) if np.any(loss <= s) else steps for s in stops]
    assert firsts[:2] == [10, 25]
    batched, hist = jax.jit(jax.vmap(lambda s: run(model, steps, s)))(jnp.asarray(stops))
    for j, (stop, first) in enumerate(zip(stops, firsts, strict=True)):
        want = run(model, first)[0] if first else model
        alone = jax.jit(lambda m, s: run(m, steps, s)[0])(model, stop)
        got = jax.tree.map(lambda a, j=j: a[j], batched)
        leaves = (jax.tree.leaves(t) for t in (want, alone, got))
        for a, b, c in zip(*leaves, strict=True):
            np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-7)
            np.testing.assert_allclose(c, a, rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(hist["train_loss"][j, -1], loss[first], rtol=1e-5)
    np.testing.assert_allclose(plain["train_loss"][-1], loss[-1], rtol=1e-5)


def test_stop_loss_is_refused_by_the_lifted_method_and_when_negative():
    with pytest.raises(ValueError, match="`stop_loss` needs method='factors'"):
        train(
            small_problem(),
            small_model(),
            steps=2,
            log_every=1,
            step_size=0.1,
            method="lifted",
            stop_loss=1e-3,
        )
    with pytest.raises(ValueError, match="`stop_loss` must be a float >= 0"):
        train(
            small_problem(),
            small_model(),
            steps=2,
            log_every=1,
            step_size=0.1,
            method="factors",
            stop_loss=-1.0,
        )
