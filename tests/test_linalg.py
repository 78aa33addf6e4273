"""Tests of `factorjax.linalg` against NumPy references written from the definitions.

References (float64 NumPy, never the module under test):

- singular values, best rank-r approximations: ``np.linalg.svd``;
- ``rank_for_tolerance``: a brute-force search over ``r`` of the relative Frobenius error of the
  explicitly reconstructed truncation (matrix, or tubal tensor truncated in all ``k`` Fourier
  slices and transformed back with ``np.fft.ifft``);
- effective rank (Roy and Vetterli, 2007): ``exp(-sum p log p)`` with ``p = s / sum(s)``;
- stable rank: ``||W||_F^2 / ||W||_2^2`` with NumPy's norms;
- principal angles: orthonormal bases by ``np.linalg.qr``, cosines by the SVD of
  ``Qa^H Qb`` and sines by the SVD of ``Qb - Qa Qa^H Qb``, and subspaces built with known angles;
- tubal versions: the same on each slice ``0 .. k // 2`` of ``np.fft.fft`` along the tube axis.

Tolerances (float32, ``eps = 2^-23``). A Householder SVD of an ``m x n`` matrix is backward
stable: the computed singular values are exact for ``W + E`` with ``||E||_2 <= max(m, n) eps
||W||_2`` (Golub and Van Loan, 5.4.8), so by Weyl each singular value moves by at most
``delta = max(m, n) eps s_1``. A rank-r truncation moves by at most ``delta (1 + 2 s_1 / gap)``
with ``gap = s_r - s_{r+1}`` (Wedin's sin-theta theorem). For a tubal tensor, the transform
along the tube axis (sums of ``k`` terms) adds ``k eps`` times the tube sums of ``|x|`` to every
slice entry. Each spectral quantity's bound below is the first-order propagation of these
perturbations through its formula, plus the rounding of the formula itself.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from factorjax import linalg

EPS32 = float(np.finfo(np.float32).eps)
EPS64 = float(np.finfo(np.float64).eps)


# ---------------------------------------------------------------------------------------------
# Naive references
# ---------------------------------------------------------------------------------------------


def orth(rng, n, m, complex_=False):
    """An ``n x m`` matrix with orthonormal columns."""
    g = rng.standard_normal((n, m))
    if complex_:
        g = g + 1j * rng.standard_normal((n, m))
    return np.linalg.qr(g)[0]


def with_spectrum(rng, m, n, s):
    """A float32 ``m x n`` matrix with singular values ``s`` (up to float32 rounding)."""
    s = np.asarray(s, np.float64)
    return ((orth(rng, m, len(s)) * s) @ orth(rng, n, len(s)).T).astype(np.float32)


def as64(W):
    """float64 (or complex128) copy of ``W``."""
    W = np.asarray(W)
    return W.astype(np.complex128 if np.iscomplexobj(W) else np.float64)


def np_svals(W):
    return np.linalg.svd(as64(W), compute_uv=False)


def best_rank(W, r):
    """Eckart-Young: the best rank-r approximation from NumPy's SVD."""
    U, s, Vh = np.linalg.svd(np.asarray(W, np.float64), full_matrices=False)
    return (U[:, :r] * s[:r]) @ Vh[:r]


def np_effective_rank(s):
    p = s / s.sum()
    p = p[p > 0]
    return float(np.exp(-np.sum(p * np.log(p))))


def np_stable_rank(W):
    W = as64(W)
    return float(np.sum(np.abs(W) ** 2) / np.linalg.norm(W, 2) ** 2)


def np_principal_angles(A, B):
    """Ascending principal angles from QR bases, cosines and sines (complex input allowed)."""
    Qa, Qb = np.linalg.qr(A)[0], np.linalg.qr(B)[0]
    if Qa.shape[1] < Qb.shape[1]:
        Qa, Qb = Qb, Qa
    M = Qa.conj().T @ Qb
    cos = np.linalg.svd(M, compute_uv=False)  # descending
    sin = np.sort(np.linalg.svd(Qb - Qa @ M, compute_uv=False))  # ascending
    return np.arctan2(sin, cos)


