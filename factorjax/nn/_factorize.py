"""Factorizing an Equinox model you already have: `from_linear`, `from_conv`, `from_embedding`
convert one layer, `factorize` walks a whole model and converts the layers you select."""

import dataclasses
import math
from typing import Any

import equinox as eqx
import jax

from factorjax.factorizations._conv_kernel import conv_plan, to_kernel
from factorjax.factorizations._registry import operator_from_dense
from factorjax.nn import _report
from factorjax.nn._conv import FactorizedConv
from factorjax.nn._embedding import FactorizedEmbedding
from factorjax.nn._linear import FactorizedLinear
from factorjax.nn._report import LayerReport, Reports, format_table

__all__ = [
    "LayerReport",
    "Reports",
    "factorize",
    "format_table",
    "from_conv",
    "from_embedding",
    "from_linear",
]

SUPPORTED = "eqx.nn.Linear, eqx.nn.Conv (Conv1d/2d/3d, groups=1) and eqx.nn.Embedding"
# Options of the FactorizedLinear layer itself (the others go to the format).
_LINEAR_LAYER_OPTIONS = ("order", "rank_dropout", "rank_dropout_kind", "inference")


def _format_options(options: dict) -> dict:
    """The format's options of a layer constructor's ``**options``: ``tensor_order`` (the
    number of modes of a tensorized format) is the format's ``order``."""
    options = dict(options)
    if "tensor_order" in options:
        options["order"] = options.pop("tensor_order")
    return options


# --- from dense arrays (shared with factorjax.nnx) -----------------------------------------


def _array_count(*arrays: Any) -> int:
    return _report.count([a for a in arrays if a is not None])


def linear_from_arrays(
    w: Any, bias: Any, format: Any = "lowrank", rank: Any = None, **options
) -> tuple[FactorizedLinear, LayerReport]:
    """The `FactorizedLinear` of a dense weight ``w (d_out, d_in)`` and bias, and its report
    (``path`` and ``layer`` left empty for the caller)."""
    layer_kw = {k: options.pop(k) for k in _LINEAR_LAYER_OPTIONS if k in options}
    weight = operator_from_dense(format, w, rank, **_format_options(options))
    new = FactorizedLinear.from_weight(weight, bias, **layer_kw)
    return new, LayerReport(
        path="", layer="", format=new.format, rank=_report.rank_of(weight),
        params_before=_array_count(w, bias), params_after=_params(new),
        error=_report.relative_error(w, weight.to_matrix()),
        flops_before=2 * math.prod(w.shape), flops_after=int(weight.plan(1).flops),
    )  # fmt: skip


# FLOPs per output position of a convolution: planned for an input whose output has this
# many positions along every spatial dimension (unpadded), divided by their number, so that
# the factorized orders' fixed costs (rebuilding the kernel) are shared as in a real input.
CONV_POSITIONS = 32


def conv_from_arrays(
    kernel: Any, bias: Any, format: Any = "tucker", rank: Any = None, **options
) -> tuple[FactorizedConv, LayerReport]:
    """The `FactorizedConv` of a dense kernel ``(C_out, C_in, *k)`` and bias (``stride``,
    ``padding``, ``dilation`` among ``options``), and its report."""
    new = FactorizedConv.from_dense(kernel, bias, format, rank, **options)
    d, n = new.num_spatial_dims, CONV_POSITIONS
    sizes = [
        s * (n - 1) + dl * (k - 1) + 1
        for s, dl, k in zip(new.stride, new.dilation, new.kernel_size, strict=True)
    ]
    plan = conv_plan(new.weight, (new.in_channels, *sizes), new.stride, ((0, 0),) * d,
                     new.dilation, new.order)  # fmt: skip
    return new, LayerReport(
        path="", layer="", format=new.format, rank=_report.rank_of(new.weight),
        params_before=_array_count(kernel, bias), params_after=_params(new),
        error=_report.relative_error(kernel, to_kernel(new.weight)),
        flops_before=2 * math.prod(kernel.shape), flops_after=round(plan.flops / n**d),
    )  # fmt: skip


