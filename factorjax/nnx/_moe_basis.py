"""`BasisMoE` for Flax NNX: the Equinox layer's router, expert factors, mixing logits, shared
bases and biases, held as ``nnx.Param``s."""

from typing import Any

from flax import nnx
from jax import Array
from jax.typing import ArrayLike

from factorjax.moe import _basis as eqx_basis
from factorjax.nnx._params import as_params

__all__ = ["BasisMoE"]

_STATIC = (
    "in_features", "out_features", "num_experts", "num_bases", "rank", "top_k", "activation",
)  # fmt: skip
_ARRAYS = ("router", "experts", "mixing", "bases", "bias")


class BasisMoE(nnx.Module):
    """A Mixture of Basis Experts layer (MoBE): the same arguments, arrays and outputs as
    `factorjax.moe.BasisMoE`, with ``rngs`` instead of ``key``. The router, the expert factors
    ``A``, the mixing logits ``alpha``, the shared bases ``B`` and the biases are
    ``nnx.Param``s.

    Example:
        >>> from flax import nnx
        >>> from factorjax.nnx import BasisMoE
        >>> layer = BasisMoE(16, 8, 4, 2, rank=4, rngs=nnx.Rngs(0))
        >>> layer(jax.numpy.ones((5, 16))).shape          # doctest: +SKIP
        (5, 8)
    """

    def __init__(
        self,
        in_features: Any,
        out_features: Any,
        num_experts: Any,
        num_bases: Any,
        *,
        rank: Any,
        rngs: nnx.Rngs,
        **kwargs,
    ):
        """Arguments: as `factorjax.moe.BasisMoE` (``rank``, ``activation``, ``top_k``,
        ``use_bias``, ``dtype``), with ``rngs`` (its ``params`` stream draws the arrays)."""
        layer = eqx_basis.BasisMoE(
            in_features, out_features, num_experts, num_bases, rank=rank, key=rngs.params(),
            **kwargs,
        )  # fmt: skip
        self._adopt(layer)

    def _adopt(self, layer: eqx_basis.BasisMoE):
        for name in _ARRAYS:
            setattr(self, name, as_params(getattr(layer, name)))
        for name in _STATIC:
            setattr(self, name, getattr(layer, name))

    @classmethod
    def from_equinox(cls, layer: Any) -> "BasisMoE":
        """The NNX layer holding the arrays of an Equinox `factorjax.moe.BasisMoE`."""
        if not isinstance(layer, eqx_basis.BasisMoE):
            raise TypeError(
                f"`layer` must be a factorjax.moe.BasisMoE; got {type(layer).__name__}."
            )
        # NNX objects are set up by their metaclass: construct a layer of the same layout (a
        # cheap draw, compiled once per layout), then adopt the given arrays.
        self = cls(layer.in_features, layer.out_features, layer.num_experts, layer.num_bases,
                   rank=layer.rank, top_k=layer.top_k, use_bias=layer.bias is not None,
                   activation=layer.activation, dtype=layer.router.dtype,
                   rngs=nnx.Rngs(0))  # fmt: skip
        self._adopt(layer)
        return self

    @classmethod
    def from_experts(
        cls,
        expert_weights: ArrayLike,
        router_weight: ArrayLike,
        num_bases: Any,
        rank: Any,
        **kwargs,
    ) -> tuple["BasisMoE", eqx_basis.BasisReport]:
        """Compress a trained mixture of linear experts, as
        `factorjax.moe.BasisMoE.from_experts` (same arguments); returns ``(layer, report)``."""
        layer, report = eqx_basis.BasisMoE.from_experts(
            expert_weights, router_weight, num_bases, rank, **kwargs
        )
        return cls.from_equinox(layer), report

    @property
    def equinox(self) -> eqx_basis.BasisMoE:
        """The layer as a `factorjax.moe.BasisMoE` of plain arrays (no checks rerun)."""
        layer = object.__new__(eqx_basis.BasisMoE)
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
        """As `factorjax.moe.BasisMoE.expert_axes`, one entry per ``nnx.Param`` in the order of
        the Equinox layer's leaves (router, expert factors, mixing logits, bases, biases)."""
        return self.equinox.expert_axes()

    def expert_weights(self) -> Array:
        """The explicit expert weights ``(E, out_features, in_features)``."""
        return self.equinox.expert_weights()

    def __call__(self, x: ArrayLike, *, return_aux: bool = False) -> Any:
        """``x`` ``(..., in_features)`` to ``(..., out_features)`` (and the router's auxiliary
        losses with ``return_aux``), as the Equinox layer."""
        return self.equinox(x, return_aux=return_aux)