def fft_slices(A):
    """The Fourier slices 0 .. k // 2 of ``A`` (n1, n2, k): complex (k // 2 + 1, n1, n2)."""
    k = A.shape[-1]
    return np.moveaxis(np.fft.fft(np.asarray(A, np.float64), axis=-1), -1, -3)[: k // 2 + 1]


def tubal_truncation(A, r):
    """Truncate the SVD of every one of the k Fourier slices to rank r; back by ifft."""
    spec = np.moveaxis(np.fft.fft(np.asarray(A, np.float64), axis=-1), -1, 0)
    U, s, Vh = np.linalg.svd(spec, full_matrices=False)
    approx = (U[..., :r] * s[..., None, :r]) @ Vh[..., :r, :]
    out = np.fft.ifft(np.moveaxis(approx, 0, -1), axis=-1)
    assert np.max(np.abs(out.imag)) < 1e-10
    return out.real


# ---------------------------------------------------------------------------------------------
# Error bounds
# ---------------------------------------------------------------------------------------------


def sval_delta(W):
    """Weyl bound ``max(m, n) eps ||W||_2`` on the error of each computed singular value."""
    return max(W.shape[-2:]) * EPS32 * np_svals(W)[0]


def erank_tol(s, delta, eps=EPS32):
    """First-order bound on the error of ``exp(H(s / sum s))`` when each ``s_i`` moves by at
    most ``delta``, plus the rounding of the formula (n + 3 roundings of terms ``<= 1 + |log p|``).
    Terms whose reference value is below the perturbation level are bounded by
    ``g(dp) = -dp log dp`` (g increases on [0, 1/e])."""
    s = np.asarray(s, np.float64)
    n, total = len(s), s.sum()
    p = s / total
    dp = (delta + p * n * delta) / total
    big = s > delta
    dH = np.sum(np.abs(1 + np.log(p[big])) * dp[big])
    small_dp = np.minimum(dp[~big] + p[~big], 1 / math.e)
    dH += np.sum(-small_dp * np.log(small_dp))
    L = np.max(np.abs(np.log(p[big])))
    dH += (n + 3) * eps * (1 + L)
    return np_effective_rank(s) * math.expm1(dH)


def srank_tol(s, delta):
    """First-order bound on the error of ``sum s^2 / s_1^2`` when each ``s_i`` moves by at most
    ``delta``, plus the rounding of the sum."""
    s = np.asarray(s, np.float64)
    n = len(s)
    rel = (2 * delta * s.sum() + n * delta**2) / np.sum(s**2)
    rel += (2 * delta * s[0] + delta**2) / s[0] ** 2 + (n + 2) * EPS32
    return float(np.sum(s**2) / s[0] ** 2 * rel)


def angle_tol(A, B, eps=EPS32):
    """Bound on the principal-angle error of bases computed by Householder QR.

    The computed ``Qa`` spans the columns of ``A + E`` with ``||E|| <= m p eps ||A||``, a subspace
    at angle ``<= m p eps cond(A)`` from that of ``A``; principal angles move by at most the angles
    between the perturbed subspaces. Orthogonality loss of the bases (``m p eps``), the product
    ``Qa^H Qb`` and the two small SVDs add ``m (p + q + 2) eps``.
    """
    m, p = A.shape[-2:]
    q = B.shape[-1]
    sa, sb = np_svals(A), np_svals(B)
    return eps * m * (p * sa[0] / sa[-1] + q * sb[0] / sb[-1] + p + q + 2)


# ---------------------------------------------------------------------------------------------
# singular_values and truncated_svd
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(6, 4), (4, 6), (5, 5), (3, 6, 4)])
def test_singular_values_match_numpy(rng, shape):
    W = rng.standard_normal(shape).astype(np.float32)
    s = linalg.singular_values(W)
    assert s.shape == (*shape[:-2], min(shape[-2:]))
    assert s.dtype == jnp.float32
    for idx in np.ndindex(*shape[:-2]):
        np.testing.assert_allclose(s[idx], np_svals(W[idx]), rtol=0, atol=sval_delta(W[idx]))
        assert np.all(np.diff(np.asarray(s[idx])) <= 0)  # descending


