"""The t-product algebra of third-order tensors (Kilmer and Martin, 2011).

A tubal tensor is a real array of shape ``(..., n1, n2, k)``: an ``n1 x n2`` matrix whose entries
are tubes of length ``k`` (the last axis), with any number of leading batch axes. The t-product
multiplies tubes by circular convolution, so it is diagonalised by the discrete Fourier transform
along the tube axis: in the Fourier domain it is an ordinary matrix product of each frontal slice.
For real tensors only the ``k // 2 + 1`` slices of the half spectrum are needed (``rfft``); the
others are their complex conjugates.

Conventions of this module:

- *Fourier layout.* [`to_fourier`][factorjax.tubal.to_fourier] returns the half spectrum
  frequency-major, ``(..., k // 2 + 1, n1, n2)``, so that every slice is a matrix ready for
  ``matmul``, ``svd`` or ``eigh``.
- *Norms.* ``tnorm`` is the Frobenius norm of the tensor. ``tspectral_norm`` is the spectral norm
  of the block-circulant matrix ``bcirc(A)``, that is the largest singular value over all Fourier
  slices. ``tnuclear_norm`` states its normalisation (the literature uses two).

Example:
    >>> import jax, jax.numpy as jnp
    >>> from factorjax import tubal
    >>> A = jax.random.normal(jax.random.key(0), (4, 3, 5))
    >>> U, S, V = tubal.tsvd(A)
    >>> B = tubal.tprod(tubal.tprod(U, S), tubal.ttranspose(V))
    >>> bool(jnp.allclose(A, B, atol=1e-5))
    True
"""

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import Array
from jax.typing import ArrayLike
from jaxtyping import Complex, Float, Int

from factorjax import _lapack
from factorjax._checks import as_real_array, check_choice, check_rank, check_tolerance, describe

# Scalar arguments that this module validates itself (`k`, `n`, `rank`, `rtol`, `normalization`)
# are annotated `Any`: a narrower hint (`int`, `float`) would let a runtime type checker
# (jaxtyping + beartype) reject valid `np.int64` ranks or an int `rtol = 0`, and would pre-empt
# the clear error of `factorjax._checks` with its own. The docstrings state the contract.

__all__ = [
    "fourier_singular_values",
    "freq_weights",
    "from_fourier",
    "num_freqs",
    "singular_tubes",
    "tidentity",
    "tinverse",
    "tnorm",
    "tnuclear_norm",
    "to_fourier",
    "tprod",
    "tspectral_norm",
    "tsvd",
    "ttranspose",
    "tubal_rank",
]

# How the t-product is computed (measured in benchmarks/tproduct.py; see docs/benchmarks.md).
#
# A real tensor's half spectrum is held as ``k`` real "spectral rows", frequency-major with the row
# axis first, ``(k, ..., n1, n2)``: ``Re X_j`` for the ``f = k // 2 + 1`` slices, then ``Im X_j``
# for the ``c = (k - 1) // 2`` complex ones (the DC and, for even k, Nyquist slices are real).
# Over the reals the tube algebra splits into those 1 or 2 real factors and c complex ones, so the
# slice products take f real matmuls plus 3 per complex slice by Gauss's trick: 3 k / 2 - 1 in all
# for even k, the fewest any bilinear algorithm can use (Alder-Strassen). They run as two batched
# real matmuls (XLA's complex matmul is about twice slower on CPU). With the row axis first, the
# transforms are plain matmuls: (k, k) @ (k, tubes)^T forward and (k, k) @ (k, tubes) back, then
# one transpose. Up to `_DFT_MATMUL_MAX_K` the transforms are these dense DFT matmuls (faster on
# CPU than an FFT plus the transposes it needs); above it, rfft / irfft.
_DFT_MATMUL_MAX_K = 128
# The DFT matmuls ask for full float32 precision, so that the transforms are as exact as an FFT on
# every backend (TPUs and recent GPUs otherwise multiply float32 in bfloat16 / tf32 passes); the
# slice products follow the caller's default matmul precision, like any matmul. No-op on CPU.
_EXACT = jax.lax.Precision.HIGHEST


# ---------------------------------------------------------------------------------------------
# Transforms between real tensors and their half spectra
# ---------------------------------------------------------------------------------------------


def _num_freqs(k: int) -> int:
    return k // 2 + 1


