"""`MultilinearMoE` for Flax NNX: the Equinox layer's factors and gate matrices, held as
``nnx.Param``s."""

from typing import Any

from flax import nnx
from jax import Array
from jax.typing import ArrayLike

from factorjax.moe import _multilinear as eqx_moe
from factorjax.nnx._params import as_params, values

__all__ = ["MultilinearMoE"]

_STATIC = (
    "in_features", "out_features", "levels", "rank", "format", "gate", "top_k", "use_bias",
    "normalize",
)  # fmt: skip
_ARRAYS = ("gate_weights", "expert_factors", "in_factor", "out_factor")


class MultilinearMoE(nnx.Module):
    """The Multilinear Mixture of Experts layer (μMoE); the same arguments, arrays and outputs
    as `factorjax.moe.MultilinearMoE`, with ``rngs`` instead of ``key``. Each gate matrix, each
    expert factor and the input and output factors is an ``nnx.Param``.

    Example:
        >>> from flax import nnx
        >>> from factorjax.nnx import MultilinearMoE
        >>> layer = MultilinearMoE(16, 8, 64, 4, format="tr", rngs=nnx.Rngs(0))
        >>> layer(jax.numpy.ones((5, 16))).shape          # doctest: +SKIP
        (5, 8)
    """

    def __init__(
        self,
        in_features: Any,
        out_features: Any,
        num_experts: Any,
        rank: Any,
        *,
        rngs: nnx.Rngs,
        **kwargs,
    ):
        """Arguments: as `factorjax.moe.MultilinearMoE` (``format``, ``levels``, ``gate``,
        ``top_k``, ``use_bias``, ``normalize``, ``init``, ``dtype``), with ``rngs`` (its
        ``params`` stream draws the factors)."""
        layer = eqx_moe.MultilinearMoE(
            in_features, out_features, num_experts, rank, key=rngs.params(), **kwargs
        )
        self._adopt(layer)

    def _adopt(self, layer: eqx_moe.MultilinearMoE):
        self.gate_weights = as_params(tuple(layer.gate_weights))
        self.expert_factors = as_params(tuple(layer.expert_factors))
        self.in_factor = nnx.Param(layer.in_factor)
        self.out_factor = nnx.Param(layer.out_factor)
        for name in _STATIC:
            setattr(self, name, getattr(layer, name))

    @classmethod
    def from_equinox(cls, layer: Any) -> "MultilinearMoE":
        """The NNX layer holding the arrays of an Equinox `factorjax.moe.MultilinearMoE`."""
        if not isinstance(layer, eqx_moe.MultilinearMoE):
            raise TypeError(
                f"`layer` must be a factorjax.moe.MultilinearMoE; got {type(layer).__name__}."
            )
        # NNX objects are set up by their metaclass: construct a rank-1 layer of the same
        # layout (a cheap draw), then adopt the given arrays.
        self = cls(layer.in_features, layer.out_features, layer.num_experts, 1,
                   format=layer.format, levels=layer.levels, gate=layer.gate,
                   top_k=layer.top_k, use_bias=layer.use_bias, normalize=layer.normalize,
                   dtype=layer.in_factor.dtype, rngs=nnx.Rngs(0))  # fmt: skip
        self._adopt(layer)
        return self

    @property
    def equinox(self) -> eqx_moe.MultilinearMoE:
        """The layer as a `factorjax.moe.MultilinearMoE` of plain arrays (no checks rerun)."""
        layer = object.__new__(eqx_moe.MultilinearMoE)
        arrays = (
            tuple(values(self.gate_weights)), tuple(values(self.expert_factors)),
            self.in_factor[...], self.out_factor[...],
        )  # fmt: skip
        for name, value in zip(_ARRAYS, arrays, strict=True):
            object.__setattr__(layer, name, value)
        for name in _STATIC:
            object.__setattr__(layer, name, getattr(self, name))
        return layer

    @property
    def num_experts(self) -> int:
        return self.equinox.num_experts

    @property
    def num_params(self) -> int:
        return self.equinox.num_params

    def expert_axes(self) -> list[int | None]:
        """As `factorjax.moe.MultilinearMoE.expert_axes`, one entry per ``nnx.Param`` in the
        order of the Equinox layer's leaves (gate matrices, expert factors, input, output)."""
        return self.equinox.expert_axes()

    def expert_weights(self) -> Array:
        """The explicit expert weights ``(E_1, ..., E_L, out_features, in_features + 1)``."""
        return self.equinox.expert_weights()

    def gates(self, x: ArrayLike) -> tuple[Array, ...]:
        """The gate vectors ``(a_1, ..., a_L)`` of ``x`` ``(..., in_features)``."""
        return self.equinox.gates(x)

    def __call__(self, x: ArrayLike) -> Array:
        """``x`` ``(..., in_features)`` to ``(..., out_features)``, as the Equinox layer."""
        return self.equinox(x)
