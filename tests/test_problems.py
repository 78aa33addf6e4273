"""Tests of the recovery problems of `factorjax.dynamics.problems` against NumPy references
written from the definitions, never from the module:

- the measurement operator ``A(X)_j = <A_j, X> = sum(A_j * X)``, a loop over ``j``; its adjoint
  ``A*(z) = sum_j z_j A_j``; for completion ``A_j`` is the indicator of entry ``idx_j``, read and
  written with ``np.unravel_index``;
- the t-transpose: slice 0 transposed, slice ``t`` <- slice ``k - t`` transposed;
- Fourier singular values: ``np.fft.fft`` along the tube axis, ``np.linalg.svd`` per slice.

The dense ``A_j`` are the rows of the stored operator ``G``; that they are drawn as specified
(scale, symmetry, Gaussian law) is tested on their own.

Tolerances (float32, ``eps = 2^-23``; the references run in float64 on the same float32 inputs).
A dot product of ``N`` terms is within ``N eps sum_i |a_i x_i|`` of the exact one, so
``|A(X)_j - ref_j| <= N eps (|A_j| . |X|)`` entrywise (`measure_bound`), and likewise for
``A*`` with ``m`` terms. An inner product ``<A(X), z>`` then moves by at most
``N eps |z| . |G| |X|`` and ``<X, A*(z)>`` by ``m eps`` times the same sum: adjointness holds to
``(N + m) eps |z| . |G| |X|``. Gathers and scatters into zeros are exact. The tubal ground truth
is a t-product ``Ubar * Ubar^T`` with ``r`` inner columns of unit Frobenius norm (the Fourier
slices of ``Ubar`` are orthonormal), so an entry's tube sum of absolute values is at most
``r k`` and its rounding at most ``(3 k + 3 r + 6) eps r k`` (see `tests/test_tubal_lowrank.py`);
a Fourier slice entry sums ``k`` entries and a slice norm at most ``n`` slice entries.
"""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from factorjax.dynamics import (
    AbstractProblem,
    MatrixCompletion,
    MatrixSensing,
    TensorCompletion,
    TubalSensing,
)

EPS32 = float(np.finfo(np.float32).eps)
EPS64 = float(np.finfo(np.float64).eps)

# Small instances: a tubal (n, n, k) = (4, 4, 3) tensor and a (5, 4) matrix.
MAKERS = {
    "tubal-paper": lambda key, **kw: TubalSensing.make(4, 3, 2, 17, key=key, **kw),
    "tubal-authors-sym": lambda key, **kw: TubalSensing.make(
        4, 3, 2, 17, key=key, symmetric=True, scale="authors", **kw
    ),
    "matrix": lambda key, **kw: MatrixSensing.make(5, 4, 2, 13, key=key, **kw),
    "matrix-psd": lambda key, **kw: MatrixSensing.make(4, 4, 2, 13, key=key, symmetric=True, **kw),
    "matrix-completion": lambda key, **kw: MatrixCompletion.make(5, 4, 2, 11, key=key, **kw),
    "tensor-completion": lambda key, **kw: TensorCompletion.make(4, 3, 2, 21, key=key, **kw),
}
NAMES = list(MAKERS)


@functools.cache
def problem(name):
    """The float32 problem ``name`` from key 0, made once: also when the first test to ask runs
    under the ``x64`` fixture (the cache would otherwise hand float64 leaves to float32 tests;
    those tests cast with `as_float64`)."""
    with jax.enable_x64(False):
        return MAKERS[name](jax.random.key(0))


# ---------------------------------------------------------------------------------------------
# Naive references
# ---------------------------------------------------------------------------------------------


def f64(x):
    return np.asarray(x, np.float64)


