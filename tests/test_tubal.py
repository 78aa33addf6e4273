"""Tests of `factorjax.tubal` against naive references written from the definitions.

Every reference below is plain NumPy in float64, written from the definition of the t-product
algebra (Kilmer and Martin, 2011), never from the module under test:

- `naive_tprod`: explicit circular convolution of tubes, ``C[i,j,:] = sum_l A[i,l,:] (*) B[l,j,:]``
  with ``(a (*) b)[t] = sum_s a[s] b[(t - s) mod k]``;
- `bcirc`, `unfold`, `fold`: the block-circulant matrix, so that ``A * B = fold(bcirc(A) @
  unfold(B))``;
- `naive_transpose`: slice 0 transposed, slice j <- slice k - j transposed;
- spectral quantities from ``np.fft.fft`` over all k frequencies and ``np.linalg.svd`` of each
  frontal slice of the spectrum.

Tolerances (float32). The module computes in float32; the references in float64 are exact by
comparison. An entry of ``A * B`` is a sum of ``n * k`` products ``A[i,l,s] B[l,j,t-s]``. The
module evaluates it as a forward transform along the tube axis (sums of ``k`` terms), slice
products (sums of ``n`` terms, three real matmuls: Gauss's trick adds at most two more roundings
per term) and an inverse transform (``k`` terms). The first-order rounding bound of a computed sum
of ``m`` terms is ``m * eps * sum |terms|`` (Higham, ch. 3), so every entry of the result is within
``(2 k + 3 n) * eps * M`` of the exact value, with ``M`` the largest entry of ``|A| * |B|`` (the
t-product of the absolute values, an upper bound of every intermediate sum once the transforms
are normalised). `rounding_tol` encodes exactly that; the SVD-based functions add the backward
error of a Householder SVD, ``max(n1, n2) * eps * ||slice||_2`` per slice (Golub and Van Loan,
5.4.8), and are checked against ``||A||_F`` as the scale.
"""

import re
from types import SimpleNamespace

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from factorjax import tubal

EPS32 = float(np.finfo(np.float32).eps)

# The numerical tests call the module through `jax.jit`: one compilation per input shape, where
# eager mode compiles every primitive separately (seconds for a t-SVD on a 2-core machine). That
# jit, vmap and eager agree is tested on its own below; the bad-input tests run eagerly as well.
jt = SimpleNamespace(
    tprod=jax.jit(tubal.tprod),
    ttranspose=jax.jit(tubal.ttranspose),
    tinverse=jax.jit(tubal.tinverse),
    tidentity=jax.jit(tubal.tidentity, static_argnames=("n", "k", "dtype")),
    tsvd=jax.jit(tubal.tsvd, static_argnames="rank"),
    to_fourier=jax.jit(tubal.to_fourier),
    from_fourier=jax.jit(tubal.from_fourier, static_argnames="k"),
    fourier_singular_values=jax.jit(tubal.fourier_singular_values, static_argnames="full"),
    singular_tubes=jax.jit(tubal.singular_tubes),
    tubal_rank=jax.jit(tubal.tubal_rank, static_argnames="rtol"),
    tnorm=jax.jit(tubal.tnorm),
    tspectral_norm=jax.jit(tubal.tspectral_norm),
    tnuclear_norm=jax.jit(tubal.tnuclear_norm, static_argnames="normalization"),
)


# ---------------------------------------------------------------------------------------------
# Naive references, from the definitions
# ---------------------------------------------------------------------------------------------


def circconv(a, b):
    """Circular convolution of two tubes: ``c[t] = sum_s a[s] b[(t - s) mod k]``."""
    k = a.shape[-1]
    return sum(a[s] * np.roll(b, s) for s in range(k))  # np.roll(b, s)[t] = b[(t - s) mod k]


def naive_tprod(A, B):
    """``C[..., i, j, :] = sum_l circconv(A[..., i, l, :], B[..., l, j, :])``, loops over tubes."""
    A, B = np.asarray(A, np.float64), np.asarray(B, np.float64)
    n1, n, k = A.shape[-3:]
    n_b, n2, k_b = B.shape[-3:]
    assert (n, k) == (n_b, k_b)
    batch = np.broadcast_shapes(A.shape[:-3], B.shape[:-3])
    A = np.broadcast_to(A, (*batch, n1, n, k))
    B = np.broadcast_to(B, (*batch, n, n2, k))
    C = np.zeros((*batch, n1, n2, k))
    for b in np.ndindex(*batch):
        for i in range(n1):
            for j in range(n2):
                C[b][i, j] = sum(circconv(A[b][i, m], B[b][m, j]) for m in range(n))
    return C


def bcirc(A):
    """The block-circulant matrix of ``A`` (n1, n2, k): block ``(p, q)`` is ``A[:, :, p - q]``."""
    n1, n2, k = A.shape
    M = np.zeros((n1 * k, n2 * k))
    for p in range(k):
        for q in range(k):
            M[p * n1 : (p + 1) * n1, q * n2 : (q + 1) * n2] = A[:, :, (p - q) % k]
    return M


def unfold(A):
    """Frontal slices stacked vertically: (n1, n2, k) -> (n1 k, n2)."""
    return np.concatenate([A[:, :, p] for p in range(A.shape[-1])], axis=0)


