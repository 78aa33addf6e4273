"""TT-matrices (matrix product operators): a weight ``W`` of shape ``(d_out, d_in)`` tensorized
as ``out_modes`` and ``in_modes`` (row-major), with cores ``(r_{k-1}, out_k, in_k, r_k)``:
``W[(o_1 ... o_d), (i_1 ... i_d)] = G_1[:, o_1, i_1, :] ... G_d[:, o_d, i_d, :]``.

It is the tensor train (`factorjax.factorizations.tensor_train`) of the tensor with the
interleaved modes ``(o_1 i_1, ..., o_d i_d)``, and uses its TT-SVD, rounding and rank rules.
"""

import functools
import math
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import opt_einsum
from jax import Array
from jax.typing import ArrayLike
from jaxtyping import Float, PRNGKeyArray

from factorjax._checks import as_real_array, check_positive_int, describe
from factorjax.factorizations import _cost
from factorjax.factorizations._operator import (
    AbstractOperator,
    Candidate,
    Network,
    dense_candidate,
    left_matmul,
    network_candidates,
    pairwise_path,
    sequential_path,
)
from factorjax.factorizations._tensorize import balanced_modes, check_modes
from factorjax.factorizations.tensor_train import (
    _check_cap,
    _check_train,
    _init_cores,
    _resolve_ranks,
    _split_rank_rtol,
    _tt_round,
    _tt_svd,
)


def _resolve_modes(d_out, d_in, out_modes, in_modes, order) -> tuple[tuple, tuple]:
    if order is not None:
        order = check_positive_int("order", order)
    if out_modes is not None:
        out_modes = check_modes("out_modes", out_modes, d_out)
    if in_modes is not None:
        in_modes = check_modes("in_modes", in_modes, d_in)
    if out_modes is not None and in_modes is not None and len(out_modes) != len(in_modes):
        raise ValueError(
            f"`out_modes` and `in_modes` must have the same length (one pair per core); got "
            f"{out_modes!r} and {in_modes!r}."
        )
    for name, modes in (("out_modes", out_modes), ("in_modes", in_modes)):
        if modes is not None and order is not None and len(modes) != order:
            raise ValueError(f"`{name}` must have `order` = {order} modes; got {modes!r}.")
    d = order or len(out_modes or in_modes or ()) or 3
    out_modes = balanced_modes(d_out, d) if out_modes is None else out_modes
    in_modes = balanced_modes(d_in, d) if in_modes is None else in_modes
    return out_modes, in_modes


def _unflatten(cores, out_modes, in_modes) -> tuple[Array, ...]:
    """3-d cores ``(r, out_k in_k, r')`` to TT-matrix cores ``(r, out_k, in_k, r')``."""
    z = zip(cores, out_modes, in_modes, strict=True)
    return tuple(c.reshape(c.shape[0], o, i, c.shape[-1]) for c, o, i in z)


def _interleave(d: int) -> list[int]:
    """Axes ``(o_1, ..., o_d, i_1, ..., i_d)`` to ``(o_1, i_1, ..., o_d, i_d)``."""
    return [ax for k in range(d) for ax in (k, d + k)]