def operator_tensors(p):
    """The ``A_j``, ``(m, *shape)`` float64: rows of ``G``, or indicators of the entries."""
    m, shape = p.y.shape[-1], p.shape
    if hasattr(p, "G"):
        return f64(p.G).reshape(m, *shape)
    A = np.zeros((m, *shape))
    for j, flat in enumerate(np.asarray(p.idx)):
        A[(j, *np.unravel_index(flat, shape))] = 1.0
    return A


def naive_measure(A, X):
    """``[sum(A_j * X) for j]`` for one ``X``."""
    return np.array([np.sum(A[j] * f64(X)) for j in range(A.shape[0])])


def naive_adjoint(A, z):
    """``sum_j z_j A_j`` for one ``z``."""
    return sum(float(z[j]) * A[j] for j in range(A.shape[0]))


def naive_transpose(A):
    """Slice 0 transposed; slice ``t`` is slice ``k - t`` of ``A`` transposed."""
    A = f64(A)
    k = A.shape[-1]
    return np.stack([A[:, :, (k - t) % k].T for t in range(k)], axis=-1)


def fourier_svals(X):
    """Singular values of all ``k`` Fourier slices, ``(k, n)``."""
    return np.linalg.svd(np.moveaxis(np.fft.fft(f64(X), axis=-1), -1, 0), compute_uv=False)


def measure_bound(A, X):
    """Entrywise rounding bound of a float32 ``A(X)``: ``N eps (|A_j| . |X|)``."""
    N = math.prod(A.shape[1:])
    return N * EPS32 * naive_measure(np.abs(A), np.abs(f64(X)))


def adjoint_bound(A, z):
    m = A.shape[0]
    return m * EPS32 * naive_adjoint(np.abs(A), np.abs(f64(z)))


def draw(rng, *shape, dtype=jnp.float32):
    return jnp.asarray(rng.standard_normal(shape), dtype)


# ---------------------------------------------------------------------------------------------
# The operator: definition, adjointness, batching
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_measure_adjoint_match_definition(name, rng):
    p = problem(name)
    A = operator_tensors(p)
    X, z = draw(rng, *p.shape), draw(rng, A.shape[0])
    got = f64(p.measure(X))
    assert got.shape == (A.shape[0],)
    assert np.all(np.abs(got - naive_measure(A, X)) <= measure_bound(A, X))
    got = f64(p.adjoint(z))
    assert got.shape == p.shape
    assert np.all(np.abs(got - naive_adjoint(A, z)) <= adjoint_bound(A, z))


@pytest.mark.parametrize("name", NAMES)
def test_adjointness(name, rng):
    p = problem(name)
    A = operator_tensors(p)
    m, N = A.shape[0], math.prod(p.shape)
    X, z = draw(rng, *p.shape), draw(rng, m)
    lhs = np.dot(f64(p.measure(X)), f64(z))
    rhs = np.sum(f64(X) * f64(p.adjoint(z)))
    scale = np.dot(np.abs(f64(z)), naive_measure(np.abs(A), np.abs(f64(X))))
    assert abs(lhs - rhs) <= (N + m) * EPS32 * scale
    assert scale > 0


@pytest.mark.parametrize("name", NAMES)
def test_batched_measure_and_adjoint(name, rng):
    p = problem(name)
    A = operator_tensors(p)
    m = A.shape[0]
    Xb, zb = draw(rng, 2, 3, *p.shape), draw(rng, 2, 3, m)
    got_m, got_a = f64(p.measure(Xb)), f64(p.adjoint(zb))
    assert got_m.shape == (2, 3, m) and got_a.shape == (2, 3, *p.shape)
    # Runs sharing the problem can also be vmapped, the operator unbatched.
    vm = f64(jax.vmap(jax.vmap(p.measure))(Xb))
    for a in range(2):
        for b in range(3):
            bm, ba = measure_bound(A, Xb[a, b]), adjoint_bound(A, zb[a, b])
            assert np.all(np.abs(got_m[a, b] - naive_measure(A, Xb[a, b])) <= bm)
            assert np.all(np.abs(got_m[a, b] - f64(p.measure(Xb[a, b]))) <= 2 * bm)
            assert np.all(np.abs(vm[a, b] - got_m[a, b]) <= 2 * bm)
            assert np.all(np.abs(got_a[a, b] - naive_adjoint(A, zb[a, b])) <= ba)
            assert np.all(np.abs(got_a[a, b] - f64(p.adjoint(zb[a, b]))) <= 2 * ba)


