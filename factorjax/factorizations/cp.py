"""CP (canonical polyadic) tensors ``T = sum_r w_r a_1r ∘ ... ∘ a_dr``, and their matrix view.

A CP of order ``d`` holds weights ``w`` (R,) and factor matrices ``A_k`` (n_k, R):
``T[i_1, ..., i_d] = sum_r w_r A_1[i_1, r] ... A_d[i_d, r]``. With ``n_out = p`` its first ``p``
modes index the output and the others the input of a weight ``(d_out, d_in)``, row-major as in
`factorjax.factorizations._tensorize`; then it applies to inputs through
`AbstractOperator.apply` without rebuilding the weight when that is cheaper.

Example:
    >>> import jax
    >>> from factorjax.factorizations.cp import CP
    >>> W = CP.init_matrix(64, 32, 8, key=jax.random.key(0))     # modes (8, 8) x (4, 8)
    >>> W.shape, W.rank, W.n_out, W.num_params
    ((8, 8, 4, 8), 8, 2, 232)
    >>> W.apply(jax.numpy.ones((5, 32))).shape
    (5, 64)
"""

import functools
import math
from typing import Any, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import opt_einsum
from jax import Array, lax
from jax.typing import ArrayLike
from jaxtyping import Float, Int, PRNGKeyArray

from factorjax import _lapack
from factorjax._checks import (
    as_real_array,
    check_positive_int,
    check_rank,
    check_tolerance,
    describe,
)
from factorjax.factorizations._cost import matmul_gemm_flops
from factorjax.factorizations._init import small_std
from factorjax.factorizations._operator import (
    Candidate,
    Order,
    dense_candidate,
    matmul_t,
    network_candidates,
)
from factorjax.factorizations._tensor_operator import (
    AbstractTensorOperator,
    check_n_out,
    check_shape,
    matrix_target,
)
from factorjax.factorizations._tensorize import factor_std

__all__ = ["CP", "ALSReport"]

# Scalar arguments validated by `factorjax._checks` are annotated `Any`, as in lowrank.py.

# ---------------------------------------------------------------------------------------------
# Khatri-Rao products
# ---------------------------------------------------------------------------------------------


def khatri_rao(mats) -> Array:
    """Row-major Khatri-Rao product of ``(n_k, R)`` matrices: ``(prod n_k, R)``."""
    out = mats[0]
    for m in mats[1:]:
        out = (out[:, None, :] * m[None, :, :]).reshape(-1, out.shape[-1])
    return out


def kr_flops(modes, rank: int) -> int:
    """Multiplications of `khatri_rao` on factors with these mode sizes."""
    return rank * sum(math.prod(modes[:k]) for k in range(2, len(modes) + 1))


def _best_split(shape) -> int:
    """Split of the modes into a left and a right Khatri-Rao product whose cost is smallest."""
    costs = [kr_flops(shape[:s], 1) + kr_flops(shape[s:], 1) for s in range(1, len(shape))]
    return 1 + int(np.argmin(costs))


def _cp_dense(weights: Array, factors, shape) -> Array:
    s = _best_split(shape)
    left = khatri_rao([factors[0] * weights, *factors[1:s]])
    return (left @ khatri_rao(factors[s:]).T).reshape(shape)


# ---------------------------------------------------------------------------------------------
# CP-ALS
# ---------------------------------------------------------------------------------------------


class ALSReport(NamedTuple):
    """How CP-ALS converged.

    Fields:
        errors: relative Frobenius error ``||A - CP||_F / ||A||_F`` after each sweep, shape
            ``(n_iter,)``; constant after an early stop (`tol`).
        error: the final relative error (``errors[-1]``).
        iterations: the number of sweeps run before the early stop (``n_iter`` without one).
    """

    errors: Float[Array, " n_iter"]
    error: Float[Array, ""]
    iterations: Int[Array, ""]


