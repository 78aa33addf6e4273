"""`FactorizedConv`: a convolution whose kernel is a CP, Tucker or tensor-train factorization."""

from collections.abc import Sequence
from typing import Any, ClassVar

import equinox as eqx
import jax.numpy as jnp
import numpy as np
from jax import Array
from jax.typing import ArrayLike
from jaxtyping import Float, PRNGKeyArray

from factorjax._checks import as_real_array, check_choice, check_positive_int, describe
from factorjax.factorizations._conv_kernel import (
    check_kernel_format,
    conv_apply,
    conv_plan,
    init_kernel,
    kernel_format,
    kernel_from_dense,
    kernel_shape,
    to_kernel,
)
from factorjax.factorizations._operator import Plan
from factorjax.factorizations.cp import CP
from factorjax.factorizations.tensor_train import TensorTrain
from factorjax.factorizations.tucker import Tucker

__all__ = ["FactorizedConv", "FactorizedConv1d", "FactorizedConv2d", "FactorizedConv3d"]

ORDERS = ("auto", "dense", "sequence")
PADDINGS = ("SAME", "SAME_LOWER", "VALID")


def check_spatial(name: str, value: Any, d: int) -> tuple[int, ...]:
    """An int (the same on every spatial dimension) or a sequence of ``d`` ints >= 1."""
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        return (check_positive_int(name, value),) * d
    if isinstance(value, str) or not isinstance(value, Sequence) or len(value) != d:
        raise ValueError(
            f"`{name}` must be an int or a sequence of {d} ints (one per spatial dimension); "
            f"got {value!r}."
        )
    return tuple(check_positive_int(f"{name}[{i}]", v) for i, v in enumerate(value))


def _pad_int(name: str, v: Any) -> int:
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 0:
        raise ValueError(f"`{name}` must be an int >= 0; got {v!r}.")
    return int(v)


def check_padding(padding: Any, d: int) -> str | tuple[tuple[int, int], ...]:
    """``"SAME"``, ``"SAME_LOWER"``, ``"VALID"`` (any case), an int, a sequence of ``d`` ints
    (symmetric per dimension) or of ``d`` pairs ``(low, high)``; ints >= 0."""
    if isinstance(padding, str):
        if padding.upper() not in PADDINGS:
            raise ValueError(
                f"`padding` as a string must be one of {PADDINGS}; got {padding!r}. Explicit "
                "padding is an int, or a sequence of ints or of (low, high) pairs."
            )
        return padding.upper()
    if isinstance(padding, (int, np.integer)) and not isinstance(padding, bool):
        p = _pad_int("padding", padding)
        return ((p, p),) * d
    if not isinstance(padding, Sequence) or len(padding) != d:
        raise ValueError(
            f"`padding` must be 'SAME', 'SAME_LOWER', 'VALID', an int, or a sequence of {d} ints "
            f"or (low, high) pairs (one per spatial dimension); got {padding!r}."
        )
    out = []
    for i, p in enumerate(padding):
        if isinstance(p, Sequence) and len(p) == 2:
            out.append((_pad_int(f"padding[{i}][0]", p[0]), _pad_int(f"padding[{i}][1]", p[1])))
        else:
            q = _pad_int(f"padding[{i}]", p)
            out.append((q, q))
    return tuple(out)


def check_bias(bias: Any, c_out: int) -> Array | None:
    """``None``, or a bias of shape ``(C_out,)`` or ``(C_out, 1, ..., 1)`` (as ``eqx.nn.Conv``
    holds it) as ``(C_out,)``."""
    if bias is None:
        return None
    bias = as_real_array("bias", bias)
    if bias.ndim < 1 or bias.shape[0] != c_out or bias.size != c_out:
        raise ValueError(
            f"`bias` must have shape ({c_out},) or ({c_out}, 1, ..., 1); got {describe(bias)}."
        )
    return bias.reshape(c_out)


