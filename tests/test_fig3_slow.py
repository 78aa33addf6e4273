"""A reduced Fig 3 of Karnik et al. 2025 through `run_sensing_sweep`, against NumPy.

The sweep engine (vmapped, chunked, checkpointed, the ``"lifted"`` method on the Gram matrix of
the problem) runs the paper's setting, ``n = 10, k = 4, r = 3, m = 285`` symmetrised
measurements, ``alpha = 1e-7``, 4000 steps of size ``m * 1e-5``, float64, at widths
``R = 10, 50`` with 3 seeds each. Every run is then redone by plain NumPy written from the
definitions, sharing nothing with factorjax's algebra (no spectral rows, no Gram matrix, no
lifting): the t-product as the circular convolution of tubes, the t-transpose by reindexing,
and the gradient ``(M + M^T) * U`` with ``M = sum_j res_j A_j`` applied to ``U`` itself, on the
same problem data and initial factor.

The test error falls through 1e-1, 1e-2 and 1e-4 within the 4000 steps (the sharp drops of the
figure) in seed 0 at both widths; seeds 1 and 2 fall through 1e-1 and 1e-2 and then stall
between 1e-4 and 1e-3 (still there after 8000 steps), in both implementations. The iterations at
which the test error first crosses each level, on the grid of recorded steps, must be the same
for both implementations, run by run ("never" included), every level must be crossed by some
run of each width, and the final test errors must agree to 1e-6 relative. In float64 the two
agree to about 1e-9 relative over the whole trajectory.
"""

import math

import numpy as np
import pytest

from factorjax.dynamics import RunStore
from factorjax.experiments import sensing_sweep
from factorjax.experiments.sensing_sweep import run_sensing_sweep
from factorjax.experiments.tubal_implicit_reg import Fig3Config

WIDTHS = (10, 50)
SEEDS = 3
LEVELS = (1e-1, 1e-2, 1e-4)

pytestmark = pytest.mark.slow


# ---------------------------------------------------------------------------------------------
# NumPy, from the definitions
# ---------------------------------------------------------------------------------------------


def tprod(A, B):
    """``C[i, j, t] = sum_l sum_s A[i, l, s] B[l, j, (t - s) mod k]``: for each shift ``s``, the
    frontal slice ``A[:, :, s]`` times ``B`` with its tubes rotated by ``s``."""
    k = A.shape[-1]
    C = np.zeros((A.shape[0], B.shape[1], k))
    for s in range(k):
        rotated = B[:, :, (np.arange(k) - s) % k]  # rotated[l, j, t] = B[l, j, (t - s) mod k]
        C += np.tensordot(A[:, :, s], rotated, axes=(1, 0))
    return C


def ttranspose(A):
    """Every frontal slice transposed, slices ``1 .. k-1`` in reverse order."""
    k = A.shape[-1]
    return A.transpose(1, 0, 2)[:, :, (-np.arange(k)) % k]


def loss_and_grad(G, y, U):
    """``1/2 ||A(U * U^T) - y||^2`` and its gradient ``(M + M^T) * U``, ``M = A*(res)``."""
    n, _, k = U.shape
    X = tprod(U, ttranspose(U))
    res = G @ X.ravel() - y  # A(X)_j = <A_j, X>, row j of G is A_j flattened
    M = (G.T @ res).reshape(n, n, k)  # sum_j res_j A_j
    return 0.5 * res @ res, tprod(M + ttranspose(M), U), X


def gradient_descent(G, y, truth, U0, step_size, steps, log_every):
    """The test errors ``||X_t - X*|| / ||X*||`` at ``t = 0, log_every, ..., steps``."""
    U = U0.copy()
    errors = []
    for t in range(steps + 1):
        _, grad, X = loss_and_grad(G, y, U)
        if t % log_every == 0:
            errors.append(np.linalg.norm(X - truth) / np.linalg.norm(truth))
        U = U - step_size * grad
    return np.asarray(errors)


def crossing(steps, curve, level):
    """The first recorded step at which ``curve`` is below ``level`` (nan if never)."""
    below = np.nonzero(curve < level)[0]
    return float(steps[below[0]]) if below.size else math.nan


# ---------------------------------------------------------------------------------------------
# The test
# ---------------------------------------------------------------------------------------------


def test_numpy_gradient_is_the_derivative(rng):
    """The reference's gradient against a central difference of its loss (small sizes)."""
    n, R, k, m = 3, 4, 5, 7
    G = rng.standard_normal((m, n * n * k))
    y = rng.standard_normal(m)
    U = rng.standard_normal((n, R, k))
    D = rng.standard_normal((n, R, k))
    h = 1e-6
    numeric = (loss_and_grad(G, y, U + h * D)[0] - loss_and_grad(G, y, U - h * D)[0]) / (2 * h)
    assert np.isclose(np.sum(loss_and_grad(G, y, U)[1] * D), numeric, rtol=1e-7)


def test_reduced_fig3_against_numpy(tmp_path, x64):
    import jax

    # `run_sensing_sweep` refuses float64 without x64; the fixture's context manager sets it.
    assert jax.config.jax_enable_x64
    cfg = Fig3Config(widths=WIDTHS, seeds=SEEDS)
    assert (cfg.n, cfg.k, cfg.rank, cfg.measurements, cfg.alphas, cfg.symmetric) == (
        10, 4, 3, (285,), (1e-7,), True,
    )  # fmt: skip
    assert (cfg.steps, cfg.log_every, cfg.float64) == (4000, 40, True)
    records = run_sensing_sweep("tubal-fig3", cfg, tmp_path, quiet=True)
    assert len(records) == len(WIDTHS) * SEEDS
    store = RunStore(tmp_path)
    reached = {}

    for record in records:
        width, m, alpha, seed = (record[key] for key in ("width", "m", "alpha", "seed"))
        where = f"R={width}, seed={seed}"
        assert record["status"] == "ok", where
        trajectory = store.load_trajectory(record["run_id"])
        steps, ours = trajectory["step"], trajectory["test_error"]
        np.testing.assert_array_equal(steps, np.arange(0, cfg.steps + 1, cfg.log_every))

        problem = sensing_sweep._problem(cfg, m, seed)
        model = sensing_sweep._init(cfg, width, seed, alpha)
        assert problem.G.dtype == model.u.dtype == np.float64, where
        G, y, truth, U0 = (
            np.asarray(a, np.float64) for a in (problem.G, problem.y, problem.ground_truth, model.u)
        )
        assert U0.shape == (cfg.n, width, cfg.k)
        reference = gradient_descent(G, y, truth, U0, cfg.step_size(m), cfg.steps, cfg.log_every)

        for level in LEVELS:
            got, want = crossing(steps, ours, level), crossing(steps, reference, level)
            assert got == want or (math.isnan(got) and math.isnan(want)), (
                f"{where}: test error {level:g} first at step {got}, NumPy at {want}"
            )
            reached.setdefault(width, set()).update([level] if not math.isnan(want) else [])
        np.testing.assert_allclose(ours[-1], reference[-1], rtol=1e-6, err_msg=where)
        np.testing.assert_allclose(ours, reference, rtol=1e-6, err_msg=where)  # ~1e-9 seen
        np.testing.assert_allclose(record["final"]["test_error"], ours[-1], rtol=0, atol=0)

    # The figure's drops: every level is reached within the steps by some run of each width.
    assert reached == {width: set(LEVELS) for width in WIDTHS}