class TTMatrix(AbstractOperator):
    """A weight ``W`` of shape ``(d_out, d_in)`` as a TT-matrix (matrix product operator).

    Cores are ``(r_{k-1}, out_k, in_k, r_k)`` with ``r_0 = r_d = 1``, row-major multi-indices:
    ``W[(o_1 ... o_d), (i_1 ... i_d)] = G_1[:, o_1, i_1, :] ... G_d[:, o_d, i_d, :]`` (the
    layout of tensorly's ``tt_matrix``). It is the TT of the tensor with the interleaved modes
    ``(o_1 i_1, ..., o_d i_d)``, so the TT ranks are bounded with ``n_k = out_k in_k``.

    Example:
        >>> import jax
        >>> from factorjax import TTMatrix
        >>> W = TTMatrix.init(64, 27, 4, key=jax.random.key(0))
        >>> W.out_modes, W.in_modes, W.ranks
        ((4, 4, 4), (3, 3, 3), (4, 4))
        >>> W(jax.numpy.ones(27)).shape
        (64,)
    """

    cores: tuple[Float[Array, "_r0 _o _i _r1"], ...]

    def __init__(self, cores: Sequence[Array]):
        self.cores = tuple(cores) if isinstance(cores, Sequence) else cores

    def __check_init__(self):
        _check_train(self.cores, 4, "(r_(k-1), out_k, in_k, r_k)")

    @classmethod
    def init(
        cls,
        d_out: Any,
        d_in: Any,
        rank: Any,
        *,
        key: PRNGKeyArray,
        out_modes: Any = None,
        in_modes: Any = None,
        order: Any = None,
        init: Any = "glorot",
        std: Any = None,
        alpha: Any = None,
        dtype=None,
    ) -> "TTMatrix":
        """Random cores.

        Arguments:
            d_out, d_in: the shape of ``W``.
            rank: an int (a cap on every inner rank, clipped to what the modes allow) or the
                tuple of the ``d - 1`` inner ranks (validated).
            key: a JAX PRNG key.
            out_modes, in_modes: the tensorizations of ``d_out`` and ``d_in`` (same length
                ``d``); by default `balanced_modes` of ``order`` modes.
            order: the number of cores ``d`` (default: the length of the given modes, else 3).
            init: ``"glorot"``, ``"he"``, ``"lecun"`` or ``"std"`` target the variance of the
                entries of ``W`` (fans ``d_in``, ``d_out``): every core gets the entry std
                ``s = (Var / (r_1 ... r_{d-1}))^(1 / 2d)``, as each entry of ``W`` sums
                ``r_1 ... r_{d-1}`` products of ``d`` entries. (Dividing ``std`` by the product
                of the ranks instead of its square root, as tensorly-torch's ``normal_`` does,
                leaves ``W`` ``sqrt(r_1 ... r_{d-1})`` times too small.) ``"small"``: core
                ``k`` has entries ``N(0, alpha^2 / r_{k-1})``, so ``Var(W) = alpha^(2d)``.
            std: the target standard deviation of ``W`` for ``init="std"``.
            alpha: the scale for ``init="small"``.
            dtype: floating dtype of the cores.

        Returns:
            A `TTMatrix`.
        """
        d_out = check_positive_int("d_out", d_out)
        d_in = check_positive_int("d_in", d_in)
        out_modes, in_modes = _resolve_modes(d_out, d_in, out_modes, in_modes, order)
        ranks = _resolve_ranks(rank, [o * i for o, i in zip(out_modes, in_modes, strict=True)])
        full = [1, *ranks, 1]
        shapes = [
            (full[k], o, i, full[k + 1])
            for k, (o, i) in enumerate(zip(out_modes, in_modes, strict=True))
        ]
        return cls(_init_cores(shapes, key, init, std, alpha, dtype, d_in, d_out))

    @classmethod
    def from_dense(
        cls,
        w: ArrayLike,
        rank: Any = None,
        *,
        rtol: Any = None,
        out_modes: Any = None,
        in_modes: Any = None,
        order: Any = None,
    ) -> "TTMatrix":
        """TT-SVD of ``W`` tensorized with the interleaved modes ``(o_1 i_1, ..., o_d i_d)``.

        Arguments:
            w: real matrix ``(d_out, d_in)``.
            rank: an int cap on every inner rank (clipped) or the tuple of the inner ranks;
                jittable.
            rtol: instead of ``rank``: ranks with ``||W - TT||_F <= rtol ||W||_F``; needs
                concrete values. With neither, the exact TT-matrix.
            out_modes, in_modes, order: the tensorization, as in `init`.

        Returns:
            A `TTMatrix`.
        """
        w = as_real_array("w", w)
        if w.ndim != 2:
            raise ValueError(f"`w` must be a matrix (d_out, d_in); got {describe(w)}.")
        out_modes, in_modes = _resolve_modes(*w.shape, out_modes, in_modes, order)
        d = len(out_modes)
        modes = [o * i for o, i in zip(out_modes, in_modes, strict=True)]
        tol = _split_rank_rtol(rank, rtol)
        ranks = _resolve_ranks(math.prod(modes) if rank is None else rank, modes)
        t = w.reshape(*out_modes, *in_modes).transpose(_interleave(d)).reshape(modes)
        return cls(_unflatten(_tt_svd(t, ranks, tol), out_modes, in_modes))

    @property
    def out_modes(self) -> tuple[int, ...]:
        return tuple(c.shape[1] for c in self.cores)

    @property
    def in_modes(self) -> tuple[int, ...]:
        return tuple(c.shape[2] for c in self.cores)

    @property
    def in_features(self) -> int:
        return math.prod(self.in_modes)

    @property
    def out_features(self) -> int:
        return math.prod(self.out_modes)

    @property
    def shape(self) -> tuple[int, int]:
        return (self.out_features, self.in_features)

    @property
    def ranks(self) -> tuple[int, ...]:
        """The inner TT ranks ``(r_1, ..., r_{d-1})``."""
        return tuple(c.shape[-1] for c in self.cores[:-1])

    @property
    def rank(self) -> int:
        """The largest inner TT rank (1 for a single core)."""
        return max(self.ranks, default=1)

    def _flat(self) -> tuple[Array, ...]:
        return tuple(c.reshape(c.shape[0], -1, c.shape[-1]) for c in self.cores)

    def _unflat(self, cores) -> "TTMatrix":
        return TTMatrix(_unflatten(cores, self.out_modes, self.in_modes))

    def to_matrix(self) -> Float[Array, "d_out d_in"]:
        return _ttm_to_matrix(self.cores)

    def to_dense(self) -> Float[Array, "d_out d_in"]:
        return self.to_matrix()

    def reconstruction_flops(self) -> int:
        return min(_sweep_flops(self.cores))

    def reconstruction_gemm_flops(self) -> int:
        left, right = _sweep_flops(self.cores)
        steps = _sweep_steps(self.cores)[0 if left <= right else 1]
        return sum(_cost.matmul_gemm_flops(m, k, n) for m, k, n in steps)

    def round(self, rtol: Any = None, rank: Any = None) -> "TTMatrix":
        """TT rounding of the cores, as `TensorTrain.round` (``rtol`` bounds
        ``||W - W'||_F <= rtol ||W||_F``)."""
        return self._unflat(_tt_round(self._flat(), rank, rtol))

    def truncate(self, rank: Any) -> "TTMatrix":
        """`round` to the max rank ``rank`` (an int in ``[1, self.rank]``)."""
        return self.round(rank=_check_cap(rank, self.rank))

    def network(self) -> Network:
        """``x W^T`` as one tensor network: the input ``(B, i_1, ..., i_d)`` and the cores
        (the boundary bonds ``r_0 = r_d = 1`` dropped)."""
        d = len(self.cores)
        sym = opt_einsum.get_symbol
        b, i, o, r = (
            sym(0),
            [sym(1 + k) for k in range(d)],
            [sym(1 + d + k) for k in range(d)],
            [sym(1 + 2 * d + k) for k in range(d + 1)],
        )
        r[0] = r[d] = ""
        cores = [c[0] if k == 0 else c for k, c in enumerate(self.cores)]
        cores[-1] = cores[-1][..., 0]
        terms = [r[k] + o[k] + i[k] + r[k + 1] for k in range(d)]
        subscripts = f"{b}{''.join(i)},{','.join(terms)}->{b}{''.join(o)}"
        return Network(subscripts, tuple(cores), self.in_modes)

    def candidates(self, batch: int) -> tuple[Candidate, ...]:
        """``"right-to-left"`` (the input meets the last core first, then each core before
        it: step ``k`` costs ``2 B (in_1 ... in_{k-1}) (out_{k+1} ... out_d) r_{k-1} out_k
        in_k r_k``), ``"left-to-right"`` (its mirror, from the first core), the same sweeps
        with the first ``k`` cores they meet merged into one (``1 < k < d``:
        ``"right-to-left(a-d)"`` merges cores ``a`` to ``d``, ``"left-to-right(1-b)"`` cores
        1 to ``b``), opt_einsum's optimal and greedy paths where they differ (pairwise trees),
        and ``"dense"``.

        A merged run turns a sweep's small steps into one larger matmul: at ``d_in = d_out =
        4096 = 16^3``, ``r = 16``, ``B = 64`` on a 2-core CPU, ``"right-to-left(2-3)"`` ran
        forward and backward in 36 to 52 ms (three measurements), against 58 ms and more for
        the other orders, and 47 to 48 ms for tensorly-torch (run 11 in docs/benchmarks.md)."""
        d = len(self.cores)
        named = {
            "right-to-left": sequential_path(d + 1, [0, *range(d, 0, -1)]),
            "left-to-right": sequential_path(d + 1, range(d + 1)),
        }
        # the sweeps contract as their paths say (same FLOPs and intermediates), batch last
        sweeps = {"right-to-left": self._sweep_right, "left-to-right": self._sweep_left}
        for k in range(2, d):  # the first k cores the sweep meets, merged into one
            for name, side, visit in (
                ("right-to-left", TTMatrix._sweep_right, range(d, 0, -1)),
                ("left-to-right", TTMatrix._sweep_left, range(1, d + 1)),
            ):
                a, b = sorted((visit[0], visit[k - 1]))  # 1-based: operand k is core k
                label = f"{name}({a}-{b})"
                merge = [(a, c) for c in range(a + 1, b + 1)]
                named[label] = pairwise_path(d + 1, [*merge, *((0, c) for c in visit)])
                sweeps[label] = functools.partial(_merged_sweep, self.cores, a - 1, b - 1, side)
        return (
            *network_candidates(self.network(), batch, self.dtype, named, sweeps),
            dense_candidate(self, batch),
        )

    def _sweep_left(self, x: Array) -> Array:
        """``x W^T`` core by core from the first, batch last: the running tensor is
        ``(o_1 .. o_{k-1}, r_{k-1}, i_k .. i_d, B)``; step ``k`` contracts its adjacent
        ``(r_{k-1}, i_k)`` with core ``k`` (`left_matmul`, over the ``o`` entries so far)."""
        b, y, lead = x.shape[0], x.T, 1
        for c in self.cores:
            r0, o, i, r1 = c.shape
            mat = c.transpose(1, 3, 0, 2).reshape(o * r1, r0 * i)
            y = left_matmul(mat, y.reshape(lead, r0 * i, -1))
            lead *= o
        return y.reshape(self.out_features, b).T

    def _sweep_right(self, x: Array) -> Array:
        """``x W^T`` core by core from the last, batch last: the running tensor is
        ``(i_1 .. i_k, r_k, o_{k+1} .. o_d, B)``; step ``k`` contracts its adjacent
        ``(i_k, r_k)`` with core ``k`` (`left_matmul`, over the ``i`` entries left)."""
        b, y, lead = x.shape[0], x.T, self.in_features
        for c in reversed(self.cores):
            r0, o, i, r1 = c.shape
            lead //= i
            y = left_matmul(c.reshape(r0 * o, i * r1), y.reshape(lead, i * r1, -1))
        return y.reshape(self.out_features, b).T