def fold(M, k):
    """Inverse of `unfold`: (n1 k, n2) -> (n1, n2, k)."""
    n1 = M.shape[0] // k
    return np.stack([M[p * n1 : (p + 1) * n1] for p in range(k)], axis=-1)


def naive_transpose(A):
    """Slice 0 transposed; slice ``j`` is slice ``k - j`` of ``A`` transposed."""
    A = np.asarray(A, np.float64)
    k = A.shape[-1]
    out = np.zeros((*A.shape[:-3], A.shape[-2], A.shape[-3], k))
    for j in range(k):
        out[..., j] = np.swapaxes(A[..., (k - j) % k], -1, -2)
    return out


def naive_identity(n, k):
    eye = np.zeros((n, n, k))
    eye[:, :, 0] = np.eye(n)
    return eye


def fft_slices(A):
    """All k Fourier slices of ``A``, frequency-major: (..., k, n1, n2), complex."""
    return np.moveaxis(np.fft.fft(np.asarray(A, np.float64), axis=-1), -1, -3)


def slice_singular_values(A):
    """Singular values of each of the k Fourier slices: (..., k, min(n1, n2))."""
    return np.linalg.svd(fft_slices(A), compute_uv=False)


def truncated_by_slices(A, r):
    """Truncate the SVD of every Fourier slice (all k of them) to rank r and transform back."""
    U, s, Vh = np.linalg.svd(fft_slices(A), full_matrices=False)
    approx = (U[..., :r] * s[..., None, :r]) @ Vh[..., :r, :]
    return np.fft.ifft(np.moveaxis(approx, -3, -1), axis=-1).real


def spectrum_tensor(rng, n1, n2, k, svals):
    """A real (n1, n2, k) tensor whose Fourier slice j has singular values ``svals[j]``.

    ``svals`` is (k // 2 + 1, m) for the half spectrum, ``m <= min(n1, n2)``, zeros allowed.
    Slice ``k - j`` is the conjugate of slice ``j`` (slices 0 and k/2 are real): the tensor is real.
    """
    svals = np.asarray(svals, np.float64)
    f, m = svals.shape
    assert f == k // 2 + 1

    def orth(n, real):
        g = rng.standard_normal((n, m))
        if not real:
            g = g + 1j * rng.standard_normal((n, m))
        return np.linalg.qr(g)[0]  # n x m, orthonormal columns

    spec = np.zeros((k, n1, n2), np.complex128)
    for j in range(f):
        real = j == 0 or 2 * j == k
        spec[j] = (orth(n1, real) * svals[j]) @ orth(n2, real).conj().T
        if j and 2 * j != k:
            spec[k - j] = spec[j].conj()
    A = np.fft.ifft(np.moveaxis(spec, 0, -1), axis=-1)
    assert np.max(np.abs(A.imag)) < 1e-12
    return A.real


def rounding_tol(n, k, M):
    """Entrywise bound ``(2 k + 3 n) * eps * M`` of the module docstring."""
    return (2 * k + 3 * n) * EPS32 * M


def f32(rng, *shape):
    return rng.standard_normal(shape).astype(np.float32)


def assert_tprod_close(C, A, B):
    """``C`` equals the naive ``A * B`` to the rounding bound of a float32 t-product."""
    expected = naive_tprod(A, B)
    M = np.max(naive_tprod(np.abs(A), np.abs(B)))
    assert C.shape == expected.shape
    np.testing.assert_allclose(
        np.asarray(C), expected, rtol=0, atol=rounding_tol(A.shape[-2], A.shape[-1], M)
    )


# ---------------------------------------------------------------------------------------------
# The references agree with each other (so that a wrong reference cannot hide a wrong module)
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("k", [1, 2, 5, 6])
def test_references_agree(rng, k):
    A, B = rng.standard_normal((3, 4, k)), rng.standard_normal((4, 2, k))
    np.testing.assert_allclose(naive_tprod(A, B), fold(bcirc(A) @ unfold(B), k), atol=1e-12)
    # bcirc is block-diagonalised by the DFT: its singular values are those of the k slices.
    np.testing.assert_allclose(
        np.sort(np.linalg.svd(bcirc(A), compute_uv=False)),
        np.sort(slice_singular_values(A).ravel()),
        atol=1e-12,
    )
    # bcirc(A^T) = bcirc(A)^T.
    np.testing.assert_array_equal(bcirc(naive_transpose(A)), bcirc(A).T)


# ---------------------------------------------------------------------------------------------
# The t-product
# ---------------------------------------------------------------------------------------------

# tprod switches from dense DFT matmuls to rfft above a tube length `_DFT_MATMUL_MAX_K` (32 when
# the issue was filed, tuned since): test both sides of 32 and of the current switch, odd and
# even k, and the edge cases k = 1, 2. `K_FFT` is a tube length on the rfft path, used where one
# k per path is enough.
_SWITCH = tubal._DFT_MATMUL_MAX_K
K_FFT = _SWITCH + 1
KS = sorted({1, 2, 3, 4, 7, 8, 31, 32, 33, 64, _SWITCH, K_FFT})