def test_singular_values_of_integer_input(rng):
    W = rng.integers(-3, 4, (5, 3))
    s = linalg.singular_values(W)
    assert jnp.issubdtype(s.dtype, jnp.floating)
    np.testing.assert_allclose(s, np_svals(W), rtol=0, atol=sval_delta(W))


SPECTRUM = np.array([8.0, 5.0, 3.0, 1.5, 0.5])


@pytest.mark.parametrize("m, n", [(7, 5), (5, 9)])
@pytest.mark.parametrize("r", [1, 2, 3, 5])
def test_truncated_svd_is_best_rank_r(rng, m, n, r):
    W = with_spectrum(rng, m, n, SPECTRUM)
    U, s, Vh = linalg.truncated_svd(W, r)
    assert U.shape == (m, r) and s.shape == (r,) and Vh.shape == (r, n)
    s_ref = np_svals(W)
    delta = sval_delta(W)
    np.testing.assert_allclose(s, s_ref[:r], rtol=0, atol=delta)
    # orthonormal factors: Householder SVD loses orthogonality by O(max(m, n) eps)
    for Q in (np.asarray(U, np.float64), np.asarray(Vh, np.float64).T):
        np.testing.assert_allclose(Q.T @ Q, np.eye(r), rtol=0, atol=max(m, n) * EPS32 * 4)
    gap = s_ref[r - 1] - s_ref[r] if r < len(s_ref) else np.inf
    tol = delta * (1 + 2 * s_ref[0] / gap)
    approx = (np.asarray(U, np.float64) * np.asarray(s, np.float64)) @ np.asarray(Vh, np.float64)
    np.testing.assert_allclose(approx, best_rank(W, r), rtol=0, atol=tol)


def test_truncated_svd_default_keeps_all_and_batches(rng):
    W = rng.standard_normal((2, 6, 4)).astype(np.float32)
    U, s, Vh = linalg.truncated_svd(W)
    assert U.shape == (2, 6, 4) and s.shape == (2, 4) and Vh.shape == (2, 4, 4)
    for b in range(2):
        recon = (np.asarray(U[b], np.float64) * np.asarray(s[b], np.float64)) @ np.asarray(Vh[b])
        np.testing.assert_allclose(recon, W[b], rtol=0, atol=2 * sval_delta(W[b]))
    # a NumPy integer rank is a valid rank
    _, s2, _ = linalg.truncated_svd(W, np.int64(2))
    assert s2.shape == (2, 2)


# ---------------------------------------------------------------------------------------------
# rank_for_tolerance
# ---------------------------------------------------------------------------------------------


def brute_force_rank(errors, rtol):
    """Smallest r >= 1 with errors[r - 1] <= rtol (errors[r - 1] is the error at rank r)."""
    for r, e in enumerate(errors, start=1):
        if e <= rtol:
            return r
    raise AssertionError("no rank meets the tolerance")


def midpoints(errors):
    """Tolerances strictly between consecutive errors (away from rounding at the thresholds),
    plus one above the largest."""
    errors = np.asarray(errors)
    mids = list((errors[:-1] + errors[1:]) / 2)
    return [*mids, 1.5 * errors[0]]


