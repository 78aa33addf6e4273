"""`LatentMoE` for Flax NNX: the Equinox layer's router, shared projection, expert maps and
biases, held as ``nnx.Param``s."""

from typing import Any

from flax import nnx
from jax import Array
from jax.typing import ArrayLike

from factorjax.moe import _latent as eqx_latent
from factorjax.nnx._params import as_params

__all__ = ["LatentMoE"]

_STATIC = ("in_features", "out_features", "num_experts", "latent_dim", "top_k", "activation")
_ARRAYS = ("router", "projection", "experts", "bias")


class LatentMoE(nnx.Module):
    """A Mixture of Latent Experts layer (MoLE): the same arguments, arrays and outputs as
    `factorjax.moe.LatentMoE`, with ``rngs`` instead of ``key``. The router, the shared
    projection, the expert maps and the biases are ``nnx.Param``s.

    Example:
        >>> from flax import nnx
        >>> from factorjax.nnx import LatentMoE
        >>> layer = LatentMoE(16, 8, 4, 6, rngs=nnx.Rngs(0))
        >>> layer(jax.numpy.ones((5, 16))).shape          # doctest: +SKIP
        (5, 8)
    """

    def __init__(
        self,
        in_features: Any,
        out_features: Any,
        num_experts: Any,
        latent_dim: Any,
        *,
        rngs: nnx.Rngs,
        **kwargs,
    ):
        """Arguments: as `factorjax.moe.LatentMoE` (``top_k``, ``use_bias``, ``activation``,
        ``dtype``), with ``rngs`` (its ``params`` stream draws the arrays)."""
        layer = eqx_latent.LatentMoE(
            in_features, out_features, num_experts, latent_dim, key=rngs.params(), **kwargs
        )
        self._adopt(layer)

    def _adopt(self, layer: eqx_latent.LatentMoE):
        for name in _ARRAYS:
            setattr(self, name, as_params(getattr(layer, name)))
        for name in _STATIC:
            setattr(self, name, getattr(layer, name))

    @classmethod
    def from_equinox(cls, layer: Any) -> "LatentMoE":
        """The NNX layer holding the arrays of an Equinox `factorjax.moe.LatentMoE`."""
        if not isinstance(layer, eqx_latent.LatentMoE):
            raise TypeError(
                f"`layer` must be a factorjax.moe.LatentMoE; got {type(layer).__name__}."
            )
        # NNX objects are set up by their metaclass: construct a layer of the same layout (a
        # cheap draw, compiled once per layout), then adopt the given arrays.
        self = cls(layer.in_features, layer.out_features, layer.num_experts, layer.latent_dim,
                   top_k=layer.top_k, use_bias=layer.bias is not None,
                   activation=layer.activation, dtype=layer.router.dtype,
                   rngs=nnx.Rngs(0))  # fmt: skip
        self._adopt(layer)
        return self

    @classmethod
    def from_experts(
        cls, expert_weights: ArrayLike, router_weight: ArrayLike, latent_dim: Any, **kwargs
    ) -> tuple["LatentMoE", eqx_latent.LatentReport]:
        """Convert a trained mixture of linear experts, as `factorjax.moe.LatentMoE.from_experts`
        (same arguments); returns ``(layer, report)``."""
        layer, report = eqx_latent.LatentMoE.from_experts(
            expert_weights, router_weight, latent_dim, **kwargs
        )
        return cls.from_equinox(layer), report

    @property
    def equinox(self) -> eqx_latent.LatentMoE:
        """The layer as a `factorjax.moe.LatentMoE` of plain arrays (no checks rerun)."""
        layer = object.__new__(eqx_latent.LatentMoE)
        for name in _ARRAYS:
            value = getattr(self, name)
            object.__setattr__(layer, name, None if value is None else value[...])
        for name in _STATIC:
            object.__setattr__(layer, name, getattr(self, name))
        return layer

    @property
    def num_params(self) -> int:
        return self.equinox.num_params

    def expert_axes(self) -> list[int | None]:
        """As `factorjax.moe.LatentMoE.expert_axes`, one entry per ``nnx.Param`` in the order of
        the Equinox layer's leaves (router, projection, expert maps, biases)."""
        return self.equinox.expert_axes()

    def expert_weights(self) -> Array:
        """The explicit expert weights ``(E, out_features, in_features)``."""
        return self.equinox.expert_weights()

    def __call__(self, x: ArrayLike, *, return_aux: bool = False) -> Any:
        """``x`` ``(..., in_features)`` to ``(..., out_features)`` (and the router's auxiliary
        losses with ``return_aux``), as the Equinox layer."""
        return self.equinox(x, return_aux=return_aux)
