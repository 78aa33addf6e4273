"""Factorization formats: one final `eqx.Module` per format under one abstract base.

Formats that represent a matrix ``(d_out, d_in)`` are `AbstractOperator`s: they apply to a
batch of inputs along the contraction order their planner picks (`AbstractOperator.plan`), or,
under `autotune`, the order measured fastest (`AbstractOperator.tune`).
"""

from factorjax.factorizations._base import AbstractFactorization
from factorjax.factorizations._masks import (
    leading_mask,
    mask_ranks,
    nested_dropout_mask,
    rank_axes,
    tensor_dropout_mask,
)
from factorjax.factorizations._operator import AbstractOperator, Order, Plan, autotune
from factorjax.factorizations._registry import (
    FORMATS,
    make_operator,
    operator_from_dense,
    resolve_rank,
)
from factorjax.factorizations._tensorize import balanced_modes
from factorjax.factorizations.cp import CP
from factorjax.factorizations.deep_lowrank import DeepLowRank
from factorjax.factorizations.kronecker import Kronecker
from factorjax.factorizations.lowrank import LowRank
from factorjax.factorizations.tensor_ring import TensorRing
from factorjax.factorizations.tensor_train import TensorTrain
from factorjax.factorizations.tt_matrix import TTMatrix
from factorjax.factorizations.tubal_lowrank import SymmetricTubalLowRank, TubalLowRank
from factorjax.factorizations.tucker import Tucker

__all__ = [
    "CP",
    "FORMATS",
    "AbstractFactorization",
    "AbstractOperator",
    "DeepLowRank",
    "Kronecker",
    "LowRank",
    "Order",
    "Plan",
    "SymmetricTubalLowRank",
    "TTMatrix",
    "TensorRing",
    "TensorTrain",
    "TubalLowRank",
    "Tucker",
    "autotune",
    "balanced_modes",
    "leading_mask",
    "make_operator",
    "mask_ranks",
    "nested_dropout_mask",
    "operator_from_dense",
    "rank_axes",
    "resolve_rank",
    "tensor_dropout_mask",
]