def embedding_from_arrays(
    table: Any, format: Any = "lowrank", rank: Any = None, **options
) -> tuple[FactorizedEmbedding, LayerReport]:
    """The `FactorizedEmbedding` of a dense table ``(num_embeddings, embedding_size)``, and
    its report."""
    new = FactorizedEmbedding.from_dense(table, format, rank, **options)
    return new, LayerReport(
        path="", layer="", format=new.format, rank=_report.rank_of(new.weight),
        params_before=_array_count(table), params_after=_params(new),
        error=_report.relative_error(table, new.weight.to_matrix()),
        flops_before=0, flops_after=_report.lookup_flops(new.weight),
    )  # fmt: skip


# --- one Equinox layer ----------------------------------------------------------------------


def _check_linear(layer: Any) -> None:
    if not isinstance(layer, eqx.nn.Linear):
        raise TypeError(f"`layer` must be an eqx.nn.Linear; got {type(layer).__name__}.")
    for name in ("in_features", "out_features"):
        if getattr(layer, name) == "scalar":
            raise ValueError(
                f"an eqx.nn.Linear with {name}='scalar' has no matrix to factorize (its weight "
                f"is {tuple(layer.weight.shape)}); factorize layers with int in_features and "
                "out_features."
            )


def _linear(layer: Any, **kwargs) -> tuple[FactorizedLinear, LayerReport]:
    _check_linear(layer)
    return linear_from_arrays(layer.weight, layer.bias, **kwargs)


def from_linear(
    layer: Any, format: Any = "lowrank", rank: Any = None, **options
) -> FactorizedLinear:
    """The `FactorizedLinear` whose weight is the factorization of an ``eqx.nn.Linear``'s
    weight (same bias, same call: ``(in_features,)`` to ``(out_features,)``).

    Arguments:
        layer: an ``eqx.nn.Linear`` with int ``in_features`` and ``out_features`` (not
            ``"scalar"``).
        format: one of `factorjax.factorizations.FORMATS` (``"lowrank"``, ``"tt"``, ...).
        rank: an int, a tuple, a fraction in ``(0, 1]`` of the dense parameter count,
            ``"same"``, or None (the format's exact default: full rank for ``"lowrank"``,
            the exact TT-matrix for ``"tt"``; ``"cp"`` needs a rank).
        **options: the format's options (``depth``; ``out_modes``, ``in_modes``,
            ``tensor_order``; ``shapes``) and the layer's (``order``, ``rank_dropout``,
            ``rank_dropout_kind``, ``inference``), as in `FactorizedLinear`.

    Returns:
        A `FactorizedLinear` (the decomposition is the format's ``from_dense``: truncated
        SVD, TT-SVD, CP-ALS, ...).

    Example:
        >>> dense = eqx.nn.Linear(64, 32, key=jax.random.key(0))
        >>> layer = from_linear(dense, "lowrank", rank=8)
        >>> layer.weight.rank, layer(jax.numpy.ones(64)).shape
        (8, (32,))
    """
    return _linear(layer, format=format, rank=rank, **options)[0]


def _check_conv(layer: Any) -> None:
    if not isinstance(layer, eqx.nn.Conv):
        raise TypeError(
            f"`layer` must be an eqx.nn.Conv (Conv1d, Conv2d, Conv3d); got {type(layer).__name__}."
        )
    if layer.groups != 1:
        raise ValueError(
            f"a grouped convolution (groups={layer.groups}) cannot be factorized: only groups=1 "
            "is supported."
        )
    if layer.padding_mode != "ZEROS":
        raise ValueError(
            f"a convolution with padding_mode={layer.padding_mode!r} cannot be factorized: "
            "only padding_mode='ZEROS' is supported."
        )


def _conv(layer: Any, **kwargs) -> tuple[FactorizedConv, LayerReport]:
    _check_conv(layer)
    bias = None if layer.bias is None else layer.bias.reshape(-1)
    return conv_from_arrays(
        layer.weight, bias, stride=layer.stride, padding=layer.padding,
        dilation=layer.dilation, **kwargs,
    )  # fmt: skip