@pytest.mark.parametrize("name", NAMES)
def test_loss_residual_and_metrics(name, rng):
    p = problem(name)
    A = operator_tensors(p)
    Xb = draw(rng, 2, *p.shape)
    y = f64(p.y)
    for i in range(2):
        res = naive_measure(A, Xb[i]) - y
        bound = measure_bound(A, Xb[i]) + EPS32 * np.abs(y)
        assert np.all(np.abs(f64(p.residual(Xb)[i]) - res) <= bound)
        # |0.5 sum(r'^2) - 0.5 sum(r^2)| <= sum(|r| d) + 0.5 sum(d^2) + m eps 0.5 sum(r'^2)
        loss = 0.5 * np.sum(res**2)
        tol = np.sum(np.abs(res) * bound) + 0.5 * np.sum(bound**2) + len(y) * EPS32 * loss * 2
        assert abs(float(p.loss(Xb)[i]) - loss) <= tol
        truth = f64(p.ground_truth)
        err = np.linalg.norm(f64(Xb[i]) - truth) / np.linalg.norm(truth)
        assert abs(float(p.test_error(Xb)[i]) - err) <= 4 * Xb[i].size * EPS32 * err
    assert p.loss(Xb).shape == (2,) and p.test_error(Xb).shape == (2,)
    assert float(p.test_error(p.ground_truth)) == 0.0
    # Noise-free: X* fits exactly; A*(y) is the reference of spectral initialisation.
    assert float(p.loss(p.ground_truth)) == 0.0
    ref = naive_adjoint(A, naive_measure(A, p.ground_truth))
    bound = adjoint_bound(A, p.y) + naive_adjoint(np.abs(A), measure_bound(A, p.ground_truth))
    assert np.all(np.abs(f64(p.spectral_init_target()) - ref) <= bound)


def as_float64(p):
    """The float32 problem with its floating leaves cast to float64 (under `x64`): cheaper
    than drawing it again in float64, which compiles every operation of `make` anew."""
    return jax.tree.map(lambda x: x.astype(jnp.float64) if x.dtype == jnp.float32 else x, p)


@pytest.mark.parametrize("name", NAMES)
def test_grad_is_exact(name, rng, x64):
    p = as_float64(problem(name))
    assert p.y.dtype == jnp.float64
    A = operator_tensors(p)
    m, N = A.shape[0], math.prod(p.shape)
    X = draw(rng, *p.shape, dtype=jnp.float64)
    ref = naive_adjoint(A, naive_measure(A, X) - f64(p.y))
    # grad = G^T (G x - y): both ways round the residual within (N + 1) eps (|G||x| + |y|) and
    # the product within m eps |G|^T |r|.
    scale = naive_adjoint(np.abs(A), naive_measure(np.abs(A), np.abs(f64(X))) + np.abs(f64(p.y)))
    tol = 2 * (N + m + 1) * EPS64 * scale
    assert np.all(np.abs(f64(p.grad(X)) - ref) <= tol)
    assert np.all(np.abs(f64(jax.grad(p.loss)(X)) - f64(p.grad(X))) <= 2 * tol)
    check_grads(p.loss, (X,), order=1, modes=("fwd", "rev"))


def test_float64_make(x64):
    p = MatrixSensing.make(5, 4, 2, 13, key=jax.random.key(0), dtype=jnp.float64, noise=0.1)
    assert all(leaf.dtype == jnp.float64 for leaf in jax.tree.leaves(p))
    q = MatrixSensing.make(5, 4, 2, 13, key=jax.random.key(0), dtype="float64", noise=0.1)
    np.testing.assert_array_equal(q.y, p.y)


