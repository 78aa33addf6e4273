"""`FactorizedLinear`: a linear layer whose weight is any matrix format of the library."""

from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
from jax import Array
from jax.typing import ArrayLike
from jaxtyping import Float, PRNGKeyArray

from factorjax._checks import as_real_array, check_choice, check_positive_int, describe
from factorjax.factorizations._masks import (
    leading_mask,
    mask_ranks,
    nested_dropout_mask,
    rank_axes,
    tensor_dropout_mask,
)
from factorjax.factorizations._operator import AbstractOperator
from factorjax.factorizations._registry import check_format, make_operator

__all__ = ["FactorizedLinear", "masked_weight"]

DROPOUT_KINDS = ("tensor", "nested")


def check_rank_dropout(rate: Any, kind: Any) -> tuple[float, str]:
    if isinstance(rate, bool) or not isinstance(rate, int | float) or not 0.0 <= rate < 1.0:
        raise ValueError(f"`rank_dropout` must be a float in [0, 1); got {rate!r}.")
    return float(rate), check_choice("rank_dropout_kind", kind, DROPOUT_KINDS)


def masked_weight(
    weight: AbstractOperator,
    *,
    rank: Any = None,
    rate: float = 0.0,
    kind: str = "tensor",
    key: PRNGKeyArray | None = None,
) -> AbstractOperator:
    """``weight`` with its rank components masked: the first ``rank`` kept on every rank axis
    (``rank`` may be traced), then, with ``rate > 0``, rank dropout of ``kind`` drawn from
    ``key``. Shapes never change, so neither the rank nor the dropout draw recompiles."""
    if rank is None and rate == 0.0:
        return weight
    sizes = rank_axes(weight)
    masks = [jnp.ones((n,), weight.dtype) for n in sizes]
    if rank is not None:
        masks = [m * leading_mask(n, rank, weight.dtype) for m, n in zip(masks, sizes, strict=True)]
    if rate > 0.0:
        if key is None:
            raise ValueError(
                "`key` is required for rank dropout in training mode (rank_dropout > 0 and "
                "inference=False); pass key=..., or set inference=True."
            )
        draw = tensor_dropout_mask if kind == "tensor" else nested_dropout_mask
        keys = jax.random.split(key, len(sizes))
        masks = [
            m * draw(k, n, rate, weight.dtype) for m, k, n in zip(masks, keys, sizes, strict=True)
        ]
    return mask_ranks(weight, masks)


