"""Tests of `TubalLowRank` and `SymmetricTubalLowRank` against NumPy references written from the
definitions of the t-product algebra (Kilmer and Martin, 2011), never from the module:

- `naive_tprod`: explicit circular convolution of tubes, ``C[i,j,:] = sum_l A[i,l,:] (*) B[l,j,:]``
  with ``(a (*) b)[t] = sum_s a[s] b[(t - s) mod k]``;
- `naive_transpose`: slice 0 transposed, slice ``j`` <- slice ``k - j`` transposed;
- best approximations slice by slice over all ``k`` slices of ``np.fft.fft`` along the tube axis
  (``np.linalg.svd`` for tubal rank r, ``np.linalg.eigh`` with negative eigenvalues clipped for
  the positive semidefinite case), transformed back with ``np.fft.ifft``.

Tolerances (float32, ``eps = 2^-23``). An entry of a t-product ``A * B`` (inner size ``n``, tubes
of length ``k``) is computed as transforms along the tube axis (sums of ``k`` terms), slice
products (sums of ``n`` terms, three real matmuls) and an inverse transform; every slice entry is
then within ``(2 k + 3 n + 6) eps S`` of the exact one, with ``S = sum_t (|A| * |B|)[i, j, t]``
(the tube sums of the product of absolute values bound every intermediate), and the inverse
transform adds ``k eps S``: `tprod_tol`. A spectral factorization of Fourier slice ``j`` is
backward stable with ``||E_j||_2 <= max(n1, n2) eps ||X_hat_j||_2`` plus the transform's
``k eps ||sum_t |X|||_F``; a rank-r truncation moves by ``||E_j|| (1 + 2 s_1 / gap)`` (Wedin;
for eigenvalues, Davis-Kahan), and an entry of the tensor by at most the largest slice error
(the inverse transform averages the slices).
"""

from functools import partial

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from factorjax import SymmetricTubalLowRank, TubalLowRank

EPS32 = float(np.finfo(np.float32).eps)


# ---------------------------------------------------------------------------------------------
# Naive references
# ---------------------------------------------------------------------------------------------


def f64(x):
    return np.asarray(x, np.float64)


def circconv(a, b):
    """Circular convolution of two tubes: ``c[t] = sum_s a[s] b[(t - s) mod k]``."""
    return sum(a[s] * np.roll(b, s) for s in range(a.shape[-1]))


def naive_tprod(A, B):
    """``C[i, j, :] = sum_l circconv(A[i, l, :], B[l, j, :])``."""
    A, B = f64(A), f64(B)
    (n1, n, k), (n_b, n2, k_b) = A.shape, B.shape
    assert (n, k) == (n_b, k_b)
    C = np.zeros((n1, n2, k))
    for i in range(n1):
        for j in range(n2):
            C[i, j] = sum(circconv(A[i, m], B[m, j]) for m in range(n))
    return C


def naive_transpose(A):
    """Slice 0 transposed; slice ``j`` is slice ``k - j`` of ``A`` transposed."""
    A = f64(A)
    k = A.shape[-1]
    return np.stack([A[:, :, (k - j) % k].T for j in range(k)], axis=-1)


def fft_all(A):
    """All k Fourier slices, frequency-major: (k, n1, n2) complex."""
    return np.moveaxis(np.fft.fft(f64(A), axis=-1), -1, 0)


def ifft_all(spec):
    """Inverse of `fft_all`, checking that the result is real."""
    A = np.fft.ifft(np.moveaxis(spec, 0, -1), axis=-1)
    assert np.max(np.abs(A.imag)) <= 1e-10 * max(1.0, np.max(np.abs(A.real)))
    return A.real


def tubal_truncation(A, r):
    """Best tubal-rank-r approximation: rank-r SVD truncation of every one of the k slices."""
    U, s, Vh = np.linalg.svd(fft_all(A), full_matrices=False)
    return ifft_all((U[..., :r] * s[..., None, :r]) @ Vh[..., :r, :])


