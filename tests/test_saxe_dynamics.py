"""The saxe-dynamics experiment: its gradient against jax.grad and finite differences, the
closed form against a naive ODE integration, the simulation against the closed form at small
step (tolerance from the step), learning-time ordering, resume, and refusals."""

import itertools
import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from factorjax.experiments.saxe_dynamics import (
    SaxeDynamicsConfig,
    closed_form,
    correlation_grads,
    data_loss,
    first_order_deviation,
    half_time,
    run_saxe_dynamics,
)

SMALL = dict(strengths=(3.0, 1.5, 0.75), n_in=5, hidden=4, n_out=4, a0s=(1e-3,), seeds=2,
             lr=2e-3, time=10.0, log_every=10, inits=("aligned", "random"))  # fmt: skip


def naive_loss(w1, w2, x, y):
    """``1/(2P) sum_mu sum_i (y_i mu - sum_j sum_k W2_ij W1_jk x_k mu)^2`` by loops."""
    total = 0.0
    for mu in range(x.shape[1]):
        for i in range(w2.shape[0]):
            pred = sum(w2[i, j] * w1[j, k] * x[k, mu] for j in range(w2.shape[1])
                       for k in range(w1.shape[1]))  # fmt: skip
            total += (y[i, mu] - pred) ** 2
    return 0.5 * total / x.shape[1]