@pytest.mark.parametrize("k", KS)
def test_tprod_is_circular_convolution_of_tubes(rng, k):
    A, B = f32(rng, 3, 4, k), f32(rng, 4, 2, k)
    C = jt.tprod(A, B)
    assert C.dtype == jnp.float32
    assert_tprod_close(C, A, B)


@pytest.mark.parametrize("k", [1, 2, 5, 6, 31, 32, 33, K_FFT])
def test_tprod_is_bcirc_times_unfold(rng, k):
    A, B = f32(rng, 2, 3, k), f32(rng, 3, 4, k)
    expected = fold(bcirc(A.astype(np.float64)) @ unfold(B.astype(np.float64)), k)
    M = np.max(fold(bcirc(np.abs(A)) @ unfold(np.abs(B)), k))
    np.testing.assert_allclose(jt.tprod(A, B), expected, rtol=0, atol=rounding_tol(3, k, M))


def test_tprod_k1_is_matrix_product(rng):
    A, B = f32(rng, 4, 3, 1), f32(rng, 3, 5, 1)
    C = jt.tprod(A, B)
    assert C.shape == (4, 5, 1)
    M = np.max(np.abs(A[..., 0]) @ np.abs(B[..., 0]))
    np.testing.assert_allclose(
        C[..., 0], A[..., 0].astype(np.float64) @ B[..., 0], rtol=0, atol=rounding_tol(3, 1, M)
    )


@pytest.mark.parametrize("k", [5, K_FFT])
def test_tprod_broadcasts_batch_axes(rng, k):
    A, B = f32(rng, 2, 1, 3, 4, k), f32(rng, 3, 4, 2, k)
    C = jt.tprod(A, B)
    assert C.shape == (2, 3, 3, 2, k)
    assert_tprod_close(C, A, B)


def test_tprod_accepts_integer_and_mixed_input(rng):
    A = rng.integers(-3, 4, (2, 3, 4))
    B = f32(rng, 3, 2, 4)
    C = jt.tprod(A, B)
    assert C.dtype == jnp.float32
    assert_tprod_close(C, A.astype(np.float32), B)


@pytest.mark.parametrize("k", [1, 2, 5, 6])
def test_ttranspose_definition(rng, k):
    A = f32(rng, 2, 3, 4, k)
    At = jt.ttranspose(A)
    assert At.shape == (2, 4, 3, k)
    np.testing.assert_array_equal(At, naive_transpose(A))  # a permutation: exact


@pytest.mark.parametrize("k", [4, 5])
def test_ttranspose_of_product(rng, k):
    A, B = f32(rng, 3, 4, k), f32(rng, 4, 2, k)
    lhs = jt.ttranspose(jt.tprod(A, B))
    rhs = jt.tprod(jt.ttranspose(B), jt.ttranspose(A))
    M = np.max(naive_tprod(np.abs(A), np.abs(B)))
    # each side is within rounding_tol of the exact product, so they are within twice that.
    np.testing.assert_allclose(lhs, rhs, rtol=0, atol=2 * rounding_tol(4, k, M))
    np.testing.assert_allclose(
        lhs, naive_transpose(naive_tprod(A, B)), rtol=0, atol=rounding_tol(4, k, M)
    )


@pytest.mark.parametrize("k", [3, 4, K_FFT])
def test_tprod_associative(rng, k):
    A, B, C = f32(rng, 2, 3, k), f32(rng, 3, 4, k), f32(rng, 4, 2, k)
    left = jt.tprod(jt.tprod(A, B), C)
    right = jt.tprod(A, jt.tprod(B, C))
    exact = naive_tprod(naive_tprod(A, B), C)
    M = np.max(naive_tprod(naive_tprod(np.abs(A), np.abs(B)), np.abs(C)))
    # two t-products in sequence: the bound of each, on the scale M of the triple product.
    tol = rounding_tol(3, k, M) + rounding_tol(4, k, M)
    np.testing.assert_allclose(left, exact, rtol=0, atol=tol)
    np.testing.assert_allclose(right, exact, rtol=0, atol=tol)


@pytest.mark.parametrize("k", [1, 4, 5, K_FFT])
def test_tidentity(rng, k):
    eye = jt.tidentity(3, k)
    np.testing.assert_array_equal(eye, naive_identity(3, k))
    assert eye.dtype == jnp.float32
    A, B = f32(rng, 2, 3, k), f32(rng, 3, 4, k)
    M = max(np.max(np.abs(A)), np.max(np.abs(B)))
    np.testing.assert_allclose(jt.tprod(A, eye), A, rtol=0, atol=rounding_tol(3, k, M))
    np.testing.assert_allclose(jt.tprod(eye, B), B, rtol=0, atol=rounding_tol(3, k, M))