class FactorizedLinear(eqx.Module):
    """``y = W x + b`` with ``W`` held as a factorization (`LowRank`, `DeepLowRank`, `TTMatrix`,
    `CP`, `Tucker`, `TensorRing` or `Kronecker`), applied without building the dense weight when
    a cheaper contraction order exists (`AbstractOperator.plan`).

    Like ``eqx.nn.Linear`` it takes one example ``(in_features,)``; batch with ``jax.vmap``.
    It also takes inputs ``(..., in_features)`` with leading batch axes: then the planner sees
    the batch size (under ``jax.vmap`` it plans for one example, which never rebuilds ``W``).

    Example:
        >>> import jax
        >>> from factorjax.nn import FactorizedLinear
        >>> layer = FactorizedLinear(768, 768, "tt", rank=16, key=jax.random.key(0))
        >>> layer(jax.numpy.ones(768)).shape
        (768,)
        >>> FactorizedLinear(256, 256, "lowrank", rank="same", key=jax.random.key(0)).weight.rank
        128
    """

    weight: AbstractOperator
    bias: Float[Array, " out_features"] | None
    in_features: int = eqx.field(static=True)
    out_features: int = eqx.field(static=True)
    format: str = eqx.field(static=True)
    order: str = eqx.field(static=True)
    rank_dropout: float = eqx.field(static=True)
    rank_dropout_kind: str = eqx.field(static=True)
    inference: bool

    def __init__(
        self,
        in_features: Any,
        out_features: Any,
        format: Any = "lowrank",
        rank: Any = "same",
        *,
        use_bias: bool = True,
        init: Any = "glorot",
        std: Any = None,
        alpha: Any = None,
        order: Any = "auto",
        rank_dropout: Any = 0.0,
        rank_dropout_kind: Any = "tensor",
        inference: bool = False,
        dtype: Any = None,
        key: PRNGKeyArray,
        **options,
    ):
        """Arguments:
        in_features, out_features: the sizes of the input and of the output.
        format: ``"lowrank"``, ``"deep_lowrank"``, ``"tt"``, ``"cp"``, ``"tucker"``,
            ``"tensor_ring"`` or ``"kronecker"``.
        rank: an int, a tuple (per mode or bond; the hidden widths of ``deep_lowrank``), a
            float in ``(0, 1]`` (at most that fraction of the dense parameter count), or
            ``"same"`` (as many parameters as the dense weight).
        use_bias: add a bias (zeros at init, as in ``eqx.nn.Linear`` it is not random here:
            the factorized weight's variance already targets ``init``).
        init, std, alpha: the variance of the reconstructed weight (``"glorot"``, ``"he"``,
            ``"lecun"``, ``"std"`` with ``std``, ``"small"`` with ``alpha``).
        order: the contraction order, ``"auto"`` (planned) or a candidate's name.
        rank_dropout, rank_dropout_kind: dropout over rank components while training,
            ``"tensor"`` (each component kept with probability ``1 - rate``, rescaled) or
            ``"nested"`` (ordered dropout: the trailing components are dropped together).
        inference: no rank dropout when True (see ``eqx.nn.inference_mode``).
        dtype: the parameters' dtype (default: JAX's default float).
        key: a JAX PRNG key.
        **options: the format's options (``depth``; ``out_modes``, ``in_modes``, ``order``
            of the tensorization is ``tensor_order`` here; ``shapes``), see
            `factorjax.factorizations.make_operator`.
        """
        in_features = check_positive_int("in_features", in_features)
        out_features = check_positive_int("out_features", out_features)
        format = check_format(format)
        if "tensor_order" in options:
            options["order"] = options.pop("tensor_order")
        self.weight = make_operator(
            format, out_features, in_features, rank, key=key, init=init, std=std,
            alpha=alpha, dtype=dtype, **options,
        )  # fmt: skip
        self.bias = jnp.zeros((out_features,), self.weight.dtype) if use_bias else None
        self.in_features, self.out_features, self.format = in_features, out_features, format
        self.order = order if order == "auto" else self.weight.plan(1, order).order
        self.rank_dropout, self.rank_dropout_kind = check_rank_dropout(
            rank_dropout, rank_dropout_kind
        )
        self.inference = inference

    @classmethod
    def from_weight(
        cls,
        weight: Any,
        bias: Any = None,
        *,
        order: Any = "auto",
        rank_dropout: Any = 0.0,
        rank_dropout_kind: Any = "tensor",
        inference: bool = False,
    ) -> "FactorizedLinear":
        """The layer holding a given factorization (and bias ``(out_features,)`` or None)."""
        if not isinstance(weight, AbstractOperator):
            raise TypeError(
                f"`weight` must be a matrix factorization (an AbstractOperator); got "
                f"{type(weight).__name__}."
            )
        self = object.__new__(cls)
        d_out, d_in = weight.out_features, weight.in_features
        if bias is not None:
            bias = as_real_array("bias", bias)
            if bias.shape != (d_out,):
                raise ValueError(f"`bias` must have shape ({d_out},); got {describe(bias)}.")
        fmt = _format_name(weight)
        rate, kind = check_rank_dropout(rank_dropout, rank_dropout_kind)
        order = order if order == "auto" else weight.plan(1, order).order
        for name, value in (
            ("weight", weight), ("bias", bias), ("in_features", d_in), ("out_features", d_out),
            ("format", fmt), ("order", order), ("rank_dropout", rate),
            ("rank_dropout_kind", kind), ("inference", inference),
        ):  # fmt: skip
            object.__setattr__(self, name, value)
        return self

    def __call__(
        self, x: ArrayLike, *, key: PRNGKeyArray | None = None, rank: Any = None
    ) -> Float[Array, "... out_features"]:
        """Arguments:
        x: one input ``(in_features,)``, or a batch ``(..., in_features)``.
        key: for rank dropout while training.
        rank: keep only the first ``rank`` components on every rank axis (an int, or a traced
            int: a rank sweep over one padded layer vmaps without recompiling).
        """
        x = as_real_array("x", x, min_ndim=1)
        if x.shape[-1] != self.in_features:
            raise ValueError(
                f"`x` must have in_features = {self.in_features} on its last axis; got "
                f"{describe(x)}."
            )
        rate = 0.0 if self.inference else self.rank_dropout
        w = masked_weight(self.weight, rank=rank, rate=rate, kind=self.rank_dropout_kind, key=key)
        y = w.apply(x, order=self.order)
        return y if self.bias is None else y + self.bias


_NAMES = {
    "LowRank": "lowrank",
    "DeepLowRank": "deep_lowrank",
    "TTMatrix": "tt",
    "CP": "cp",
    "Tucker": "tucker",
    "TensorRing": "tensor_ring",
    "Kronecker": "kronecker",
}


def _format_name(weight: AbstractOperator) -> str:
    return _NAMES.get(type(weight).__name__, type(weight).__name__)