class FactorizedConv(eqx.Module):
    """A convolution ``y = x * K + b`` (cross-correlation, as ``eqx.nn.Conv``) whose kernel
    ``K (C_out, C_in, k_1, ..., k_d)`` is held as a factorization: ``"cp"`` (`CP`),
    ``"tucker"`` (`Tucker`, Tucker-2 over the channels for an int rank) or ``"tt"``
    (`TensorTrain` over the modes ``(C_out, k_1, ..., k_d, C_in)``); see
    `factorjax.factorizations._conv_kernel`. Applied along the cheaper of rebuilding the kernel
    (``"dense"``) and a chain of small convolutions that never builds it (``"sequence"``),
    planned for the actual batch and spatial size at trace time (`plan`).

    Like ``eqx.nn.Conv`` it takes one example ``(C_in, *spatial)``, channels first; it also
    takes a batch ``(B, C_in, *spatial)``, and then the planner sees the batch. Zero padding
    only, no groups. The bias has shape ``(C_out,)``.

    Example:
        >>> import jax
        >>> from factorjax.nn import FactorizedConv2d
        >>> conv = FactorizedConv2d(16, 32, 3, "cp", rank=8, padding="SAME", key=jax.random.key(0))
        >>> conv(jax.numpy.ones((16, 28, 28))).shape
        (32, 28, 28)
        >>> conv.plan((16, 28, 28)).order
        'sequence'
    """

    weight: CP | Tucker | TensorTrain
    bias: Float[Array, " out_channels"] | None
    num_spatial_dims: int = eqx.field(static=True)
    in_channels: int = eqx.field(static=True)
    out_channels: int = eqx.field(static=True)
    kernel_size: tuple[int, ...] = eqx.field(static=True)
    stride: tuple[int, ...] = eqx.field(static=True)
    padding: str | tuple[tuple[int, int], ...] = eqx.field(static=True)
    dilation: tuple[int, ...] = eqx.field(static=True)
    format: str = eqx.field(static=True)
    order: str = eqx.field(static=True)

    _fixed_dims: ClassVar[int | None] = None

    def __init__(
        self,
        num_spatial_dims: Any,
        in_channels: Any,
        out_channels: Any,
        kernel_size: Any,
        format: Any = "cp",
        rank: Any = "same",
        *,
        stride: Any = 1,
        padding: Any = 0,
        dilation: Any = 1,
        use_bias: bool = True,
        init: Any = "he",
        std: Any = None,
        alpha: Any = None,
        dtype: Any = None,
        order: Any = "auto",
        key: PRNGKeyArray,
    ):
        """Arguments:
        num_spatial_dims: ``d >= 1``.
        in_channels, out_channels: ``C_in``, ``C_out``.
        kernel_size: an int or ``d`` ints.
        format: ``"cp"``, ``"tucker"`` or ``"tt"``.
        rank: an int (CP components; Tucker-2 channel ranks, spatial modes kept; a cap on
            every TT bond), a tuple (Tucker: ``(R_out, R_in)`` or one rank per mode, a spatial
            rank ``k_i`` keeping that mode; TT: the ``d + 1`` inner ranks), a float in
            ``(0, 1]`` (at most that fraction of the dense kernel's parameter count) or
            ``"same"`` (as many parameters as the dense kernel).
        stride, dilation: an int or ``d`` ints.
        padding: ``"SAME"``, ``"SAME_LOWER"``, ``"VALID"``, an int, ``d`` ints or ``d`` pairs
            ``(low, high)`` (zeros; ``0`` by default, as ``eqx.nn.Conv``).
        use_bias: add a bias (zeros at init).
        init, std, alpha: the variance of the reconstructed kernel: ``"he"`` (``2 / fan_in``),
            ``"glorot"``, ``"lecun"``, ``"std"`` with ``std``, with the fans of a convolution
            ``fan_in = C_in prod(k)``, ``fan_out = C_out prod(k)``; or ``"small"`` with
            ``alpha`` (the format's small-scale init).
        dtype: the parameters' dtype (default: JAX's default float).
        order: ``"auto"`` (planned per input shape), ``"dense"`` or ``"sequence"``.
        key: a JAX PRNG key.
        """
        d = check_positive_int("num_spatial_dims", num_spatial_dims)
        c_in = check_positive_int("in_channels", in_channels)
        c_out = check_positive_int("out_channels", out_channels)
        ks = check_spatial("kernel_size", kernel_size, d)
        format = check_kernel_format(format)
        weight = init_kernel(
            format, (c_out, c_in, *ks), rank, key=key, init=init, std=std, alpha=alpha,
            dtype=dtype,
        )  # fmt: skip
        bias = jnp.zeros((c_out,), weight.dtype) if use_bias else None
        self._set(weight, bias, stride, padding, dilation, order)

    def _set(self, weight, bias, stride, padding, dilation, order):
        c_out, c_in, *ks = kernel_shape(weight)
        d = len(ks)
        if self._fixed_dims is not None and d != self._fixed_dims:
            raise ValueError(
                f"{type(self).__name__} takes a kernel with {self._fixed_dims} spatial modes "
                f"(C_out, C_in, k_1, ..., k_{self._fixed_dims}); got kernel shape "
                f"{(c_out, c_in, *ks)}."
            )
        for name, value in (
            ("weight", weight), ("bias", check_bias(bias, c_out)), ("num_spatial_dims", d),
            ("in_channels", c_in), ("out_channels", c_out), ("kernel_size", tuple(ks)),
            ("stride", check_spatial("stride", stride, d)),
            ("padding", check_padding(padding, d)),
            ("dilation", check_spatial("dilation", dilation, d)),
            ("format", kernel_format(weight)), ("order", check_choice("order", order, ORDERS)),
        ):  # fmt: skip
            object.__setattr__(self, name, value)

    @classmethod
    def from_weight(
        cls,
        weight: CP | Tucker | TensorTrain,
        bias: Any = None,
        *,
        stride: Any = 1,
        padding: Any = 0,
        dilation: Any = 1,
        order: Any = "auto",
    ) -> "FactorizedConv":
        """The layer holding a given kernel factorization.

        Arguments:
            weight: a `CP` or `Tucker` of shape ``(C_out, C_in, k_1, ..., k_d)``, or a
                `TensorTrain` of shape ``(C_out, k_1, ..., k_d, C_in)``.
            bias: ``None``, or ``(C_out,)`` (also ``(C_out, 1, ..., 1)`` as in ``eqx.nn.Conv``).
            stride, padding, dilation, order: as in the constructor.

        Returns:
            The layer (of this class: `FactorizedConv2d.from_weight` checks ``d = 2``).
        """
        kernel_format(weight)
        self = object.__new__(cls)
        self._set(weight, bias, stride, padding, dilation, order)
        return self

    @classmethod
    def from_dense(
        cls,
        kernel: ArrayLike,
        bias: Any = None,
        format: Any = "cp",
        rank: Any = None,
        *,
        stride: Any = 1,
        padding: Any = 0,
        dilation: Any = 1,
        order: Any = "auto",
        **options,
    ) -> "FactorizedConv":
        """The layer holding the decomposition of a dense kernel.

        Arguments:
            kernel: ``(C_out, C_in, k_1, ..., k_d)`` (``eqx.nn.Conv.weight``).
            bias: as in `from_weight`.
            format: ``"cp"`` (CP-ALS; ``rank`` required), ``"tucker"`` (ST-HOSVD) or ``"tt"``
                (TT-SVD, of the kernel with its modes ordered ``(C_out, k_1, ..., k_d, C_in)``).
            rank: as in the constructor; ``None``: exact (Tucker, TT).
            stride, padding, dilation, order: as in the constructor.
            **options: the decomposition's options: ``n_iter``, ``tol``, ``key`` (CP-ALS; its
                random start, by default ``jax.random.key(0)``, when the rank exceeds a
                mode other than the first); ``rtol``, ``n_iter`` (Tucker); ``rtol`` (TT).

        Returns:
            The layer.
        """
        weight = kernel_from_dense(format, kernel, rank, **options)
        return cls.from_weight(
            weight, bias, stride=stride, padding=padding, dilation=dilation, order=order
        )

    def dense_kernel(self) -> Float[Array, "out_channels in_channels *kernel_size"]:
        """The dense kernel ``(C_out, C_in, k_1, ..., k_d)`` (as ``eqx.nn.Conv.weight``)."""
        return to_kernel(self.weight)

    def plan(self, input_shape: Any, order: Any = None) -> Plan:
        """The order the layer takes for an input of ``input_shape`` (``(C_in, *spatial)`` or
        ``(B, C_in, *spatial)``), its FLOPs and largest intermediate, and every candidate's
        (cheapest first); ``order`` (default: the layer's) names one to see its cost."""
        order = self.order if order is None else order
        return conv_plan(self.weight, input_shape, self.stride, self.padding, self.dilation, order)

    def __call__(self, x: ArrayLike, *, key: Any = None) -> Float[Array, "..."]:
        """Arguments:
        x: one example ``(C_in, *spatial)`` or a batch ``(B, C_in, *spatial)``.
        key: ignored (as in ``eqx.nn.Conv``).

        Returns:
            ``(C_out, *out_spatial)`` or ``(B, C_out, *out_spatial)``.
        """
        x = as_real_array("x", x)
        y = conv_apply(self.weight, x, self.stride, self.padding, self.dilation, self.order)
        if self.bias is None:
            return y
        return y + self.bias.reshape(-1, *(1,) * self.num_spatial_dims)