def _num_complex(k: int) -> int:
    """Number of half-spectrum slices that are complex for real input: slices ``1 .. c``."""
    return (k - 1) // 2


@functools.cache
def _dft_matrices(k: int) -> np.ndarray:
    """The ``(k, k)`` real DFT matrix mapping a tube to its spectral rows (float64, cached).

    Rows ``cos(2 pi j t / k)`` for ``j < f``, then ``-sin(2 pi j t / k)`` for ``1 <= j <= c``.
    """
    f, c = _num_freqs(k), _num_complex(k)
    t = 2.0 * np.pi * np.outer(np.arange(f), np.arange(k)) / k
    return np.concatenate([np.cos(t), -np.sin(t[1 : c + 1])])


@functools.cache
def _idft_matrices(k: int) -> np.ndarray:
    """The inverse of [`_dft_matrices`][]: ``(k, k)``, spectral rows back to a tube.

    ``x[t] = sum_j w_j / k (Re_j cos(2 pi j t / k) - Im_j sin(2 pi j t / k))`` with ``w_j = 2``
    for the complex slices and 1 for the real ones (float64, cached).
    """
    f, c = _num_freqs(k), _num_complex(k)
    w = np.ones(f)
    w[1 : c + 1] = 2.0
    t = 2.0 * np.pi * np.outer(np.arange(f), np.arange(k)) / k
    return np.concatenate([(w[:, None] / k) * np.cos(t), -(2.0 / k) * np.sin(t[1 : c + 1])])


def _forward(a: Array) -> Array:
    """The spectral rows ``(k, ..., n1, n2)`` of a real tensor ``a``, ``(..., n1, n2, k)``."""
    k = a.shape[-1]
    if k <= _DFT_MATMUL_MAX_K:
        u = jnp.asarray(_dft_matrices(k), a.dtype)
        return jax.lax.dot_general(u, a, (((1,), (a.ndim - 1,)), ((), ())), precision=_EXACT)
    a_hat = jnp.fft.rfft(a, axis=-1)
    rows = jnp.concatenate([jnp.real(a_hat), jnp.imag(a_hat[..., 1 : _num_complex(k) + 1])], -1)
    return jnp.moveaxis(rows, -1, 0)


def _inverse(p: Array) -> Array:
    """The real tensor ``(..., n1, n2, k)`` whose spectral rows are ``p``, ``(k, ..., n1, n2)``."""
    k = p.shape[0]
    if k <= _DFT_MATMUL_MAX_K:
        w = jnp.asarray(_idft_matrices(k), p.dtype)
        q = jax.lax.dot_general(w, p, (((0,), (0,)), ((), ())), precision=_EXACT)
        return jnp.moveaxis(q, 0, -1)
    f, c = _num_freqs(k), _num_complex(k)
    im = jnp.pad(p[f:], [(1, f - 1 - c)] + [(0, 0)] * (p.ndim - 1))
    spectrum = jax.lax.complex(jnp.moveaxis(p[:f], 0, -1), jnp.moveaxis(im, 0, -1))
    return jnp.fft.irfft(spectrum, n=k, axis=-1)


def _spectral_matmul(a: Array, b: Array) -> Array:
    """Slice-wise products of spectral rows: ``(k, ..., n1, n)`` and ``(k, ..., n, n2)`` to the
    spectral rows ``(k, ..., n1, n2)`` of the t-product (batch axes broadcast).

    One real matmul per real slice and three per complex slice (Gauss's trick): with
    ``P = [Re A Re B; Im A Im B]`` (one batched matmul over all ``k`` rows) and
    ``S = (Re A + Im A)(Re B + Im B)`` (the complex slices), ``Re = Re A Re B - Im A Im B`` and
    ``Im = S - Re A Re B - Im A Im B``.
    """
    k = a.shape[0]
    f, c = _num_freqs(k), _num_complex(k)
    cx = slice(1, c + 1)
    p = jnp.matmul(a, b)
    s = jnp.matmul(a[cx] + a[f:], b[cx] + b[f:])
    re = p[:f] - jnp.pad(p[f:], [(1, f - 1 - c)] + [(0, 0)] * (p.ndim - 1))
    return jnp.concatenate([re, s - p[cx] - p[f:]])


