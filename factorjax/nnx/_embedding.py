"""`FactorizedEmbedding` for Flax NNX: the Equinox layer's factorization, as ``nnx.Param``s."""

from typing import Any

from flax import nnx
from jax import Array

from factorjax.factorizations._lookup import check_indices, lookup
from factorjax.factorizations._operator import AbstractOperator
from factorjax.nn import _embedding as eqx_embedding
from factorjax.nnx._params import as_params, values

__all__ = ["FactorizedEmbedding"]


class FactorizedEmbedding(nnx.Module):
    """A lookup table ``W (num_embeddings, embedding_size)`` held as a factorization; the same
    arguments, factors and outputs as `factorjax.nn.FactorizedEmbedding`, with ``rngs``
    instead of ``key``. Lookups compute the rows from the factors; the table is never built.

    Example:
        >>> from flax import nnx
        >>> from factorjax.nnx import FactorizedEmbedding
        >>> emb = FactorizedEmbedding(1000, 64, "tt", rank=8, rngs=nnx.Rngs(0))
        >>> emb(jax.numpy.array([1, 2, 3])).shape          # doctest: +SKIP
        (3, 64)
    """

    def __init__(
        self,
        num_embeddings: Any,
        embedding_size: Any,
        format: Any = "tt",
        rank: Any = "same",
        *,
        rngs: nnx.Rngs,
        **kwargs,
    ):
        """Arguments: as `factorjax.nn.FactorizedEmbedding` (``init``, ``std``, ``alpha``,
        ``dtype`` and the format's options), with ``rngs`` (its ``params`` stream draws the
        factors)."""
        layer = eqx_embedding.FactorizedEmbedding(
            num_embeddings, embedding_size, format, rank, key=rngs.params(), **kwargs
        )
        self._adopt(layer)

    def _adopt(self, layer: eqx_embedding.FactorizedEmbedding):
        self.weight = as_params(layer.weight)
        self.num_embeddings, self.embedding_size = layer.num_embeddings, layer.embedding_size
        self.format = layer.format

    @classmethod
    def _from_layer(cls, layer: eqx_embedding.FactorizedEmbedding) -> "FactorizedEmbedding":
        # NNX objects are set up by their metaclass: construct a rank-1 low-rank layer of the
        # right shape (a cheap draw), then adopt the given factors (as FactorizedLinear does).
        self = cls(layer.num_embeddings, layer.embedding_size, "lowrank", 1, rngs=nnx.Rngs(0))
        self._adopt(layer)
        return self

    @classmethod
    def from_weight(cls, weight: Any) -> "FactorizedEmbedding":
        """The layer holding a given factorization of the table, as
        `factorjax.nn.FactorizedEmbedding.from_weight`."""
        return cls._from_layer(eqx_embedding.FactorizedEmbedding.from_weight(weight))

    @classmethod
    def from_dense(
        cls, table: Any, format: Any = "tt", rank: Any = None, **options
    ) -> "FactorizedEmbedding":
        """The named format's decomposition of a dense table ``(num_embeddings,
        embedding_size)``, as `factorjax.nn.FactorizedEmbedding.from_dense`."""
        return cls._from_layer(
            eqx_embedding.FactorizedEmbedding.from_dense(table, format, rank, **options)
        )

    @property
    def factorization(self) -> AbstractOperator:
        """The table as a plain factorization pytree (arrays, not ``nnx.Param``s)."""
        return values(self.weight)

    def __call__(self, x: Any) -> Array:
        """Arguments: ``x``, an integer index or an integer array of indices of any shape.

        Returns: ``(embedding_size,)`` for one index, ``(*x.shape, embedding_size)`` for an
        array."""
        return lookup(values(self.weight), check_indices("x", x, self.num_embeddings))