def from_conv(layer: Any, format: Any = "tucker", rank: Any = None, **options) -> FactorizedConv:
    """The `FactorizedConv` whose kernel is the factorization of an ``eqx.nn.Conv``'s kernel
    ``(C_out, C_in, *kernel_size)``, with its bias, stride, padding and dilation (same call:
    channel-first ``(C_in, *spatial)`` to ``(C_out, *spatial')``).

    Arguments:
        layer: an ``eqx.nn.Conv`` (or ``Conv1d``/``Conv2d``/``Conv3d``) with ``groups=1`` and
            ``padding_mode="ZEROS"``.
        format: ``"tucker"`` (ST-HOSVD; with an int rank, Tucker-2 over the channels, Kim et
            al. 2016), ``"cp"`` (CP-ALS, Lebedev et al. 2015; needs a rank) or ``"tt"`` (TT-SVD
            over the modes ``(C_out, k_1, ..., k_d, C_in)``).
        rank: as in `FactorizedConv` (an int, a tuple, a fraction of the kernel's parameter
            count, ``"same"``), or None: exact (``"tucker"``, ``"tt"``).
        **options: passed on to `FactorizedConv.from_dense`: ``order`` (the contraction
            order) and the decomposition's options (``n_iter``, ``tol``, ``key``, ``rtol``).

    Returns:
        A `FactorizedConv`.

    Example:
        >>> dense = eqx.nn.Conv2d(16, 32, 3, padding=1, key=jax.random.key(0))
        >>> from_conv(dense, "tucker", rank=8)(jax.numpy.ones((16, 8, 8))).shape
        (32, 8, 8)
    """
    return _conv(layer, format=format, rank=rank, **options)[0]


def _check_embedding(layer: Any) -> None:
    if not isinstance(layer, eqx.nn.Embedding):
        raise TypeError(f"`layer` must be an eqx.nn.Embedding; got {type(layer).__name__}.")


def _embedding(layer: Any, **kwargs) -> tuple[FactorizedEmbedding, LayerReport]:
    _check_embedding(layer)
    return embedding_from_arrays(layer.weight, **kwargs)


def from_embedding(
    layer: Any, format: Any = "lowrank", rank: Any = None, **options
) -> FactorizedEmbedding:
    """The `FactorizedEmbedding` whose table is the factorization of an
    ``eqx.nn.Embedding``'s ``(num_embeddings, embedding_size)`` table (same call: an int index
    to its row).

    Arguments:
        layer: an ``eqx.nn.Embedding``.
        format, rank: as in `from_linear`, applied to the table (rows ``num_embeddings``,
            columns ``embedding_size``).
        **options: the format's options, passed on to `FactorizedEmbedding.from_dense`.

    Returns:
        A `FactorizedEmbedding`.

    Example:
        >>> dense = eqx.nn.Embedding(1000, 64, key=jax.random.key(0))
        >>> from_embedding(dense, "lowrank", rank=16)(jax.numpy.asarray(3)).shape
        (64,)
    """
    return _embedding(layer, format=format, rank=rank, **options)[0]


# --- a whole model --------------------------------------------------------------------------

_CONVERT = ((eqx.nn.Linear, _linear), (eqx.nn.Conv, _conv), (eqx.nn.Embedding, _embedding))
_CHECK = {
    eqx.nn.Linear: _check_linear,
    eqx.nn.Conv: _check_conv,
    eqx.nn.Embedding: _check_embedding,
}


def _kind(layer: Any) -> Any:
    for cls, _ in _CONVERT:
        if isinstance(layer, cls):
            return cls
    return None


def _is_candidate(x: Any) -> bool:
    return _kind(x) is not None


def _check(layer: Any) -> None:
    _CHECK[_kind(layer)](layer)


def _convert(layer: Any, **kwargs) -> tuple[Any, LayerReport]:
    return dict(_CONVERT)[_kind(layer)](layer, **kwargs)


def _params(layer: Any) -> int:
    return _report.count(jax.tree.leaves(eqx.filter(layer, eqx.is_array)))


def _key(k: Any) -> Any:
    for attr in ("name", "idx", "key"):
        if hasattr(k, attr):
            return getattr(k, attr)
    return str(k)


def _modules(tree: Any, prefix: tuple = ()) -> list[tuple[str, Any]]:
    """Every ``eqx.Module`` in ``tree`` (the root first), with its dotted path."""
    out = [(_report.path_str(prefix), tree)] if isinstance(tree, eqx.Module) else []
    flat, _ = jax.tree_util.tree_flatten_with_path(
        tree, is_leaf=lambda x: x is not tree and isinstance(x, eqx.Module)
    )
    for kp, leaf in flat:
        if isinstance(leaf, eqx.Module):
            out += _modules(leaf, prefix + tuple(_key(k) for k in kp))
    return out