# ---------------------------------------------------------------------------------------------
# How the problems are drawn
# ---------------------------------------------------------------------------------------------


def entry_tol(k, r):
    """Rounding of one entry of the float32 t-product ``Ubar * Ubar^T`` (module docstring)."""
    return (3 * k + 3 * r + 6) * EPS32 * r * k


def truth_tol(n, k, r):
    """Distance of every Fourier slice of the computed ``X*`` from a rank-r orthogonal
    projection, in spectral norm: the slices of ``Ubar`` are orthonormal to within the SVD's and
    the transforms' rounding, ``(2 n + 2 k) eps`` (twice, for ``Ubar`` and ``Ubar^T``), and a
    slice moves by at most ``n k`` times an entry's rounding. An entry of ``X*`` averages its
    tube's Fourier slices, so it moves by no more."""
    return n * k * entry_tol(k, r) + 2 * (2 * n + 2 * k) * EPS32


def check_tubal_truth(X, r):
    """t-symmetric, tubal rank r, every non-zero Fourier singular value 1 (module docstring)."""
    n, _, k = X.shape
    assert np.max(np.abs(naive_transpose(X) - f64(X))) <= 2 * entry_tol(k, r)
    tol = truth_tol(n, k, r)
    s = fourier_svals(X)  # (k, n), descending
    assert np.all(np.abs(s[:, :r] - 1) <= tol)
    assert np.all(s[:, r:] <= tol)


def test_tubal_ground_truth():
    p = problem("tubal-paper")  # odd k = 3
    assert p.shape == (4, 4, 3) and p.rank == 2 and p.ground_truth.dtype == jnp.float32
    check_tubal_truth(p.ground_truth, 2)
    # Even k (a real Nyquist slice), through `jax.jit` (one compilation for the new shapes).
    p = jax.jit(lambda key: TubalSensing.make(5, 4, 3, 7, key=key))(jax.random.key(3))
    assert p.shape == (5, 5, 4) and p.rank == 3
    check_tubal_truth(p.ground_truth, 3)
    q = problem("tensor-completion")
    assert q.shape == (4, 4, 3) and q.rank == 2
    check_tubal_truth(q.ground_truth, 2)


@pytest.mark.parametrize("symmetric", [False, True])
def test_matrix_ground_truth(symmetric):
    n2 = 6 if symmetric else 5
    p = MatrixSensing.make(6, n2, 2, 9, key=jax.random.key(5), symmetric=symmetric)
    X = f64(p.ground_truth)
    s = np.linalg.svd(X, compute_uv=False)
    # ||X||_F = 1 up to the normalisation's rounding; rank 2 up to the product's, r eps |U||V|.
    assert abs(np.linalg.norm(X) - 1) <= 2 * X.size * EPS32
    assert s[1] > 10 * 6 * 2 * EPS32 and np.all(s[2:] <= 6 * 2 * 4 * EPS32)
    if symmetric:
        assert np.max(np.abs(X - X.T)) <= 2 * 2 * EPS32 * np.max(np.abs(X))
        assert np.min(np.linalg.eigvalsh((X + X.T) / 2)) >= -6 * 2 * 4 * EPS32


