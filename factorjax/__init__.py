"""factorjax: differentiable factorizations as JAX pytrees."""

from factorjax import factorizations, linalg, tubal
from factorjax.factorizations import (
    AbstractFactorization,
    DeepLowRank,
    LowRank,
    SymmetricTubalLowRank,
    TubalLowRank,
)

__version__ = "0.1.0"

__all__ = [
    "AbstractFactorization",
    "DeepLowRank",
    "LowRank",
    "SymmetricTubalLowRank",
    "TubalLowRank",
    "factorizations",
    "linalg",
    "tubal",
]
