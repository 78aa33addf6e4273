"""Factorizing a Flax NNX model you already have: `from_linear`, `from_conv`, `from_embedding`
convert one layer, `factorize` walks a whole model and converts the layers you select.

The decompositions, reports, paths and ``where`` rules are those of `factorjax.nn.factorize`
(the same structure gives the same paths in both frameworks)."""

import dataclasses
import math
from typing import Any

import jax.numpy as jnp
from flax import nnx
from flax.nnx.nn.linear import canonicalize_padding
from jax import Array

from factorjax._checks import as_real_array, describe
from factorjax.nn import _factorize as eqx_factorize
from factorjax.nn import _report
from factorjax.nn._report import LayerReport, Reports, format_table
from factorjax.nnx._conv import FactorizedConv
from factorjax.nnx._embedding import FactorizedEmbedding
from factorjax.nnx._linear import FactorizedLinear

__all__ = [
    "ChannelsLastConv",
    "LayerReport",
    "Reports",
    "factorize",
    "format_table",
    "from_conv",
    "from_embedding",
    "from_linear",
]

SUPPORTED = (
    "nnx.Linear (not LoRALinear), nnx.Conv (feature_group_count=1, input_dilation=1, no mask, "
    "zero padding) and nnx.Embed"
)


class ChannelsLastConv(FactorizedConv):
    """A `FactorizedConv` called as ``nnx.Conv`` is: channels last, ``(*batch, *spatial,
    C_in)`` to ``(*batch, *out_spatial, C_out)``, with any number of leading batch axes
    (none for one example). `from_conv` returns it, so that a factorized NNX model keeps its
    call; it moves the channel axis to the front, convolves as `FactorizedConv`, and moves it
    back.

    Its factors, bias and configuration are those of `FactorizedConv` (``weight`` a `CP`,
    `Tucker` or `TensorTrain` of the kernel ``(C_out, C_in, *k)``, channels first).
    """

    def plan(self, input_shape: Any, order: Any = None) -> Any:
        """As `FactorizedConv.plan`, for an input of shape ``(*batch, *spatial, C_in)``."""
        shape = tuple(input_shape)
        d = self.num_spatial_dims
        batch = math.prod(shape[: len(shape) - d - 1])
        return super().plan((batch, shape[-1], *shape[-(d + 1) : -1]), order)

    def __call__(self, x: Any) -> Array:
        """Arguments: ``x`` ``(*batch, *spatial, C_in)``, channels last.

        Returns:
            ``(*batch, *out_spatial, C_out)``.
        """
        x = as_real_array("x", x)
        d = self.num_spatial_dims
        if x.ndim < d + 1 or x.shape[-1] != self.in_channels:
            raise ValueError(
                f"`x` must be (*batch, *spatial, C_in) with {d} spatial axes and C_in = "
                f"{self.in_channels} channels last (as nnx.Conv); got {describe(x)}."
            )
        batch = x.shape[: x.ndim - d - 1]
        xb = jnp.moveaxis(x.reshape(-1, *x.shape[x.ndim - d - 1 :]), -1, 1)
        y = jnp.moveaxis(super().__call__(xb), 1, -1)
        return y.reshape(*batch, *y.shape[1:])


# --- one layer ------------------------------------------------------------------------------


def _check_linear(layer: Any) -> None:
    if not isinstance(layer, nnx.Linear):
        raise TypeError(f"`layer` must be an nnx.Linear; got {type(layer).__name__}.")
    if isinstance(layer, nnx.LoRALinear):
        raise TypeError(
            "an nnx.LoRALinear cannot be factorized (its LoRA factors would be lost); merge "
            "them into an nnx.Linear first."
        )