def test_gradient_against_jax_grad_and_finite_differences(x64, rng):
    n_in, hidden, n_out, p = 3, 2, 3, 5
    q = np.linalg.qr(rng.normal(size=(p, p)))[0]
    x = math.sqrt(p) * q[:n_in]  # whitened: x x^T / P = I
    np.testing.assert_allclose(x @ x.T / p, np.eye(n_in), atol=1e-12)
    sigma = rng.normal(size=(n_out, n_in))
    y = sigma @ x
    w1, w2 = rng.normal(size=(hidden, n_in)), rng.normal(size=(n_out, hidden))
    g1, g2 = correlation_grads(jnp.asarray(w1), jnp.asarray(w2), jnp.asarray(sigma))
    j1, j2 = jax.grad(data_loss, argnums=(0, 1))(jnp.asarray(w1), jnp.asarray(w2), x, y)
    np.testing.assert_allclose(g1, j1, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(g2, j2, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(data_loss(w1, w2, x, y), naive_loss(w1, w2, x, y), rtol=1e-12)
    h = 1e-6  # central differences: error ~ h^2 * third derivative, far below 1e-6
    for w, g, which in ((w1, g1, 0), (w2, g2, 1)):
        fd = np.zeros_like(w)
        for idx in np.ndindex(*w.shape):
            wp, wm = w.copy(), w.copy()
            wp[idx] += h
            wm[idx] -= h
            args_p = (wp, w2) if which == 0 else (w1, wp)
            args_m = (wm, w2) if which == 0 else (w1, wm)
            fd[idx] = (naive_loss(*args_p, x, y) - naive_loss(*args_m, x, y)) / (2 * h)
        np.testing.assert_allclose(g, fd, rtol=1e-6, atol=1e-8)


def test_closed_form_solves_the_mode_equation():
    """RK4 on du/dt = 2u(s - u), written here, against the closed form."""
    for s, u0 in ((3.0, 1e-3), (0.5, 1e-2)):
        dt, u, t = 1e-3, u0, 0.0
        worst = 0.0
        for _ in range(int(2 * half_time(s, u0) / dt)):

            def f(v, s=s):
                return 2 * v * (s - v)

            k1 = f(u)
            k2 = f(u + dt / 2 * k1)
            k3 = f(u + dt / 2 * k2)
            k4 = f(u + dt * k3)
            u += dt / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
            t += dt
            worst = max(worst, abs(u - float(closed_form(t, s, u0))))
        assert worst < 1e-9 * s
        # the textbook form s e^{2st} / (e^{2st} - 1 + s/u0) at a moderate time
        e = math.exp(2 * s * 0.7)
        np.testing.assert_allclose(closed_form(0.7, s, u0), s * e / (e - 1 + s / u0), rtol=1e-12)
        np.testing.assert_allclose(closed_form(half_time(s, u0), s, u0), s / 2, rtol=1e-12)
        np.testing.assert_allclose(closed_form(0.0, s, u0), u0, rtol=1e-12)


@pytest.fixture(scope="module")
def small_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("saxe")
    cfg = SaxeDynamicsConfig(**SMALL)
    with jax.enable_x64(True):
        records = run_saxe_dynamics(cfg, out)
    return cfg, out, records


def _of(records, init):
    return [r for r in records if r["init"] == init]


def test_simulation_follows_the_closed_form_at_small_step(small_run):
    cfg, _, records = small_run
    assert len(records) == 4 and all(r["status"] == "ok" for r in records)
    for r in _of(records, "aligned"):
        f = r["final"]
        assert f["max_leak"] < 1e-10  # the modes stay decoupled
        for i, s in enumerate(cfg.strengths):
            # To first order in lr the deviation is `first_order_deviation`; the next order of
            # the same expansion is smaller by a factor ~ lr s ln(s/u0); allow twice that.
            pred = f[f"pred_dev_{i}"]
            t = np.linspace(0, cfg.time, 4001)
            np.testing.assert_allclose(
                pred, np.abs(first_order_deviation(t, s, r["a0"], cfg.lr)).max(), rtol=1e-2
            )
            rel = 2 * cfg.lr * s * math.log(s / r["a0"])
            assert f[f"max_dev_{i}"] <= pred * (1 + rel)
            assert f[f"max_dev_{i}"] >= pred * (1 - rel)  # the deviation is the predicted one
            assert pred < 5 * cfg.lr * s * s  # and it is small: O(lr)


def test_learning_times_are_ordered_and_match(small_run):
    cfg, _, records = small_run
    for r in _of(records, "aligned"):
        f = r["final"]
        times = [f[f"t_half_{i}"] for i in range(len(cfg.strengths))]
        assert all(a < b for a, b in itertools.pairwise(times))  # stronger modes first
        for i, s in enumerate(cfg.strengths):
            # GD lags the flow by lr (ln(s/u0)/4 - 3 ln 2 / 4) in time, to first order
            lag = cfg.lr * (math.log(s / r["a0"]) / 4 + 1)
            assert abs(times[i] - half_time(s, r["a0"])) <= lag


def test_resume_and_figures(small_run, capsys):
    cfg, out, _ = small_run
    lines = (out / "runs.jsonl").read_text()
    assert len(lines.splitlines()) == 4
    assert (out / "saxe_dynamics.png").stat().st_size > 10_000
    assert "t_half closed form" in (out / "results.md").read_text()
    with jax.enable_x64(True):
        run_saxe_dynamics(cfg, out)  # nothing to redo
    assert "runs x" not in capsys.readouterr().out
    assert (out / "runs.jsonl").read_text() == lines
    stored = json.loads((out / "config.json").read_text())
    assert stored["config"]["lr"] == cfg.lr


def test_random_small_init_follows_a_shifted_sigmoid(small_run):
    """From random small init the modes start coupled and with either sign, yet each is
    learned along the closed-form sigmoid, shifted in time (one fitted parameter, its
    effective u0), in order of strength, and what is off the modes stays small at the end."""
    cfg, _, records = small_run
    runs = _of(records, "random")
    assert len(runs) == 2
    for r in runs:
        f = r["final"]
        # coupled while the modes rise; at the end what is off the modes is of the init's
        # size (directions without a target keep their small random start)
        assert f["max_leak"] > 10 * r["a0"] > f["final_leak"]
        times = [f[f"t_half_{i}"] for i in range(len(cfg.strengths))]
        assert all(a < b for a, b in itertools.pairwise(times))
        for i in range(len(cfg.strengths)):
            u0 = f[f"u0_{i}"]
            assert 0 < u0 < 10 * r["a0"]  # the effective start is of the init's size
            # the gap to the fitted sigmoid: the step's first-order part, plus the size of
            # the initial coupling (entries of order u0)
            assert f[f"max_dev_{i}"] <= 2 * f[f"pred_dev_{i}"] + 10 * r["a0"]


@pytest.mark.parametrize(
    "kwargs, words",
    [
        (dict(strengths=(1.0, 2.0)), ["`strengths`", "decreasing"]),
        (dict(a0s=(0.0,)), ["`a0s`", "0.0"]),
        (dict(a0s=(1.0,)), ["`a0s`", "min(strengths)"]),
        (dict(lr=0.5), ["`lr`", "0.5"]),
        (dict(hidden=2), ["`hidden`", "len(strengths)"]),
        (dict(time=-1.0), ["`time`", "-1.0"]),
        (dict(inits=("orthogonal",)), ["`inits`", "orthogonal", "'random'"]),
    ],
)
def test_bad_config_is_refused_by_name(kwargs, words):
    with pytest.raises(ValueError) as e:
        SaxeDynamicsConfig(**kwargs)
    for w in words:
        assert w in str(e.value)
