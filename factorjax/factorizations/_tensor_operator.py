"""Tensor formats read as a matrix through their leading ``n_out`` modes.

`CP`, `Tucker` and `TensorRing` hold a tensor of shape ``(n_1, ..., n_d)`` and a static
``n_out``. With ``n_out = p`` the first ``p`` modes index the output and the others the input
of a weight ``W (d_out, d_in) = (n_1 ... n_p, n_{p+1} ... n_d)``, tensorized row-major as in
`factorjax.factorizations._tensorize`; with ``n_out=None`` the tensor is plain and has no
matrix view. `AbstractTensorOperator` implements that view (`out_modes`, `in_modes`,
`out_features`, `in_features`, `to_matrix`), `with_n_out` and `init_matrix` once for them, and
this module holds the checks they share.
"""

import dataclasses
import math
from typing import Any, ClassVar, TypeVar

import equinox as eqx
import numpy as np
import opt_einsum
from jax import Array
from jax.typing import ArrayLike
from jaxtyping import Float, PRNGKeyArray

from factorjax._checks import as_real_array, check_positive_int, describe
from factorjax.factorizations._init import target_variance
from factorjax.factorizations._operator import AbstractOperator, Network
from factorjax.factorizations._tensorize import balanced_modes, check_modes, matrix_to_tensor

__all__ = [
    "AbstractTensorOperator",
    "check_n_out",
    "check_shape",
    "matrix_modes",
    "matrix_target",
    "no_view_error",
]

# Scalar arguments validated by `factorjax._checks` are annotated `Any`, as in lowrank.py.

# The subclass that `init_matrix` and `with_n_out` return (beartype, which checks the
# annotations under the test suite, refuses `typing.Self` in a class it does not decorate).
_T = TypeVar("_T", bound="AbstractTensorOperator")


def check_shape(name: str, shape: Any, min_order: int = 2) -> tuple[int, ...]:
    """A tensor shape: a tuple of at least ``min_order`` ints >= 1."""
    if isinstance(shape, (int, np.integer)) or not hasattr(shape, "__iter__"):
        raise TypeError(f"`{name}` must be a tuple of mode sizes; got {shape!r}.")
    shape = tuple(shape)
    if len(shape) < min_order:
        modes = "1 mode" if min_order == 1 else f"{min_order} modes"
        raise ValueError(
            f"`{name}` must have at least {modes} (order d >= {min_order}); got {shape!r}."
        )
    return tuple(check_positive_int(f"{name}[{k}]", n) for k, n in enumerate(shape))


def check_n_out(n_out: Any, order: int) -> int | None:
    """``None`` (a plain tensor) or the number of leading modes that index the output."""
    if n_out is None:
        return None
    if isinstance(n_out, bool) or not isinstance(n_out, (int, np.integer)):
        raise TypeError(f"`n_out` must be None or a Python int; got {describe(n_out)}.")
    if not 1 <= n_out <= order - 1:
        raise ValueError(
            f"`n_out` (the number of leading modes that index the output) must be None or an "
            f"int in [1, {order - 1}] for a tensor of order {order}; got {n_out}."
        )
    return int(n_out)


def matrix_modes(d_out, d_in, out_modes, in_modes, order) -> tuple[tuple, tuple]:
    """The output and input modes of a ``(d_out, d_in)`` weight: the given ones, checked, or
    ``balanced_modes(d, order)``; ``order=None`` is the length of the given modes, else 2."""
    d_out = check_positive_int("d_out", d_out)
    d_in = check_positive_int("d_in", d_in)
    if order is None:  # the length of the given modes, else 2
        given = [m for m in (out_modes, in_modes) if m is not None and hasattr(m, "__len__")]
        order = len(given[0]) if given else 2
    order = check_positive_int("order", order)
    out_modes = (
        balanced_modes(d_out, order)
        if out_modes is None
        else check_modes("out_modes", out_modes, d_out)
    )
    in_modes = (
        balanced_modes(d_in, order) if in_modes is None else check_modes("in_modes", in_modes, d_in)
    )
    return out_modes, in_modes


def matrix_target(init: Any, shape: tuple, n_out: int | None, std: Any, alpha: Any) -> Any:
    """Target variance of the reconstructed entries (fans of the matrix view)."""
    if n_out is None and init in ("glorot", "he", "lecun"):
        raise ValueError(
            f"init={init!r} targets the fans of a matrix view, and this tensor has none "
            "(n_out=None): pass `n_out` (the number of leading modes that index the output), "
            "or use init='std' or init='small'."
        )
    fan_out = math.prod(shape[:n_out]) if n_out else 1
    fan_in = math.prod(shape[n_out:]) if n_out else math.prod(shape)
    return target_variance(init, fan_in=fan_in, fan_out=fan_out, std=std, alpha=alpha)


def no_view_error(name: str) -> ValueError:
    """The error of reading a plain tensor (``n_out=None``) of format ``name`` as a matrix."""
    return ValueError(
        f"this {name} is a plain tensor (n_out=None) and has no matrix view, so it cannot be "
        f"applied or read as a matrix: give it one with `.with_n_out(k)` (its first k modes "
        f"index the output), or build it with `n_out=k` ({name}.init, {name}.from_dense) or "
        f"with {name}.init_matrix / {name}.from_matrix."
    )