def _linear(
    layer: Any, *, rngs: Any = None, deterministic: bool = False, **kwargs
) -> tuple[FactorizedLinear, LayerReport]:
    _check_linear(layer)
    bias = None if layer.bias is None else layer.bias[...]
    eqx_layer, report = eqx_factorize.linear_from_arrays(layer.kernel[...].T, bias, **kwargs)
    new = FactorizedLinear.from_weight(
        eqx_layer.weight, eqx_layer.bias, rngs=rngs, deterministic=deterministic,
        order=eqx_layer.order, rank_dropout=eqx_layer.rank_dropout,
        rank_dropout_kind=eqx_layer.rank_dropout_kind,
    )  # fmt: skip
    return new, report


def from_linear(
    layer: Any, format: Any = "lowrank", rank: Any = None, **options
) -> FactorizedLinear:
    """The `FactorizedLinear` whose weight is the factorization of an ``nnx.Linear``'s kernel
    (transposed: NNX holds it ``(in_features, out_features)``, the library ``(d_out, d_in)``),
    with the same bias and call: ``(..., in_features)`` to ``(..., out_features)``.

    Arguments:
        layer: an ``nnx.Linear`` (its ``dtype``, ``precision`` and ``dot_general`` are not
            carried over: the new layer computes in its parameters' dtype).
        format, rank: as in `factorjax.nn.from_linear`.
        **options: as there (the format's options, ``order``, ``rank_dropout``,
            ``rank_dropout_kind``), with ``rngs`` and ``deterministic`` for rank dropout.

    Returns:
        A `factorjax.nnx.FactorizedLinear`.

    Example:
        >>> import jax
        >>> dense = nnx.Linear(64, 32, rngs=nnx.Rngs(0))
        >>> layer = from_linear(dense, "lowrank", rank=8)
        >>> layer(jax.numpy.ones((4, 64))).shape
        (4, 32)
    """
    return _linear(layer, format=format, rank=rank, **options)[0]


def _dims(layer: Any, value: Any) -> tuple[int, ...]:
    d = len(layer.kernel_size)
    value = 1 if value is None else value
    return (value,) * d if isinstance(value, int) else tuple(value)


def _padding(layer: Any) -> Any:
    d = len(layer.kernel_size)
    padding = canonicalize_padding(layer.padding, d)
    if isinstance(padding, str):
        if padding.upper() == "CAUSAL":
            if d != 1:
                raise ValueError(f"padding='CAUSAL' is for 1-D convolutions; got {d} spatial dims.")
            (k,), (dil,) = layer.kernel_size, _dims(layer, layer.kernel_dilation)
            return ((dil * (k - 1), 0),)
        if padding.upper() in ("CIRCULAR", "REFLECT"):
            raise ValueError(
                f"a convolution with padding={padding!r} cannot be factorized: only zero "
                "padding ('SAME', 'VALID', 'CAUSAL', ints or pairs) is supported."
            )
        return padding
    return tuple(tuple(p) for p in padding)


def _check_conv(layer: Any) -> None:
    if not isinstance(layer, nnx.Conv):
        raise TypeError(f"`layer` must be an nnx.Conv; got {type(layer).__name__}.")
    if layer.feature_group_count != 1:
        raise ValueError(
            f"a grouped convolution (feature_group_count={layer.feature_group_count}) cannot "
            "be factorized: only feature_group_count=1 is supported."
        )
    if any(v != 1 for v in _dims(layer, layer.input_dilation)):
        raise ValueError(
            f"a convolution with input_dilation={layer.input_dilation} cannot be factorized: "
            "only input_dilation=1 is supported."
        )
    if layer.mask is not None:
        raise ValueError("a masked convolution (mask=...) cannot be factorized.")
    _padding(layer)


def _conv(layer: Any, **kwargs) -> tuple[ChannelsLastConv, LayerReport]:
    _check_conv(layer)
    kernel = layer.kernel[...]  # (*k, C_in, C_out)
    d = kernel.ndim - 2
    kernel = jnp.transpose(kernel, (d + 1, d, *range(d)))
    bias = None if layer.bias is None else layer.bias[...]
    eqx_layer, report = eqx_factorize.conv_from_arrays(
        kernel, bias, stride=_dims(layer, layer.strides), padding=_padding(layer),
        dilation=_dims(layer, layer.kernel_dilation), **kwargs,
    )  # fmt: skip
    new = ChannelsLastConv.from_weight(
        eqx_layer.weight, eqx_layer.bias, stride=eqx_layer.stride, padding=eqx_layer.padding,
        dilation=eqx_layer.dilation, order=eqx_layer.order,
    )  # fmt: skip
    return new, report