def to_fourier(A: ArrayLike) -> Complex[Array, "*batch f n1 n2"]:
    """The half spectrum of a real tubal tensor, frequency-major.

    Arguments:
        A: real tensor of shape ``(..., n1, n2, k)``.

    Returns:
        Complex array of shape ``(..., k // 2 + 1, n1, n2)``: slice ``j`` is the frontal slice
        of ``fft(A, axis=-1)`` at frequency ``j``. Slices ``k - j`` are the complex conjugates of
        slices ``j`` and are not stored.
    """
    A = as_real_array("A", A, min_ndim=3)
    return jnp.fft.rfft(jnp.moveaxis(A, -1, -3), axis=-3)


def from_fourier(A_hat: ArrayLike, k: Any) -> Float[Array, "*batch n1 n2 k"]:
    """Inverse of [`to_fourier`][factorjax.tubal.to_fourier].

    Arguments:
        A_hat: complex half spectrum of shape ``(..., k // 2 + 1, n1, n2)``. A real array is read
            as a spectrum with zero imaginary part.
        k: the tube length of the result (the half spectrum alone does not say whether ``k`` is
            odd or even).

    Returns:
        Real tensor of shape ``(..., n1, n2, k)``. The imaginary parts of the zero-frequency
        slice (and of the Nyquist slice for even ``k``) are ignored, as in ``irfft``.
    """
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"`k` must be an int >= 1; got {k!r}.")
    k = int(k)
    if not hasattr(A_hat, "dtype"):
        A_hat = jnp.asarray(A_hat)
    if A_hat.ndim < 3:
        raise ValueError(
            f"`A_hat` must have at least 3 axes (..., f, n1, n2); got {describe(A_hat)}."
        )
    if A_hat.shape[-3] != _num_freqs(k):
        raise ValueError(
            f"`A_hat` must have k // 2 + 1 = {_num_freqs(k)} frequency slices on axis -3 for "
            f"k = {k}; got {describe(A_hat)}."
        )
    out = jnp.fft.irfft(jnp.asarray(A_hat), n=k, axis=-3)
    return jnp.moveaxis(out, -3, -1)


# ---------------------------------------------------------------------------------------------
# The t-product and its companions
# ---------------------------------------------------------------------------------------------


def _check_pair(A: Array, B: Array, a_name: str = "A", b_name: str = "B") -> None:
    if A.shape[-1] != B.shape[-1]:
        raise ValueError(
            f"`{a_name}` and `{b_name}` must have the same tube length (last axis); got "
            f"{a_name}.shape = {A.shape} and {b_name}.shape = {B.shape}."
        )
    if A.shape[-2] != B.shape[-3]:
        raise ValueError(
            f"inner dimensions must agree: `{a_name}` is (..., n1, n, k) and `{b_name}` is "
            f"(..., n, n2, k); got {a_name}.shape = {A.shape} and {b_name}.shape = {B.shape}."
        )
    try:
        np.broadcast_shapes(A.shape[:-3], B.shape[:-3])
    except ValueError:
        raise ValueError(
            f"the batch axes of `{a_name}` {A.shape[:-3]} and `{b_name}` {B.shape[:-3]} do not "
            "broadcast."
        ) from None


def tprod(A: ArrayLike, B: ArrayLike) -> Float[Array, "*batch n1 n2 k"]:
    """The t-product ``A * B``.

    ``(A * B)[i, j, :] = sum_l circconv(A[i, l, :], B[l, j, :])``. Computed in the Fourier
    domain over the ``k // 2 + 1`` slices of the half spectrum: one real matmul for each real
    slice (zero frequency, and Nyquist for even ``k``) and three for each complex one (Gauss's
    trick), the fewest real products possible; exact (to rounding) for odd and even ``k``.

    Arguments:
        A: real tensor of shape ``(..., n1, n, k)``.
        B: real tensor of shape ``(..., n, n2, k)``; batch axes broadcast with those of ``A``.

    Returns:
        Real tensor of shape ``(..., n1, n2, k)``.
    """
    A = as_real_array("A", A, min_ndim=3)
    B = as_real_array("B", B, min_ndim=3)
    _check_pair(A, B)
    dtype = jnp.result_type(A, B)
    A, B = A.astype(dtype), B.astype(dtype)
    # Give both operands the same number of batch axes, so that no helper that stacks or moves
    # axes (`_forward` puts its spectral rows on a new leading axis) can line up an axis of one
    # operand with a batch axis of the other: (2, 1, n1, n, k) * (3, n, n2, k).
    ndim = max(A.ndim, B.ndim)
    A = jnp.reshape(A, (1,) * (ndim - A.ndim) + A.shape)
    B = jnp.reshape(B, (1,) * (ndim - B.ndim) + B.shape)
    return _inverse(_spectral_matmul(_forward(A), _forward(B)))