def test_tubal_measurement_scales_and_symmetry():
    m, n, k = 200, 4, 3
    key = jax.random.key(6)
    paper = TubalSensing.make(n, k, 2, m, key=key)
    authors = TubalSensing.make(n, k, 2, m, key=key, scale="authors")
    sym = TubalSensing.make(n, k, 2, m, key=key, symmetric=True, scale="authors")
    assert (paper.scale, authors.scale, sym.symmetric) == ("paper", "authors", True)
    # The same key draws the same X* and G_j; "paper" divides them by sqrt(m).
    np.testing.assert_array_equal(paper.ground_truth, authors.ground_truth)
    Ga, Gp = f64(authors.G), f64(paper.G)
    assert np.all(np.abs(Gp * np.sqrt(m) - Ga) <= 2 * EPS32 * np.abs(Ga))
    A = operator_tensors(authors)
    y_ref = np.array([np.sum(A[j] * f64(paper.ground_truth)) for j in range(m)])
    bound = measure_bound(A, paper.ground_truth)
    assert np.all(np.abs(f64(authors.y) - y_ref) <= bound)
    assert np.all(np.abs(f64(paper.y) * np.sqrt(m) - y_ref) <= bound + 2 * EPS32 * np.abs(y_ref))
    # Entries i.i.d. N(0, 1) ("authors"): mean and variance within 5 standard errors.
    size = Ga.size
    assert abs(Ga.mean()) <= 5 / np.sqrt(size) and abs(Ga.var() - 1) <= 5 * np.sqrt(2 / size)
    # Symmetric: every G_j equals its t-transpose (a + b = b + a exactly); off the positions
    # that the t-transpose fixes, an entry is a sum of two N(0, 1): variance 2.
    As = operator_tensors(sym)
    for j in range(m):
        np.testing.assert_array_equal(naive_transpose(As[j]), As[j])
    fixed = np.zeros((n, n, k), bool)
    for i in range(n):
        for t in range(k):
            fixed[i, i, t] = (k - t) % k == t
    off = As[:, ~fixed]
    assert abs(off.var() - 2) <= 2 * 5 * np.sqrt(2 / off.size)


def test_noise():
    m = 4000
    key = jax.random.key(7)
    clean = TubalSensing.make(4, 3, 2, m, key=key)
    noisy = TubalSensing.make(4, 3, 2, m, key=key, noise=0.5)
    np.testing.assert_array_equal(clean.G, noisy.G)
    d = (f64(noisy.y) - f64(clean.y)) / 0.5
    assert abs(d.mean()) <= 5 / np.sqrt(m) and abs(d.std() - 1) <= 5 / np.sqrt(2 * m)
    assert float(noisy.noise) == 0.5
    # A traced noise level: a sweep over noise is a vmap, linear in the level.
    batch = jax.vmap(lambda s: MatrixCompletion.make(5, 4, 2, 11, key=key, noise=s))(
        jnp.array([0.0, 0.1, 0.2])
    )
    y = f64(batch.y)
    np.testing.assert_array_equal(y[0], f64(MatrixCompletion.make(5, 4, 2, 11, key=key).y))
    step = y[1] - y[0]
    assert np.all(np.abs((y[2] - y[0]) - 2 * step) <= 4 * EPS32 * (np.abs(y[2]) + np.abs(y[0])))
    assert np.max(np.abs(step)) > 0


# ---------------------------------------------------------------------------------------------
# Completion
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["matrix-completion", "tensor-completion"])
def test_completion_entries(name, rng):
    p = problem(name)
    idx = np.asarray(p.idx)
    total = math.prod(p.shape)
    assert idx.shape == (p.y.shape[0],) and len(set(idx.tolist())) == len(idx)
    assert idx.min() >= 0 and idx.max() < total
    X, z = np.asarray(draw(rng, *p.shape)), np.asarray(draw(rng, len(idx)))
    # measure reads the observed entries, adjoint writes them into zeros: both exactly.
    picked = np.array([X[np.unravel_index(i, p.shape)] for i in idx])
    np.testing.assert_array_equal(np.asarray(p.measure(X)), picked)
    placed = np.zeros(p.shape, np.float32)
    for j, i in enumerate(idx):
        placed[np.unravel_index(i, p.shape)] = z[j]
    np.testing.assert_array_equal(np.asarray(p.adjoint(z)), placed)
    np.testing.assert_array_equal(np.asarray(p.y), f64(p.ground_truth).reshape(-1)[idx])