def _merge_cores(left: Array, right: Array) -> Array:
    """Two adjacent TT-matrix cores as one: ``(r0, o1, i1, r1)`` and ``(r1, o2, i2, r2)`` to
    ``(r0, o1 o2, i1 i2, r2)``, row-major in both modes."""
    (r0, o1, i1, _), (_, o2, i2, r2) = left.shape, right.shape
    return jnp.einsum("aoib,bpjc->aopijc", left, right).reshape(r0, o1 * o2, i1 * i2, r2)


def _merged_sweep(cores: tuple[Array, ...], a: int, b: int, sweep: Any, x: Array) -> Array:
    """The sweep ``sweep`` (`TTMatrix._sweep_left` or ``_sweep_right``) over the train whose
    cores ``a`` to ``b`` (0-based, inclusive) are merged into one."""
    run = functools.reduce(_merge_cores, cores[a : b + 1])
    return sweep(TTMatrix((*cores[:a], run, *cores[b + 1 :])), x)


# The reconstruction of `TTMatrix`, jitted so that eager calls run one cached program per shape.
#
# It sweeps the train from one end, holding the part built so far in the layout of the final
# matrix, ``(outputs, inputs, r)`` (the output modes so far, the input modes so far, the open
# bond). Each
# step is one matmul with the next core and a swap of two middle axes. Merging the cores as a
# plain tensor train and permuting the interleaved ``(o_1 i_1 ... o_d i_d)`` result at the end
# ran at the same FLOPs but 1.8x slower with its gradient (d=1024, r=16 on the 2-core CPU,
# jax 0.10: 5.2 against 3.0 ms), most of it in XLA's copies for the 2d-axis permutations.