def _pinv_psd(v: Array) -> Array:
    """Pseudo-inverse of a symmetric PSD matrix from its eigendecomposition."""
    e, q = _lapack.eigh(v)
    keep = e > e[-1] * v.shape[0] * jnp.finfo(v.dtype).eps
    inv = jnp.where(keep, 1 / jnp.where(keep, e, 1), 0)
    return (q * inv) @ q.T


def _mttkrp(a: Array, factors, k: int) -> Array:
    """``A_(k) (Khatri-Rao of the other factors)``, ``(n_k, R)``, without unfolding ``a``."""
    d = a.ndim
    ops = [x for j in range(d) if j != k for x in (factors[j], [j, d])]
    return jnp.einsum(a, list(range(d)), *ops, [k, d])


@functools.partial(jax.jit, static_argnums=1)
def _als_init(a: Array, rank: int, key) -> list[Array]:
    d, shape = a.ndim, a.shape
    if key is not None:
        keys = jax.random.split(key, d)
        return [
            jax.random.normal(k, (n, rank), a.dtype) / math.sqrt(n)
            for k, n in zip(keys, shape, strict=True)
        ]
    small = [(k, shape[k]) for k in range(1, d) if shape[k] < rank]
    if small:
        k, n = small[0]
        raise ValueError(
            f"`rank` = {rank} exceeds the size {n} of mode {k}: the HOSVD initialization "
            f"(key=None) has only {n} singular vectors there; pass `key=` for a random "
            "initialization."
        )
    # Factor 0 is solved for first, from the others: its initial value is never read.
    factors = [jnp.zeros((shape[0], rank), a.dtype)]
    for k in range(1, d):
        axes = [j for j in range(d) if j != k]
        _, vecs = _lapack.eigh(jnp.tensordot(a, a, axes=(axes, axes)))
        factors.append(vecs[:, ::-1][:, :rank])  # leading left singular vectors of A_(k)
    return factors


@functools.partial(jax.jit, static_argnums=(2, 3))
def _als(a: Array, factors: list[Array], n_iter: int, tol: float | None):
    d, shape = a.ndim, a.shape
    norm_a = jnp.linalg.norm(a)
    norm_a = jnp.where(norm_a > 0, norm_a, 1)

    def sweep(factors):
        factors = list(factors)
        grams = [f.T @ f for f in factors]
        for k in range(d):
            v = math.prod(grams[j] for j in range(d) if j != k)  # Hadamard product
            f = _mttkrp(a, factors, k) @ _pinv_psd(v)  # least squares, normal equations
            lam = jnp.linalg.norm(f, axis=0)
            factors[k] = f / jnp.where(lam > 0, lam, 1)
            grams[k] = factors[k].T @ factors[k]
        return tuple(factors), lam

    def step(carry, _):
        factors, weights, err, done, count = carry

        def run(state):
            f, w = sweep(state[0])
            return f, w, jnp.linalg.norm(a - _cp_dense(w, f, shape)) / norm_a

        factors, weights, new = lax.cond(done, lambda s: s, run, (factors, weights, err))
        stop = done if tol is None else done | (err - new <= tol)
        return (factors, weights, new, stop, count + (~done).astype(jnp.int32)), new

    rank = factors[0].shape[1]
    init = (
        tuple(factors),
        jnp.ones(rank, a.dtype),
        jnp.asarray(jnp.inf, a.dtype),
        jnp.asarray(False),
        jnp.asarray(0, jnp.int32),
    )
    (factors, weights, _, _, count), errors = lax.scan(step, init, None, length=n_iter)
    return weights, factors, ALSReport(errors, errors[-1], count)


# ---------------------------------------------------------------------------------------------
# The format
# ---------------------------------------------------------------------------------------------