def test_rank_for_tolerance_brute_force_matrix(rng):
    W = rng.standard_normal((7, 6)) * np.array([5.0, 3, 2, 1, 0.5, 0.1])  # distinct scales
    s = np_svals(W)
    errors = [np.linalg.norm(W - best_rank(W, r)) / np.linalg.norm(W) for r in range(1, 7)]
    assert np.all(np.diff(errors) < 0)
    for rtol in midpoints(errors):
        expected = brute_force_rank(errors, rtol)
        assert linalg.rank_for_tolerance(s, rtol) == expected
        assert linalg.rank_for_tolerance(jnp.asarray(s, jnp.float32), rtol) == expected
    # every rank from 1 to 6 was hit by some tolerance
    assert {brute_force_rank(errors, t) for t in midpoints(errors)} == set(range(1, 7))


def test_rank_for_tolerance_extremes():
    s = np.array([3.0, 2.0, 1.0])
    assert linalg.rank_for_tolerance(s, 0.0) == 3  # exact: full rank
    assert linalg.rank_for_tolerance(s, 0) == 3  # an int tolerance is valid
    assert linalg.rank_for_tolerance(s, 1.0) == 1  # error of rank 1 is below ||W||
    assert linalg.rank_for_tolerance(np.array([2.0, 0.0, 0.0]), 0.0) == 1  # exact rank 1
    assert linalg.rank_for_tolerance(np.zeros(3), 0.5) == 1  # zero matrix: at least 1
    r = linalg.rank_for_tolerance(s, 0.5)
    assert isinstance(r, int) and r == 2  # sqrt(1/14) = 0.27 <= 0.5 < sqrt(5/14) = 0.60


def tensor_with_slice_spectra(rng, n1, n2, k, svals):
    """A real (n1, n2, k) tensor whose Fourier slice j has singular values ``svals[j]``
    (``svals`` is (k // 2 + 1, m)); slice k - j is the conjugate of slice j, and the real slices
    (0 and k / 2) are built real, so the tensor is real."""
    svals = np.asarray(svals, np.float64)
    spec = np.zeros((k, n1, n2), np.complex128)
    for j, s in enumerate(svals):
        real = j == 0 or 2 * j == k
        m = len(s)
        spec[j] = (orth(rng, n1, m, not real) * s) @ orth(rng, n2, m, not real).conj().T
        if not real:
            spec[k - j] = spec[j].conj()
    A = np.fft.ifft(np.moveaxis(spec, 0, -1), axis=-1)
    assert np.max(np.abs(A.imag)) < 1e-12
    return A.real


