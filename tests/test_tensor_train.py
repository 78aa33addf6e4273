"""Tests of `TensorTrain` and `TTMatrix` against references written from the definitions.

References (float64 NumPy, never the module itself): every entry of a train as the product of
its core slices ``G_1[:, j_1, :] ... G_d[:, j_d, :]`` (explicit loops over the multi-indices),
tensorly's ``tt_to_tensor`` / ``tt_matrix_to_tensor`` on the same cores, a NumPy TT-SVD, and
``x W^T`` from the reference ``W``.

Tolerances (float32 ``eps = 2^-23`` unless a test runs in float64):

- a sum of products of ``k`` factors computed in any order, each term passing through at most
  ``h`` additions, is within ``(h + k) eps sum |terms|`` (Higham, 3.1-3.5); for a train the
  additions are those of the contracted rank (and input) indices, and ``sum |terms|`` is the same
  contraction of the absolute values of the cores;
- an SVD or a Householder QR of an ``m x n`` matrix is backward stable with error at most
  ``max(m, n) eps ||C||_F`` (as in test_lowrank.py), and truncating a matrix of rank ``r`` plus a
  perturbation ``E`` discards singular values of norm at most ``||E||_F`` (Mirsky).
"""

import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import opt_einsum
import pytest
import tensorly
from jax.test_util import check_grads
from tensorly import tt_matrix as tl_tt_matrix

from factorjax.factorizations import TensorTrain, TTMatrix, _cost

EPS32 = float(np.finfo(np.float32).eps)
EPS64 = float(np.finfo(np.float64).eps)


# A small TT-matrix: W (24, 12), out_modes (2, 3, 4), in_modes (3, 2, 2), ranks (2, 3)
OUT, IN, RANKS = (2, 3, 4), (3, 2, 2), (2, 3)

# ---------------------------------------------------------------------------------------------
# References
# ---------------------------------------------------------------------------------------------


def f64(x):
    return np.asarray(x, np.float64)


def ref_tt(cores):
    """``A[j_1, ..., j_d] = G_1[:, j_1, :] ... G_d[:, j_d, :]``, entry by entry."""
    cores = [f64(c) for c in cores]
    shape = tuple(c.shape[1] for c in cores)
    out = np.empty(shape)
    for idx in np.ndindex(*shape):
        m = np.ones((1, 1))
        for c, j in zip(cores, idx, strict=True):
            m = m @ c[:, j, :]
        out[idx] = m[0, 0]
    return out


def ref_ttm(cores):
    """``W[(o_1 ... o_d), (i_1 ... i_d)] = G_1[:, o_1, i_1, :] ... G_d[:, o_d, i_d, :]``, with
    row-major multi-indices, entry by entry."""
    cores = [f64(c) for c in cores]
    out_modes = tuple(c.shape[1] for c in cores)
    in_modes = tuple(c.shape[2] for c in cores)
    W = np.empty((math.prod(out_modes), math.prod(in_modes)))
    for o in np.ndindex(*out_modes):
        for i in np.ndindex(*in_modes):
            m = np.ones((1, 1))
            for c, ok, ik in zip(cores, o, i, strict=True):
                m = m @ c[:, ok, ik, :]
            W[np.ravel_multi_index(o, out_modes), np.ravel_multi_index(i, in_modes)] = m[0, 0]
    return W


def abs_cores(cores):
    return [np.abs(f64(c)) for c in cores]


def product_tol(cores, eps=EPS32):
    """Entrywise rounding bound of a reconstructed train: (sum of the inner ranks + d) eps
    times the same train of absolute values."""
    h = sum(c.shape[-1] for c in cores[:-1]) + len(cores)
    dense = ref_ttm(abs_cores(cores)) if cores[0].ndim == 4 else ref_tt(abs_cores(cores))
    return h * eps * np.max(dense)


def random_cores(rng, modes, ranks, scale=1.0):
    """float32 standard normal 3-d cores drawn by NumPy (no PRNG compilations)."""
    full = [1, *ranks, 1]
    return tuple(
        jnp.asarray(scale * rng.standard_normal((full[k], n, full[k + 1])), jnp.float32)
        for k, n in enumerate(modes)
    )


def random_ttm_cores(rng, out_modes, in_modes, ranks):
    full = [1, *ranks, 1]
    return tuple(
        jnp.asarray(rng.standard_normal((full[k], o, i, full[k + 1])), jnp.float32)
        for k, (o, i) in enumerate(zip(out_modes, in_modes, strict=True))
    )


def sum_of_trains(a, b):
    """The train of ``A + B`` (NumPy): block cores, ranks added (Oseledets 2011, Sec. 4.1)."""
    a, b = [np.asarray(x) for x in a], [np.asarray(y) for y in b]
    d, out = len(a), []
    for k, (x, y) in enumerate(zip(a, b, strict=True)):
        if k == 0:
            out.append(np.concatenate([x, y], axis=-1))
        elif k == d - 1:
            out.append(np.concatenate([x, y], axis=0))
        else:
            z = np.zeros((x.shape[0] + y.shape[0], x.shape[1], x.shape[2] + y.shape[2]), x.dtype)
            z[: x.shape[0], :, : x.shape[2]] = x
            z[x.shape[0] :, :, x.shape[2] :] = y
            out.append(z)
    return tuple(jnp.asarray(c) for c in out)


def np_tt_svd(a, *, ranks=None, rtol=None, perturbation=0.0):
    """TT-SVD in float64 NumPy. With rtol: the smallest rank at each step whose discarded
    singular values have norm <= delta = rtol / sqrt(d - 1) ||A||_F. Returns the cores, the
    singular values of each step, and whether every rank is decided away from the threshold:
    a perturbation ``E`` of the unfoldings moves the norm of a tail of singular values by at
    most ``||E||_F`` (Mirsky), so with ``||E||_F <= perturbation`` the computed rank is the
    same when the tails around the crossing are more than ``perturbation`` from ``delta``."""
    a = f64(a)
    d = a.ndim
    delta = rtol / np.sqrt(d - 1) * np.linalg.norm(a) if rtol is not None else None
    cores, svals, decided, r, c = [], [], True, 1, a
    for k in range(d - 1):
        U, s, Vh = np.linalg.svd(c.reshape(r * a.shape[k], -1), full_matrices=False)
        if rtol is not None:
            tail = np.sqrt(np.concatenate([np.cumsum((s**2)[::-1])[::-1], [0.0]]))
            rk = max(1, int(np.nonzero(tail <= delta)[0][0]))
            # monotone tails: only the two around the crossing decide the rank
            decided &= bool(tail[rk] < delta - perturbation)
            decided &= bool(rk == 1 or tail[rk - 1] > delta + perturbation)
        else:
            rk = ranks[k]
        svals.append(s)
        cores.append(U[:, :rk].reshape(r, a.shape[k], rk))
        c, r = s[:rk, None] * Vh[:rk], rk
    cores.append(c.reshape(r, a.shape[-1], 1))
    return cores, svals, decided


