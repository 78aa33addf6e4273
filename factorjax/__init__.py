"""factorjax: differentiable factorizations as JAX pytrees."""

from factorjax import factorizations, linalg, nn, tubal
from factorjax.factorizations import (
    CP,
    AbstractFactorization,
    DeepLowRank,
    Kronecker,
    LowRank,
    SymmetricTubalLowRank,
    TensorRing,
    TensorTrain,
    TTMatrix,
    TubalLowRank,
    Tucker,
)

__version__ = "0.1.0"

__all__ = [
    "CP",
    "AbstractFactorization",
    "DeepLowRank",
    "Kronecker",
    "LowRank",
    "SymmetricTubalLowRank",
    "TTMatrix",
    "TensorRing",
    "TensorTrain",
    "TubalLowRank",
    "Tucker",
    "factorizations",
    "linalg",
    "nn",
    "tubal",
]
