"""`SparseMoE` for Flax NNX: the Equinox layer's router, experts and biases, held as
``nnx.Param``s (every leaf of a factorized expert stack is its own ``nnx.Param``)."""

from typing import Any

import jax
from flax import nnx
from jax import Array
from jax.typing import ArrayLike

from factorjax._checks import as_real_array, describe
from factorjax.moe import _sparse
from factorjax.nnx._params import as_params, values

__all__ = ["SparseMoE"]


class SparseMoE(nnx.Module):
    """The sparse top-k mixture of experts of `factorjax.moe.SparseMoE`: the same arguments,
    parameters and outputs, with ``rngs`` (its ``params`` stream) instead of ``key``.

    Example:
        >>> import jax
        >>> from flax import nnx
        >>> from factorjax.nnx import SparseMoE
        >>> moe = SparseMoE(16, 16, 8, top_k=2, expert_format="lowrank", expert_rank=4,
        ...                 rngs=nnx.Rngs(0))
        >>> moe(jax.numpy.ones((4, 16))).shape
        (4, 16)
    """

    def __init__(
        self,
        in_features: Any,
        out_features: Any,
        num_experts: Any,
        *,
        rngs: nnx.Rngs,
        **kwargs,
    ):
        """Arguments: as `factorjax.moe.SparseMoE` (``top_k``, ``expert_format``,
        ``expert_rank``, ``capacity_factor``, ``use_bias``, ``init``, ``std``, ``alpha``,
        ``dtype`` and the format's options), with ``rngs`` instead of ``key``."""
        layer = _sparse.SparseMoE(
            in_features, out_features, num_experts, key=rngs.params(), **kwargs
        )
        self._adopt(layer)

    def _adopt(self, layer: _sparse.SparseMoE) -> None:
        self.router = as_params(layer.router)
        self.experts = as_params(layer.experts)
        self.bias = as_params(layer.bias)
        self.in_features, self.out_features = layer.in_features, layer.out_features
        self.top_k, self.expert_format = layer.top_k, layer.expert_format
        self.capacity_factor = layer.capacity_factor

    @classmethod
    def from_equinox(cls, layer: Any) -> "SparseMoE":
        """The NNX twin holding the arrays of an Equinox `factorjax.moe.SparseMoE`."""
        if not isinstance(layer, _sparse.SparseMoE):
            raise TypeError(
                f"`layer` must be a factorjax.moe.SparseMoE; got {type(layer).__name__}."
            )
        # NNX objects are set up by their metaclass: construct a cheap layer (rank-1 experts,
        # no bias), then adopt the given arrays.
        self = cls(
            layer.in_features, layer.out_features, layer.num_experts, top_k=layer.top_k,
            expert_format="lowrank", expert_rank=1, use_bias=False, rngs=nnx.Rngs(0),
        )  # fmt: skip
        self._adopt(layer)
        return self

    @property
    def num_experts(self) -> int:
        """``E``."""
        return self.router.shape[1]

    @property
    def num_params(self) -> int:
        """The number of parameters (router, experts and biases)."""
        arrays = values((self.router, self.experts, self.bias))
        return sum(leaf.size for leaf in jax.tree.leaves(arrays))

    def __call__(
        self, x: ArrayLike, *, return_aux: bool = False
    ) -> Array | tuple[Array, dict[str, Array]]:
        """Arguments and returns: as `factorjax.moe.SparseMoE.__call__`."""
        x = as_real_array("x", x, min_ndim=1)
        if x.shape[-1] != self.in_features:
            raise ValueError(
                f"`x` must have in_features = {self.in_features} on its last axis; got "
                f"{describe(x)}."
            )
        y, aux = _sparse.sparse_moe(
            x, values(self.router), values(self.experts), values(self.bias),
            top_k=self.top_k, capacity_factor=self.capacity_factor,
        )  # fmt: skip
        return (y, aux) if return_aux else y
