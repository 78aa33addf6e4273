"""`FactorizedEmbedding`: an embedding table held as any matrix format of the library."""

from typing import Any

import equinox as eqx
from jax import Array
from jaxtyping import Float, PRNGKeyArray

from factorjax._checks import check_positive_int
from factorjax.factorizations._lookup import check_indices, lookup
from factorjax.factorizations._operator import AbstractOperator
from factorjax.factorizations._registry import check_format, make_operator, operator_from_dense
from factorjax.nn._linear import _format_name

__all__ = ["FactorizedEmbedding"]


def _options(options: dict) -> dict:
    """The format's options, with ``tensor_order`` (the name `FactorizedLinear` takes, whose
    ``order`` is the contraction order) read as the tensorization's ``order``."""
    if "tensor_order" in options:
        if "order" in options:
            raise ValueError("pass at most one of `order` and `tensor_order` (the same option).")
        options["order"] = options.pop("tensor_order")
    return options


class FactorizedEmbedding(eqx.Module):
    """A lookup table ``W (num_embeddings, embedding_size)`` held as a factorization
    (`LowRank`, `DeepLowRank`, `TTMatrix`, `CP`, `Tucker`, `TensorRing` or `Kronecker`, rows
    ``d_out = num_embeddings``, columns ``d_in = embedding_size``), like ``eqx.nn.Embedding``.

    A lookup computes the rows it needs from the factors (`factorjax.factorizations._lookup`):
    the table is never built, so a TT embedding of a 50k-word vocabulary costs a few chains of
    small matrices per token (Hrinchuk et al., "Tensorized Embedding Layers", 2020).

    Example:
        >>> import jax
        >>> from factorjax.nn import FactorizedEmbedding
        >>> emb = FactorizedEmbedding(1000, 64, "tt", rank=8, key=jax.random.key(0))
        >>> emb(3).shape, emb(jax.numpy.array([[1, 2, 3], [4, 5, 6]])).shape
        ((64,), (2, 3, 64))
    """

    weight: AbstractOperator
    num_embeddings: int = eqx.field(static=True)
    embedding_size: int = eqx.field(static=True)
    format: str = eqx.field(static=True)

    def __init__(
        self,
        num_embeddings: Any,
        embedding_size: Any,
        format: Any = "tt",
        rank: Any = "same",
        *,
        init: Any = "std",
        std: Any = None,
        alpha: Any = None,
        dtype: Any = None,
        key: PRNGKeyArray,
        **options,
    ):
        """Arguments:
        num_embeddings: the number of rows (the vocabulary size). The tensorized formats split
            it into modes (``balanced_modes``): a size with small prime factors (pad the
            vocabulary) tensorizes well; a prime one leaves a single mode of that size.
        embedding_size: the size of each embedding vector.
        format: ``"tt"`` (default), ``"lowrank"``, ``"deep_lowrank"``, ``"cp"``, ``"tucker"``,
            ``"tensor_ring"`` or ``"kronecker"``.
        rank: an int, a tuple (per mode or bond; the hidden widths of ``deep_lowrank``), a
            float in ``(0, 1]`` (at most that fraction of the table's parameter count: the
            compression), or ``"same"`` (as many parameters as the dense table).
        init, std, alpha: the distribution of the reconstructed table's entries. The default,
            ``init="std"`` with ``std=None`` read as ``1.0``, gives entries of variance 1, as
            ``eqx.nn.Embedding``'s ``N(0, 1)`` rows (the factors' scales are set so that the
            product has that variance; its entries are sums of products, not Gaussian).
            ``"glorot"``, ``"he"``, ``"lecun"`` use the fans of the table as a matrix
            (``fan_in = embedding_size``, ``fan_out = num_embeddings``); ``"small"`` with
            ``alpha`` scales the factors themselves.
        dtype: the parameters' dtype (default: JAX's default float).
        key: a JAX PRNG key.
        **options: the format's options: ``depth`` (deep_lowrank); ``out_modes`` (the modes of
            ``num_embeddings``), ``in_modes`` (of ``embedding_size``), ``order`` (also
            accepted as ``tensor_order``, as in `FactorizedLinear`) for tt, cp, tucker and
            tensor_ring; ``shapes`` (kronecker). See `factorjax.factorizations.make_operator`.
        """
        num_embeddings = check_positive_int("num_embeddings", num_embeddings)
        embedding_size = check_positive_int("embedding_size", embedding_size)
        format = check_format(format)
        if init == "std" and std is None:
            std = 1.0
        self.weight = make_operator(
            format, num_embeddings, embedding_size, rank, key=key, init=init, std=std,
            alpha=alpha, dtype=dtype, **_options(options),
        )  # fmt: skip
        self.num_embeddings, self.embedding_size = num_embeddings, embedding_size
        self.format = format

    @classmethod
    def from_weight(cls, weight: Any) -> "FactorizedEmbedding":
        """The layer holding a given factorization of the table ``(num_embeddings,
        embedding_size)``.

        Arguments:
            weight: a matrix factorization (an `AbstractOperator` of the formats above).

        Returns:
            A `FactorizedEmbedding` whose lookups are the rows of ``weight``.
        """
        if not isinstance(weight, AbstractOperator):
            raise TypeError(
                f"`weight` must be a matrix factorization (an AbstractOperator); got "
                f"{type(weight).__name__}."
            )
        self = object.__new__(cls)
        for name, value in (
            ("weight", weight),
            ("num_embeddings", weight.out_features),
            ("embedding_size", weight.in_features),
            ("format", _format_name(weight)),
        ):
            object.__setattr__(self, name, value)
        return self

    @classmethod
    def from_dense(
        cls, table: Any, format: Any = "tt", rank: Any = None, **options
    ) -> "FactorizedEmbedding":
        """The layer holding the named format's decomposition of a dense table.

        Arguments:
            table: the table ``(num_embeddings, embedding_size)`` (e.g. the ``weight`` of an
                ``eqx.nn.Embedding``).
            format: the format's name, as in the constructor.
            rank: as in the constructor; ``None``: the format's default, exact where it can
                be (required for ``"cp"``).
            **options: the format's options, as in the constructor.

        Returns:
            A `FactorizedEmbedding` (see `factorjax.factorizations.operator_from_dense` for
            the decomposition each format uses: SVD, TT-SVD, CP-ALS, ...).
        """
        return cls.from_weight(operator_from_dense(format, table, rank, **_options(options)))

    def __call__(
        self, x: Any, *, key: PRNGKeyArray | None = None
    ) -> Float[Array, "*batch embedding_size"]:
        """Arguments:
        x: an integer index, or an integer array of indices of any shape (negative ones
            count from the end). Under ``jit`` indices out of range are clamped, as in JAX
            indexing; outside it, host indices (ints, NumPy arrays) out of range are refused.
        key: ignored; for compatibility with ``eqx.nn.Embedding``.

        Returns:
            ``(embedding_size,)`` for one index, ``(*x.shape, embedding_size)`` for an array.
        """
        del key
        return lookup(self.weight, check_indices("x", x, self.num_embeddings))