def factorize(
    model: Any,
    where: Any = None,
    format: Any = None,
    rank: Any = None,
    *,
    config: Any = None,
    **options,
) -> tuple[Any, Reports]:
    """Replace the selected layers of an Equinox model by factorized layers of the same call.

    ``eqx.nn.Linear`` becomes `FactorizedLinear`, ``eqx.nn.Conv`` `FactorizedConv` and
    ``eqx.nn.Embedding`` `FactorizedEmbedding`, each holding the decomposition of the dense
    weight (see `from_linear`, `from_conv`, `from_embedding`); everything else is kept. The
    model's call is unchanged, and with an exact factorization (``rank=None``, the default)
    so are its outputs, up to float rounding.

    Layers are named by their dotted path from the model: attribute names, sequence indices
    and dict keys (``"layers.0"`` in an ``eqx.nn.MLP`` or ``eqx.nn.Sequential``,
    ``"blocks.1.mlp.fc"``, ``"heads.cls"``), the same strings as `factorjax.nnx.factorize`
    gives the same structure in Flax NNX.

    Arguments:
        model: any pytree holding Equinox layers (a module, a list, a dict; or one layer,
            whose path is ``""``).
        where: which layers: None (every Linear, Conv and Embedding that can be converted;
            grouped convolutions are left dense), a glob on the paths (``"layers.*"``,
            ``"*.attn.*"``; ``*`` also crosses dots), or a predicate ``(path, layer) -> bool``
            asked about each Linear, Conv and Embedding. A path without wildcards that names a
            layer of another type, or a selected layer that cannot be converted, is an error.
        format: the format of every selected layer, or None: each kind's default,
            ``"lowrank"`` for Linear and Embedding, ``"tucker"`` for Conv (``"tt"``, ``"cp"`` and
            ``"tucker"`` suit all three; ``"lowrank"``, ``"deep_lowrank"``, ``"tensor_ring"`` and
            ``"kronecker"`` only the matrices).
        rank: the rank of every selected layer, as in `from_linear` and `from_conv` (a
            fraction such as ``rank=0.25`` keeps at most a quarter of each layer's parameters);
            None (the default): exact where the format allows.
        config: None, or ``config(path, layer) -> dict`` giving settings per layer that
            override ``format``, ``rank`` and ``options`` (e.g. ``{"rank": 0.5}`` for one
            layer, ``{"format": "tt", "rank": 8}`` for another); None keeps them.
        **options: the format's and layer's options, as in `from_linear`, for every layer.

    Returns:
        ``(new_model, reports)``: the model with the selected layers replaced (the input is not
        changed), and a `Reports` tuple of one `LayerReport` per replaced layer, in path order,
        whose ``str`` is a table.

    Raises:
        ValueError: ``where`` selects no layer (the message lists the paths it could select);
            a rank that cannot be met or a feature size that does not tensorize as asked (the
            format's message, after the layer's path).
        TypeError: ``where`` names a layer of a type that cannot be converted.

    Example:
        >>> mlp = eqx.nn.MLP(784, 10, 256, depth=2, key=jax.random.key(0))
        >>> small, reports = factorize(mlp, "layers.*", "lowrank", rank=0.25)
        >>> print(reports)                                  # doctest: +SKIP
        path      layer   format   rank   params   after     x  rel. error    FLOPs    after
        layers.0  Linear  lowrank  48    200,960  50,176  4.01   7.996e-01  401,408   99,840
        layers.1  Linear  lowrank  32     65,792  16,640  3.95   7.898e-01  131,072   32,768
        layers.2  Linear  lowrank  2       2,570     542  4.74   8.567e-01    5,120    1,064
        total                            269,322  67,358  4.00              537,600  133,672
    """
    modules = _modules(model)
    chosen = _report.select(modules, where, _is_candidate, _check, SUPPORTED)
    new, reports = {}, []
    for path, layer in chosen:
        kwargs = _report.settings(path, layer, format, rank, options, config)
        with _report.prefixed(path, layer):
            new[path], report = _convert(layer, **kwargs)
        reports.append(dataclasses.replace(report, path=path, layer=type(layer).__name__))

    def swap(kp: Any, x: Any) -> Any:
        return new.get(_report.path_str([_key(k) for k in kp]), x) if _is_candidate(x) else x

    return jax.tree_util.tree_map_with_path(swap, model, is_leaf=_is_candidate), Reports(reports)
