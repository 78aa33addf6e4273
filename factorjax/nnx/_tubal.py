"""`TubalLinear` for Flax NNX: the Equinox layer's weight (dense or `TubalLowRank`) and bias,
held as ``nnx.Param``s."""

from typing import Any

from flax import nnx
from jax import Array

from factorjax.factorizations.tubal_lowrank import TubalLowRank
from factorjax.nn import _tubal as eqx_tubal
from factorjax.nnx._params import as_params, values

__all__ = ["TubalLinear"]


class TubalLinear(nnx.Module):
    """``y = W * x + b`` (t-product over the tube axis, last); the same arguments, weights and
    outputs as `factorjax.nn.TubalLinear`, with ``rngs`` instead of ``key``.

    Takes inputs ``(in_features, k)`` or batches ``(..., in_features, k)``.

    Example:
        >>> from flax import nnx
        >>> from factorjax.nnx import TubalLinear
        >>> layer = TubalLinear(16, 8, 4, rank=2, rngs=nnx.Rngs(0))
        >>> layer(jax.numpy.ones((32, 16, 4))).shape          # doctest: +SKIP
        (32, 8, 4)
    """

    def __init__(
        self,
        in_features: Any,
        out_features: Any,
        tube_size: Any,
        rank: Any = None,
        *,
        rngs: nnx.Rngs,
        **kwargs,
    ):
        """Arguments: as `factorjax.nn.TubalLinear` (``use_bias``, ``init``, ``std``,
        ``alpha``, ``dtype``), with ``rngs`` (its ``params`` stream draws the weight)."""
        layer = eqx_tubal.TubalLinear(
            in_features, out_features, tube_size, rank, key=rngs.params(), **kwargs
        )
        self._adopt(layer)

    def _adopt(self, layer: eqx_tubal.TubalLinear):
        self.weight = as_params(layer.weight)
        self.bias = as_params(layer.bias)
        self.in_features, self.out_features = layer.in_features, layer.out_features
        self.tube_size, self.rank = layer.tube_size, layer.rank

    @classmethod
    def from_weight(cls, weight: Any, bias: Any = None) -> "TubalLinear":
        """The layer holding a given weight (dense ``(out, in, k)`` or `TubalLowRank`) and
        bias ``(out, k)``, as `factorjax.nn.TubalLinear.from_weight`."""
        layer = eqx_tubal.TubalLinear.from_weight(weight, bias)
        # NNX objects are set up by their metaclass: construct a rank-1 layer of the right
        # shape (a cheap draw), then adopt the given weight (as FactorizedLinear does).
        k = layer.tube_size
        self = cls(layer.in_features, layer.out_features, k, 1, use_bias=False, rngs=nnx.Rngs(0))
        self._adopt(layer)
        return self

    @property
    def factorization(self) -> Array | TubalLowRank:
        """The weight as plain arrays: the dense ``(out, in, k)`` array or the `TubalLowRank`."""
        return values(self.weight)

    def __call__(self, x: Any) -> Array:
        """Arguments: ``x`` ``(in_features, tube_size)`` or ``(..., in_features, tube_size)``.

        Returns: ``(..., out_features, tube_size)``."""
        x = eqx_tubal.check_input(x, self.in_features, self.tube_size)
        bias = None if self.bias is None else self.bias[...]
        return eqx_tubal.tubal_linear(values(self.weight), bias, x)