def rounding_backward(cores, eps=EPS32):
    """Backward error of TT rounding: 2 (d - 1) Householder QRs and SVDs of cores reshaped
    (m, n), each with error max(m, n) min(m, n) eps ||core||_F (Higham 19.4), moving the tensor
    by at most that times the norms of the other cores."""
    c = 0
    for core in cores:
        m, n = math.prod(core.shape[:-1]), core.shape[-1]
        c += 2 * max(m, n) * min(m, n)
    return c * eps * math.prod(np.linalg.norm(f64(core)) for core in cores)


def svd_backward(modes, ranks):
    """Sum over the TT-SVD steps of the backward-error constant max(m, n) of each unfolding."""
    full = [1, *ranks]
    return sum(max(full[k] * modes[k], math.prod(modes[k + 1 :])) for k in range(len(modes) - 1))


# ---------------------------------------------------------------------------------------------
# TensorTrain: definition, tensorly, properties
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("modes, ranks", [((3, 4, 2, 5), (2, 3, 4)), ((5, 6), (4,)), ((7,), ())])
def test_tt_to_dense_equals_definition_and_tensorly(rng, modes, ranks):
    cores = random_cores(rng, modes, ranks)
    T = TensorTrain(list(cores))  # any sequence: stored as a tuple
    assert isinstance(T.cores, tuple)
    assert T.shape == modes and T.ranks == ranks and T.rank == max(ranks, default=1)
    assert T.num_params == sum(c.size for c in cores)
    ref = ref_tt(cores)
    tol = product_tol(cores)
    dense = T.to_dense()
    assert dense.shape == modes and dense.dtype == jnp.float32
    np.testing.assert_allclose(dense, ref, rtol=0, atol=tol)
    tl = tensorly.tt_to_tensor([np.asarray(c) for c in cores])
    np.testing.assert_allclose(f64(tl), ref, rtol=0, atol=tol)
    np.testing.assert_allclose(jax.jit(lambda t: t.to_dense())(T), ref, rtol=0, atol=tol)


def test_tt_call_contracts_trailing_modes(rng):
    cores = random_cores(rng, (3, 4, 2, 5), (2, 3, 2))
    T = TensorTrain(cores)
    x = rng.standard_normal((4, 2, 5)).astype(np.float32)
    ref = np.einsum("jabc,abc->j", ref_tt(cores), f64(x))
    absref = np.einsum("jabc,abc->j", ref_tt(abs_cores(cores)), np.abs(f64(x)))
    tol = (4 * 2 * 5 + 2 + 3 + 2 + 4) * EPS32 * np.max(absref)  # additions + factors
    np.testing.assert_allclose(T(x), ref, rtol=0, atol=tol)
    np.testing.assert_allclose(jax.jit(lambda t, x: t(x))(T, x), ref, rtol=0, atol=tol)
    X = rng.standard_normal((3, 4, 2, 5)).astype(np.float32)
    Y = jax.vmap(T)(X)
    for b in range(3):
        ref_b = np.einsum("jabc,abc->j", ref_tt(cores), f64(X[b]))
        absref_b = np.einsum("jabc,abc->j", ref_tt(abs_cores(cores)), np.abs(f64(X[b])))
        np.testing.assert_allclose(Y[b], ref_b, rtol=0, atol=(40 + 11) * EPS32 * np.max(absref_b))
    # a single core: the vector times a scalar
    v = TensorTrain(random_cores(rng, (6,), ()))
    np.testing.assert_allclose(v(2.0), 2 * f64(v.cores[0][0, :, 0]), rtol=0, atol=0)


# ---------------------------------------------------------------------------------------------
# TT-SVD, rounding
# ---------------------------------------------------------------------------------------------


def test_tt_svd_recovers_known_low_rank_train(rng):
    modes, ranks = (4, 5, 6, 3), (2, 3, 2)
    A = ref_tt(random_cores(rng, modes, ranks)).astype(np.float32)
    norm = np.linalg.norm(f64(A))
    # the exact ranks are the ranks of the unfoldings: a gap from the float32 noise
    _, svals, _ = np_tt_svd(A, ranks=(4, 18, 3))
    for s, r in zip(svals, ranks, strict=True):
        assert s[r - 1] > 1e3 * svd_backward(modes, ranks) * EPS32 * norm
    for rank in (ranks, 3):  # the exact tuple, and an int cap clipped to (3, 3, 3)
        T = TensorTrain.from_dense(A, rank)
        assert T.ranks == (ranks if rank == ranks else (3, 3, 3))
        # float32 input rounding (eps/2 ||A||), the backward errors of the SVDs (their
        # discarded tails are at most that), then the reconstruction's rounding
        tol = (0.5 + 2 * svd_backward(modes, T.ranks)) * EPS32 * norm
        tol += product_tol(T.cores) * math.sqrt(A.size)
        assert np.linalg.norm(f64(T.to_dense()) - f64(A)) <= tol
        # the first d - 1 cores are left-orthonormal
        for c in T.cores[:-1]:
            m = f64(c).reshape(-1, c.shape[-1])
            np.testing.assert_allclose(m.T @ m, np.eye(m.shape[1]), rtol=0, atol=tol / norm)
    # the full train (no rank): exact up to rounding
    T = TensorTrain.from_dense(A)
    assert T.ranks == (4, 18, 3)  # min(n_1 ... n_k, n_(k+1) ... n_d)
    tol = (0.5 + 2 * svd_backward(modes, T.ranks)) * EPS32 * norm
    tol += product_tol(T.cores) * math.sqrt(A.size)
    assert np.linalg.norm(f64(T.to_dense()) - f64(A)) <= tol
    # jittable with a rank
    T = jax.jit(lambda a: TensorTrain.from_dense(a, ranks))(A)
    tol = (0.5 + 2 * svd_backward(modes, ranks)) * EPS32 * norm
    tol += product_tol(T.cores) * math.sqrt(A.size)
    assert T.ranks == ranks and np.linalg.norm(f64(T.to_dense()) - f64(A)) <= tol