def test_completion_all_entries_and_uniform():
    p = MatrixCompletion.make(3, 2, 1, 6, key=jax.random.key(8))
    np.testing.assert_array_equal(np.sort(np.asarray(p.idx)), np.arange(6))
    # Uniform without replacement: each of 16 entries is seen with probability 4 / 16.
    keys = jax.random.split(jax.random.key(9), 400)
    batch = jax.jit(jax.vmap(lambda key: MatrixCompletion.make(4, 4, 1, 4, key=key)))(keys)
    idx = np.asarray(batch.idx)
    assert all(len(set(row)) == 4 for row in idx.tolist())
    counts = np.bincount(idx.reshape(-1), minlength=16)
    sd = np.sqrt(400 * 0.25 * 0.75)
    assert np.all(np.abs(counts - 100) <= 5 * sd)


# ---------------------------------------------------------------------------------------------
# Transformations
# ---------------------------------------------------------------------------------------------


# Compiled and eager Gaussian draws (XLA's erf_inv, fused differently) may differ by a couple of
# ulps (2 eps relative), and each is then rounded again when scaled by 1 / sqrt(m) (eps / 2
# each); observed up to 2.04 eps.
DRAW_TOL = 4 * EPS32


@pytest.mark.parametrize("name", ["tubal-paper", "matrix-completion"])
def test_vmap_over_keys_builds_a_batch(name):
    keys = jax.random.split(jax.random.key(10), 3)
    # Eager vmap for the cheap problem; under jit for the tubal one (one compilation).
    build = jax.vmap(MAKERS[name])
    batch = (jax.jit(build) if name.startswith("tubal") else build)(keys)
    assert isinstance(batch, AbstractProblem)
    one = MAKERS[name](keys[1])
    assert batch.shape == one.shape and batch.rank == one.rank
    for leaf, ref in zip(jax.tree.leaves(batch), jax.tree.leaves(one), strict=True):
        assert leaf.shape == (3, *ref.shape)
        if jnp.issubdtype(ref.dtype, jnp.integer):
            np.testing.assert_array_equal(leaf[1], ref)
    item = jax.tree.map(lambda x: x[1], batch)
    truth = f64(one.ground_truth)
    # The batched t-SVD may round differently: two computations of X* are each within
    # `truth_tol` of the exact one (for a matrix X*, a much looser bound than needed).
    tol = 2 * truth_tol(4, 3, 2)
    assert np.max(np.abs(f64(item.ground_truth) - truth)) <= tol
    if hasattr(one, "G"):
        G = f64(one.G)
        assert np.all(np.abs(f64(item.G) - G) <= DRAW_TOL * np.abs(G))
    A = operator_tensors(one)
    # y moves by the two roundings of A(X*), and by |A| |dX*| + |dA| |X*|.
    absA = np.abs(A)
    bound = (
        2 * measure_bound(A, truth)
        + naive_measure(absA, np.full(truth.shape, tol))
        + DRAW_TOL * naive_measure(absA, np.abs(truth))
    )
    assert np.all(np.abs(f64(item.y) - f64(one.y)) <= bound)
    # A batch of problems is used under vmap, one instance at a time; not directly.
    # X* fits each instance up to the rounding of two measurements of it (made, and here).
    losses = f64(jax.vmap(lambda q: q.loss(q.ground_truth))(batch))
    assert losses.shape == (3,)
    for i in range(3):
        q = jax.tree.map(lambda x, i=i: x[i], batch)
        bound = 2 * measure_bound(operator_tensors(q), q.ground_truth)
        assert losses[i] <= 0.5 * np.sum(bound**2)
    with pytest.raises(ValueError, match=r"jax\.vmap"):
        batch.measure(batch.ground_truth)