@pytest.mark.parametrize("k", [1, 4, 5])
def test_tinverse(rng, k):
    n = 3
    # I + 0.1 G: every Fourier slice is I + 0.1 G_hat, |0.1 G_hat| well below 1, so it is
    # well-conditioned (cond <= 1.5 / 0.5 = 3 for ||0.1 G_hat||_2 <= 0.5).
    A = (naive_identity(n, k) + 0.1 * rng.standard_normal((n, n, k)) / np.sqrt(k)).astype(
        np.float32
    )
    assert np.max(slice_singular_values(A)) / np.min(slice_singular_values(A)) < 3
    Ainv = np.asarray(jt.tinverse(A))
    assert Ainv.shape == (n, n, k)
    # A backward-stable inverse of each slice leaves a residual ||X_j A_j - I|| of order
    # n eps cond(A_j)^2 (Higham, 14.1); the transforms add 2 k eps. With cond < 3: the rounding
    # bound of a t-product on the scale cond^2 = 9.
    tol = rounding_tol(n, k, 9.0)
    np.testing.assert_allclose(naive_tprod(Ainv, A), naive_identity(n, k), rtol=0, atol=tol)
    np.testing.assert_allclose(naive_tprod(A, Ainv), naive_identity(n, k), rtol=0, atol=tol)


