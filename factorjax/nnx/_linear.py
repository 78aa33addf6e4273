"""`FactorizedLinear` for Flax NNX: the Equinox layer's factorization, held as ``nnx.Param``s."""

from typing import Any

from flax import nnx
from jax import Array
from jax.typing import ArrayLike

from factorjax._checks import as_real_array, describe
from factorjax.factorizations._operator import AbstractOperator
from factorjax.nn import _linear as eqx_linear
from factorjax.nnx._params import as_params, dropout_key, values

__all__ = ["FactorizedLinear"]


class FactorizedLinear(nnx.Module):
    """``y = W x + b`` with ``W`` a factorization of the library; the same arguments, factors
    and outputs as `factorjax.nn.FactorizedLinear`, with NNX's conventions: ``rngs`` instead of
    ``key``, ``deterministic`` (set by ``model.eval()``) instead of ``inference``.

    Takes inputs ``(..., in_features)``: the planner sees the batch size.

    Example:
        >>> from flax import nnx
        >>> from factorjax.nnx import FactorizedLinear
        >>> layer = FactorizedLinear(768, 768, "tt", rank=16, rngs=nnx.Rngs(0))
        >>> layer(jax.numpy.ones((32, 768))).shape          # doctest: +SKIP
        (32, 768)
    """

    def __init__(
        self,
        in_features: Any,
        out_features: Any,
        format: Any = "lowrank",
        rank: Any = "same",
        *,
        rngs: nnx.Rngs,
        deterministic: bool = False,
        **kwargs,
    ):
        """Arguments: as `factorjax.nn.FactorizedLinear` (``use_bias``, ``init``, ``std``,
        ``alpha``, ``order``, ``rank_dropout``, ``rank_dropout_kind``, ``dtype`` and the
        format's options), with ``rngs`` (its ``params`` stream draws the factors; its
        ``dropout`` stream, rank dropout) and ``deterministic``."""
        layer = eqx_linear.FactorizedLinear(
            in_features, out_features, format, rank, key=rngs.params(), **kwargs
        )
        self._adopt(layer, rngs if layer.rank_dropout > 0 else None, deterministic)

    def _adopt(self, layer: eqx_linear.FactorizedLinear, rngs: Any, deterministic: bool):
        self.weight = as_params(layer.weight)
        self.bias = as_params(layer.bias)
        self.in_features, self.out_features = layer.in_features, layer.out_features
        self.format, self.order = layer.format, layer.order
        self.rank_dropout, self.rank_dropout_kind = layer.rank_dropout, layer.rank_dropout_kind
        self.deterministic = deterministic
        self.rngs = rngs

    @classmethod
    def from_weight(
        cls,
        weight: Any,
        bias: Any = None,
        *,
        rngs: nnx.Rngs | None = None,
        deterministic: bool = False,
        **kwargs,
    ) -> "FactorizedLinear":
        """The layer holding a given factorization (and bias), as
        `factorjax.nn.FactorizedLinear.from_weight`."""
        layer = eqx_linear.FactorizedLinear.from_weight(weight, bias, **kwargs)
        # NNX objects are set up by their metaclass: construct a rank-1 layer of the right
        # shape, then adopt the given factors.
        self = cls(layer.in_features, layer.out_features, "lowrank", 1, rngs=nnx.Rngs(0))
        self._adopt(layer, rngs, deterministic)
        return self

    @property
    def factorization(self) -> AbstractOperator:
        """The weight as a plain factorization pytree (arrays, not ``nnx.Param``s)."""
        return values(self.weight)

    def __call__(
        self,
        x: ArrayLike,
        *,
        rngs: Any = None,
        rank: Any = None,
        deterministic: bool | None = None,
    ) -> Array:
        """Arguments: ``x`` ``(..., in_features)``; ``rank`` as in the Equinox layer; ``rngs``
        or a key for rank dropout; ``deterministic`` overrides the attribute."""
        x = as_real_array("x", x, min_ndim=1)
        if x.shape[-1] != self.in_features:
            raise ValueError(
                f"`x` must have in_features = {self.in_features} on its last axis; got "
                f"{describe(x)}."
            )
        det = self.deterministic if deterministic is None else deterministic
        rate = 0.0 if det else self.rank_dropout
        key = dropout_key(rngs, self.rngs, "FactorizedLinear") if rate > 0 else None
        w = eqx_linear.masked_weight(
            values(self.weight), rank=rank, rate=rate, kind=self.rank_dropout_kind, key=key
        )
        y = w.apply(x, order=self.order)
        return y if self.bias is None else y + self.bias[...]
