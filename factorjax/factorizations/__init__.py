"""Factorization formats: one final `eqx.Module` per format under one abstract base."""

from factorjax.factorizations._base import AbstractFactorization
from factorjax.factorizations.deep_lowrank import DeepLowRank
from factorjax.factorizations.lowrank import LowRank
from factorjax.factorizations.tubal_lowrank import SymmetricTubalLowRank, TubalLowRank

__all__ = [
    "AbstractFactorization",
    "DeepLowRank",
    "LowRank",
    "SymmetricTubalLowRank",
    "TubalLowRank",
]
