"""Tucker tensors ``T = G ×_1 A_1 ×_2 ... ×_d A_d``, and their matrix view.

A Tucker tensor of order ``d`` holds a core ``G`` (r_1, ..., r_d) and factor matrices ``A_k``
(n_k, r_k): ``T[i] = sum_j G[j_1, ..., j_d] A_1[i_1, j_1] ... A_d[i_d, j_d]``. Its multilinear
rank ``(r_1, ..., r_d)`` needs ``r_k <= n_k`` and ``r_k <= prod_{j != k} r_j``. With
``n_out = p`` its first ``p`` modes index the output of a weight ``(d_out, d_in)``, as in
`factorjax.factorizations.cp`.

Example:
    >>> import jax
    >>> from factorjax.factorizations.tucker import Tucker
    >>> W = Tucker.init_matrix(64, 32, 4, key=jax.random.key(0))    # modes (8, 8) x (4, 8)
    >>> W.shape, W.ranks, W.n_out
    ((8, 8, 4, 8), (4, 4, 4, 4), 2)
    >>> W.apply(jax.numpy.ones((5, 32))).shape
    (5, 64)
"""

import math
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import opt_einsum
from jax import Array
from jax.typing import ArrayLike
from jaxtyping import Float, PRNGKeyArray

from factorjax._checks import as_real_array, describe
from factorjax.factorizations._init import small_std
from factorjax.factorizations._multilinear import (
    chain_plan,
    decompose,
    hooi,
    kron,
    kron_flops,
    multiply_trailing,
    orthonormalize,
    resolve_ranks,
    run_chain,
    trailing_plan,
)
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

__all__ = ["Tucker"]

# ---------------------------------------------------------------------------------------------
# The format
# ---------------------------------------------------------------------------------------------


