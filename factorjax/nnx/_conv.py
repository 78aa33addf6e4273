"""`FactorizedConv` for Flax NNX: the Equinox layer's kernel factorization, held as
``nnx.Param``s, applied by the same pure functions."""

import contextvars
from typing import Any, ClassVar

from flax import nnx
from jax import Array

from factorjax._checks import as_real_array
from factorjax.factorizations._conv_kernel import conv_apply, conv_plan, to_kernel
from factorjax.factorizations._operator import Plan
from factorjax.nn import _conv as eqx_conv
from factorjax.nnx._params import as_params, values

__all__ = ["FactorizedConv", "FactorizedConv1d", "FactorizedConv2d", "FactorizedConv3d"]

_CONFIG = (
    "num_spatial_dims", "in_channels", "out_channels", "kernel_size", "stride", "padding",
    "dilation", "format", "order",
)  # fmt: skip

# NNX objects are set up by their metaclass, so `from_weight` and `from_dense` go through the
# constructor, which adopts the Equinox layer held here instead of drawing new factors.
_ADOPT: contextvars.ContextVar = contextvars.ContextVar("factorjax_nnx_conv", default=None)


class FactorizedConv(nnx.Module):
    """A convolution whose kernel is a `CP`, `Tucker` or `TensorTrain`: the same arguments,
    factors and outputs as `factorjax.nn.FactorizedConv`, with ``rngs`` instead of ``key``.

    Takes one example ``(C_in, *spatial)`` or a batch ``(B, C_in, *spatial)``.

    Example:
        >>> from flax import nnx
        >>> from factorjax.nnx import FactorizedConv2d
        >>> conv = FactorizedConv2d(16, 32, 3, "tucker", rank=8, padding=1, rngs=nnx.Rngs(0))
        >>> conv(jax.numpy.ones((4, 16, 28, 28))).shape          # doctest: +SKIP
        (4, 32, 28, 28)
    """

    _eqx: ClassVar[type] = eqx_conv.FactorizedConv

    def __init__(
        self,
        num_spatial_dims: Any,
        in_channels: Any,
        out_channels: Any,
        kernel_size: Any,
        format: Any = "cp",
        rank: Any = "same",
        *,
        rngs: nnx.Rngs,
        **kwargs,
    ):
        """Arguments: as `factorjax.nn.FactorizedConv` (``stride``, ``padding``,
        ``dilation``, ``use_bias``, ``init``, ``std``, ``alpha``, ``dtype``, ``order``), with
        ``rngs`` (its ``params`` stream draws the factors)."""
        layer = _ADOPT.get()
        if layer is None:
            layer = eqx_conv.FactorizedConv(
                num_spatial_dims, in_channels, out_channels, kernel_size, format, rank,
                key=rngs.params(), **kwargs,
            )  # fmt: skip
        self._adopt(layer)

    def _adopt(self, layer: eqx_conv.FactorizedConv):
        self.weight = as_params(layer.weight)
        self.bias = as_params(layer.bias)
        for name in _CONFIG:
            setattr(self, name, getattr(layer, name))

    @classmethod
    def _wrap(cls, layer: eqx_conv.FactorizedConv) -> "FactorizedConv":
        shape = (layer.in_channels, layer.out_channels, layer.kernel_size)
        if cls._eqx is eqx_conv.FactorizedConv:
            shape = (layer.num_spatial_dims, *shape)
        token = _ADOPT.set(layer)
        try:
            return cls(*shape, rngs=nnx.Rngs(0))
        finally:
            _ADOPT.reset(token)

    @classmethod
    def from_weight(cls, weight: Any, bias: Any = None, **kwargs) -> "FactorizedConv":
        """The layer holding a given kernel factorization (and bias), as
        `factorjax.nn.FactorizedConv.from_weight` (``stride``, ``padding``, ``dilation``,
        ``order``)."""
        return cls._wrap(cls._eqx.from_weight(weight, bias, **kwargs))

    @classmethod
    def from_dense(
        cls, kernel: Any, bias: Any = None, format: Any = "cp", rank: Any = None, **kwargs
    ) -> "FactorizedConv":
        """The layer holding the decomposition of a dense kernel, as
        `factorjax.nn.FactorizedConv.from_dense`."""
        return cls._wrap(cls._eqx.from_dense(kernel, bias, format, rank, **kwargs))

    @property
    def factorization(self) -> Any:
        """The kernel as a plain factorization pytree (arrays, not ``nnx.Param``s)."""
        return values(self.weight)

    def dense_kernel(self) -> Array:
        """The dense kernel ``(C_out, C_in, k_1, ..., k_d)``."""
        return to_kernel(self.factorization)

    def plan(self, input_shape: Any, order: Any = None) -> Plan:
        """As `factorjax.nn.FactorizedConv.plan`."""
        order = self.order if order is None else order
        return conv_plan(
            self.factorization, input_shape, self.stride, self.padding, self.dilation, order
        )

    def __call__(self, x: Any) -> Array:
        """Arguments: ``x`` ``(C_in, *spatial)`` or ``(B, C_in, *spatial)``.

        Returns:
            ``(C_out, *out_spatial)`` or ``(B, C_out, *out_spatial)``.
        """
        x = as_real_array("x", x)
        y = conv_apply(self.factorization, x, self.stride, self.padding, self.dilation, self.order)
        if self.bias is None:
            return y
        return y + self.bias[...].reshape(-1, *(1,) * self.num_spatial_dims)


class FactorizedConv1d(FactorizedConv):
    """As `FactorizedConv` with ``num_spatial_dims=1``; the other arguments as there."""

    _eqx: ClassVar[type] = eqx_conv.FactorizedConv1d

    def __init__(self, in_channels: Any, out_channels: Any, kernel_size: Any, *args, **kwargs):
        super().__init__(1, in_channels, out_channels, kernel_size, *args, **kwargs)


class FactorizedConv2d(FactorizedConv):
    """As `FactorizedConv` with ``num_spatial_dims=2``; the other arguments as there."""

    _eqx: ClassVar[type] = eqx_conv.FactorizedConv2d

    def __init__(self, in_channels: Any, out_channels: Any, kernel_size: Any, *args, **kwargs):
        super().__init__(2, in_channels, out_channels, kernel_size, *args, **kwargs)


class FactorizedConv3d(FactorizedConv):
    """As `FactorizedConv` with ``num_spatial_dims=3``; the other arguments as there."""

    _eqx: ClassVar[type] = eqx_conv.FactorizedConv3d

    def __init__(self, in_channels: Any, out_channels: Any, kernel_size: Any, *args, **kwargs):
        super().__init__(3, in_channels, out_channels, kernel_size, *args, **kwargs)