# ---------------------------------------------------------------------------------------------
# The Fourier domain
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("k", [1, 2, 5, 6, 33, 34])
def test_to_fourier_is_half_of_numpy_fft(rng, k):
    A = f32(rng, 2, 3, 4, k)
    A_hat = jt.to_fourier(A)
    assert A_hat.shape == (2, k // 2 + 1, 3, 4)
    assert A_hat.dtype == jnp.complex64
    expected = fft_slices(A)[..., : k // 2 + 1, :, :]
    # An FFT of length k: error <= k * eps * sum|a| (the DFT-sum bound, loose for an FFT).
    np.testing.assert_allclose(
        A_hat, expected, rtol=0, atol=k * EPS32 * np.max(np.sum(np.abs(A), axis=-1))
    )


@pytest.mark.parametrize("k", [1, 2, 5, 6, 33, 34])
def test_fourier_round_trip(rng, k):
    A = f32(rng, 2, 3, 4, k)
    back = jt.from_fourier(jt.to_fourier(A), k)
    assert back.shape == A.shape and back.dtype == jnp.float32
    np.testing.assert_allclose(back, A, rtol=0, atol=2 * k * EPS32 * np.max(np.abs(A)))


@pytest.mark.parametrize("k", [1, 2, 5, 6, 33])
def test_from_fourier_inverts_numpy_spectrum(rng, k):
    A = rng.standard_normal((3, 2, k))
    half = fft_slices(A)[: k // 2 + 1].astype(np.complex64)
    np.testing.assert_allclose(
        jt.from_fourier(half, k), A, rtol=0, atol=2 * k * EPS32 * np.max(np.abs(A))
    )


@pytest.mark.parametrize("k", [4, 5, K_FFT])
def test_fourier_slice_products_give_tprod(rng, k):
    A, B = f32(rng, 2, 3, k), f32(rng, 3, 4, k)
    C = jt.from_fourier(jt.to_fourier(A) @ jt.to_fourier(B), k)
    assert_tprod_close(C, A, B)


# ---------------------------------------------------------------------------------------------
# The t-SVD
# ---------------------------------------------------------------------------------------------

SVD_SHAPES = [(4, 4, 1), (5, 3, 4), (3, 5, 5), (4, 3, 2), (2, 4, 3, 6), (2, 3, 2, 3)]


def svd_tol(A):
    """Backward error of the slice SVDs plus the transforms, on the scale ||A||_F."""
    n1, n2, k = A.shape[-3:]
    return (max(n1, n2) + 2 * k) * EPS32 * float(np.linalg.norm(A))


@pytest.mark.parametrize("shape", SVD_SHAPES, ids=str)
def test_tsvd_factors(rng, shape):
    A = f32(rng, *shape)
    n1, n2, k = shape[-3:]
    r = min(n1, n2)
    U, S, V = jt.tsvd(A)
    batch = shape[:-3]
    assert U.shape == (*batch, n1, r, k)
    assert S.shape == (*batch, r, r, k)
    assert V.shape == (*batch, n2, r, k)
    for X in (U, S, V):
        assert X.dtype == jnp.float32
    tol = svd_tol(A)
    recon = naive_tprod(naive_tprod(U, S), naive_transpose(V))
    np.testing.assert_allclose(recon, A, rtol=0, atol=tol)
    # Entries of U^T * U are inner products of unit vectors in the Fourier domain: a Householder
    # SVD leaves the slices orthonormal to n1 eps, and the transforms add 2 k eps.
    eye = np.broadcast_to(naive_identity(r, k), (*batch, r, r, k))
    UtU, VtV = naive_tprod(naive_transpose(U), U), naive_tprod(naive_transpose(V), V)
    np.testing.assert_allclose(UtU, eye, rtol=0, atol=(n1 + 2 * k) * EPS32)
    np.testing.assert_allclose(VtV, eye, rtol=0, atol=(n2 + 2 * k) * EPS32)
    off_diagonal = ~np.eye(r, dtype=bool)
    np.testing.assert_array_equal(np.asarray(S)[..., off_diagonal, :], 0)
    # The diagonal tubes of S are the singular tubes: the inverse DFT, over all k frequencies,
    # of the sorted singular values of the Fourier slices.
    tubes = np.fft.ifft(slice_singular_values(A), axis=-2).real  # (..., k, r)
    diagonal = np.diagonal(np.asarray(S), axis1=-3, axis2=-2)  # (..., k, r)
    np.testing.assert_allclose(diagonal, tubes, rtol=0, atol=tol)


def test_tsvd_k1_is_matrix_svd(rng):
    A = f32(rng, 5, 3, 1)
    U, S, V = jt.tsvd(A)
    u, s, vh = np.linalg.svd(A[..., 0].astype(np.float64), full_matrices=False)
    tol = svd_tol(A)
    np.testing.assert_allclose(np.diag(S[..., 0]), s, rtol=0, atol=tol)
    # Singular vectors up to a common sign per pair. Wedin: a backward error E turns them by an
    # angle of sine <= ||E|| / gap, with gap the distance of s_i to the other singular values
    # (and to 0, for the left vectors of a tall matrix); the vectors then differ by <= 2 sin.
    gap = min(np.min(-np.diff(s)), s[-1])
    signs = np.sign(np.sum(np.asarray(U[..., 0]) * u, axis=0))
    np.testing.assert_allclose(U[..., 0] * signs, u, rtol=0, atol=2 * tol / gap)
    np.testing.assert_allclose(V[..., 0] * signs, vh.T, rtol=0, atol=2 * tol / gap)
    np.testing.assert_array_equal(jt.ttranspose(A)[..., 0], A[..., 0].T)


def projection_error(A, X):
    """Error of the best approximation of A of the form X * Z: Fourier slice by slice,
    ``A_j - X_j pinv(X_j) A_j``, measured through Parseval (``||A||_F^2 = sum_j ||A_j||_F^2 / k``).
    """
    Ah, Xh = fft_slices(A), fft_slices(X)
    residual = Ah - Xh @ (np.linalg.pinv(Xh) @ Ah)
    return np.sqrt(np.sum(np.abs(residual) ** 2) / A.shape[-1])


@pytest.mark.parametrize(
    "shape, r", [((5, 4, 6), 2), ((4, 6, 5), 1), ((4, 5, 5), 3), ((2, 4, 3, 4), 2)], ids=str
)
def test_tsvd_truncation_is_best_tubal_rank_r(rng, shape, r):
    A = f32(rng, *shape)
    n1, n2, k = shape[-3:]
    U, S, V = jt.tsvd(A, rank=r)
    assert U.shape[-2:] == (r, k) and S.shape[-3:] == (r, r, k) and V.shape[-2:] == (r, k)
    approx = naive_tprod(naive_tprod(U, S), naive_transpose(V))
    best = truncated_by_slices(A, r)
    # The best approximation is unique when every slice has s_r > s_{r+1}. The module computes
    # the exact truncation of A + E, ||E|| <= svd_tol(A); by Wedin's theorem that moves the
    # rank-r truncation by at most ||E|| (1 + 2 s_max / gap), gap = min_j s_r - s_{r+1}.
    s = slice_singular_values(A)
    gap = np.min(s[..., r - 1] - s[..., r]) if r < min(n1, n2) else np.inf
    tol = svd_tol(A) * (1 + 2 * np.max(s) / gap)
    assert np.linalg.norm(approx - best) <= tol
    # Hence the errors agree to the same bound (triangle inequality).
    err = np.linalg.norm(A - approx)
    best_err = np.linalg.norm(A - best)
    assert abs(err - best_err) <= tol
    assert best_err > 0.1 * np.linalg.norm(A)  # the check above is not vacuous
    # Eckart-Young: no tubal-rank-r tensor does better; try the best of a few random ranges.
    batch = shape[:-3]
    for _ in range(5):
        X = rng.standard_normal((*batch, n1, r, k))
        assert err <= projection_error(A.astype(np.float64), X) + tol


@pytest.mark.parametrize("r", [1, 2, 3])
def test_tubal_rank_of_known_rank(rng, r):
    n1, n2, k = 5, 4, 6
    A = naive_tprod(rng.standard_normal((n1, r, k)), rng.standard_normal((r, n2, k)))
    assert int(jt.tubal_rank(A.astype(np.float32))) == r


def test_tubal_rank_is_the_largest_rank_over_slices(rng):
    # k = 6: half spectrum has 4 slices; only slice 2 (a complex slice) has rank 3.
    svals = [[3, 1, 0], [2, 1, 0], [2, 1.5, 0.5], [1, 0, 0]]
    A = spectrum_tensor(rng, 4, 3, 6, svals).astype(np.float32)
    assert int(jt.tubal_rank(A)) == 3
    fsv = jt.fourier_singular_values(A)
    np.testing.assert_allclose(fsv, svals, rtol=0, atol=svd_tol(A))


def test_tubal_rank_rtol_and_zero(rng):
    n1, n2, k, r = 5, 4, 6, 2
    # Tubal rank 2, with singular values in [1, 3] in every Fourier slice.
    low = spectrum_tensor(rng, n1, n2, k, [[3 - 0.2 * j, 1 + 0.1 * j] for j in range(4)])
    noise = 1e-3 * rng.standard_normal((n1, n2, k))
    A = (low + noise).astype(np.float32)
    assert int(jt.tubal_rank(A)) == min(n1, n2)  # the noise is far above the default rtol
    # The noise's Fourier slices have i.i.d. entries of size 1e-3 sqrt(k), so its singular values
    # are below about 1e-3 sqrt(k) (sqrt(n1) + sqrt(n2)) ~ 0.01 (and perturb the signal's by
    # as little): a threshold of 0.05 (rtol = 0.05 / top) lies between noise and signal.
    top = np.max(slice_singular_values(A))
    assert int(jt.tubal_rank(A, rtol=0.05 / top)) == r
    assert int(jt.tubal_rank(A, rtol=0)) == min(n1, n2)
    assert int(jt.tubal_rank(np.zeros((3, 4, 5), np.float32))) == 0
    batched = np.stack([A, np.zeros_like(A), low.astype(np.float32)])
    np.testing.assert_array_equal(jt.tubal_rank(batched, rtol=0.05 / top), [r, 0, r])


@pytest.mark.parametrize("k", [1, 4, 5])
@pytest.mark.parametrize("full", [False, True])
def test_fourier_singular_values(rng, k, full):
    A = f32(rng, 2, 4, 3, k)
    s = jt.fourier_singular_values(A, full=full)
    expected = slice_singular_values(A)  # all k slices
    if not full:
        expected = expected[..., : k // 2 + 1, :]
    assert s.shape == expected.shape
    np.testing.assert_allclose(s, expected, rtol=0, atol=svd_tol(A))
    if full:
        for j in range(1, k):
            np.testing.assert_array_equal(s[..., k - j, :], s[..., j, :])


@pytest.mark.parametrize("shape", [(4, 3, 5), (3, 4, 6), (2, 3, 3, 1)], ids=str)
def test_singular_tubes(rng, shape):
    A = f32(rng, *shape)
    tubes = jt.singular_tubes(A)
    expected = np.swapaxes(np.fft.ifft(slice_singular_values(A), axis=-2).real, -1, -2)
    assert tubes.shape == expected.shape == (*shape[:-3], min(shape[-3:-1]), shape[-1])
    np.testing.assert_allclose(tubes, expected, rtol=0, atol=svd_tol(A))


def test_tnorm(rng):
    A = f32(rng, 2, 3, 4, 5)
    expected = [np.linalg.norm(a.astype(np.float64)) for a in A]
    # a sum of n1 n2 k = 60 squares: relative error <= 60 eps (and the sqrt halves it).
    np.testing.assert_allclose(jt.tnorm(A), expected, rtol=60 * EPS32, atol=0)


@pytest.mark.parametrize("shape", [(4, 3, 5), (3, 4, 6), (3, 3, 1), (2, 4, 2, 4)], ids=str)
def test_tspectral_norm(rng, shape):
    A = f32(rng, *shape)
    got = np.atleast_1d(jt.tspectral_norm(A))
    expected = [np.linalg.norm(bcirc(a.astype(np.float64)), 2) for a in A.reshape(-1, *shape[-3:])]
    np.testing.assert_allclose(got, expected, rtol=0, atol=svd_tol(A))


@pytest.mark.parametrize("normalization", ["mean", "sum"])
@pytest.mark.parametrize("shape", [(4, 3, 5), (3, 4, 6), (2, 3, 3, 1)], ids=str)
def test_tnuclear_norm(rng, shape, normalization):
    A = f32(rng, *shape)
    k = shape[-1]
    divisor = k if normalization == "mean" else 1  # "mean": (1/k) ||bcirc(A)||_*
    got = np.atleast_1d(jt.tnuclear_norm(A, normalization=normalization))
    nuclear = np.array(
        [np.linalg.norm(bcirc(a.astype(np.float64)), "nuc") for a in A.reshape(-1, *shape[-3:])]
    )
    expected = nuclear / divisor
    # a sum of k min(n1, n2) singular values, each within svd_tol.
    tol = min(shape[-3:-1]) * k * svd_tol(A) / divisor
    np.testing.assert_allclose(got, expected, rtol=0, atol=tol)
    if normalization == "mean":
        np.testing.assert_array_equal(np.atleast_1d(jt.tnuclear_norm(A)), got)  # the default


# ---------------------------------------------------------------------------------------------
# jit and vmap agree with eager mode
# ---------------------------------------------------------------------------------------------


def _tsvd_reconstruction(A):
    U, S, V = tubal.tsvd(A, rank=2)
    return tubal.tprod(tubal.tprod(U, S), tubal.ttranspose(V))


UNARY = {
    "ttranspose": tubal.ttranspose,
    "tsvd_reconstruction": _tsvd_reconstruction,
    "tnorm": tubal.tnorm,
    "tspectral_norm": tubal.tspectral_norm,
    "tnuclear_norm_sum": lambda A: tubal.tnuclear_norm(A, normalization="sum"),
    "singular_tubes": tubal.singular_tubes,
    "tubal_rank": tubal.tubal_rank,
    "to_fourier": tubal.to_fourier,
}


@pytest.mark.parametrize("name", list(UNARY))
def test_jit_and_vmap_equal_eager(rng, name):
    fn = UNARY[name]
    As = f32(rng, 3, 4, 3, 5)
    eager = np.stack([np.asarray(fn(a)) for a in As])  # eager, one example at a time
    # Same algorithm, possibly fused or batched differently by XLA: within the rounding bound of
    # the whole computation (transforms + slice SVDs) on the scale of the input.
    tol = svd_tol(As)
    np.testing.assert_allclose(jax.jit(fn)(As[0]), eager[0], rtol=0, atol=tol)
    # vmap under jit: the batching rules are the same, without eager mode's per-op compilation.
    np.testing.assert_allclose(jax.jit(jax.vmap(fn))(As), eager, rtol=0, atol=tol)


@pytest.mark.parametrize("k", [5, K_FFT])
def test_tprod_jit_and_vmap_equal_eager(rng, k):
    As, Bs = f32(rng, 3, 2, 3, k), f32(rng, 3, 3, 4, k)
    eager = np.stack([np.asarray(tubal.tprod(a, b)) for a, b in zip(As, Bs, strict=True)])
    M = np.max(naive_tprod(np.abs(As), np.abs(Bs)))
    tol = 2 * rounding_tol(3, k, M)  # both within rounding_tol of the exact product
    np.testing.assert_allclose(jax.jit(tubal.tprod)(As[0], Bs[0]), eager[0], rtol=0, atol=tol)
    np.testing.assert_allclose(jax.jit(jax.vmap(tubal.tprod))(As, Bs), eager, rtol=0, atol=tol)
    np.testing.assert_allclose(
        jax.jit(jax.vmap(tubal.tprod, (0, None)))(As, Bs[0]),
        np.stack([np.asarray(tubal.tprod(a, Bs[0])) for a in As]),
        rtol=0,
        atol=tol,
    )


# ---------------------------------------------------------------------------------------------
# Gradients (float64)
# ---------------------------------------------------------------------------------------------
# check_grads compares forward- and reverse-mode derivatives with central finite differences
# (step 1e-4 in float64, its default tolerance 1e-5); the functions are jitted so that each
# derivative program compiles once instead of op by op.


@pytest.mark.parametrize("k", [5, K_FFT])  # the DFT-matmul transform and the rfft one
def test_tprod_gradients(x64, rng, k):
    A, B = jnp.asarray(rng.standard_normal((2, 3, k))), jnp.asarray(rng.standard_normal((3, 2, k)))
    tprod = jax.jit(tubal.tprod)
    assert tprod(A, B).dtype == jnp.float64
    # tprod is bilinear: its first derivatives determine it, so order 1 suffices here.
    check_grads(tprod, (A, B), order=1, modes=("fwd", "rev"))


def _separated(rng, n1, n2, k):
    """A tensor whose Fourier slice j has singular values 3 + 0.1 j, 2 + 0.1 j, ...: distinct and
    well separated (gaps >= 1), so that the t-SVD is differentiable with a well-conditioned
    derivative."""
    m = min(n1, n2)
    svals = [[m - i + 0.1 * j for i in range(m)] for j in range(k // 2 + 1)]
    return jnp.asarray(spectrum_tensor(rng, n1, n2, k, svals))


def test_fourier_singular_values_gradients(x64, rng):
    A = _separated(rng, 4, 3, 5)  # k = 5: a real slice and two complex ones
    check_grads(
        jax.jit(lambda a: jnp.sum(tubal.fourier_singular_values(a))),
        (A,),
        order=2,
        modes=("fwd", "rev"),
    )
    # A derivative that can fail: the sum of all k slices' squared singular values is
    # k ||A||_F^2 (Parseval), whose gradient is 2 k A.
    g = jax.jit(jax.grad(lambda a: jnp.sum(tubal.fourier_singular_values(a, full=True) ** 2)))(A)
    np.testing.assert_allclose(g, 2 * 5 * A, rtol=1e-10)


def test_truncated_tsvd_gradients(x64, rng):
    A = _separated(rng, 4, 3, 4)  # k = 4: real slices 0 and 2 (Nyquist) and a complex slice 1
    reconstruction = jax.jit(_tsvd_reconstruction)
    check_grads(reconstruction, (A,), order=1, modes=("fwd", "rev"))
    # The truncated reconstruction is homogeneous of degree 1, so its derivative along A itself
    # is the reconstruction.
    _, tangent = jax.jvp(reconstruction, (A,), (A,))
    np.testing.assert_allclose(tangent, reconstruction(A), atol=1e-10)


# ---------------------------------------------------------------------------------------------
# Bad input: a clear ValueError / TypeError naming the argument, raised at trace time
# ---------------------------------------------------------------------------------------------

_A = np.ones((3, 4, 5), np.float32)
_B = np.ones((4, 2, 5), np.float32)

BAD = [
    # id, function of the array arguments, array arguments, exception, message pattern
    (
        "inner-dims",
        tubal.tprod,
        (_A, np.ones((3, 2, 5), np.float32)),
        ValueError,
        r"inner dimensions.*`A`.*`B`",
    ),
    (
        "tube-length",
        tubal.tprod,
        (_A, np.ones((4, 2, 6), np.float32)),
        ValueError,
        r"`A` and `B` must have the same tube length",
    ),
    (
        "batch-axes",
        tubal.tprod,
        (np.ones((2, 3, 4, 5)), np.ones((3, 4, 2, 5))),
        ValueError,
        r"batch axes of `A`",
    ),
    ("A-2d", tubal.tprod, (_A[..., 0], _B), ValueError, r"`A` must have at least 3 axes"),
    ("B-2d", tubal.tprod, (_A, _B[..., 0]), ValueError, r"`B` must have at least 3 axes"),
    ("ttranspose-2d", tubal.ttranspose, (_A[..., 0],), ValueError, r"`A` must have at least 3"),
    ("tsvd-1d", tubal.tsvd, (np.ones(5),), ValueError, r"`A` must have at least 3 axes"),
    ("tnorm-2d", tubal.tnorm, (_A[..., 0],), ValueError, r"`A` must have at least 3 axes"),
    ("A-complex", tubal.tprod, (_A.astype(np.complex64), _B), TypeError, r"`A` must be real"),
    ("B-complex", tubal.tprod, (_A, _B.astype(np.complex64)), TypeError, r"`B` must be real"),
    ("tsvd-complex", tubal.tsvd, (_A.astype(np.complex64),), TypeError, r"`A` must be real"),
    (
        "to_fourier-complex",
        tubal.to_fourier,
        (_A.astype(np.complex64),),
        TypeError,
        r"`A` must be real",
    ),
    (
        "rank-0",
        lambda a: tubal.tsvd(a, rank=0),
        (_A,),
        ValueError,
        r"`rank` must be an int in \[1, 3\]",
    ),
    ("rank-negative", lambda a: tubal.tsvd(a, rank=-1), (_A,), ValueError, r"`rank`.*got -1"),
    ("rank-too-large", lambda a: tubal.tsvd(a, rank=4), (_A,), ValueError, r"`rank`.*got 4"),
    (
        "rank-float",
        lambda a: tubal.tsvd(a, rank=2.0),
        (_A,),
        TypeError,
        r"`rank` must be a Python int",
    ),
    (
        "rank-str",
        lambda a: tubal.tsvd(a, rank="2"),
        (_A,),
        TypeError,
        r"`rank` must be a Python int",
    ),
    (
        "rtol-nan",
        lambda a: tubal.tubal_rank(a, rtol=float("nan")),
        (_A,),
        ValueError,
        r"`rtol` must be a finite float >= 0; got nan",
    ),
    (
        "rtol-inf",
        lambda a: tubal.tubal_rank(a, rtol=float("inf")),
        (_A,),
        ValueError,
        r"`rtol`.*inf",
    ),
    ("rtol-negative", lambda a: tubal.tubal_rank(a, rtol=-1), (_A,), ValueError, r"`rtol`.*-1"),
    (
        "rtol-str",
        lambda a: tubal.tubal_rank(a, rtol="0.1"),
        (_A,),
        TypeError,
        r"`rtol` must be a float",
    ),
    (
        "from_fourier-slices",
        lambda a: tubal.from_fourier(a, 6),
        (np.ones((3, 3, 4), np.complex64),),
        ValueError,
        r"`A_hat` must have k // 2 \+ 1 = 4 frequency slices",
    ),
    (
        "from_fourier-k0",
        lambda a: tubal.from_fourier(a, 0),
        (np.ones((1, 3, 4), np.complex64),),
        ValueError,
        r"`k` must be an int >= 1",
    ),
    (
        "from_fourier-2d",
        lambda a: tubal.from_fourier(a, 5),
        (np.ones((3, 4), np.complex64),),
        ValueError,
        r"`A_hat` must have at least 3 axes",
    ),
    ("tinverse-non-square", tubal.tinverse, (_A,), ValueError, r"`A` must have square frontal"),
    (
        "nuclear-bogus",
        lambda a: tubal.tnuclear_norm(a, normalization="bogus"),
        (_A,),
        ValueError,
        r"`normalization` must be one of \('mean', 'sum'\); got 'bogus'",
    ),
]


@pytest.mark.parametrize("fn, args, exc, match", [c[1:] for c in BAD], ids=[c[0] for c in BAD])
def test_bad_input(fn, args, exc, match):
    with pytest.raises(exc, match=match):
        fn(*args)
    # The check is on shapes, dtypes and static arguments: it fires while tracing, before any
    # computation, under eval_shape and jit alike.
    with pytest.raises(exc, match=match):
        jax.eval_shape(fn, *args)
    with pytest.raises(exc, match=match):
        jax.jit(fn)(*args)


@pytest.mark.parametrize("n, k, name", [(0, 3, "n"), (3, 0, "k"), (2.0, 3, "n"), (3, True, "k")])
def test_tidentity_bad_sizes(n, k, name):
    with pytest.raises(ValueError, match=re.escape(f"`{name}` must be an int >= 1")):
        tubal.tidentity(n, k)


def test_scalar_arguments_accept_numpy_and_int(rng):
    # Valid static arguments of NumPy or int type are accepted (no annotation rejects them).
    A = f32(rng, 4, 3, 5)
    _, S, _ = jt.tsvd(A, rank=np.int64(2))
    assert S.shape == (2, 2, 5)
    assert int(jt.tubal_rank(A, rtol=0)) == 3
    assert int(jt.tubal_rank(A, rtol=np.float32(0.999))) == 1  # only the top value
    assert jt.from_fourier(jt.to_fourier(A), np.int64(5)).shape == (4, 3, 5)
    assert tubal.tidentity(np.int64(2), np.int32(3)).shape == (2, 2, 3)