def test_tt_svd_rtol_error_bound_and_ranks(rng):
    # a train of ranks (2, 2, 2) plus noise: unfoldings of full rank with decaying spectra
    modes = (4, 5, 6, 3)
    A = ref_tt(random_cores(rng, modes, (2, 2, 2)))
    A = (A + 0.05 * np.linalg.norm(A) / np.sqrt(A.size) * rng.standard_normal(modes)).astype(
        np.float32
    )
    norm = np.linalg.norm(f64(A))
    last, seen = None, set()
    for rtol in (0.01, 0.03, 0.05, 0.1, 0.5):
        # the float32 SVDs are the exact ones of unfoldings perturbed by at most this much
        perturbation = svd_backward(modes, (4, 18, 3)) * EPS32 * norm
        ref_cores, _, decided = np_tt_svd(A, rtol=rtol, perturbation=perturbation)
        assert decided  # every rank is decided away from the threshold, not by rounding
        T = TensorTrain.from_dense(A, rtol=rtol)
        assert T.ranks == tuple(c.shape[-1] for c in ref_cores[:-1])
        # the TT-SVD theorem: ||A - TT|| <= rtol ||A||, plus rounding
        slack = (0.5 + 2 * svd_backward(modes, T.ranks)) * EPS32 * norm
        slack += product_tol(T.cores) * math.sqrt(A.size)
        err = np.linalg.norm(f64(T.to_dense()) - f64(A))
        assert err <= rtol * norm + slack
        if last is not None:
            assert all(r <= q for r, q in zip(T.ranks, last, strict=True))
        last = T.ranks
        seen.add(T.ranks)
    assert len(seen) >= 4  # the tolerances exercise different ranks


def test_tt_round_returns_a_sum_to_the_original_ranks(rng):
    modes, ranks = (3, 4, 5, 3), (2, 3, 2)
    cores = random_cores(rng, modes, ranks)
    S = TensorTrain(sum_of_trains(cores, cores))  # 2 T, with doubled ranks
    assert S.ranks == (4, 6, 4)
    ref = 2 * ref_tt(cores)
    norm = np.linalg.norm(ref)
    # the spurious singular values are at most the rounding's backward error plus the rounding
    # of the sum's reconstruction; the rtol threshold delta sits 10x above them
    spurious = rounding_backward(S.cores) + product_tol(S.cores) * math.sqrt(ref.size)
    delta = 10 * spurious
    rtol = math.sqrt(3) * delta / norm
    # ... and 10x below the true singular values of the unfoldings
    _, svals, _ = np_tt_svd(ref, ranks=ranks)
    assert min(s[r - 1] for s, r in zip(svals, ranks, strict=True)) > 10 * delta

    def check(R, expected_ranks):
        assert R.ranks == expected_ranks
        tol = spurious + product_tol(R.cores) * math.sqrt(ref.size)
        assert np.linalg.norm(f64(R.to_dense()) - ref) <= tol
        for c in R.cores[:-1]:  # left-orthonormal
            m = f64(c).reshape(-1, c.shape[-1])
            np.testing.assert_allclose(m.T @ m, np.eye(m.shape[1]), rtol=0, atol=tol / norm)

    check(S.round(rtol=rtol), ranks)
    check(S.round(rank=ranks), ranks)
    check(jax.jit(lambda s: s.round(rank=ranks))(S), ranks)
    # truncate(rank) = round to a max rank (here above the true ranks: nothing is lost)
    check(S.truncate(3), (3, 3, 3))
    # round() with neither keeps every rank the modes allow (an exact re-orthogonalization)
    check(S.round(), (3, 6, 3))  # r_1 <= n_1 = 3, r_3 <= n_4 = 3


def test_tt_round_equals_tt_svd_of_the_dense_tensor(rng, x64):
    # In exact arithmetic rounding a train is the TT-SVD of its dense tensor (Oseledets 2011,
    # Sec. 3). Float64: the truncations move by at most backward (1 + 2 s_1 / gap) (Wedin).
    modes, full = (3, 4, 5, 3), [1, 3, 4, 3, 1]
    T = TensorTrain(
        tuple(
            jnp.asarray(rng.standard_normal((full[k], n, full[k + 1]))) for k, n in enumerate(modes)
        )
    )
    assert T.cores[0].dtype == jnp.float64
    dense = ref_tt(T.cores)
    target = (2, 2, 2)
    ref_cores, svals, _ = np_tt_svd(dense, ranks=target)
    ref = ref_tt(ref_cores)
    # both computations are within the rounding's (or the dense SVDs') backward error of the
    # exact one; each truncation amplifies it by at most (1 + 2 s_1 / gap)
    backward = rounding_backward(T.cores, EPS64)
    backward += svd_backward(modes, (3, 12, 3)) * EPS64 * np.linalg.norm(dense)
    tol = sum(
        backward * (1 + 2 * s[0] / (s[r - 1] - s[r])) for s, r in zip(svals, target, strict=True)
    )
    for R in (T.round(rank=target), TensorTrain.from_dense(dense, target)):
        assert R.ranks == target and R.cores[0].dtype == jnp.float64
        assert np.linalg.norm(f64(R.to_dense()) - ref) <= tol
    # float64 TT-matrices: init, apply and the byte counts of the plan
    W = TTMatrix.init(
        24, 12, 3, key=jax.random.key(0), out_modes=OUT, in_modes=IN, dtype=jnp.float64
    )
    assert all(c.dtype == jnp.float64 for c in W.cores)
    assert W.apply(rng.standard_normal((2, 12))).dtype == jnp.float64
    assert {o.name: o.peak_bytes for o in W.plan(2).candidates}["dense"] == 8 * 24 * 12


# ---------------------------------------------------------------------------------------------
# TTMatrix: definition, tensorly, candidates, FLOPs
# ---------------------------------------------------------------------------------------------


def test_ttm_to_matrix_equals_definition_and_tensorly(rng):
    cores = random_ttm_cores(rng, OUT, IN, RANKS)
    W = TTMatrix(cores)
    assert W.shape == (24, 12) and W.out_features == 24 and W.in_features == 12
    assert W.out_modes == OUT and W.in_modes == IN and W.ranks == RANKS and W.rank == 3
    ref = ref_ttm(cores)
    tol = product_tol(cores)
    np.testing.assert_allclose(W.to_matrix(), ref, rtol=0, atol=tol)
    np.testing.assert_allclose(W.to_dense(), ref, rtol=0, atol=tol)
    np_cores = [np.asarray(c) for c in cores]
    np.testing.assert_allclose(f64(tl_tt_matrix.tt_matrix_to_matrix(np_cores)), ref, atol=tol)
    # tensorly's tensor is (o_1, ..., o_d, i_1, ..., i_d): our row-major tensorization
    tl_tensor = f64(tl_tt_matrix.tt_matrix_to_tensor(np_cores))
    np.testing.assert_allclose(tl_tensor, ref.reshape(*OUT, *IN), rtol=0, atol=tol)