class AbstractTensorOperator(AbstractOperator):
    """A tensor ``(n_1, ..., n_d)`` that, with ``n_out = p`` set, is the weight
    ``(n_1 ... n_p, n_{p+1} ... n_d)`` of an `AbstractOperator` (row-major).

    Subclasses declare the field ``n_out: int | None = eqx.field(static=True, default=None)``
    after their arrays (it stays the last positional argument), and implement `shape`,
    `to_dense`, an ``init(shape, rank, *, key, n_out, ...)`` classmethod and the rest of
    `AbstractOperator`. Every method here that needs the matrix view raises `no_view_error`
    when ``n_out`` is ``None``.
    """

    n_out: eqx.AbstractVar[int | None]

    # `order` of `init_matrix` and `_tensorize` when it is not given; None: the length of the
    # modes given for the other side, else 2 (see `matrix_modes`).
    _default_order: ClassVar[int | None] = None

    def __check_init__(self):
        # runs after the subclass's own check, which validates the arrays `shape` reads
        check_n_out(self.n_out, len(self.shape))

    # -- construction -------------------------------------------------------------------------

    @classmethod
    def _matrix_modes(cls, d_out, d_in, out_modes, in_modes, order) -> tuple[tuple, tuple]:
        order = cls._default_order if order is None else order
        return matrix_modes(d_out, d_in, out_modes, in_modes, order)

    @classmethod
    def _tensorize(cls, w: ArrayLike, out_modes, in_modes, order) -> tuple[Array, int]:
        """The weight ``w (d_out, d_in)`` as the tensor ``out_modes + in_modes`` (modes as in
        `init_matrix`), and its ``n_out``: what ``from_matrix`` decomposes."""
        w = as_real_array("w", w)
        if w.ndim != 2:
            raise ValueError(f"`w` must be a matrix (d_out, d_in); got {describe(w)}.")
        out_modes, in_modes = cls._matrix_modes(*w.shape, out_modes, in_modes, order)
        return matrix_to_tensor(w, out_modes, in_modes), len(out_modes)

    @classmethod
    def init_matrix(
        cls: type[_T],
        d_out: Any,
        d_in: Any,
        rank: Any,
        *,
        key: PRNGKeyArray,
        out_modes: Any = None,
        in_modes: Any = None,
        order: Any = None,
        **kwargs,
    ) -> _T:
        """`init` of the weight ``(d_out, d_in)`` tensorized as ``out_modes + in_modes``.

        Arguments:
            d_out, d_in: the shape of the weight.
            rank: as in `init`, for the ``len(out_modes) + len(in_modes)`` modes.
            key: a JAX PRNG key.
            out_modes, in_modes: the modes (products ``d_out`` and ``d_in``); by default
                ``balanced_modes(d, order)``.
            order: the number of modes on a side whose modes are not given (default: the
                length of the given modes, else 2; for a `TensorRing` always 2).
            **kwargs: ``init``, ``std``, ``alpha``, ``dtype`` as in `init` (the fans of
                ``"glorot"``, ``"he"`` and ``"lecun"`` are ``d_in`` and ``d_out``).

        Returns:
            The tensor, with ``n_out = len(out_modes)``.
        """
        out_modes, in_modes = cls._matrix_modes(d_out, d_in, out_modes, in_modes, order)
        return cls.init(out_modes + in_modes, rank, key=key, n_out=len(out_modes), **kwargs)

    def with_n_out(self: _T, n_out: Any) -> _T:
        """The same tensor with the matrix view of its first ``n_out`` modes as output
        (``None``: a plain tensor)."""
        return dataclasses.replace(self, n_out=check_n_out(n_out, len(self.shape)))

    # -- the matrix view ----------------------------------------------------------------------

    def _view(self) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """``(out_modes, in_modes)``; raises `no_view_error` for a plain tensor."""
        if self.n_out is None:
            raise no_view_error(type(self).__name__)
        return self.shape[: self.n_out], self.shape[self.n_out :]

    @property
    def out_modes(self) -> tuple[int, ...]:
        """The modes that index the output, ``shape[:n_out]``."""
        return self._view()[0]

    @property
    def in_modes(self) -> tuple[int, ...]:
        """The modes that index the input, ``shape[n_out:]``."""
        return self._view()[1]

    @property
    def out_features(self) -> int:
        return math.prod(self._view()[0])

    @property
    def in_features(self) -> int:
        return math.prod(self._view()[1])

    def tensor_network(self) -> tuple[tuple[str, ...], tuple[Array, ...], str]:
        """``(terms, operands, modes)``: the tensor is
        ``einsum(",".join(terms) + "->" + modes, *operands)``. Labels are
        ``opt_einsum.get_symbol(k)`` for ``k >= 1`` (0 is kept for the batch of `network`)."""
        raise NotImplementedError

    def network(self) -> Network:
        """``x W^T`` as one tensor network: the input ``(B, *in_modes)`` joined to the
        tensor's network on the input modes' labels."""
        in_modes = self._view()[1]
        terms, operands, modes = self.tensor_network()
        b, p = opt_einsum.get_symbol(0), self.n_out
        return Network(f"{b}{modes[p:]},{','.join(terms)}->{b}{modes[:p]}", operands, in_modes)

    def to_matrix(self) -> Float[Array, "d_out d_in"]:
        """The weight ``(d_out, d_in)`` of the matrix view."""
        out_modes, in_modes = self._view()
        return self.to_dense().reshape(math.prod(out_modes), math.prod(in_modes))