class Tucker(AbstractTensorOperator):
    """A Tucker tensor ``G ×_1 A_1 ... ×_d A_d`` of order ``d >= 2``.

    Fields:
        core: ``(r_1, ..., r_d)``.
        factors: ``d`` matrices ``(n_k, r_k)``, ``r_k <= n_k``.
        n_out: ``None`` for a plain tensor, or the number of leading output modes (static).

    The matrix view (`out_modes`, `in_modes`, `to_matrix`), `init_matrix` and `with_n_out`
    are those of `factorjax.factorizations._tensor_operator.AbstractTensorOperator`.
    """

    core: Float[Array, "..."]
    factors: tuple[Float[Array, "_ _"], ...]
    n_out: int | None = eqx.field(static=True, default=None)

    def __check_init__(self):
        g, fs = self.core, self.factors
        if not isinstance(fs, tuple) or len(fs) < 2 or len(fs) != g.ndim:
            raise ValueError(
                f"`factors` must be a tuple of one matrix per axis of `core` (at least 2); got "
                f"{len(fs) if isinstance(fs, tuple) else fs!r} for {describe(g)}."
            )
        for k, f in enumerate(fs):
            if f.ndim != 2 or f.shape[1] != g.shape[k]:
                raise ValueError(
                    f"`factors[{k}]` must be a matrix (n_{k}, r_{k}) with r_{k} = {g.shape[k]} "
                    f"columns (axis {k} of `core`); got {describe(f)}."
                )
        resolve_ranks(g.shape, tuple(f.shape[0] for f in fs))

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
    ) -> "Tucker":
        """Random i.i.d. normal core and factors.

        Arguments:
            shape: the mode sizes ``(n_1, ..., n_d)``, ``d >= 2``.
            rank: the multilinear rank: a tuple (validated), or an int capping every mode
                (clipped to the mode sizes and to the product of the other ranks).
            key: a JAX PRNG key.
            n_out: ``None`` (a plain tensor) or the number of leading output modes.
            init: ``"glorot"``, ``"he"``, ``"lecun"`` (fans of the matrix view: need `n_out`)
                or ``"std"`` target the variance of the reconstructed entries,
                ``Var = prod(r) s_G^2 prod_k s_k^2``: the factors get ``s_k = 1 / sqrt(n_k)``
                (columns of norm about 1) and the core the rest,
                ``s_G^2 = Var prod(n) / prod(r)``. ``"small"``: factor entries
                ``N(0, alpha^2 / r_k)``, core entries ``N(0, alpha^2 / prod(r))``.
            std: the target std for ``init="std"``.
            alpha: the scale for ``init="small"``.
            dtype: floating dtype (default: JAX's default float).

        Returns:
            A `Tucker`.
        """
        shape = check_shape("shape", shape)
        ranks = resolve_ranks(rank, shape)
        n_out = check_n_out(n_out, len(shape))
        dtype = jnp.result_type(float) if dtype is None else dtype
        if init == "small":
            if std is not None:
                raise ValueError("`std` is only used with init='std'; got init='small'.")
            core_std = small_std(alpha, math.prod(ranks))
            stds = [small_std(alpha, r) for r in ranks]
        else:
            var = matrix_target(init, shape, n_out, std, alpha)
            core_std = (var * math.prod(shape) / math.prod(ranks)) ** 0.5
            stds = [1 / math.sqrt(n) for n in shape]
        # one draw for the core and all factors: one random-bits kernel to compile, not d + 1
        sizes = [math.prod(ranks), *(n * r for n, r in zip(shape, ranks, strict=True))]
        flat = jax.random.normal(key, (sum(sizes),), dtype)
        ends = np.cumsum([0, *sizes])
        core = core_std * flat[: ends[1]].reshape(ranks)
        factors = tuple(
            s * flat[ends[k + 1] : ends[k + 2]].reshape(n, r)
            for k, (s, n, r) in enumerate(zip(stds, shape, ranks, strict=True))
        )
        return cls(core, factors, n_out)

    @classmethod
    def from_dense(
        cls,
        a: ArrayLike,
        rank: Any = None,
        *,
        rtol: Any = None,
        n_iter: Any = 0,
        n_out: Any = None,
    ) -> "Tucker":
        """ST-HOSVD of a dense tensor, then optional HOOI sweeps.

        Arguments:
            a: a real tensor of order ``d >= 2``.
            rank: the multilinear rank (a tuple, validated; or an int capping every mode);
                with neither `rank` nor `rtol`, the full multilinear rank (exact).
            rtol: instead of `rank`: per mode, the smallest rank that discards at most
                ``rtol^2 ||a||_F^2 / d`` of squared singular values, so that
                ``||a - T||_F <= rtol ||a||_F`` (needs concrete values: not under ``jit``).
            n_iter: HOOI sweeps after the ST-HOSVD (an int >= 0; each never increases the
                error).
            n_out: ``None`` or the number of leading output modes of the result.

        Returns:
            A `Tucker` with orthonormal factors.
        """
        a = as_real_array("a", a)
        if a.ndim < 2:
            raise ValueError(f"`a` must be a tensor of order >= 2; got {describe(a)}.")
        n_out = check_n_out(n_out, a.ndim)
        if isinstance(n_iter, bool) or not isinstance(n_iter, (int, np.integer)) or n_iter < 0:
            raise ValueError(f"`n_iter` must be an int >= 0; got {n_iter!r}.")
        core, factors = decompose(a, rank, rtol, a.shape, "size")
        if n_iter:
            core, factors = hooi(a, factors, int(n_iter))
        return cls(core, tuple(factors), n_out)

    @classmethod
    def from_matrix(
        cls,
        w: ArrayLike,
        rank: Any = None,
        *,
        out_modes: Any = None,
        in_modes: Any = None,
        order: Any = None,
        **kwargs,
    ) -> "Tucker":
        """`from_dense` of a weight ``(d_out, d_in)`` tensorized as ``out_modes + in_modes``.

        Arguments:
            w: a real matrix.
            rank: as in `from_dense`.
            out_modes, in_modes, order: as in `init_matrix`.
            **kwargs: ``rtol``, ``n_iter`` as in `from_dense`.
        """
        t, n_out = cls._tensorize(w, out_modes, in_modes, order)
        return cls.from_dense(t, rank, n_out=n_out, **kwargs)

    # -- the tensor ---------------------------------------------------------------------------

    @property
    def shape(self) -> tuple[int, ...]:
        """The mode sizes ``(n_1, ..., n_d)``."""
        return tuple(f.shape[0] for f in self.factors)

    @property
    def ranks(self) -> tuple[int, ...]:
        """The multilinear rank ``(r_1, ..., r_d)`` (the shape of the core)."""
        return tuple(self.core.shape)

    @property
    def rank(self) -> int:
        """The largest of the multilinear ranks (as `TensorTrain.rank`); see `ranks`."""
        return max(self.core.shape)

    def to_dense(self) -> Array:
        """The dense tensor: the core times each factor, as a cyclic sweep of matmuls or in
        the cheapest order of mode products (`trailing_plan`)."""
        return multiply_trailing(
            self.core, self.factors, trailing_plan(self.ranks, self.shape, 1)[0]
        )

    def reconstruction_flops(self) -> int:
        return trailing_plan(self.ranks, self.shape, 1)[1]

    def reconstruction_gemm_flops(self) -> int:
        return trailing_plan(self.ranks, self.shape, 1)[2]

    def truncate(self, rank: Any = None, *, rtol: Any = None) -> "Tucker":
        """ST-HOSVD of the tensor to a lower multilinear rank, computed from the core.

        The factors are first orthonormalized (``A_k = Q_k R_k``, ``G <- G ×_k R_k``); the
        ST-HOSVD of the small core then equals that of the dense tensor (its factors are
        ``Q_k U_k``), with the same error bound, without building the dense tensor.

        Arguments:
            rank: the new multilinear rank: a tuple with ``r'_k <= r_k`` (validated) or an int
                capping every mode.
            rtol: instead of `rank`: as in `from_dense`, relative to this tensor's norm.

        Returns:
            A `Tucker` with orthonormal factors.
        """
        if rank is None and rtol is None:
            raise ValueError("pass `rank` or `rtol` to truncate to.")
        qs, g = orthonormalize(self.core, self.factors)
        core, us = decompose(g, rank, rtol, self.ranks, "current rank")
        return Tucker(core, tuple(q @ u for q, u in zip(qs, us, strict=True)), self.n_out)

    # -- application --------------------------------------------------------------------------

    def tensor_network(self) -> tuple[tuple[str, ...], tuple[Array, ...], str]:
        """The core ``(r_1, ..., r_d)`` and the factors ``(n_k, r_k)``."""
        sym, d = opt_einsum.get_symbol, len(self.factors)
        modes, ranks = "".join(sym(1 + k) for k in range(d)), [sym(1 + d + k) for k in range(d)]
        terms = ("".join(ranks), *(m + r for m, r in zip(modes, ranks, strict=True)))
        return terms, (self.core, *self.factors), modes

    def candidates(self, batch: int) -> tuple[Candidate, ...]:
        """``"factored"``: project ``x`` on the input factors mode by mode, one matmul with
        the core, expand through the output factors; ``"core-input"``: merge the input factors
        into the core first (``(S, d_in)``, independent of the batch), one matmul, expand;
        ``"core-output"``: project ``x``, one matmul with the core merged with the output
        factors ``(d_out, T)``; ``"low-rank"``: ``W`` as the product of two matrices through
        the smaller of ``S`` and ``T`` (the Kronecker product of one side's factors, and the
        core merged with the other side's), two matmuls and no mode product on the batch;
        ``"dense"``. Mode products go in their cheapest order."""
        out_modes, in_modes = self._view()
        p, b = self.n_out, batch
        s_r, t_r = self.ranks[:p], self.ranks[p:]
        S, T = math.prod(s_r), math.prod(t_r)
        d_out, d_in = math.prod(out_modes), math.prod(in_modes)
        f_out, f_in, g = self.factors[:p], self.factors[p:], self.core
        itemsize = jnp.dtype(self.dtype).itemsize
        in_axes, out_axes = range(1, len(in_modes) + 1), range(1, p + 1)

        proj_o, proj_f, proj_s = chain_plan(in_modes, t_r, b)  # (B, i...) -> (B, t...)
        exp_o, exp_f, exp_s = chain_plan(s_r, out_modes, b)  # (B, s...) -> (B, o...)
        cin_o, cin_f, cin_s = chain_plan(t_r, in_modes, S)  # G -> (s..., i...)
        cout_o, cout_f, cout_s = chain_plan(s_r, out_modes, T)  # G -> (o..., t...)

        def project(x):
            y = run_chain(x.reshape(x.shape[0], *in_modes), f_in, in_axes, proj_o, 0)
            return y.reshape(x.shape[0], T)

        def expand(z):
            y = run_chain(z.reshape(z.shape[0], *s_r), f_out, out_axes, exp_o, 1)
            return y.reshape(z.shape[0], d_out)

        def factored(x):
            return expand(matmul_t(project(x), g.reshape(S, T)))

        def merged_in():  # the core merged with the input factors, (S, d_in)
            return run_chain(g, f_in, range(p, g.ndim), cin_o, 1).reshape(S, d_in)

        def merged_out():  # the core merged with the output factors, (d_out, T)
            return run_chain(g, f_out, range(p), cout_o, 1).reshape(d_out, T)

        def core_input(x):
            return expand(matmul_t(x, merged_in()))

        def core_output(x):
            return matmul_t(project(x), merged_out())

        if S <= T:  # W = kron(out factors) (d_out, S) @ core merged with the inputs (S, d_in)
            lr_chain, lr_sizes, lr_inner = cin_f + kron_flops(f_out), [*cin_s, d_out * S], S

            def low_rank(x):
                return matmul_t(matmul_t(x, merged_in()), kron(f_out))

        else:  # W = core merged with the outputs (d_out, T) @ kron(in factors)^T (T, d_in)
            lr_chain, lr_sizes, lr_inner = cout_f + kron_flops(f_in), [*cout_s, d_in * T], T

            def low_rank(x):
                return matmul_t(x @ kron(f_in), merged_out())

        def order(name, chain_flops, gemm_flops, sizes):
            # the plain matmuls (`matmul_t`) of each order count as such in the model
            flops, peak, traffic = chain_flops + gemm_flops, max(sizes), sum(sizes)
            return Order(name, flops, peak * itemsize, gemm_flops, traffic * itemsize)

        return (
            Candidate(
                order("factored", proj_f + exp_f, 2 * b * S * T, [*proj_s, b * S, *exp_s[:-1]]),
                factored,
            ),
            Candidate(
                order("core-input", cin_f + exp_f, 2 * b * d_in * S, [*cin_s, b * S, *exp_s[:-1]]),
                core_input,
            ),
            Candidate(
                order("core-output", proj_f + cout_f, 2 * b * T * d_out, [*proj_s, *cout_s]),
                core_output,
            ),
            Candidate(
                order(
                    "low-rank",
                    lr_chain,
                    2 * b * lr_inner * (d_in + d_out),
                    [*lr_sizes, b * lr_inner],
                ),
                low_rank,
            ),
            *network_candidates(self.network(), batch, self.dtype),
            dense_candidate(self, batch),
        )