@pytest.mark.parametrize("k", [1, 4, 5])
def test_rank_for_tolerance_brute_force_tubal_weights(rng, k):
    n1, n2 = 5, 4
    # slice 0 has a flat spectrum, the others a steep one: counting slices 1 .. k // 2 once
    # instead of twice changes the answer, so the weights are exercised
    flat, steep = [4.0, 3.5, 3.0, 2.5], [4.0, 1.0, 0.3, 0.1]
    svals = [flat] + [steep] * (k // 2)
    A = tensor_with_slice_spectra(rng, n1, n2, k, svals)
    s_half = np.linalg.svd(fft_slices(A), compute_uv=False)
    np.testing.assert_allclose(s_half, svals, atol=1e-12)
    # the multiplicity of each slice of the half spectrum in the full spectrum
    weights = np.array([1.0 if j == 0 or 2 * j == k else 2.0 for j in range(k // 2 + 1)])
    assert weights.sum() == k
    errors = [np.linalg.norm(A - tubal_truncation(A, r)) / np.linalg.norm(A) for r in range(1, 5)]
    for rtol in midpoints(errors):
        assert linalg.rank_for_tolerance(s_half, rtol, weights) == brute_force_rank(errors, rtol)
    if k > 2:
        grid = np.linspace(0.01, 0.9, 90)
        unweighted = [linalg.rank_for_tolerance(s_half, t) for t in grid]
        weighted = [linalg.rank_for_tolerance(s_half, t, weights) for t in grid]
        assert unweighted != weighted


@pytest.mark.parametrize("rtol", [float("nan"), float("inf"), -0.1, -1])
def test_rank_for_tolerance_bad_rtol(rtol):
    with pytest.raises(ValueError, match="rtol"):
        linalg.rank_for_tolerance(np.ones(3), rtol)


@pytest.mark.parametrize("rtol", ["0.1", None, True])
def test_rank_for_tolerance_rtol_type(rtol):
    with pytest.raises(TypeError, match="rtol"):
        linalg.rank_for_tolerance(np.ones(3), rtol)


def test_rank_for_tolerance_under_jit_is_a_clear_error():
    @jax.jit
    def f(W):
        return linalg.rank_for_tolerance(linalg.singular_values(W), 0.1)

    with pytest.raises(ValueError, match="rank="):
        f(jnp.ones((3, 2)))


# ---------------------------------------------------------------------------------------------
# effective_rank and stable_rank
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(6, 4), (4, 7), (3, 5, 4)])
def test_effective_rank_matches_formula(rng, shape):
    W = (rng.standard_normal(shape) * rng.uniform(0.1, 3, shape[-1])).astype(np.float32)
    e = linalg.effective_rank(W)
    assert e.shape == shape[:-2]
    for idx in np.ndindex(*shape[:-2]):
        s = np_svals(W[idx])
        expected = np_effective_rank(s)
        assert 1 <= expected <= min(shape[-2:])
        np.testing.assert_allclose(e[idx], expected, rtol=0, atol=erank_tol(s, sval_delta(W[idx])))


@pytest.mark.parametrize("r", [1, 2, 3, 4])
def test_effective_rank_of_equal_singular_values(rng, r):
    W = with_spectrum(rng, 7, 5, [2.5] * r)
    s = np_svals(W)  # r values 2.5 and 5 - r zeros (up to rounding of the float32 matrix)
    tol = erank_tol(
        np.array([2.5] * r + [0.0] * (5 - r)), sval_delta(W) + np.max(np.abs(s[:r] - 2.5))
    )
    assert tol < 1e-3 * r  # the check below is sharp
    np.testing.assert_allclose(linalg.effective_rank(W), r, rtol=0, atol=tol)


def test_effective_rank_of_zero_matrix_is_one():
    assert float(linalg.effective_rank(jnp.zeros((4, 3)))) == 1.0


@pytest.mark.parametrize("shape", [(6, 4), (4, 7), (3, 5, 4)])
def test_stable_rank_matches_definition(rng, shape):
    W = (rng.standard_normal(shape) * rng.uniform(0.1, 3, shape[-1])).astype(np.float32)
    sr = linalg.stable_rank(W)
    assert sr.shape == shape[:-2]
    for idx in np.ndindex(*shape[:-2]):
        s = np_svals(W[idx])
        np.testing.assert_allclose(
            sr[idx], np_stable_rank(W[idx]), rtol=0, atol=srank_tol(s, sval_delta(W[idx]))
        )


def test_stable_rank_of_known_spectra(rng):
    W = with_spectrum(rng, 6, 5, [2.0, 1.0])  # (4 + 1) / 4
    tol = srank_tol(np.array([2.0, 1.0, 0, 0, 0]), sval_delta(W) + 4 * EPS32)
    np.testing.assert_allclose(linalg.stable_rank(W), 1.25, rtol=0, atol=tol)
    assert float(linalg.stable_rank(jnp.zeros((3, 3)))) == 0.0


def test_effective_and_stable_rank_gradients(rng, x64):
    W = rng.standard_normal((4, 3)) * np.array([3.0, 2.0, 1.0])  # distinct singular values
    check_grads(jax.jit(linalg.effective_rank), (jnp.asarray(W),), order=1, modes=["rev"])
    check_grads(jax.jit(linalg.stable_rank), (jnp.asarray(W),), order=1, modes=["rev"])


# ---------------------------------------------------------------------------------------------
# principal_angles
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("p, q", [(3, 2), (2, 3), (3, 3)])
def test_principal_angles_match_numpy(rng, p, q):
    A = rng.standard_normal((8, p)).astype(np.float32)
    B = rng.standard_normal((8, q)).astype(np.float32)
    th = linalg.principal_angles(A, B)
    assert th.shape == (min(p, q),)
    np.testing.assert_allclose(
        th,
        np_principal_angles(A.astype(np.float64), B.astype(np.float64)),
        rtol=0,
        atol=angle_tol(A, B),
    )
    assert np.all(np.diff(np.asarray(th)) >= 0)


def test_principal_angles_same_subspace_is_zero(rng):
    A = rng.standard_normal((7, 3))
    B = (A @ (rng.standard_normal((3, 3)) + 3 * np.eye(3))).astype(np.float32)  # same span
    A = A.astype(np.float32)
    th = linalg.principal_angles(A, B)
    tol = angle_tol(A, B)
    # arccos of cosines would be ~ sqrt(2 eps) = 5e-4 here: far above the bound
    assert tol < 1e-4
    np.testing.assert_allclose(th, 0.0, rtol=0, atol=tol)


def test_principal_angles_orthogonal_subspaces(rng):
    Q = orth(rng, 6, 5)
    A = (Q[:, :2] @ np.array([[2.0, 1.0], [0.0, 1.0]])).astype(np.float32)
    B = Q[:, 2:].astype(np.float32)
    th = linalg.principal_angles(A, B)
    assert th.shape == (2,)
    np.testing.assert_allclose(th, np.pi / 2, rtol=0, atol=angle_tol(A, B))


def planes_at_angles(rng, m, thetas, dtype):
    """Two planes in R^m whose principal angles are ``thetas``: A = [e1, e2] and
    B = [cos t1 e1 + sin t1 e3, cos t2 e2 + sin t2 e4], each times an invertible 2 x 2 matrix."""
    E = orth(rng, m, 4)
    t1, t2 = thetas
    A = E[:, :2]
    B = np.stack(
        [np.cos(t1) * E[:, 0] + np.sin(t1) * E[:, 2], np.cos(t2) * E[:, 1] + np.sin(t2) * E[:, 3]],
        axis=1,
    )
    G = np.array([[1.5, 0.5], [-0.3, 1.0]])
    return (A @ G).astype(dtype), (B @ G.T).astype(dtype)


@pytest.mark.parametrize("thetas", [(0.3, 1.2), (0.05, 0.7), (1.5, 1.5)])
def test_principal_angles_known_angles_float32(rng, thetas):
    A, B = planes_at_angles(rng, 6, thetas, np.float32)
    th = linalg.principal_angles(A, B)
    # float32 rounding of the inputs moves the subspaces by ~ eps cond: inside angle_tol
    np.testing.assert_allclose(th, np.sort(thetas), rtol=0, atol=angle_tol(A, B))


@pytest.mark.parametrize("theta", [1e-6, 1e-9])
def test_principal_angles_tiny_angles_float64(rng, x64, theta):
    """The sine-based formula is accurate to ~ eps absolute at tiny angles; arccos of the
    cosines would err by ~ eps / theta (1e-10 at theta = 1e-6), far above the bound."""
    A, B = planes_at_angles(rng, 6, (theta, 2 * theta), np.float64)
    th = linalg.principal_angles(jnp.asarray(A), jnp.asarray(B))
    assert th.dtype == jnp.float64
    tol = angle_tol(A, B, eps=EPS64)
    assert tol < 1e-3 * theta
    np.testing.assert_allclose(th, [theta, 2 * theta], rtol=0, atol=tol)


def test_principal_angles_batched(rng):
    A = rng.standard_normal((3, 7, 3)).astype(np.float32)
    B = rng.standard_normal((3, 7, 2)).astype(np.float32)
    th = linalg.principal_angles(A, B)
    assert th.shape == (3, 2)
    for b in range(3):
        np.testing.assert_allclose(
            th[b],
            np_principal_angles(A[b].astype(np.float64), B[b].astype(np.float64)),
            rtol=0,
            atol=angle_tol(A[b], B[b]),
        )


def test_principal_angles_under_jit(rng):
    A = rng.standard_normal((6, 2)).astype(np.float32)
    B = rng.standard_normal((6, 2)).astype(np.float32)
    np.testing.assert_allclose(
        jax.jit(linalg.principal_angles)(A, B),
        np_principal_angles(A.astype(np.float64), B.astype(np.float64)),
        rtol=0,
        atol=angle_tol(A, B),
    )


# ---------------------------------------------------------------------------------------------
# Tubal counterparts: per Fourier slice 0 .. k // 2
# ---------------------------------------------------------------------------------------------


def tubal_delta(A):
    """Perturbation of every Fourier slice of ``A`` as a matrix (spectral norm): the transform
    (``k`` eps times the tube sums of |A|) plus the SVD's ``max(n1, n2) eps ||A_hat_j||``."""
    n1, n2, k = A.shape[-3:]
    tube_sums = np.sum(np.abs(np.asarray(A, np.float64)), axis=-1)
    top = max(np_svals(S)[0] for S in fft_slices(A))
    return k * EPS32 * np.linalg.norm(tube_sums) + max(n1, n2) * EPS32 * top


@pytest.mark.parametrize("k", [1, 4, 5])
def test_tubal_effective_and_stable_rank_per_slice(rng, k):
    A = (rng.standard_normal((2, 5, 4, k)) * np.array([3.0, 1, 0.5, 0.2])[:, None]).astype(
        np.float32
    )
    er, sr = linalg.tubal_effective_rank(A), linalg.tubal_stable_rank(A)
    assert er.shape == sr.shape == (2, k // 2 + 1)
    for b in range(2):
        delta = tubal_delta(A[b])
        for j, S in enumerate(fft_slices(A[b])):
            s = np_svals(S)
            np.testing.assert_allclose(
                er[b, j], np_effective_rank(s), rtol=0, atol=erank_tol(s, delta)
            )
            np.testing.assert_allclose(
                sr[b, j], np_stable_rank(S), rtol=0, atol=srank_tol(s, delta)
            )


def test_tubal_effective_rank_differs_between_slices(rng):
    """Slices with different spectra: slice 0 rank 1, slice 1 two equal values, slice 2 rank 1."""
    k, n = 4, 3
    spec = np.zeros((k, n, n), np.complex128)
    e = orth(rng, n, n)
    spec[0] = 2 * np.outer(e[:, 0], e[:, 0])  # real, rank 1
    c = orth(rng, n, 2, complex_=True)
    spec[1] = c @ c.conj().T  # rank 2, equal singular values 1
    spec[3] = spec[1].conj()
    spec[2] = np.outer(e[:, 1], e[:, 2])  # the Nyquist slice: real, rank 1
    A = np.fft.ifft(np.moveaxis(spec, 0, -1), axis=-1).real.astype(np.float32)
    er = linalg.tubal_effective_rank(A)
    assert er.shape == (3,)
    delta = tubal_delta(A)
    for j, (value, s) in enumerate([(1.0, [2.0, 0, 0]), (2.0, [1.0, 1, 0]), (1.0, [1.0, 0, 0])]):
        tol = erank_tol(np.array(s), delta)
        assert tol < 0.01
        np.testing.assert_allclose(er[j], value, rtol=0, atol=tol)


@pytest.mark.parametrize("k", [1, 4, 5])
def test_tubal_principal_angles_per_slice(rng, k):
    A = rng.standard_normal((6, 3, k)).astype(np.float32)
    B = rng.standard_normal((6, 2, k)).astype(np.float32)
    th = linalg.tubal_principal_angles(A, B)
    assert th.shape == (k // 2 + 1, 2)
    for j, (Sa, Sb) in enumerate(zip(fft_slices(A), fft_slices(B), strict=True)):
        # the transform perturbs each slice by k eps times the tube sums: relative to the
        # smallest singular value of the slice, that is a subspace angle
        tube = (
            k
            * EPS32
            * (
                np.linalg.norm(np.abs(A).sum(-1)) / np_svals(Sa)[-1]
                + np.linalg.norm(np.abs(B).sum(-1)) / np_svals(Sb)[-1]
            )
        )
        # complex arithmetic: each complex multiply-add is a few real ones (factor 4)
        tol = 4 * angle_tol(Sa, Sb) + tube
        np.testing.assert_allclose(th[j], np_principal_angles(Sa, Sb), rtol=0, atol=tol)


def test_tubal_principal_angles_same_t_column_space(rng):
    k = 5
    A = rng.standard_normal((6, 2, k))
    G = rng.standard_normal((2, 2, k)) * 0.2
    G[:, :, 0] += 2 * np.eye(2)  # invertible in every Fourier slice
    # B = A * G by explicit circular convolution: same column space in every slice
    B = np.zeros((6, 2, k))
    for i in range(6):
        for j in range(2):
            for m in range(2):
                B[i, j] += sum(A[i, m, s] * np.roll(G[m, j], s) for s in range(k))
    th = linalg.tubal_principal_angles(A.astype(np.float32), B.astype(np.float32))
    tol = max(
        4 * angle_tol(Sa, Sb)
        + k
        * EPS32
        * (
            np.linalg.norm(np.abs(A).sum(-1)) / np_svals(Sa)[-1]
            + np.linalg.norm(np.abs(B).sum(-1)) / np_svals(Sb)[-1]
        )
        for Sa, Sb in zip(fft_slices(A), fft_slices(B), strict=True)
    )
    assert tol < 1e-3
    np.testing.assert_allclose(th, 0.0, rtol=0, atol=tol)


# ---------------------------------------------------------------------------------------------
# Bad input
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "fn", [linalg.singular_values, linalg.effective_rank, linalg.stable_rank, linalg.truncated_svd]
)
def test_matrix_functions_refuse_vectors_and_complex(fn):
    with pytest.raises(ValueError, match="W"):
        fn(jnp.ones(4))
    with pytest.raises(TypeError, match="complex"):
        fn(jnp.ones((3, 2), jnp.complex64))
    with pytest.raises(TypeError, match="W"):
        fn("not an array")


@pytest.mark.parametrize("fn", [linalg.tubal_effective_rank, linalg.tubal_stable_rank])
def test_tubal_functions_refuse_matrices_and_complex(fn):
    with pytest.raises(ValueError, match="3 axes"):
        fn(jnp.ones((3, 2)))
    with pytest.raises(TypeError, match="complex"):
        fn(jnp.ones((3, 2, 4), jnp.complex64))


def test_truncated_svd_bad_rank():
    W = jnp.ones((4, 3))
    for bad in (0, 4, -1):
        with pytest.raises(ValueError, match=r"rank.*\[1, 3\]"):
            linalg.truncated_svd(W, bad)
    for bad in (2.0, "2", True):
        with pytest.raises(TypeError, match="rank"):
            linalg.truncated_svd(W, bad)


def test_principal_angles_bad_input():
    with pytest.raises(ValueError, match="rows"):
        linalg.principal_angles(jnp.ones((5, 2)), jnp.ones((4, 2)))
    with pytest.raises(ValueError, match="`B`"):
        linalg.principal_angles(jnp.ones((5, 2)), jnp.ones(5))
    with pytest.raises(TypeError, match=r"`A`.*complex"):
        linalg.principal_angles(jnp.ones((5, 2), jnp.complex64), jnp.ones((5, 2)))
    with pytest.raises(ValueError, match="n and k"):
        linalg.tubal_principal_angles(jnp.ones((5, 2, 3)), jnp.ones((4, 2, 3)))
    with pytest.raises(ValueError, match="n and k"):
        linalg.tubal_principal_angles(jnp.ones((5, 2, 3)), jnp.ones((5, 2, 4)))
    with pytest.raises(ValueError, match="3 axes"):
        linalg.tubal_principal_angles(jnp.ones((5, 2)), jnp.ones((5, 2, 4)))