@pytest.mark.parametrize(
    "ranks, cheaper", [((1, 2, 6), "right"), ((6, 2, 1), "left"), ((3, 3, 3), "right")]
)
def test_ttm_to_matrix_sweeps_from_the_cheaper_end(rng, ranks, cheaper):
    # four cores, unequal ranks: the rebuild sweeps from the end whose FLOPs are fewer, both
    # ways agree with the definition, and so do their gradients
    out_modes, in_modes = (2, 3, 2, 3), (3, 2, 2, 2)
    cores = random_ttm_cores(rng, out_modes, in_modes, ranks)
    sizes = [o * i for o, i in zip(out_modes, in_modes, strict=True)]
    full = [1, *ranks, 1]
    # merging the first k cores with core k, or core k with the last d - k - 1 cores
    left = sum(2 * math.prod(sizes[:k]) * full[k] * sizes[k] * full[k + 1] for k in (1, 2, 3))
    right = sum(2 * full[k] * sizes[k] * full[k + 1] * math.prod(sizes[k + 1 :]) for k in (0, 1, 2))
    assert (left < right) == (cheaper == "left")
    W = TTMatrix(cores)
    assert W.reconstruction_flops() == min(left, right)
    with jax.enable_x64(True):
        f64_cores = tuple(jnp.asarray(c, jnp.float64) for c in cores)
        np.testing.assert_allclose(TTMatrix(f64_cores).to_matrix(), ref_ttm(cores), rtol=1e-12)
        check_grads(lambda *c: TTMatrix(tuple(map(jnp.asarray, c))).to_matrix(), f64_cores, order=1)


def ref_apply_tol(cores, x):
    """Bound for x W^T in any order: the additions of the contracted indices (in_k r_k per
    step, or d_in + the reconstruction's ranks) plus the d + 1 factors of each term."""
    in_modes = [c.shape[2] for c in cores]
    ranks = [c.shape[0] for c in cores] + [1]
    h = sum(i * (a + b) for i, a, b in zip(in_modes, ranks, ranks[1:], strict=False))
    h += math.prod(in_modes)
    h += sum(ranks) + len(cores) + 1
    bound = np.abs(f64(x)).reshape(-1, math.prod(in_modes)) @ ref_ttm(abs_cores(cores)).T
    return h * EPS32 * np.max(bound)


@pytest.mark.parametrize("lead", [(1,), (5,), (2, 3)])
def test_ttm_every_order_equals_x_wt(rng, lead):
    cores = random_ttm_cores(rng, OUT, IN, RANKS)
    W = TTMatrix(cores)
    x = rng.standard_normal((*lead, 12)).astype(np.float32)
    ref = f64(x) @ ref_ttm(cores).T
    tol = ref_apply_tol(cores, x)
    names = [c.order.name for c in W.candidates(math.prod(lead))]
    assert sorted(names) == [
        "dense",
        "einsum-greedy",
        "einsum-optimal",
        "left-to-right",
        "left-to-right(1-2)",
        "right-to-left",
        "right-to-left(2-3)",
    ]
    # and against x @ to_matrix().T, whose W carries its own rounding (product_tol entrywise)
    via_w = f64(x) @ f64(W.to_matrix()).T
    tol_w = tol + product_tol(cores) * np.max(np.sum(np.abs(f64(x)), axis=-1))
    for name in [*names, "auto"]:
        y = W.apply(x, order=name)
        assert y.shape == (*lead, 24) and y.dtype == jnp.float32
        np.testing.assert_allclose(y, ref, rtol=0, atol=tol)
        np.testing.assert_allclose(y, via_w, rtol=0, atol=tol_w)
    if len(lead) == 2:  # under jit, every order in one program
        ys = jax.jit(lambda w, x: [w.apply(x, order=n) for n in names])(W, x)
        for y in ys:
            np.testing.assert_allclose(y, ref, rtol=0, atol=tol)
    for c in W.candidates(math.prod(lead)):  # the candidates' own functions, on (B, d_in)
        np.testing.assert_allclose(
            c.fn(jnp.asarray(x.reshape(-1, 12))), ref.reshape(-1, 24), rtol=0, atol=tol
        )
    # plan: the fewest FLOPs under the scoring of _operator.py (chains weighted)
    plan = W.plan(math.prod(lead))
    best = min(plan.candidates, key=_cost.score)
    assert plan.order in names and plan.flops == best.flops and plan.order == best.name
    # one unbatched input, and vmap
    np.testing.assert_allclose(W(x.reshape(-1, 12)[0]), ref.reshape(-1, 24)[0], atol=tol)
    Y = jax.vmap(W)(x.reshape(-1, 12))
    np.testing.assert_allclose(Y, ref.reshape(-1, 24), rtol=0, atol=tol)


def test_ttm_flops_equal_opt_einsum_counts(rng):
    # o: a b c, i: x y z, ranks: P Q R S (R, S of size 1 at the ends); batch n
    B = 5
    W = TTMatrix(random_ttm_cores(rng, OUT, IN, RANKS))
    shapes = [(B, *IN), *(c.shape for c in W.cores)]
    eq = "nxyz,PaxQ,QbyR,RczS->nabc"

    def cost(path, eq=eq, shapes=shapes):
        return opt_einsum.contract_path(eq, *shapes, shapes=True, optimize=path)[1].opt_cost

    flops = {c.order.name: c.order.flops for c in W.candidates(B)}
    # right-to-left: x with core 3, then core 2, then core 1 (operand lists shrink as they go)
    assert flops["right-to-left"] == cost([(0, 3), (1, 2), (0, 1)])
    assert flops["left-to-right"] == cost([(0, 1), (0, 2), (0, 1)])
    # opt_einsum's own searches: no other order beats "einsum-optimal" (when listed; else a
    # named order already takes its path)
    best = cost("optimal")
    assert min(flops.values()) == best
    # dense: the cheaper of the two orders of rebuilding W, then one matmul
    eqw, wshapes = "PaxQ,QbyR,RczS->abcxyz", shapes[1:]
    recon = min(cost([(0, 1), (0, 1)], eqw, wshapes), cost([(1, 2), (0, 1)], eqw, wshapes))
    assert W.reconstruction_flops() == recon
    assert flops["dense"] == recon + 2 * B * 24 * 12
    # peak of right-to-left by hand: after core 3 (B, x, y, R, c) and after core 2 (B, x, Q, b, c)
    peaks = {c.order.name: c.order.peak_bytes for c in W.candidates(B)}
    assert peaks["right-to-left"] == 4 * max(B * 3 * 2 * 3 * 4, B * 3 * 2 * (3 * 4))
    assert peaks["dense"] == 4 * 24 * 12