def psd_truncation(A, r):
    """Best positive semidefinite tubal-rank-r approximation of the t-symmetric part of A:
    per slice, the r largest eigenvalues of the Hermitian part, clipped at 0."""
    A = f64(A)
    H = fft_all((A + naive_transpose(A)) / 2)
    lam, Q = np.linalg.eigh(H)  # ascending
    lam, Q = np.maximum(lam[:, ::-1][:, :r], 0), Q[:, :, ::-1][:, :, :r]
    return ifft_all((Q * lam[:, None, :]) @ np.conj(np.swapaxes(Q, -1, -2)))


def orth(rng, n, m, complex_):
    g = rng.standard_normal((n, m))
    if complex_:
        g = g + 1j * rng.standard_normal((n, m))
    return np.linalg.qr(g)[0]


def is_real_slice(j, k):
    return j == 0 or 2 * j == k


def from_half_spectrum(k, make_slice):
    """A real tensor whose Fourier slice j (0 <= j <= k // 2) is ``make_slice(j, real)``; slice
    k - j is its conjugate, and the real slices (DC, Nyquist) are built real."""
    half = [make_slice(j, is_real_slice(j, k)) for j in range(k // 2 + 1)]
    spec = np.zeros((k, *half[0].shape), np.complex128)
    for j, S in enumerate(half):
        spec[j] = S
        if not is_real_slice(j, k):
            spec[k - j] = np.conj(S)
    return ifft_all(spec)


def tensor_with_spectra(rng, n1, n2, k, svals):
    """Real (n1, n2, k) tensor whose slice j has singular values ``svals[j]``."""
    return from_half_spectrum(
        k,
        lambda j, real: (
            (orth(rng, n1, len(svals[j]), not real) * svals[j])
            @ np.conj(orth(rng, n2, len(svals[j]), not real).T)
        ),
    )


def hermitian_with_eigenvalues(rng, n, k, lams):
    """Real t-symmetric (n, n, k) tensor whose slice j is Hermitian with eigenvalues lams[j]."""

    def make(j, real):
        Q = orth(rng, n, len(lams[j]), not real)
        return (Q * lams[j]) @ np.conj(Q.T)

    return from_half_spectrum(k, make)


# ---------------------------------------------------------------------------------------------
# Error bounds
# ---------------------------------------------------------------------------------------------


def tprod_tol(A, B):
    """Entrywise rounding bound of a float32 t-product (module docstring)."""
    n, k = f64(A).shape[1:]
    S = np.max(naive_tprod(np.abs(f64(A)), np.abs(f64(B))).sum(axis=-1))
    return (3 * k + 3 * n + 6) * EPS32 * S


def slice_backward(X):
    """Per-slice backward error of a float32 spectral factorization of X: (k,) array."""
    n1, n2, k = X.shape
    transform = k * EPS32 * np.linalg.norm(np.abs(f64(X)).sum(axis=-1))
    norms = np.linalg.svd(fft_all(X), compute_uv=False)[:, 0]
    return max(n1, n2) * EPS32 * norms + transform


def truncation_tol(values, r, backward):
    """Largest over the slices of ``backward_j (1 + 2 v_1 / (v_r - v_{r+1}))``; ``values`` is
    (k, m) descending per slice (singular values, or eigenvalues clipped at 0)."""
    tol = 0.0
    for v, b in zip(values, backward, strict=True):
        gap = v[r - 1] - v[r] if r < len(v) else np.inf
        tol = max(tol, b * (1 + 2 * v[0] / gap))
    return tol


def spectral_tol(X, r, values, factors):
    """Truncation error of the slices, plus the inverse transforms of the factors and the
    t-product that rebuilds the dense tensor from them."""
    k = X.shape[-1]
    u, vt = factors
    S = np.max(naive_tprod(np.abs(f64(u)), np.abs(f64(vt))).sum(axis=-1))
    return truncation_tol(values, r, slice_backward(X)) + tprod_tol(u, vt) + 2 * k * EPS32 * S


def f32(rng, *shape, scale=1.0):
    return jnp.asarray(scale * rng.standard_normal(shape), jnp.float32)


# Most checks run the module under `jax.jit` (one compilation instead of one per operation on
# this small CPU budget); the eager path is exercised by the tests marked "eager" below.


@partial(jax.jit, static_argnums=(0, 2))
def from_dense_jit(cls, x, rank):
    m = cls.from_dense(x, rank)
    return m, m.to_dense()


@partial(jax.jit, static_argnums=1)
def truncate_jit(m, rank):
    t = m.truncate(rank)
    return t, t.to_dense()


# ---------------------------------------------------------------------------------------------
# TubalLowRank
# ---------------------------------------------------------------------------------------------


def spectra(k, m, base):
    """Distinct spectra per slice of the half spectrum: ``base * (1 + 0.3 j)``."""
    return [np.asarray(base[:m]) * (1 + 0.3 * j) for j in range(k // 2 + 1)]


# k = 1 (a matrix), even k (two real slices: DC and Nyquist), odd k; r = 1, middle, full
@pytest.mark.parametrize("k, r", [(1, 2), (4, 1), (4, 3), (5, 2), (5, 4)])
def test_tubal_from_dense_is_best_tubal_rank_r(rng, k, r):
    n1, n2 = 5, 4
    X = tensor_with_spectra(rng, n1, n2, k, spectra(k, 4, [5.0, 3.0, 1.5, 0.5])).astype(np.float32)
    T, dense = from_dense_jit(TubalLowRank, X, r)
    assert T.shape == (n1, n2, k) and T.rank == r
    assert T.u.shape == (n1, r, k) and T.v.shape == (n2, r, k)
    assert T.u.dtype == T.v.dtype == jnp.float32  # real factors
    s = np.linalg.svd(fft_all(X), compute_uv=False)
    tol = spectral_tol(X, r, s, (T.u, naive_transpose(T.v)))
    expected = tubal_truncation(X, r)
    np.testing.assert_allclose(dense, expected, rtol=0, atol=tol)
    # the factors themselves reconstruct it through the naive t-product
    np.testing.assert_allclose(naive_tprod(T.u, naive_transpose(T.v)), expected, rtol=0, atol=tol)
    # balanced: U^T * U = V^T * V
    utu = naive_tprod(naive_transpose(T.u), T.u)
    vtv = naive_tprod(naive_transpose(T.v), T.v)
    np.testing.assert_allclose(utu, vtv, rtol=0, atol=2 * tol)


@pytest.mark.parametrize("k", [6])
def test_tubal_from_dense_full_rank_reconstructs(rng, k):  # eager
    X = f32(rng, 4, 6, k)
    T = TubalLowRank.from_dense(X)
    assert T.rank == 4
    s = np.linalg.svd(fft_all(X), compute_uv=False)
    tol = spectral_tol(X, 4, s, (T.u, naive_transpose(T.v)))
    assert tol < 1e-4 * np.max(np.abs(X))
    np.testing.assert_allclose(T.to_dense(), X, rtol=0, atol=tol)


def rtol_grid(errors, decoy):
    """Tolerances strictly between the sorted values of ``errors`` (the true relative errors at
    ranks 1, 2, ...) and ``decoy`` (those a wrong weighting would give), and above them: away
    from every threshold, and telling the two apart where they differ."""
    cuts = np.unique(np.concatenate([errors, decoy]).round(12))  # full rank: error exactly 0
    return [*((cuts[:-1] + cuts[1:]) / 2), 1.5 * cuts[-1]]


@pytest.mark.parametrize("k", [4])
def test_tubal_from_dense_rtol_brute_force(rng, k):  # eager (rtol needs concrete values)
    # a steep spectrum in the real slices and a flat one in the complex slice, which counts twice
    # in the full spectrum: counting it once (a wrong weighting) changes some of the ranks
    steep, flat = np.array([4.0, 1.0, 0.3, 0.1]), np.array([4.0, 3.5, 3.0, 2.5])
    svals = [steep, flat, steep]
    X = tensor_with_spectra(rng, 5, 4, k, svals)
    errors = [
        np.linalg.norm(X - tubal_truncation(X, r)) / np.linalg.norm(X) for r in range(1, 4)
    ] + [0.0]
    # the decoy: the same errors with every slice of the half spectrum counted once
    energy = np.sum(np.array(svals) ** 2, axis=0)
    decoy = [np.sqrt(energy[r:].sum() / energy.sum()) for r in range(1, 5)]
    grid = rtol_grid(errors, decoy)
    expected = [next(r for r, e in enumerate(errors, 1) if e <= t) for t in grid]
    wrong = [next(r for r, e in enumerate(decoy, 1) if e <= t) for t in grid]
    assert expected != wrong and set(expected) == {1, 2, 3, 4}  # the check has power
    X32 = X.astype(np.float32)
    got = [TubalLowRank.from_dense(X32, rtol=float(t)).rank for t in grid]
    assert got == expected


def random_tubal(rng, n1, n2, r, k):
    return TubalLowRank(f32(rng, n1, r, k), f32(rng, n2, r, k))


def truncate_backward(u, v):
    """Per-slice backward error of the QRs of the factor slices (each ``n x R``: ``n R eps``)
    and of their transforms, as a perturbation of ``U_hat_j V_hat_j^H``."""
    (n1, R, k), n2 = u.shape, v.shape[0]
    su, sv = (np.linalg.svd(fft_all(a), compute_uv=False)[:, 0] for a in (u, v))
    tu, tv = (k * EPS32 * np.linalg.norm(np.abs(f64(a)).sum(axis=-1)) for a in (u, v))
    return max(n1, n2) * R * EPS32 * 2 * su * sv + tu * sv + su * tv


def factor_with_spectra(rng, n, k, svals, mix):
    """A real factor (n, R, k) whose slice j is ``Q_j diag(svals[j]) mix[j]`` (Q_j orthonormal)."""
    return from_half_spectrum(
        k, lambda j, real: (orth(rng, n, len(svals[j]), not real) * svals[j]) @ mix[j]
    )


def unitary_mixes(rng, R, k):
    return [orth(rng, R, R, not is_real_slice(j, k)) for j in range(k // 2 + 1)]


@pytest.mark.parametrize("k", [4, pytest.param(5, marks=pytest.mark.slow)])  # odd k: slow
def test_tubal_truncate_is_best_tubal_rank_r_of_dense(rng, k):
    # U_hat_j = Q_j S_j W_j and V_hat_j = P_j W_j with W_j unitary: X_hat_j = Q_j S_j P_j^H has
    # singular values S_j (distinct, with known gaps); the factors are unbalanced (3 and 1/3)
    R = 4
    svals = spectra(k, R, [4.0, 2.5, 1.5, 0.7])
    mix = unitary_mixes(rng, R, k)
    u = factor_with_spectra(rng, 5, k, svals, mix)
    v = factor_with_spectra(rng, 6, k, [np.ones(R)] * len(svals), mix)
    T = TubalLowRank(jnp.asarray(3 * u, jnp.float32), jnp.asarray(v / 3, jnp.float32))
    dense = naive_tprod(T.u, naive_transpose(T.v))
    s = np.linalg.svd(fft_all(dense), compute_uv=False)
    backward = truncate_backward(T.u, T.v)
    for r in (1, 3):
        Tr, Tr_dense = truncate_jit(T, r)
        assert Tr.shape == T.shape and Tr.rank == r and Tr.u.dtype == jnp.float32
        ut = naive_transpose(Tr.v)
        S = np.max(naive_tprod(np.abs(f64(Tr.u)), np.abs(ut)).sum(axis=-1))
        tol = truncation_tol(s, r, backward) + tprod_tol(Tr.u, ut) + 2 * k * EPS32 * S
        assert tol < 0.01 * np.max(np.abs(dense))  # a sharp check
        np.testing.assert_allclose(Tr_dense, tubal_truncation(dense, r), rtol=0, atol=tol)
    # the same as truncating the dense tensor (eager)
    again = TubalLowRank.from_dense(T.to_dense(), 3).to_dense()
    np.testing.assert_allclose(Tr_dense, again, rtol=0, atol=2 * tol)


def test_tubal_call_equals_naive_tprod(rng):
    n1, n2, R, k = 4, 3, 2, 5
    T = random_tubal(rng, n1, n2, R, k)
    dense = naive_tprod(T.u, naive_transpose(T.v))
    x = f32(rng, n2, k)

    def ref_and_tol(x):
        ref = naive_tprod(dense, f64(x)[:, None, :])[:, 0, :]
        chain = naive_tprod(
            np.abs(f64(T.u)),
            naive_tprod(naive_transpose(np.abs(f64(T.v))), np.abs(f64(x))[:, None, :]),
        )
        return ref, (6 * k + 3 * (n2 + R) + 12) * EPS32 * np.max(chain.sum(axis=-1))

    ref, tol = ref_and_tol(x)
    y = T(x)
    assert y.shape == (n1, k) and y.dtype == jnp.float32
    np.testing.assert_allclose(y, ref, rtol=0, atol=tol)
    np.testing.assert_allclose(jax.jit(lambda m, x: m(x))(T, x), ref, rtol=0, atol=tol)
    X = f32(rng, 3, n2, k)
    Y = jax.vmap(T)(X)
    assert Y.shape == (3, n1, k)
    for b in range(3):
        ref, tol = ref_and_tol(X[b])
        np.testing.assert_allclose(Y[b], ref, rtol=0, atol=tol)


def test_tubal_properties_pytree_and_filter_vmap(rng):
    n1, n2, R, k = 4, 3, 2, 5
    T = random_tubal(rng, n1, n2, R, k)
    assert T.shape == (n1, n2, k) and T.rank == R and T.num_params == (n1 + n2) * R * k
    leaves = jax.tree.leaves(T)
    assert len(leaves) == 2 and leaves[0] is T.u and leaves[1] is T.v
    dense = naive_tprod(T.u, naive_transpose(T.v))
    tol = tprod_tol(T.u, naive_transpose(T.v))
    np.testing.assert_allclose(jax.jit(lambda m: m.to_dense())(T), dense, rtol=0, atol=tol)
    members = [random_tubal(rng, n1, n2, R, k) for _ in range(3)]
    stacked = jax.tree.map(lambda *a: jnp.stack(a), *members)
    out = eqx.filter_vmap(lambda m: m.to_dense())(stacked)
    assert out.shape == (3, n1, n2, k)
    for i, m in enumerate(members):
        np.testing.assert_allclose(
            out[i],
            naive_tprod(m.u, naive_transpose(m.v)),
            rtol=0,
            atol=tprod_tol(m.u, naive_transpose(m.v)),
        )


def test_tubal_gradients(rng, x64):
    u, v = rng.standard_normal((3, 2, 4)), rng.standard_normal((2, 2, 4))
    x = rng.standard_normal((2, 4))
    # check_grads evaluates the function on NumPy arrays too: the modules hold JAX arrays
    tl = lambda u, v: TubalLowRank(jnp.asarray(u), jnp.asarray(v))  # noqa: E731
    check_grads(jax.jit(lambda u, v: tl(u, v).to_dense()), (u, v), order=1, modes=["rev"])
    check_grads(jax.jit(lambda u, v, x: tl(u, v)(x)), (u, v, x), order=1, modes=["rev"])


def test_tubal_bad_input(rng):
    with pytest.raises(ValueError, match=r"`x` must be a tensor \(n1, n2, k\)"):
        TubalLowRank.from_dense(jnp.ones((4, 3)))
    with pytest.raises(ValueError, match=r"`x` must be a tensor \(n1, n2, k\)"):
        TubalLowRank.from_dense(jnp.ones((2, 4, 3, 5)))
    with pytest.raises(TypeError, match="complex"):
        TubalLowRank.from_dense(jnp.ones((4, 3, 2), jnp.complex64))
    X = jnp.ones((4, 3, 5))
    for bad in (0, 4):
        with pytest.raises(ValueError, match=r"`rank` must be an int in \[1, 3\]"):
            TubalLowRank.from_dense(X, bad)
    with pytest.raises(ValueError, match="at most one of `rank` and `rtol`"):
        TubalLowRank.from_dense(X, 2, rtol=0.1)
    with pytest.raises(ValueError, match="rtol"):
        TubalLowRank.from_dense(X, rtol=float("nan"))
    with pytest.raises(ValueError, match="rank="):
        jax.jit(lambda x: TubalLowRank.from_dense(x, rtol=0.1).to_dense())(X)
    T = random_tubal(rng, 4, 3, 2, 5)
    for bad in (jnp.ones((4, 5)), jnp.ones((3, 4)), jnp.ones((2, 3, 5)), jnp.ones(3)):
        with pytest.raises(ValueError, match=r"\(n, k\) = \(3, 5\).*vmap"):
            T(bad)
    for bad in (0, 3):
        with pytest.raises(ValueError, match=r"rank.*\[1, 2\]"):
            T.truncate(bad)
    # mismatched factors: ValueError from `__check_init__`, or first the TypeError of the field
    # annotations under the jaxtyping runtime checks of the test run
    with pytest.raises((ValueError, TypeError), match=r"same R and k|parameter 'v'"):
        TubalLowRank(jnp.ones((4, 2, 5)), jnp.ones((3, 2, 4)))


# ---------------------------------------------------------------------------------------------
# SymmetricTubalLowRank
# ---------------------------------------------------------------------------------------------


def sym_tol(u):
    return tprod_tol(u, naive_transpose(u))


@pytest.mark.parametrize("k", [1, 5, 6])
def test_symmetric_to_dense_is_t_symmetric_psd(rng, k):
    n, R = 4, 3
    S = SymmetricTubalLowRank(f32(rng, n, R, k))
    assert S.shape == (n, n, k) and S.rank == R and S.num_params == n * R * k
    assert len(jax.tree.leaves(S)) == 1 and jax.tree.leaves(S)[0] is S.u
    X = np.asarray(S.to_dense(), np.float64)
    tol = sym_tol(S.u)
    np.testing.assert_allclose(X, naive_tprod(S.u, naive_transpose(S.u)), rtol=0, atol=tol)
    np.testing.assert_allclose(X, naive_transpose(X), rtol=0, atol=2 * tol)  # X^T = X
    H = fft_all(X)
    np.testing.assert_allclose(H, np.conj(np.swapaxes(H, -1, -2)), rtol=0, atol=2 * k * n * tol)
    # slice j of X differs from a PSD matrix by at most ||E_j||_2 <= n k tol
    lam = np.linalg.eigvalsh((H + np.conj(np.swapaxes(H, -1, -2))) / 2)
    assert np.all(lam >= -n * k * tol)
    assert np.max(lam) > 1.0  # not trivially zero


def psd_spectra(k, base):
    return [np.asarray(base) * (1 + 0.25 * j) for j in range(k // 2 + 1)]


def eig_values(X):
    """Eigenvalues of the Hermitian part of every slice, descending and clipped at 0: (k, n)."""
    H = fft_all((f64(X) + naive_transpose(X)) / 2)
    return np.maximum(np.linalg.eigvalsh(H)[:, ::-1], 0)


@pytest.mark.parametrize("k", [1, 4, 5])
def test_symmetric_from_dense_recovers_psd_tensor(rng, k):
    n, r = 5, 2
    # X = G * G^T with G_hat_j = Q_j diag(sqrt(lam_j)): tubal rank 2, slice eigenvalues lam_j
    lams = psd_spectra(k, [3.0, 1.2])
    G = factor_with_spectra(rng, n, k, [np.sqrt(v) for v in lams], [np.eye(r)] * len(lams))
    X = naive_tprod(G, naive_transpose(G))
    np.testing.assert_allclose(eig_values(X)[: k // 2 + 1, :r], lams, atol=1e-12)  # the reference
    X = X.astype(np.float32)
    lam = eig_values(X)
    for rank in (r, None):
        S, dense = from_dense_jit(SymmetricTubalLowRank, X, rank)
        assert S.rank == (r if rank else n) and S.u.dtype == jnp.float32
        tol = spectral_tol(X, S.rank, lam, (S.u, naive_transpose(S.u)))
        if rank is None:  # eigenvalues ~ 0 are kept: no gap, but the PSD projection is 1-Lipschitz
            tol = np.sqrt(n) * np.max(slice_backward(X)) + 3 * sym_tol(S.u)
        assert tol < 1e-3
        np.testing.assert_allclose(dense, X, rtol=0, atol=tol)


@pytest.mark.parametrize("k", [4, 5])
def test_symmetric_from_dense_of_indefinite_input_is_psd_projection(rng, k):
    n = 4
    lams = [np.array([3.0, 1.0, -0.5, -2.0]) * (1 + 0.2 * j) for j in range(k // 2 + 1)]
    Xs = hermitian_with_eigenvalues(rng, n, k, lams)
    # a t-antisymmetric part (A - A^T) must be ignored: only (x + x^T) / 2 counts
    A = rng.standard_normal((n, n, k))
    X = (Xs + A - naive_transpose(A)).astype(np.float32)
    lam = eig_values(X)
    for r in (1, 2, None):
        S, S_dense = from_dense_jit(SymmetricTubalLowRank, X, r)
        rr = n if r is None else r
        expected = psd_truncation(X, rr)
        if r is None:
            tol = np.sqrt(n) * np.max(slice_backward(X)) + 3 * sym_tol(S.u)
        else:
            tol = spectral_tol(X, rr, lam, (S.u, naive_transpose(S.u)))
        assert tol < 1e-3
        np.testing.assert_allclose(S_dense, expected, rtol=0, atol=tol)
    # the projection differs from the input: the negative eigenvalues were clipped
    assert np.max(np.abs(psd_truncation(X, n) - Xs)) > 0.1


@pytest.mark.parametrize("k", [4, 5])
def test_symmetric_truncate_is_best_psd_rank_r(rng, k):
    # U_hat_j = Q_j S_j W_j with W_j unitary: X_hat_j = Q_j S_j^2 Q_j^H, known eigenvalues
    n, R = 5, 4
    u = factor_with_spectra(
        rng, n, k, spectra(k, R, [2.0, 1.5, 1.1, 0.7]), unitary_mixes(rng, R, k)
    )
    S = SymmetricTubalLowRank(jnp.asarray(u, jnp.float32))
    dense = naive_tprod(S.u, naive_transpose(S.u))
    lam = eig_values(dense)
    bw = truncate_backward(S.u, S.u)
    for r in (1, 3):
        Sr, Sr_dense = truncate_jit(S, r)
        assert Sr.shape == S.shape and Sr.rank == r and Sr.u.dtype == jnp.float32
        ut = naive_transpose(Sr.u)
        St = np.max(naive_tprod(np.abs(f64(Sr.u)), np.abs(ut)).sum(axis=-1))
        tol = truncation_tol(lam, r, bw) + tprod_tol(Sr.u, ut) + 2 * k * EPS32 * St
        assert tol < 0.01 * np.max(np.abs(dense))
        np.testing.assert_allclose(Sr_dense, psd_truncation(dense, r), rtol=0, atol=tol)


def test_symmetric_truncate_overparametrized(rng):
    # width R = 5 > n = 3: the QR of each slice of U is wide
    n, R, k = 3, 5, 4
    S = SymmetricTubalLowRank(f32(rng, n, R, k))
    dense = naive_tprod(S.u, naive_transpose(S.u))
    lam = eig_values(dense)
    Sr, Sr_dense = truncate_jit(S, 2)
    assert Sr.u.shape == (n, 2, k)
    ut = naive_transpose(Sr.u)
    St = np.max(naive_tprod(np.abs(f64(Sr.u)), np.abs(ut)).sum(axis=-1))
    tol = (
        truncation_tol(lam, 2, truncate_backward(S.u, S.u))
        + tprod_tol(Sr.u, ut)
        + 2 * k * EPS32 * St
    )
    assert tol < 0.05 * np.max(np.abs(dense))
    np.testing.assert_allclose(Sr_dense, psd_truncation(dense, 2), rtol=0, atol=tol)


@pytest.mark.parametrize("k", [5])
def test_symmetric_from_dense_rtol_brute_force(rng, k):  # eager (rtol needs concrete values)
    n = 4
    steep, flat = np.array([4.0, 1.0, 0.3, 0.1]), np.array([4.0, 3.5, 3.0, 2.5])
    lams = [steep, flat, steep]
    X = hermitian_with_eigenvalues(rng, n, k, lams)
    errors = [np.linalg.norm(X - psd_truncation(X, r)) / np.linalg.norm(X) for r in range(1, 4)] + [
        0.0
    ]
    energy = np.sum(np.array(lams) ** 2, axis=0)
    decoy = [np.sqrt(energy[r:].sum() / energy.sum()) for r in range(1, 5)]
    grid = rtol_grid(errors, decoy)
    expected = [next(r for r, e in enumerate(errors, 1) if e <= t) for t in grid]
    wrong = [next(r for r, e in enumerate(decoy, 1) if e <= t) for t in grid]
    assert expected != wrong and set(expected) == {1, 2, 3, 4}
    X32 = X.astype(np.float32)
    got = [SymmetricTubalLowRank.from_dense(X32, rtol=float(t)).rank for t in grid]
    assert got == expected


def test_symmetric_call_vmap_jit(rng):
    n, R, k = 4, 2, 5
    S = SymmetricTubalLowRank(f32(rng, n, R, k))
    dense = naive_tprod(S.u, naive_transpose(S.u))
    absu = np.abs(f64(S.u))

    def ref_and_tol(x):
        ref = naive_tprod(dense, f64(x)[:, None, :])[:, 0, :]
        chain = naive_tprod(absu, naive_tprod(naive_transpose(absu), np.abs(f64(x))[:, None, :]))
        return ref, (6 * k + 3 * (n + R) + 12) * EPS32 * np.max(chain.sum(axis=-1))

    X = f32(rng, 3, n, k)
    ref, tol = ref_and_tol(X[0])
    np.testing.assert_allclose(S(X[0]), ref, rtol=0, atol=tol)
    np.testing.assert_allclose(jax.jit(lambda m, x: m(x))(S, X[0]), ref, rtol=0, atol=tol)
    Y = jax.vmap(S)(X)
    assert Y.shape == (3, n, k)
    for b in range(3):
        ref, tol = ref_and_tol(X[b])
        np.testing.assert_allclose(Y[b], ref, rtol=0, atol=tol)


def test_symmetric_gradients(rng, x64):
    u, x = rng.standard_normal((3, 2, 4)), rng.standard_normal((3, 4))
    sym = lambda u: SymmetricTubalLowRank(jnp.asarray(u))  # noqa: E731
    check_grads(jax.jit(lambda u: sym(u).to_dense()), (u,), order=1, modes=["rev"])
    check_grads(jax.jit(lambda u, x: sym(u)(x)), (u, x), order=1, modes=["rev"])


def test_symmetric_bad_input(rng):
    with pytest.raises(ValueError, match="square frontal slices"):
        SymmetricTubalLowRank.from_dense(jnp.ones((4, 3, 5)))
    with pytest.raises(ValueError, match=r"`x` must be a tensor"):
        SymmetricTubalLowRank.from_dense(jnp.ones((4, 4)))
    X = jnp.ones((4, 4, 5))
    for bad in (0, 5):
        with pytest.raises(ValueError, match=r"`rank` must be an int in \[1, 4\]"):
            SymmetricTubalLowRank.from_dense(X, bad)
    with pytest.raises(ValueError, match="at most one of `rank` and `rtol`"):
        SymmetricTubalLowRank.from_dense(X, 2, rtol=0.1)
    with pytest.raises(ValueError, match="rank="):
        jax.jit(lambda x: SymmetricTubalLowRank.from_dense(x, rtol=0.1).to_dense())(X)
    S = SymmetricTubalLowRank(f32(rng, 4, 2, 5))
    for bad in (jnp.ones((4, 4)), jnp.ones((2, 4, 5)), jnp.ones(4)):
        with pytest.raises(ValueError, match=r"\(n, k\) = \(4, 5\).*vmap"):
            S(bad)
    for bad in (0, 3):
        with pytest.raises(ValueError, match=r"rank.*\[1, 2\]"):
            S.truncate(bad)
    with pytest.raises((ValueError, TypeError), match=r"tensor|parameter 'u'"):
        SymmetricTubalLowRank(jnp.ones((4, 2)))
