"""Expert parallelism: place a mixture-of-experts layer's expert axes across a device mesh.

Every MoE layer of `factorjax.moe` lists, through ``expert_axes()``, the expert axis of each of
its array leaves (None: the leaf is shared by all experts). `shard_experts` splits each such
leaf along that axis over one mesh axis, and replicates the others; a jitted forward or
gradient of the placed layer then runs expert-parallel (XLA inserts the collectives).

Example:
    >>> mesh = expert_mesh()                            # every device, axis "expert"
    >>> moe = shard_experts(SparseMoE(64, 64, 8, key=jax.random.key(0)), mesh)  # doctest: +SKIP
    >>> moe.experts.sharding.spec                       # doctest: +SKIP
    PartitionSpec('expert',)
"""

from typing import Any

import equinox as eqx
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from factorjax._checks import check_positive_int

__all__ = ["expert_mesh", "expert_shardings", "shard_experts"]


def expert_mesh(num_devices: Any = None, axis_name: Any = "expert") -> Mesh:
    """A 1-D mesh over the first ``num_devices`` of ``jax.devices()`` (all by default), its
    one axis named ``axis_name``, of Auto type (sharding propagated by the compiler)."""
    devices = jax.devices()
    n = len(devices) if num_devices is None else check_positive_int("num_devices", num_devices)
    if n > len(devices):
        raise ValueError(
            f"`num_devices` must be at most the {len(devices)} devices of jax.devices(); got {n}."
        )
    if not isinstance(axis_name, str) or not axis_name:
        raise TypeError(f"`axis_name` must be a non-empty str; got {axis_name!r}.")
    return Mesh(np.asarray(devices[:n]), (axis_name,), axis_types=(jax.sharding.AxisType.Auto,))


def expert_shardings(layer: Any, mesh: Any, axis_name: Any = "expert") -> Any:
    """The `NamedSharding` of each array leaf of ``layer`` under `shard_experts`: a pytree
    with the structure of ``eqx.filter(layer, eqx.is_array)`` (None where the layer has no
    array), usable as ``out_shardings`` or with ``jax.device_put``."""
    if not callable(getattr(layer, "expert_axes", None)):
        raise TypeError(
            f"`layer` must be a mixture-of-experts layer with an `expert_axes()` method; got "
            f"{type(layer).__name__}."
        )
    if not isinstance(mesh, Mesh):
        raise TypeError(f"`mesh` must be a jax.sharding.Mesh; got {type(mesh).__name__}.")
    if axis_name not in mesh.axis_names:
        raise ValueError(
            f"`axis_name` must be an axis of the mesh {tuple(mesh.axis_names)}; got {axis_name!r}."
        )
    size = mesh.shape[axis_name]
    arrays = eqx.filter(layer, eqx.is_array)
    leaves, treedef = jax.tree_util.tree_flatten_with_path(arrays)
    axes = list(layer.expert_axes())
    if len(axes) != len(leaves):
        raise ValueError(
            f"{type(layer).__name__}.expert_axes() has {len(axes)} entries for "
            f"{len(leaves)} array leaves."
        )
    shardings = []
    for (path, leaf), axis in zip(leaves, axes, strict=True):
        name = f"{type(layer).__name__}{jax.tree_util.keystr(path)}"
        if axis is None:
            shardings.append(NamedSharding(mesh, PartitionSpec()))
            continue
        if not -leaf.ndim <= axis < leaf.ndim:
            raise ValueError(f"expert axis {axis} of `{name}` is out of range for {leaf.shape}.")
        axis %= leaf.ndim
        if leaf.shape[axis] % size:
            raise ValueError(
                f"`{name}` has {leaf.shape[axis]} experts on axis {axis} (shape {leaf.shape}), "
                f"not divisible by the {size} devices of mesh axis {axis_name!r}."
            )
        shardings.append(NamedSharding(mesh, PartitionSpec(*(None,) * axis, axis_name)))
    return jax.tree.unflatten(treedef, shardings)


def shard_experts(layer: Any, mesh: Any, axis_name: Any = "expert") -> Any:
    """``layer`` with every leaf that has an expert axis split along it over the mesh axis
    ``axis_name`` (each device holds ``E / mesh size`` experts), the other leaves replicated.

    Arguments:
        layer: an Equinox MoE layer of `factorjax.moe` (anything with ``expert_axes()``).
        mesh: a `jax.sharding.Mesh` (see `expert_mesh`).
        axis_name: the mesh axis the experts are split over; its size must divide the
            number of experts.

    Returns:
        The same layer, its arrays placed with `jax.device_put`.
    """
    shardings = expert_shardings(layer, mesh, axis_name)
    arrays, static = eqx.partition(layer, eqx.is_array)
    return eqx.combine(jax.device_put(arrays, shardings), static)