class CP(AbstractTensorOperator):
    """A CP tensor ``sum_r w_r a_1r ∘ ... ∘ a_dr`` of order ``d >= 2``.

    Fields:
        weights: ``(R,)``.
        factors: ``d`` matrices ``(n_k, R)``.
        n_out: ``None`` for a plain tensor, or the number of leading modes that index the
            output of its matrix view ``(prod n_1..n_p, prod n_{p+1}..n_d)`` (static).

    The matrix view (`out_modes`, `in_modes`, `to_matrix`), `init_matrix` and `with_n_out`
    are those of `factorjax.factorizations._tensor_operator.AbstractTensorOperator`.
    """

    weights: Float[Array, " r"]
    factors: tuple[Float[Array, "_ r"], ...]
    n_out: int | None = eqx.field(static=True, default=None)

    def __check_init__(self):
        fs = self.factors
        if not isinstance(fs, tuple) or len(fs) < 2:
            raise ValueError(f"`factors` must be a tuple of at least 2 matrices; got {fs!r}.")
        if self.weights.ndim != 1:
            raise ValueError(f"`weights` must be a vector (R,); got {describe(self.weights)}.")
        for k, f in enumerate(fs):
            if f.ndim != 2 or f.shape[1] != self.weights.shape[0]:
                raise ValueError(
                    f"`factors[{k}]` must be a matrix (n_{k}, R) with R = "
                    f"{self.weights.shape[0]} columns (the length of `weights`); got {describe(f)}."
                )

    # -- construction -------------------------------------------------------------------------

    @classmethod
    def init(
        cls,
        shape: Any,
        rank: Any,
        *,
        key: PRNGKeyArray,
        n_out: Any = None,
        init: Any = "glorot",
        std: Any = None,
        alpha: Any = None,
        dtype=None,
    ) -> "CP":
        """Random i.i.d. normal factors, weights 1.

        Arguments:
            shape: the mode sizes ``(n_1, ..., n_d)``, ``d >= 2``.
            rank: the number of components ``R >= 1``.
            key: a JAX PRNG key.
            n_out: ``None`` (a plain tensor) or the number of leading output modes.
            init: ``"glorot"``, ``"he"``, ``"lecun"`` (fans of the matrix view: need `n_out`)
                or ``"std"`` target the variance of the reconstructed entries,
                ``Var = R s^(2d)`` for factor entries of std ``s``; ``"small"`` draws every
                factor entry ``N(0, alpha^2 / R)``.
            std: the target std for ``init="std"``.
            alpha: the scale for ``init="small"``.
            dtype: floating dtype (default: JAX's default float).

        Returns:
            A `CP`.
        """
        shape = check_shape("shape", shape)
        rank = check_positive_int("rank", rank)
        n_out = check_n_out(n_out, len(shape))
        dtype = jnp.result_type(float) if dtype is None else dtype
        if init == "small":
            if std is not None:
                raise ValueError("`std` is only used with init='std'; got init='small'.")
            scale = small_std(alpha, rank)
        else:
            var = matrix_target(init, shape, n_out, std, alpha)
            scale = factor_std(var, rank, len(shape))
        # one draw for all factors: one random-bits kernel to compile, not d
        flat = scale * jax.random.normal(key, (sum(shape) * rank,), dtype)
        ends = np.cumsum([0, *shape]) * rank
        factors = tuple(
            flat[lo:hi].reshape(n, rank)
            for lo, hi, n in zip(ends[:-1], ends[1:], shape, strict=True)
        )
        return cls(jnp.ones(rank, dtype), factors, n_out)

    @classmethod
    def als(
        cls,
        a: ArrayLike,
        rank: Any,
        *,
        n_iter: Any = 50,
        key: PRNGKeyArray | None = None,
        n_out: Any = None,
        tol: Any = None,
    ) -> tuple["CP", ALSReport]:
        """CP-ALS: alternating least squares with a fixed number of sweeps (jittable).

        Each sweep solves for every factor in turn, the others fixed: the least-squares
        solution ``A_(k) KR_{j != k} A_j (∘_{j != k} A_j^T A_j)^+`` (the Hadamard product of the
        Gram matrices, pseudo-inverted from its eigendecomposition), then moves the column norms
        into the weights. Exact arithmetic never increases the error from one sweep to the next.
        The error in the report is the exact residual ``||A - CP||_F / ||A||_F`` (one
        reconstruction per sweep; a Gram-based formula would lose half the digits).

        Arguments:
            a: a real tensor of order ``d >= 2``.
            rank: the number of components, ``1 <= R <= prod(shape) / max(shape)`` (the
                largest rank any tensor of that shape can have).
            n_iter: the number of sweeps (a Python int >= 1).
            key: ``None``: initialize from the leading left singular vectors of each unfolding
                (HOSVD; needs ``R <= n_k`` for modes 2..d); a PRNG key: random normal factors.
            n_out: ``None`` or the number of leading output modes of the result.
            tol: ``None``, or stop early (keep the factors for the remaining sweeps) once a
                sweep lowers the relative error by at most ``tol`` (a float >= 0).

        Returns:
            ``(cp, report)``: the `CP` (components sorted by decreasing weight) and an
            `ALSReport`.
        """
        a = as_real_array("a", a)
        if a.ndim < 2:
            raise ValueError(f"`a` must be a tensor of order >= 2; got {describe(a)}.")
        n_out = check_n_out(n_out, a.ndim)
        rank = check_rank("rank", rank, math.prod(a.shape) // max(a.shape))
        n_iter = check_positive_int("n_iter", n_iter)
        tol = None if tol is None else check_tolerance("tol", tol)
        weights, factors, report = _als(a, _als_init(a, rank, key), n_iter, tol)
        idx = jnp.argsort(-weights)
        cp = cls(weights[idx], tuple(f[:, idx] for f in factors), n_out)
        return cp, report

    @classmethod
    def from_dense(
        cls,
        a: ArrayLike,
        rank: Any,
        *,
        n_iter: Any = 50,
        key: PRNGKeyArray | None = None,
        n_out: Any = None,
        tol: Any = None,
    ) -> "CP":
        """CP-ALS of a dense tensor; `als` takes the same arguments and also returns the
        convergence report.

        Returns:
            A `CP` of rank ``rank``.
        """
        return cls.als(a, rank, n_iter=n_iter, key=key, n_out=n_out, tol=tol)[0]

    @classmethod
    def from_matrix(
        cls,
        w: ArrayLike,
        rank: Any,
        *,
        out_modes: Any = None,
        in_modes: Any = None,
        order: Any = None,
        **kwargs,
    ) -> "CP":
        """CP-ALS of a weight ``(d_out, d_in)`` tensorized as ``out_modes + in_modes``.

        Arguments:
            w: a real matrix.
            rank: the number of components.
            out_modes, in_modes, order: as in `init_matrix`.
            **kwargs: ``n_iter``, ``key``, ``tol`` as in `als`.
        """
        t, n_out = cls._tensorize(w, out_modes, in_modes, order)
        return cls.from_dense(t, rank, n_out=n_out, **kwargs)

    # -- the tensor ---------------------------------------------------------------------------

    @property
    def shape(self) -> tuple[int, ...]:
        """The mode sizes ``(n_1, ..., n_d)``."""
        return tuple(f.shape[0] for f in self.factors)

    @property
    def rank(self) -> int:
        """The number of components ``R``."""
        return self.weights.shape[0]

    def to_dense(self) -> Array:
        """The dense tensor: two Khatri-Rao products (modes split where they are cheapest)
        and one matmul."""
        return _cp_dense(self.weights, self.factors, self.shape)

    def reconstruction_flops(self) -> int:
        shape, r = self.shape, self.rank
        s = _best_split(shape)
        return (
            r * shape[0]
            + kr_flops(shape[:s], r)
            + kr_flops(shape[s:], r)
            + 2 * r * math.prod(shape)
        )

    def truncate(self, rank: Any) -> "CP":
        """Keep the ``rank`` components of largest ``|w_r| prod_k ||A_k[:, r]||``.

        A heuristic: a CP has no best lower-rank truncation in general (the best rank-r
        approximation may not exist or share no component with this one); refine the result
        with `from_dense` when it matters.
        """
        rank = check_rank("rank", rank, self.rank)
        score = jnp.abs(self.weights) * math.prod(jnp.linalg.norm(f, axis=0) for f in self.factors)
        idx = jnp.argsort(-score)[:rank]
        return CP(self.weights[idx], tuple(f[:, idx] for f in self.factors), self.n_out)

    # -- application --------------------------------------------------------------------------

    def tensor_network(self) -> tuple[tuple[str, ...], tuple[Array, ...], str]:
        """The weights ``(R,)`` and the factors ``(n_k, R)``, all sharing the rank label."""
        sym, d = opt_einsum.get_symbol, len(self.factors)
        modes, r = "".join(sym(1 + k) for k in range(d)), sym(1 + d)
        return (r, *(m + r for m in modes)), (self.weights, *self.factors), modes

    def candidates(self, batch: int) -> tuple[Candidate, ...]:
        """``"factored"``: contract ``x`` with the input factors one mode at a time (largest
        first), ending at ``(B, R)``, then one matmul with the weighted Khatri-Rao product of
        the output factors; ``"khatri-rao"``: one matmul with the Khatri-Rao product of the
        input factors instead of the mode-by-mode contraction; ``"dense"``."""
        out_modes, in_modes = self._view()
        p, q, r, b = self.n_out, len(in_modes), self.rank, batch
        d_out, d_in = math.prod(out_modes), math.prod(in_modes)
        itemsize = jnp.dtype(self.dtype).itemsize
        f_out, f_in = self.factors[:p], self.factors[p:]

        # output side, shared: (B, R) @ (w * KR_out)^T
        out_flops = r * out_modes[0] + kr_flops(out_modes, r) + 2 * b * r * d_out
        out_sizes = [d_out * r, b * r]

        def expand(z):
            return matmul_t(z, khatri_rao([f_out[0] * self.weights, *f_out[1:]]))

        # factored: absorbing the largest remaining mode first makes every step cheapest
        order = sorted(range(q), key=lambda j: -in_modes[j])
        flops, sizes, left = 0, [], d_in
        for j in order:
            flops += 2 * b * r * left
            left //= in_modes[j]
            sizes.append(b * r * left)

        def factored(x):
            y, labels = x.reshape(x.shape[0], *in_modes), [0, *range(1, q + 1)]
            for t, j in enumerate(order):
                out = [lab for lab in labels if lab != j + 1] + ([q + 1] if t == 0 else [])
                y = jnp.einsum(y, labels, f_in[j], [j + 1, q + 1], out)
                labels = out
            return expand(y)

        def kr(x):
            return expand(x @ khatri_rao(f_in))

        kr_cost = kr_flops(in_modes, r) + 2 * b * d_in * r
        # plain matmuls, at the matmul rate where no side is below GEMM_MIN_DIM (a rank-4
        # side ran as slowly as a chain: runs 11 and 12, B=64, docs/benchmarks.md)
        out_gemm, in_gemm = matmul_gemm_flops(b, r, d_out), matmul_gemm_flops(b, d_in, r)
        factored_order = Order(
            "factored",
            flops + out_flops,
            max(sizes + out_sizes) * itemsize,
            out_gemm,
            sum(sizes + out_sizes) * itemsize,
        )
        kr_order = Order(
            "khatri-rao",
            kr_cost + out_flops,
            max(d_in * r, *out_sizes) * itemsize,
            in_gemm + out_gemm,
            (d_in * r + sum(out_sizes)) * itemsize,
        )
        return (
            Candidate(factored_order, factored),
            Candidate(kr_order, kr),
            *network_candidates(self.network(), batch, self.dtype),
            dense_candidate(self, batch),
        )