def test_jit(rng):
    make = MAKERS["tubal-paper"]
    key = jax.random.key(0)
    jitted = jax.jit(make)(key)
    eager = problem("tubal-paper")
    assert np.all(np.abs(f64(jitted.G) - f64(eager.G)) <= DRAW_TOL * np.abs(f64(eager.G)))
    tol = 2 * truth_tol(4, 3, 2)
    assert np.max(np.abs(f64(jitted.ground_truth) - f64(eager.ground_truth))) <= tol
    Xb = draw(rng, 5, *eager.shape)
    A = operator_tensors(eager)
    loss = jax.jit(lambda p, X: p.loss(X))(eager, Xb)
    grad = jax.jit(lambda p, X: p.grad(X))(eager, Xb)
    np.testing.assert_allclose(loss, eager.loss(Xb), rtol=4 * A.shape[0] * EPS32)
    for i in range(5):
        res = f64(eager.residual(Xb[i]))
        bound = adjoint_bound(A, res) + naive_adjoint(np.abs(A), measure_bound(A, Xb[i]))
        assert np.all(np.abs(f64(grad[i]) - f64(eager.grad(Xb[i]))) <= 2 * bound)


# ---------------------------------------------------------------------------------------------
# Bad input
# ---------------------------------------------------------------------------------------------

KEY = jax.random.key(0)


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        (lambda: TubalSensing.make(3, 2, 4, 10, key=KEY), ValueError, r"`r`.*\[1, 3\].*4"),
        (lambda: TubalSensing.make(3, 2, 0, 10, key=KEY), ValueError, "`r`"),
        (lambda: TubalSensing.make(3, 2, 1, 0, key=KEY), ValueError, "`m`.*0"),
        (lambda: TubalSensing.make(3.0, 2, 1, 5, key=KEY), TypeError, "`n`"),
        (lambda: TubalSensing.make(3, 2, 1, 5, key=KEY, scale="unit"), ValueError, "`scale`"),
        (lambda: TubalSensing.make(3, 2, 1, 5, key=KEY, symmetric="y"), TypeError, "`symmetric`"),
        (lambda: TubalSensing.make(3, 2, 1, 5, key=KEY, noise=-0.1), ValueError, "`noise`"),
        (
            lambda: TubalSensing.make(3, 2, 1, 5, key=KEY, noise=jnp.ones(2)),
            ValueError,
            "`noise`",
        ),
        (lambda: TubalSensing.make(3, 2, 1, 5, key=KEY, dtype=jnp.int32), TypeError, "`dtype`"),
        (lambda: MatrixSensing.make(4, 3, 5, 5, key=KEY), ValueError, r"`r`.*\[1, 3\]"),
        (
            lambda: MatrixSensing.make(4, 3, 2, 5, key=KEY, symmetric=True),
            ValueError,
            "symmetric.*n1 = 4 and n2 = 3",
        ),
        (lambda: MatrixCompletion.make(3, 2, 1, 7, key=KEY), ValueError, "`m`.*6.*m = 7"),
        (lambda: MatrixCompletion.make(3, 2, 1, 0, key=KEY), ValueError, "`m`"),
        (lambda: TensorCompletion.make(2, 2, 1, 9, key=KEY), ValueError, "`m`.*8.*m = 9"),
        (lambda: TensorCompletion.make(2, 2, 3, 4, key=KEY), ValueError, "`r`"),
    ],
)
def test_bad_arguments(call, error, match):
    with pytest.raises(error, match=match):
        call()


@pytest.mark.parametrize("name", ["tubal-paper", "matrix-completion"])
def test_bad_operands(name):
    p = problem(name)
    with pytest.raises(ValueError, match="`X`"):
        p.measure(jnp.zeros((2, *p.shape[:-1], p.shape[-1] + 1)))
    with pytest.raises(ValueError, match="`X`"):
        p.test_error(jnp.zeros(p.shape[1:]))
    with pytest.raises(ValueError, match=r"`y`.*m = "):
        p.adjoint(jnp.zeros((3, p.y.shape[0] + 1)))
    with pytest.raises(TypeError, match="`X`"):
        p.loss(jnp.zeros(p.shape, jnp.complex64))