def test_ttm_sweep_steps_that_are_large_matmuls_count_as_such():
    """The sweeps run as matmuls (`left_matmul`): a step counts at the matmul rate when none of
    its sides (rows, columns, contracted length) is below GEMM_MIN_DIM. At d = 4096 = 16^3, r =
    16, B = 64 only the middle step of right-to-left qualifies (its contracted (i_2, r_2) and
    its new (r_1, o_2) are 256 long; the first contracts i_3 alone, the last yields o_1
    alone: 16 < 32). With cores 2 and 3 merged first, the input meets them in one step that
    qualifies (rows (B, i_1), columns (r_1, o_2, o_3), contracted (i_2, i_3)); the merge
    itself contracts r_2 alone. With the merged sweep's fewer FLOPs and smaller
    intermediates, the model picks it over right-to-left, and either over dense (55 ms
    against 119 ms in run 8 of the layers benchmark)."""
    assert _cost.GEMM_MIN_DIM == 32
    B, n, r = 64, 16, 16
    W = TTMatrix.init(n**3, n**3, r, key=jax.random.key(0), out_modes=(n,) * 3, in_modes=(n,) * 3)
    orders = {c.order.name: c.order for c in W.candidates(B)}
    middle = 2 * (B * n * n) * (r * n) * (n * r)  # rows (B, i_1, o_3), columns, contracted
    assert orders["right-to-left"].gemm_flops == middle
    merged = 2 * (B * n) * (r * n * n) * (n * n)
    assert orders["right-to-left(2-3)"].gemm_flops == merged
    assert orders["left-to-right(1-2)"].gemm_flops == merged
    # opt_einsum's greedy path rebuilds W first and ends with the (B, d_in) x (d_in, d_out)
    # product: jnp.einsum runs that step as one dot, counted at the matmul rate like any other
    assert orders["einsum-greedy"].gemm_flops == 2 * B * n**3 * n**3
    assert W.plan(B).order == "right-to-left(2-3)"
    assert _cost.score(orders["right-to-left"]) < _cost.score(orders["dense"])


def test_ttm_merged_sweeps_cost_their_paths(rng):
    """A merged sweep's cost is opt_einsum's count of its path: the first cores it meets
    merged pairwise, then the sweep over the merged train; and it computes x W^T."""
    B, out, inp, ranks = 3, (2, 3, 2, 2), (3, 2, 2, 3), (2, 3, 2)
    cores = random_ttm_cores(rng, out, inp, ranks)
    W = TTMatrix(cores)
    shapes = [(B, *inp), *(c.shape for c in W.cores)]
    eq = "nwxyz,aAwb,bBxc,cCyd,dDze->nABCD"  # boundary ranks a, e of size 1

    def cost(path):
        info = opt_einsum.contract_path(eq, *shapes, shapes=True, optimize=path)[1]
        return info.opt_cost, max(info.size_list[:-1]) * 4

    orders = {c.order.name: c.order for c in W.candidates(B)}
    # operands: x 0, cores 1-4; each result goes to the end of the list
    paths = {
        "right-to-left(3-4)": [(3, 4), (0, 3), (1, 2), (0, 1)],  # merge 3-4, x, core 2, 1
        "right-to-left(2-4)": [(2, 3), (2, 3), (0, 2), (0, 1)],  # merge 2-3, with 4, x, core 1
        "left-to-right(1-2)": [(1, 2), (0, 3), (0, 2), (0, 1)],  # merge 1-2, x, core 3, 4
        "left-to-right(1-3)": [(1, 2), (1, 3), (0, 2), (0, 1)],
    }
    assert set(paths) <= set(orders)
    assert len(orders) == 9  # and the two sweeps, two einsum paths, dense
    for name, path in paths.items():
        flops, peak = cost(path)
        assert (orders[name].flops, orders[name].peak_bytes) == (flops, peak), name
    x = rng.standard_normal((B, math.prod(inp))).astype(np.float32)
    ref = f64(x) @ ref_ttm(cores).T
    for name in paths:
        y = W.apply(x, order=name)
        np.testing.assert_allclose(y, ref, rtol=0, atol=ref_apply_tol(cores, x))


def test_ttm_dense_reconstruction_counts_its_large_matmuls():
    """The rebuild of W is a sweep of matmuls (m, k, n): (outputs and inputs so far, r_k) by
    (r_k, next core). At d = 4096 = 16^3 and r = 64 both steps have every side >= 64, so all
    of its FLOPs count at the matmul rate, and dense is the model's pick at B = 64 (run 11 of
    the layers benchmark: 153 ms, against 214 ms for right-to-left(2-3), which the model
    picked while the rebuild counted as a chain). At r = 16 both contract 16 < GEMM_MIN_DIM."""
    n = 16

    def ttm(r):
        return TTMatrix.init(
            n**3, n**3, r, key=jax.random.key(0), out_modes=(n,) * 3, in_modes=(n,) * 3
        )

    W = ttm(64)
    by_hand = 2 * (n * n) * 64 * (n * n * 64) + 2 * (n**4) * 64 * (n * n)  # from the left
    assert W.reconstruction_flops() == W.reconstruction_gemm_flops() == by_hand
    dense = next(c.order for c in W.candidates(64) if c.order.name == "dense")
    assert dense.gemm_flops == dense.flops
    assert W.plan(64).order == "dense"
    assert ttm(16).reconstruction_gemm_flops() == 0


def test_ttm_cost_model_dense_wins_at_high_rank_chains_at_low_rank():
    # d = 3, N = 4096 = 16^3 in and out, B = 4096 (shapes only: the candidates read the shapes)
    def ratios(r):
        W = TTMatrix.init(
            4096,
            4096,
            r,
            key=jax.random.key(0),
            out_modes=(16,) * 3,
            in_modes=(16,) * 3,
            init="std",
            std=1.0,
        )
        flops = {c.order.name: c.order.flops for c in W.candidates(4096)}
        return flops, W.plan(4096).order

    flops, chosen = ratios(64)
    for name in ("right-to-left", "left-to-right"):
        assert 10 < flops[name] / flops["dense"] < 20  # ~16x more than dense
    assert chosen == "dense"
    flops, chosen = ratios(4)
    for name in ("right-to-left", "left-to-right"):
        assert 4 < flops["dense"] / flops[name] < 16  # ~10x less than dense
    assert chosen != "dense"


# ---------------------------------------------------------------------------------------------
# TTMatrix: from_dense, rounding
# ---------------------------------------------------------------------------------------------


