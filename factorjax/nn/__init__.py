"""Equinox layers over the library's factorizations (thin wrappers: the pytree does the work).

`factorjax.nnx` has the same layers, with the same names and arguments, for Flax NNX.
"""

from factorjax.moe import BasisMoE, LatentMoE, MultilinearMoE, SparseMoE
from factorjax.nn._conv import (
    FactorizedConv,
    FactorizedConv1d,
    FactorizedConv2d,
    FactorizedConv3d,
)
from factorjax.nn._embedding import FactorizedEmbedding
from factorjax.nn._factorize import LayerReport, factorize, from_conv, from_embedding, from_linear
from factorjax.nn._linear import FactorizedLinear
from factorjax.nn._mpo import SharedMPOStack
from factorjax.nn._tubal import TubalLinear

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