def _sweep_steps(cores: Sequence[Any]) -> tuple[list, list]:
    """The matmuls ``(m, k, n)`` of rebuilding ``W`` from the left and from the right."""
    sizes = [c.shape[1] * c.shape[2] for c in cores]
    ranks = [c.shape[0] for c in cores] + [1]
    d = len(cores)
    left = [(math.prod(sizes[:k]), ranks[k], sizes[k] * ranks[k + 1]) for k in range(1, d)]
    right = [(ranks[k] * sizes[k], ranks[k + 1], math.prod(sizes[k + 1 :])) for k in range(d - 1)]
    return left, right


def _sweep_flops(cores: Sequence[Any]) -> tuple[int, int]:
    """FLOPs of rebuilding ``W`` from the left and from the right."""
    return tuple(sum(2 * m * k * n for m, k, n in steps) for steps in _sweep_steps(cores))


@jax.jit
def _ttm_to_matrix(cores: tuple[Array, ...]) -> Array:
    left, right = _sweep_flops(cores)
    if left <= right:
        _, o, i, r = cores[0].shape
        part = cores[0].reshape(o, i, r)  # (outputs so far, inputs so far, r_k)
        for core in cores[1:]:
            (n_out, n_in, r), (_, o, i, r_next) = part.shape, core.shape
            t = part.reshape(n_out * n_in, r) @ core.reshape(r, o * i * r_next)
            part = t.reshape(n_out, n_in, o, i * r_next).transpose(0, 2, 1, 3)
            part = part.reshape(n_out * o, n_in * i, r_next)
        return part[..., 0]
    r, o, i, _ = cores[-1].shape
    part = cores[-1].reshape(r, o, i)  # (r_k, outputs so far, inputs so far)
    for core in reversed(cores[:-1]):
        (r, n_out, n_in), (r_prev, o, i, _) = part.shape, core.shape
        t = core.reshape(r_prev * o * i, r) @ part.reshape(r, n_out * n_in)
        part = t.reshape(r_prev * o, i, n_out, n_in).transpose(0, 2, 1, 3)
        part = part.reshape(r_prev, o * n_out, i * n_in)
    return part[0]


__all__ = ["TTMatrix"]