def test_ttm_from_dense_recovers_known_train_and_rtol_bound(rng):
    cores = random_ttm_cores(rng, OUT, IN, RANKS)
    Wd = ref_ttm(cores).astype(np.float32)
    norm = np.linalg.norm(f64(Wd))
    modes = [o * i for o, i in zip(OUT, IN, strict=True)]
    for kwargs in (dict(rank=RANKS), dict(rtol=1e-3)):
        M = TTMatrix.from_dense(Wd, out_modes=OUT, in_modes=IN, **kwargs)
        assert M.out_modes == OUT and M.in_modes == IN and M.ranks == RANKS
        tol = (0.5 + 2 * svd_backward(modes, RANKS)) * EPS32 * norm
        tol += product_tol(M.cores) * math.sqrt(Wd.size)
        assert np.linalg.norm(f64(M.to_matrix()) - f64(Wd)) <= tol
    # default modes: balanced, order 3; the exact train (shapes only)
    M = jax.eval_shape(TTMatrix.from_dense, Wd)
    assert M.out_modes == (2, 4, 3) and M.in_modes == (2, 3, 2) and M.ranks == (4, 6)
    # rtol on a matrix without TT structure: the bound holds
    G = rng.standard_normal((24, 12)).astype(np.float32)
    for rtol in (0.3, 0.7):
        M = TTMatrix.from_dense(G, rtol=rtol, out_modes=OUT, in_modes=IN)
        slack = (0.5 + 2 * svd_backward(modes, M.ranks)) * EPS32 * np.linalg.norm(G)
        slack += product_tol(M.cores) * math.sqrt(G.size)
        assert np.linalg.norm(f64(M.to_matrix()) - f64(G)) <= rtol * np.linalg.norm(G) + slack


def test_ttm_round_sum_and_truncate(rng):
    cores = random_ttm_cores(rng, OUT, IN, RANKS)
    flat = [c.reshape(c.shape[0], -1, c.shape[-1]) for c in cores]
    doubled = sum_of_trains(flat, flat)
    S = TTMatrix(
        tuple(
            d.reshape(d.shape[0], o, i, d.shape[-1])
            for d, o, i in zip(doubled, OUT, IN, strict=True)
        )
    )
    assert S.ranks == (4, 6)
    ref = 2 * ref_ttm(cores)
    spurious = rounding_backward(S.cores) + product_tol(S.cores) * math.sqrt(ref.size)
    rtol = math.sqrt(2) * 10 * spurious / np.linalg.norm(ref)
    for R in (S.round(rank=RANKS), S.round(rtol=rtol)):
        assert R.ranks == RANKS and R.out_modes == OUT and R.in_modes == IN
        tol = spurious + product_tol(R.cores) * math.sqrt(ref.size)
        assert np.linalg.norm(f64(R.to_matrix()) - ref) <= tol
    T = S.truncate(1)
    assert T.ranks == (1, 1) and isinstance(T, TTMatrix)


# ---------------------------------------------------------------------------------------------
# Init: the variance of the reconstructed weight
# ---------------------------------------------------------------------------------------------

# Sample size. For one draw, the second moment m = ||W||_F^2 / N fluctuates (entries share the
# cores; products of Gaussians are heavy-tailed). Its exact relative variance
# V = E[m^2] / E[m]^2 - 1 follows from Wick's theorem: E[||W||^4] is a chain of expectations of
# (E_k (x) E_k), E_k = sum_n G_k[:, n, :] (x) G_k[:, n, :], which maps the span of the three
# pairings of four rank indices into itself; in that basis core k acts as
# diag(n^2, n, n) @ Gram(r_(k-1)), Gram(r) = [[r^2, r, r], [r, r^2, r], [r, r, r^2]] (n the
# mode size of the core). With K independent draws the pooled m has relative standard error
# sqrt(V / K); the std is within 5% when m is within [0.95^2, 1.05^2] of the target, so
# K = (Z sqrt(V) / (1 - 0.95^2))^2 with Z = 5 standard errors (normal approximation of a mean
# of K draws), rounded up to whole chunks of 64 keys. V was checked against 2e6-draw Monte Carlo.
Z = 5.0
CHUNK = 64


def wick_relvar(modes, ranks):
    full = [1, *ranks, 1]
    x, mean = np.array([1.0, 0.0, 0.0]), 1.0
    for k, n in enumerate(modes):
        r = full[k]
        gram = np.array([[r * r, r, r], [r, r * r, r], [r, r, r * r]], float)
        x = np.array([n * n, n, n]) * (gram @ x)
        mean *= n * r
    return x.sum() / mean**2 - 1