def from_conv(layer: Any, format: Any = "tucker", rank: Any = None, **options) -> ChannelsLastConv:
    """The factorized convolution of an ``nnx.Conv``: a `ChannelsLastConv` (a
    `factorjax.nnx.FactorizedConv` called channels last, as ``nnx.Conv``) whose kernel is the
    factorization of the NNX kernel ``(*k, C_in, C_out)``, read as ``(C_out, C_in, *k)``, with
    the same bias, strides, padding (``"CAUSAL"`` as explicit pads) and kernel dilation.

    Arguments:
        layer: an ``nnx.Conv`` with ``feature_group_count=1``, ``input_dilation=1``, no
            ``mask`` and zero padding (not ``"CIRCULAR"`` or ``"REFLECT"``).
        format, rank, **options: as in `factorjax.nn.from_conv`.

    Returns:
        A `ChannelsLastConv`: ``(*batch, *spatial, C_in)`` to ``(*batch, *out, C_out)``.

    Example:
        >>> import jax
        >>> dense = nnx.Conv(16, 32, (3, 3), rngs=nnx.Rngs(0))
        >>> from_conv(dense, "tucker", rank=8)(jax.numpy.ones((2, 8, 8, 16))).shape
        (2, 8, 8, 32)
    """
    return _conv(layer, format=format, rank=rank, **options)[0]


def _check_embedding(layer: Any) -> None:
    if not isinstance(layer, nnx.Embed):
        raise TypeError(f"`layer` must be an nnx.Embed; got {type(layer).__name__}.")


def _embedding(layer: Any, **kwargs) -> tuple[FactorizedEmbedding, LayerReport]:
    _check_embedding(layer)
    eqx_layer, report = eqx_factorize.embedding_from_arrays(layer.embedding[...], **kwargs)
    return FactorizedEmbedding.from_weight(eqx_layer.weight), report


def from_embedding(
    layer: Any, format: Any = "lowrank", rank: Any = None, **options
) -> FactorizedEmbedding:
    """The `factorjax.nnx.FactorizedEmbedding` whose table is the factorization of an
    ``nnx.Embed``'s ``(num_embeddings, features)`` table (same call: integer indices of any
    shape to ``(*shape, features)``; ``nnx.Embed.attend`` has no counterpart).

    Arguments:
        layer: an ``nnx.Embed``.
        format, rank, **options: as in `factorjax.nn.from_embedding`.

    Returns:
        A `factorjax.nnx.FactorizedEmbedding`.

    Example:
        >>> import jax
        >>> dense = nnx.Embed(1000, 64, rngs=nnx.Rngs(0))
        >>> from_embedding(dense, "lowrank", rank=16)(jax.numpy.array([1, 2])).shape
        (2, 64)
    """
    return _embedding(layer, format=format, rank=rank, **options)[0]


# --- a whole model --------------------------------------------------------------------------

_KINDS = (
    (nnx.Linear, _check_linear, _linear),
    (nnx.Conv, _check_conv, _conv),
    (nnx.Embed, _check_embedding, _embedding),
)


def _kind(layer: Any) -> Any:
    return next((k for k in _KINDS if isinstance(layer, k[0])), None)


def _is_candidate(layer: Any) -> bool:
    return _kind(layer) is not None


def _check(layer: Any) -> None:
    _kind(layer)[1](layer)


def _child(node: Any, key: Any) -> Any:
    if isinstance(node, list | tuple | dict | nnx.List | nnx.Dict) or isinstance(key, int):
        return node[key]
    return getattr(node, key)