def ttranspose(A: ArrayLike) -> Float[Array, "*batch n2 n1 k"]:
    """The t-transpose: transpose every frontal slice and reverse the order of slices 2..k.

    ``ttranspose(A)[:, :, 0] = A[:, :, 0].T`` and ``ttranspose(A)[:, :, j] = A[:, :, k - j].T``,
    so that ``ttranspose(A * B) = ttranspose(B) * ttranspose(A)``.

    Arguments:
        A: real tensor of shape ``(..., n1, n2, k)``.

    Returns:
        Real tensor of shape ``(..., n2, n1, k)``.
    """
    A = as_real_array("A", A, min_ndim=3)
    At = jnp.swapaxes(A, -3, -2)
    return jnp.concatenate([At[..., :1], jnp.flip(At[..., 1:], axis=-1)], axis=-1)


def tidentity(n: Any, k: Any, dtype=None) -> Float[Array, "n n k"]:
    """The identity tensor: the ``n x n`` identity in the first frontal slice, zeros elsewhere.

    Arguments:
        n: the size of the (square) frontal slices.
        k: the tube length.
        dtype: the floating dtype (default: JAX's default float).

    Returns:
        Real tensor of shape ``(n, n, k)``.
    """
    for name, value in (("n", n), ("k", k)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"`{name}` must be an int >= 1; got {value!r}.")
    dtype = jnp.result_type(float) if dtype is None else dtype
    return jnp.zeros((n, n, k), dtype).at[:, :, 0].set(jnp.eye(n, dtype=dtype))


def tinverse(A: ArrayLike) -> Float[Array, "*batch n n k"]:
    """The t-inverse: the tensor ``B`` with ``A * B = B * A = I``.

    Computed slice by slice in the Fourier domain. A tensor with a singular Fourier slice has no
    inverse; the result is then non-finite.

    Arguments:
        A: real tensor of shape ``(..., n, n, k)``.

    Returns:
        Real tensor of shape ``(..., n, n, k)``.
    """
    A = as_real_array("A", A, min_ndim=3)
    if A.shape[-3] != A.shape[-2]:
        raise ValueError(f"`A` must have square frontal slices (..., n, n, k); got {describe(A)}.")
    return from_fourier(jnp.linalg.inv(to_fourier(A)), A.shape[-1])


# ---------------------------------------------------------------------------------------------
# The t-SVD and spectral quantities
# ---------------------------------------------------------------------------------------------