def pooled_std(make, relvar, n_entries, seed=0):
    """sqrt of the pooled mean square of the entries of ``make(key).to_dense()`` over K keys."""
    K = math.ceil((Z * math.sqrt(relvar) / (1 - 0.95**2)) ** 2)
    chunks = max(1, -(-K // CHUNK))
    keys = jax.random.split(jax.random.key(seed), chunks * CHUNK).reshape(chunks, CHUNK)

    def chunk(ks):
        return jnp.sum(jax.vmap(lambda k: jnp.sum(make(k).to_dense().astype(jnp.float32) ** 2))(ks))

    total = jax.jit(lambda ks: jnp.sum(jax.lax.map(chunk, ks)))(keys)
    return math.sqrt(float(total) / (chunks * CHUNK * n_entries))


TTM_SHAPES = {  # order: (out_modes, in_modes), dense W of at most ~1e5 entries
    2: ((16, 16), (16, 16)),
    3: ((6, 8, 6), (6, 8, 6)),
    4: ((4, 4, 4, 4), (4, 4, 4, 4)),
    5: ((4, 4, 4, 4, 4), (2, 2, 4, 2, 2)),
}


@pytest.mark.parametrize("order", [2, 3, 4, 5])
@pytest.mark.parametrize("rank", [2, 8, 64])
def test_ttm_init_reconstructed_std_on_target(order, rank):
    out_modes, in_modes = TTM_SHAPES[order]
    d_out, d_in = math.prod(out_modes), math.prod(in_modes)
    modes = [o * i for o, i in zip(out_modes, in_modes, strict=True)]
    left = [math.prod(modes[: k + 1]) for k in range(order - 1)]
    right = [math.prod(modes[k + 1 :]) for k in range(order - 1)]
    expected = tuple(min(rank, a, b) for a, b in zip(left, right, strict=True))

    def make(key):
        return TTMatrix.init(d_out, d_in, rank, key=key, out_modes=out_modes, in_modes=in_modes)

    # clipped where the modes do not allow (eval_shape: the shapes, without running init)
    assert jax.eval_shape(make, jax.random.key(0)).ranks == expected
    std = pooled_std(make, wick_relvar(modes, expected), d_out * d_in, seed=order * 100 + rank)
    target = math.sqrt(2 / (d_in + d_out))
    assert abs(std / target - 1) < 0.05, (std, target)


@pytest.mark.parametrize(
    "shape, rank", [((256, 256), 8), ((40, 50, 40), 64), ((8, 8, 16, 8, 8), 2)]
)
def test_tt_init_reconstructed_std_on_target(shape, rank):
    ranks = jax.eval_shape(lambda k: TensorTrain.init(shape, rank, key=k), jax.random.key(0)).ranks
    n = math.prod(shape)
    # default fans: the matrix (n_1, n_2 ... n_d)
    std = pooled_std(lambda k: TensorTrain.init(shape, rank, key=k), wick_relvar(shape, ranks), n)
    target = math.sqrt(2 / (shape[0] + n // shape[0]))
    assert abs(std / target - 1) < 0.05, (std, target)


def test_init_schemes_and_small_scale_the_same_draw():
    # Every scheme scales the same standard normal draw: core k is z_k * s_k. Relative to
    # init="std", std=1 (s = P^(-1/2d), P = r_1 ... r_(d-1)), a variance target v multiplies every
    # core by v^(1/2d); "small" sets s_k = alpha / sqrt(r_(k-1)). The sampled tests above check
    # that s^(2d) P is the variance of the reconstruction.
    key = jax.random.key(7)
    W1 = TTMatrix.init(24, 12, 3, key=key, out_modes=OUT, in_modes=IN, init="std", std=1.0)
    d, P = 3, math.prod(W1.ranks)
    assert W1.dtype == jnp.float32  # the default float
    cases = [
        (dict(), 2 / 36),  # glorot, the default
        (dict(init="he"), 2 / 12),
        (dict(init="lecun"), 1 / 12),
        (dict(init="std", std=0.3), 0.09),
    ]
    for kwargs, var in cases:
        W = TTMatrix.init(24, 12, 3, key=key, out_modes=OUT, in_modes=IN, **kwargs)
        for c, c1 in zip(W.cores, W1.cores, strict=True):
            np.testing.assert_allclose(c, c1 * var ** (1 / (2 * d)), rtol=4 * EPS32)
    W = TTMatrix.init(24, 12, 3, key=key, out_modes=OUT, in_modes=IN, init="small", alpha=0.5)
    for c, c1, r in zip(W.cores, W1.cores, (1, *W1.ranks), strict=True):
        np.testing.assert_allclose(c, c1 * P ** (1 / (2 * d)) * 0.5 / math.sqrt(r), rtol=4 * EPS32)
    # TensorTrain: default fans (n_1, n_2 ... n_d), or given ones
    T1 = TensorTrain.init((4, 5, 6), 3, key=key, init="std", std=1.0)
    for kwargs, var in [
        (dict(), 2 / (4 + 30)),
        (dict(init="he", fan_in=10, fan_out=3), 2 / 10),
        (dict(init="glorot", fan_in=10, fan_out=3), 2 / 13),
        (dict(init="lecun", fan_out=3), 1 / 30),
    ]:
        T = TensorTrain.init((4, 5, 6), 3, key=key, **kwargs)
        for c, c1 in zip(T.cores, T1.cores, strict=True):
            np.testing.assert_allclose(c, c1 * var ** (1 / 6), rtol=4 * EPS32)


def test_init_small_reconstructed_std():
    # "small": core k has entries N(0, alpha^2 / r_(k-1)), so Var(entry) = alpha^(2d)
    out_modes, in_modes = (6, 8, 6), (6, 8, 6)

    def make(key):
        return TTMatrix.init(
            288, 288, 8, key=key, out_modes=out_modes, in_modes=in_modes, init="small", alpha=0.5
        )

    assert jax.eval_shape(make, jax.random.key(0)).ranks == (8, 8)
    std = pooled_std(make, wick_relvar([36, 64, 36], (8, 8)), 288 * 288, seed=4)
    assert abs(std / 0.5**3 - 1) < 0.05, std


def test_ttm_init_divides_by_ranks_not_their_square():
    # tensorly-torch's TT and TT-matrix `normal_(0, std)` draw every core with std
    # (std / R)^(1/d), R = r_0 r_1 ... r_d: the product of the ranks where Var(W) = R s^(2d)
    # asks for its square root. Its W then has std std / sqrt(R), not std.
    out_modes, in_modes = (6, 8, 6), (6, 8, 6)
    modes, std, d = [36, 64, 36], 0.02, 3

    def ours(key):
        return TTMatrix.init(
            288, 288, 64, key=key, out_modes=out_modes, in_modes=in_modes, init="std", std=std
        )

    ranks = jax.eval_shape(ours, jax.random.key(0)).ranks
    assert ranks == (36, 36)  # 64 clipped: r_1 <= n_1 = 36, r_2 <= n_3 = 36
    R = math.prod((1, *ranks, 1))
    full = [1, *ranks, 1]
    shapes = [
        (full[k], o, i, full[k + 1])
        for k, (o, i) in enumerate(zip(out_modes, in_modes, strict=True))
    ]

    def naive(key):  # i.i.d. N(0, s^2) cores (one draw, split: fewer kernels to compile)
        s = (std / R) ** (1 / d)
        sizes = [math.prod(shp) for shp in shapes]
        flat, cores = s * jax.random.normal(key, (sum(sizes),)), []
        for size, shp in zip(sizes, shapes, strict=True):
            cores.append(flat[:size].reshape(shp))
            flat = flat[size:]
        return TTMatrix(tuple(cores))

    predicted = math.sqrt(R)  # how many times too small the naive rule's W is: here 36
    assert predicted >= 10
    relvar = wick_relvar(modes, ranks)  # the same for both: they differ by a constant factor
    assert abs(pooled_std(ours, relvar, 288**2, seed=5) / std - 1) < 0.05
    naive_std = pooled_std(naive, relvar, 288**2, seed=6)
    assert abs(naive_std / (std / predicted) - 1) < 0.05, (naive_std, std / predicted)


# ---------------------------------------------------------------------------------------------
# Gradients, transformations, dtypes
# ---------------------------------------------------------------------------------------------


def test_gradients(rng, x64):
    tt = tuple(jnp.asarray(rng.standard_normal(s)) for s in [(1, 3, 2), (2, 2, 3), (3, 2, 1)])
    x = jnp.asarray(rng.standard_normal((2, 2)))

    def tt_fn(x, *c):
        T = TensorTrain(tuple(jnp.asarray(a) for a in c))
        return jnp.concatenate([T.to_dense().ravel(), T(x)])

    check_grads(jax.jit(tt_fn), (x, *tt), order=1)
    ttm = tuple(
        jnp.asarray(rng.standard_normal(s)) for s in [(1, 2, 3, 2), (2, 3, 2, 2), (2, 2, 2, 1)]
    )
    X = jnp.asarray(rng.standard_normal((3, 12)))

    def ttm_fn(x, *c):  # every order in one function
        W = TTMatrix(tuple(jnp.asarray(a) for a in c))
        names = ("right-to-left", "left-to-right", "right-to-left(2-3)", "left-to-right(1-2)")
        return jnp.stack([W.apply(x, order=n) for n in names])

    check_grads(jax.jit(ttm_fn), (X, *ttm), order=1)


def test_vmap_over_stacked_modules(rng):
    keys = jax.random.split(jax.random.key(3), 4)
    make = lambda k: TTMatrix.init(24, 12, 3, key=k, out_modes=OUT, in_modes=IN)  # noqa: E731
    stacked = jax.vmap(make)(keys)
    assert [c.shape for c in stacked.cores] == [(4, 1, 2, 3, 3), (4, 3, 3, 2, 3), (4, 3, 4, 2, 1)]
    X = rng.standard_normal((4, 12)).astype(np.float32)
    Y, dense = eqx.filter_jit(eqx.filter_vmap(lambda m, x: (m(x), m.to_matrix())))(stacked, X)
    for b in range(4):
        single = make(keys[b])
        np.testing.assert_allclose(stacked.cores[1][b], single.cores[1], rtol=0, atol=0)
        ref = ref_ttm(single.cores)
        np.testing.assert_allclose(dense[b], ref, rtol=0, atol=product_tol(single.cores))
        np.testing.assert_allclose(
            Y[b], ref @ f64(X[b]), rtol=0, atol=ref_apply_tol(single.cores, X[b])
        )
    assert not np.allclose(stacked.cores[0][0], stacked.cores[0][1])


# ---------------------------------------------------------------------------------------------
# Bad input
# ---------------------------------------------------------------------------------------------


def test_bad_ranks_and_modes():
    key = jax.random.key(0)
    with pytest.raises(ValueError, match=r"`rank\[0\]` = 30 exceeds .* min\(4, 30\) = 4"):
        TensorTrain.init((4, 5, 6), (30, 2), key=key)
    with pytest.raises(ValueError, match=r"`rank\[1\]` = 16 exceeds what its neighbours allow"):
        TensorTrain.init((4, 4, 4, 4), (2, 16, 2), key=key)
    with pytest.raises(ValueError, match=r"`rank` as a tuple must hold the 2 inner"):
        TensorTrain.init((4, 5, 6), (2, 2, 2), key=key)
    with pytest.raises(ValueError, match="rank"):
        TensorTrain.init((4, 5, 6), 0, key=key)
    with pytest.raises(TypeError, match="rank"):
        TensorTrain.init((4, 5, 6), 2.0, key=key)
    with pytest.raises(TypeError, match="shape"):
        TensorTrain.init(4, 2, key=key)
    with pytest.raises(ValueError, match="fan_in"):
        TensorTrain.init((4, 5), 2, key=key, init="std", std=1.0, fan_in=3)
    # TTMatrix: ranks bounded with n_k = out_k in_k
    with pytest.raises(ValueError, match=r"`rank\[0\]` = 7 exceeds .* min\(6, 48\) = 6"):
        TTMatrix.init(24, 12, (7, 2), key=key, out_modes=OUT, in_modes=IN)
    with pytest.raises(ValueError, match=r"the product of `out_modes` must be 24"):
        TTMatrix.init(24, 12, 2, key=key, out_modes=(2, 3, 5), in_modes=IN)
    with pytest.raises(ValueError, match=r"the product of `in_modes` must be 12"):
        TTMatrix.from_dense(np.ones((24, 12)), out_modes=OUT, in_modes=(3, 2, 3))
    with pytest.raises(ValueError, match="same length"):
        TTMatrix.init(24, 12, 2, key=key, out_modes=OUT, in_modes=(3, 4))
    with pytest.raises(ValueError, match="`order` = 2"):
        TTMatrix.init(24, 12, 2, key=key, out_modes=OUT, order=2)
    with pytest.raises(ValueError, match="order"):
        TTMatrix.init(24, 12, 2, key=key, order=0)
    # default modes from `order`
    assert TTMatrix.init(24, 12, 2, key=key, order=2).out_modes == (4, 6)


def test_bad_tolerances_and_jit():
    A = np.ones((3, 4, 5), np.float32)
    for bad in (0, 0.0, -0.5, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="rtol"):
            TensorTrain.from_dense(A, rtol=bad)
        with pytest.raises(ValueError, match="rtol"):
            TTMatrix.from_dense(np.ones((24, 12)), rtol=bad)
    with pytest.raises(ValueError, match="at most one of `rank` and `rtol`"):
        TensorTrain.from_dense(A, 2, rtol=0.1)
    with pytest.raises(ValueError, match="rank="):
        jax.jit(lambda a: TensorTrain.from_dense(a, rtol=0.1).to_dense())(A)
    T = TensorTrain.from_dense(A, 2)
    with pytest.raises(ValueError, match="rank="):
        jax.jit(lambda t: t.round(rtol=0.1).to_dense())(T)
    with pytest.raises(ValueError, match="rtol"):
        T.round(rtol=0)
    assert T.ranks == (2, 2)  # an int rank is a cap on the shapes, not a numerical rank
    with pytest.raises(ValueError, match=r"`rank` must be an int in \[1, 2\]"):
        T.truncate(3)
    with pytest.raises(ValueError, match="current TT rank"):
        T.round(rank=(1, 3))
    with pytest.raises(ValueError, match="`a` must have at least 1 axes"):
        TensorTrain.from_dense(np.float32(1.0))
    with pytest.raises(ValueError, match="`w` must be a matrix"):
        TTMatrix.from_dense(np.ones(12))


def test_bad_cores_and_inputs(rng):
    with pytest.raises(ValueError, match="does not chain"):
        TensorTrain((jnp.ones((1, 3, 2)), jnp.ones((3, 4, 1))))
    with pytest.raises(ValueError, match="boundary TT ranks must be 1"):
        TensorTrain((jnp.ones((2, 3, 2)), jnp.ones((2, 4, 1))))
    with pytest.raises(ValueError, match="non-empty"):
        TensorTrain(())
    # a core of the wrong order: our ValueError, or first the TypeError of the field annotation
    # under the jaxtyping runtime checks of the test run
    with pytest.raises((ValueError, TypeError), match=r"3-d core|parameter 'cores'|cores"):
        TensorTrain((jnp.ones((1, 3)),))
    with pytest.raises((ValueError, TypeError), match=r"4-d core|parameter 'cores'|cores"):
        TTMatrix((jnp.ones((1, 3, 2, 2)), jnp.ones((2, 4, 1))))
    with pytest.raises(ValueError, match="does not chain"):
        TTMatrix((jnp.ones((1, 3, 2, 2)), jnp.ones((3, 4, 2, 1))))
    W = TTMatrix(random_ttm_cores(rng, OUT, IN, RANKS))
    with pytest.raises(ValueError, match="d_in = 12"):
        W.apply(jnp.ones((2, 11)))
    with pytest.raises(ValueError, match=r"\(12,\).*vmap"):
        W(jnp.ones((2, 12)))
    with pytest.raises(ValueError, match="`order` must be one of"):
        W.apply(jnp.ones((2, 12)), order="middle-out")
    T = TensorTrain(random_cores(rng, (3, 4, 2), (2, 2)))
    with pytest.raises(ValueError, match=r"trailing modes \(4, 2\)"):
        T(jnp.ones(8))
