"""Flax NNX layers over the library's factorizations: the same names, arguments and outputs
as the Equinox layers of `factorjax.nn` (``rngs`` for ``key``, ``deterministic`` for
``inference``). Importing it needs Flax (``pip install factorjax[flax]``); ``import factorjax``
alone never imports Flax."""

from factorjax.nnx._conv import (
    FactorizedConv,
    FactorizedConv1d,
    FactorizedConv2d,
    FactorizedConv3d,
)
from factorjax.nnx._embedding import FactorizedEmbedding
from factorjax.nnx._factorize import LayerReport, factorize, from_conv, from_embedding, from_linear
from factorjax.nnx._linear import FactorizedLinear
from factorjax.nnx._moe_basis import BasisMoE
from factorjax.nnx._moe_latent import LatentMoE
from factorjax.nnx._moe_multilinear import MultilinearMoE
from factorjax.nnx._moe_sparse import SparseMoE
from factorjax.nnx._mpo import SharedMPOStack
from factorjax.nnx._tubal import TubalLinear

__all__ = [
    "BasisMoE",
    "FactorizedConv",
    "FactorizedConv1d",
    "FactorizedConv2d",
    "FactorizedConv3d",
    "FactorizedEmbedding",
    "FactorizedLinear",
    "LatentMoE",
    "LayerReport",
    "MultilinearMoE",
    "SharedMPOStack",
    "SparseMoE",
    "TubalLinear",
    "factorize",
    "from_conv",
    "from_embedding",
    "from_linear",
]