def _real_slices(k: int) -> list[int]:
    """Indices of the half-spectrum slices that are real for real input (DC, Nyquist)."""
    return [0, k // 2] if k % 2 == 0 and k > 1 else [0]


def _fourier_svd(a_hat: Array, k: int) -> tuple[Array, Array, Array]:
    """Thin SVD of every half-spectrum slice; real SVDs for the slices that are real.

    Returns ``(U_hat, s, Vh_hat)`` with ``s`` sorted descending per slice. Taking real SVDs of
    the real slices (DC and, for even ``k``, Nyquist) keeps the factors conjugate-symmetric, hence
    the tubes real.
    """
    c = _num_complex(k)
    real = jnp.real(jnp.concatenate([a_hat[..., :1, :, :], a_hat[..., c + 1 :, :, :]], axis=-3))
    if not c:
        u, s, vh = _lapack.svd(real, full_matrices=False)
        return u.astype(a_hat.dtype), s, vh.astype(a_hat.dtype)
    u_c, s_c, vh_c = _lapack.svd(a_hat[..., 1 : c + 1, :, :], full_matrices=False)
    u_r, s_r, vh_r = _lapack.svd(real, full_matrices=False)

    def merge(r, x, axis):  # slice 0 real, slices 1..c complex, then Nyquist real (even k)
        r = r.astype(x.dtype)
        first = jax.lax.slice_in_dim(r, 0, 1, axis=axis)
        return jnp.concatenate([first, x, jax.lax.slice_in_dim(r, 1, None, axis=axis)], axis)

    return merge(u_r, u_c, -3), merge(s_r, s_c, -2), merge(vh_r, vh_c, -3)


def tsvd(
    A: ArrayLike, rank: Any = None
) -> tuple[
    Float[Array, "*batch n1 r k"], Float[Array, "*batch r r k"], Float[Array, "*batch n2 r k"]
]:
    """The (thin) t-SVD ``A = U * S * V^T``.

    Arguments:
        A: real tensor of shape ``(..., n1, n2, k)``.
        rank: keep the leading ``rank`` singular tubes (``1 <= rank <= min(n1, n2)``); the
            result is the best approximation of tubal rank ``rank`` in Frobenius norm
            (Eckart-Young holds slice by slice in the Fourier domain). ``None`` keeps all
            ``min(n1, n2)``.

    Returns:
        ``(U, S, V)``, real, of shapes ``(..., n1, r, k)``, ``(..., r, r, k)`` and
        ``(..., n2, r, k)``: ``U`` and ``V`` orthogonal (``ttranspose(U) * U = I``) and ``S``
        f-diagonal (only its diagonal tubes are non-zero).

    The gradient is exact where the singular values of every Fourier slice are distinct.
    """
    A = as_real_array("A", A, min_ndim=3)
    n1, n2, k = A.shape[-3:]
    r = min(n1, n2) if rank is None else check_rank("rank", rank, min(n1, n2))
    f, c = _num_freqs(k), _num_complex(k)
    rows = _forward(A)  # (k, ..., n1, n2): Re of the f slices, then Im of the c complex ones
    im = jnp.pad(rows[f:], [(1, f - 1 - c)] + [(0, 0)] * (rows.ndim - 1))
    u_hat, s, vh_hat = _fourier_svd(jnp.moveaxis(jax.lax.complex(rows[:f], im), 0, -3), k)
    u_hat, s, vh_hat = u_hat[..., :r], s[..., :r], vh_hat[..., :r, :]

    def tubes(x_hat):  # (..., f, m, r) half spectrum to real tubes (..., m, r, k)
        x_hat = jnp.moveaxis(x_hat, -3, 0)
        return _inverse(jnp.concatenate([jnp.real(x_hat), jnp.imag(x_hat[1 : c + 1])]))

    s_tubes = jnp.fft.irfft(jnp.swapaxes(s, -1, -2).astype(u_hat.dtype), n=k, axis=-1)
    S = jnp.eye(r, dtype=A.dtype)[:, :, None] * s_tubes[..., None, :, :]  # f-diagonal
    return tubes(u_hat), S, tubes(jnp.conj(jnp.swapaxes(vh_hat, -1, -2)))


def fourier_singular_values(A: ArrayLike, *, full: bool = False) -> Float[Array, "*batch f r"]:
    """Singular values of every Fourier slice of ``A``, descending within each slice.

    These are the singular values the theory of tubal factorizations speaks of: the singular
    values of ``bcirc(A)`` are exactly these, over all ``k`` frequencies.

    Arguments:
        A: real tensor of shape ``(..., n1, n2, k)``.
        full: if ``False`` (default), the ``k // 2 + 1`` slices of the half spectrum; if
            ``True``, all ``k`` slices (slice ``k - j`` repeats slice ``j``).

    Returns:
        Real array of shape ``(..., k // 2 + 1, min(n1, n2))`` (or ``(..., k, min(n1, n2))``).
    """
    A = as_real_array("A", A, min_ndim=3)
    k = A.shape[-1]
    s = _lapack.svd(to_fourier(A), compute_uv=False)
    if full:
        s = jnp.concatenate([s, jnp.flip(s[..., 1 : (k + 1) // 2, :], axis=-2)], axis=-2)
    return s


def singular_tubes(A: ArrayLike) -> Float[Array, "*batch r k"]:
    """The diagonal tubes of ``S`` in the t-SVD of ``A``.

    Arguments:
        A: real tensor of shape ``(..., n1, n2, k)``.

    Returns:
        Real array of shape ``(..., min(n1, n2), k)``: row ``i`` is the tube ``S[i, i, :]``,
        ordered by the Fourier-domain singular values (descending in every slice).
    """
    A = as_real_array("A", A, min_ndim=3)
    k = A.shape[-1]
    s = fourier_singular_values(A)  # (..., f, r)
    return jnp.fft.irfft(jnp.swapaxes(s, -1, -2).astype(jnp.result_type(A, 1j)), n=k, axis=-1)


def _default_rtol(A: Array) -> float:
    return max(A.shape[-3], A.shape[-2]) * A.shape[-1] * float(jnp.finfo(A.dtype).eps)


def tubal_rank(A: ArrayLike, rtol: Any = None) -> Int[Array, "*batch"]:
    """The tubal rank: the number of non-zero singular tubes.

    Equals the largest rank over the Fourier slices. A singular value counts as non-zero when
    it exceeds ``rtol`` times the largest singular value of ``A`` (over all slices).

    Arguments:
        A: real tensor of shape ``(..., n1, n2, k)``.
        rtol: relative tolerance, finite and ``>= 0``; default ``max(n1, n2) * k * eps``.

    Returns:
        Integer array of shape ``(...)``.
    """
    A = as_real_array("A", A, min_ndim=3)
    rtol = _default_rtol(A) if rtol is None else check_tolerance("rtol", rtol)
    s = fourier_singular_values(A)
    top = jnp.max(s, axis=(-2, -1), keepdims=True)
    return jnp.max(jnp.sum(s > rtol * top, axis=-1), axis=-1)


def tnorm(A: ArrayLike) -> Float[Array, "*batch"]:
    """Frobenius norm of a tensor: ``sqrt(sum(A**2))`` over its last three axes.

    Arguments:
        A: real tensor of shape ``(..., n1, n2, k)``.

    Returns:
        Real array of shape ``(...)``.
    """
    A = as_real_array("A", A, min_ndim=3)
    return jnp.sqrt(jnp.sum(A * A, axis=(-3, -2, -1)))


def tspectral_norm(A: ArrayLike) -> Float[Array, "*batch"]:
    """Tensor spectral norm: the spectral norm of ``bcirc(A)``.

    Equals the largest singular value over all Fourier slices.

    Arguments:
        A: real tensor of shape ``(..., n1, n2, k)``.

    Returns:
        Real array of shape ``(...)``.
    """
    return jnp.max(fourier_singular_values(A)[..., 0], axis=-1)


def tnuclear_norm(A: ArrayLike, *, normalization: Any = "mean") -> Float[Array, "*batch"]:
    """Tensor nuclear norm, in either of the two normalisations of the literature.

    - ``"mean"`` (default; Lu et al., TPAMI 2019): ``(1/k) * ||bcirc(A)||_*``, the sum of the
      singular values averaged over the ``k`` Fourier slices. It equals the sum of the first
      entries of the singular tubes, and is the dual of ``tspectral_norm``.
    - ``"sum"`` (Semerci et al. 2014; Zhang et al. 2014): ``||bcirc(A)||_*``, the sum over all
      ``k`` slices, ``k`` times the ``"mean"`` value.

    Arguments:
        A: real tensor of shape ``(..., n1, n2, k)``.
        normalization: ``"mean"`` or ``"sum"``.

    Returns:
        Real array of shape ``(...)``.
    """
    check_choice("normalization", normalization, ("mean", "sum"))
    A = as_real_array("A", A, min_ndim=3)
    k = A.shape[-1]
    total = jnp.sum(fourier_singular_values(A, full=True), axis=(-2, -1))
    return total / k if normalization == "mean" else total


def num_freqs(k: int) -> int:
    """Number of slices in the half spectrum of tubes of length ``k``: ``k // 2 + 1``."""
    return _num_freqs(k)


def freq_weights(k: int, dtype=None) -> Float[Array, " f"]:
    """Multiplicity of each half-spectrum slice in the full spectrum (1 or 2).

    ``sum_j w_j * g(slice_j)`` over the half spectrum equals ``sum`` of ``g`` over all ``k``
    slices for any ``g`` invariant under complex conjugation (norms, singular values).
    """
    w = np.full(_num_freqs(k), 2.0)
    w[0] = 1.0
    if k % 2 == 0:
        w[-1] = 1.0
    return jnp.asarray(w, jnp.result_type(float) if dtype is None else dtype)