class FactorizedConv1d(FactorizedConv):
    """As `FactorizedConv` with ``num_spatial_dims=1``; the other arguments as there."""

    _fixed_dims: ClassVar[int | None] = 1

    def __init__(
        self,
        in_channels: Any,
        out_channels: Any,
        kernel_size: Any,
        format: Any = "cp",
        rank: Any = "same",
        *,
        key: PRNGKeyArray,
        **kwargs,
    ):
        super().__init__(1, in_channels, out_channels, kernel_size, format, rank, key=key, **kwargs)


class FactorizedConv2d(FactorizedConv):
    """As `FactorizedConv` with ``num_spatial_dims=2``; the other arguments as there."""

    _fixed_dims: ClassVar[int | None] = 2

    def __init__(
        self,
        in_channels: Any,
        out_channels: Any,
        kernel_size: Any,
        format: Any = "cp",
        rank: Any = "same",
        *,
        key: PRNGKeyArray,
        **kwargs,
    ):
        super().__init__(2, in_channels, out_channels, kernel_size, format, rank, key=key, **kwargs)


class FactorizedConv3d(FactorizedConv):
    """As `FactorizedConv` with ``num_spatial_dims=3``; the other arguments as there."""

    _fixed_dims: ClassVar[int | None] = 3

    def __init__(
        self,
        in_channels: Any,
        out_channels: Any,
        kernel_size: Any,
        format: Any = "cp",
        rank: Any = "same",
        *,
        key: PRNGKeyArray,
        **kwargs,
    ):
        super().__init__(3, in_channels, out_channels, kernel_size, format, rank, key=key, **kwargs)