def _assign(node: Any, parts: tuple, value: Any) -> Any:
    """``node`` with the entry at ``parts`` set to ``value``: modules, lists and dicts are
    changed in place, tuples rebuilt. Returns ``node`` (or its rebuilt tuple)."""
    key, rest = parts[0], parts[1:]
    child = _child(node, key)
    new = _assign(child, rest, value) if rest else value
    if new is child:
        return node
    if isinstance(node, tuple):
        return (*node[:key], new, *node[key + 1 :])
    if isinstance(node, list | dict | nnx.List | nnx.Dict) or isinstance(key, int):
        node[key] = new
    else:
        setattr(node, key, new)
    return node


def factorize(
    model: Any,
    where: Any = None,
    format: Any = None,
    rank: Any = None,
    *,
    config: Any = None,
    inplace: bool = False,
    **options,
) -> tuple[Any, Reports]:
    """Replace the selected layers of a Flax NNX model by factorized layers of the same call.

    ``nnx.Linear`` becomes `FactorizedLinear`, ``nnx.Conv`` a `ChannelsLastConv` (a
    `FactorizedConv` that takes and returns channels-last arrays, as ``nnx.Conv``) and
    ``nnx.Embed`` `FactorizedEmbedding`. Paths, ``where``, ``format``, ``rank``, ``config``,
    ``options`` and the reports are as in `factorjax.nn.factorize`: a layer's path is its
    dotted path of attribute names, ``nnx.List`` indices and ``nnx.Dict`` keys (``"layers.0"``,
    ``"blocks.1.mlp.fc"``), the string Equinox gives the same structure. A layer the model
    holds in several places (tied weights) is converted once and replaced everywhere.

    Arguments:
        model: an ``nnx.Module`` (a model, or one layer, whose path is ``""``).
        where, format, rank, config, **options: see `factorjax.nn.factorize` (``options``
            also take ``rngs`` and ``deterministic``, for linear layers with rank dropout).
        inplace: False (default): ``model`` is left as it was and the new model is a copy
            (``nnx.clone``: new variables, the unchanged arrays shared). True: ``model``
            itself is changed and returned (unless it is itself the one selected layer).

    Returns:
        ``(new_model, reports)``: the model with the selected layers replaced, and a `Reports`
        tuple of one `LayerReport` per replaced layer, in path order, whose ``str`` is a table.

    Example:
        >>> model = nnx.Sequential(nnx.Linear(784, 256, rngs=nnx.Rngs(0)), nnx.relu,
        ...                        nnx.Linear(256, 10, rngs=nnx.Rngs(1)))
        >>> small, reports = factorize(model, "layers.*", "lowrank", rank=0.25)
        >>> ", ".join(r.path for r in reports)
        'layers.0, layers.2'
    """
    if not isinstance(model, nnx.Module):
        raise TypeError(
            f"`model` must be an nnx.Module (use factorjax.nn.factorize for Equinox models); "
            f"got {type(model).__name__}."
        )
    if not inplace:
        model = nnx.clone(model)
    modules = [(_report.path_str(p), m) for p, m in nnx.iter_modules(model)]
    chosen = _report.select(modules, where, _is_candidate, _check, SUPPORTED)
    new, reports = {}, []
    for path, layer in chosen:
        kwargs = _report.settings(path, layer, format, rank, options, config)
        with _report.prefixed(path, layer):
            new[id(layer)], report = _kind(layer)[2](layer, **kwargs)
        reports.append(dataclasses.replace(report, path=path, layer=type(layer).__name__))
    if "" in {p for p, _ in chosen}:  # the model is the layer
        return new[id(model)], Reports(reports)
    # Replace every reference: a layer held twice is found again at its second path.
    while stale := [(p, m) for p, m in nnx.iter_modules(model) if id(m) in new]:
        for parts, layer in stale:
            model = _assign(model, parts, new[id(layer)])
    return model, Reports(reports)
