"""Expert-parallel check of the MoE layers, run by ``tests/test_moe_sharding.py`` in a
subprocess with several CPU devices (``--xla_force_host_platform_device_count``), so that the
device count never leaks into other tests.

Usage: ``python moe_sharding_worker.py '{"layers": ["sparse_dense", ...]}'``; prints one JSON
object: for each layer name, the largest differences between the sharded and the unsharded
jitted forward and gradient (and their scales), and the placement of every leaf. Add a layer
by adding a constructor to `LAYERS` (``key -> layer``, with ``num_experts`` a multiple of the
device count) and its name to the test's list.
"""

import json
import sys

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from factorjax.moe._basis import BasisMoE
from factorjax.moe._latent import LatentMoE
from factorjax.moe._multilinear import MultilinearMoE
from factorjax.moe._sharding import expert_mesh, shard_experts
from factorjax.moe._sparse import SparseMoE

D_IN, D_OUT, EXPERTS, TOKENS = 8, 8, 8, 12

LAYERS = {
    # no capacity, T * k > E: every expert on the whole batch
    "sparse_dense": lambda key: SparseMoE(D_IN, D_OUT, EXPERTS, top_k=2, key=key),
    # capacity dispatch through the (E, C, d_in) buffer, factorized experts
    "sparse_lowrank": lambda key: SparseMoE(
        D_IN,
        D_OUT,
        EXPERTS,
        top_k=2,
        expert_format="lowrank",
        expert_rank=2,
        capacity_factor=1.5,
        key=key,
    ),
    # factorized experts: the expert factor (CP) or the expert core (tensor ring) is sharded
    "mumoe_cp": lambda key: MultilinearMoE(D_IN, D_OUT, EXPERTS, 4, format="cp", key=key),
    "mumoe_tr": lambda key: MultilinearMoE(D_IN, D_OUT, EXPERTS, 3, format="tr", key=key),
    "latent": lambda key: LatentMoE(D_IN, D_OUT, EXPERTS, 4, top_k=2, key=key),
    "basis": lambda key: BasisMoE(D_IN, D_OUT, EXPERTS, 2, rank=4, top_k=2, key=key),
}
NO_AUX = {"mumoe_cp", "mumoe_tr"}  # soft mixtures: no auxiliary loss


def _randomize(layer, key):
    """Random values in every leaf (the bias is zeros and the router small at init)."""
    arrays, static = eqx.partition(layer, eqx.is_array)
    leaves, treedef = jax.tree.flatten(arrays)
    keys = jax.random.split(key, len(leaves))
    leaves = [jax.random.normal(k, x.shape, x.dtype) for k, x in zip(keys, leaves, strict=True)]
    return eqx.combine(jax.tree.unflatten(treedef, leaves), static)


def _build(name, key):
    key_layer, key_vals, key_x = jax.random.split(key, 3)
    layer = _randomize(LAYERS[name](key_layer), key_vals)
    return layer, jax.random.normal(key_x, (TOKENS, D_IN))


def _placement(layer, n):
    """Each leaf's spec, and whether each device holds 1/n of it along its expert axis."""
    arrays = jax.tree.leaves(eqx.filter(layer, eqx.is_array))
    out = []
    for leaf, axis in zip(arrays, layer.expert_axes(), strict=True):
        expected = list(leaf.shape)
        if axis is not None:
            expected[axis] //= n
        shards = leaf.addressable_shards
        out.append(
            {
                "axis": axis,
                "shape": list(leaf.shape),
                "spec": [None if s is None else str(s) for s in leaf.sharding.spec],
                "shard_shapes_ok": all(list(s.data.shape) == expected for s in shards),
                "devices": len({s.device for s in shards}),
            }
        )
    return out


def _max_diff(a, b):
    pairs = zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)
    return max(float(np.max(np.abs(np.asarray(x) - np.asarray(y)))) for x, y in pairs)


def _scale(a):
    return max(float(np.max(np.abs(np.asarray(x)))) for x in jax.tree.leaves(a))


def check(name, mesh):
    # built in one compiled program (eager construction compiles every small op)
    layer, x = eqx.filter_jit(_build)(name, jax.random.key(0))

    @eqx.filter_jit
    def forward_and_grad(m, x):
        """The forward ``(y, aux)`` and the gradient of a loss on it, in one program."""

        def loss(m):
            if name in NO_AUX:
                y, aux = m(x), {"none": jnp.zeros(())}
                return jnp.mean(y**2), (y, aux)
            y, aux = m(x, return_aux=True)
            return jnp.mean(y**2) + 0.1 * aux["load_balancing"], (y, aux)

        (_, out), g = eqx.filter_value_and_grad(loss, has_aux=True)(m)
        return out, g

    (y0, aux0), g0 = forward_and_grad(layer, x)
    sharded = shard_experts(layer, mesh)
    (y1, aux1), g1 = forward_and_grad(sharded, x)
    return {
        "forward_diff": _max_diff(y0, y1),
        "forward_scale": _scale(y0),
        "aux_diff": _max_diff(aux0, aux1),
        "aux_scale": _scale(aux0),
        "grad_diff": _max_diff(g0, g1),
        "grad_scale": _scale(g0),
        "placement": _placement(sharded, mesh.shape["expert"]),
    }


def main():
    args = json.loads(sys.argv[1])
    mesh = expert_mesh()
    out = {"devices": len(jax.devices()), "layers": {}}
    for name in args["layers"]:
        out["layers"][name] = check(name, mesh)
    # experts not divisible by the mesh: a clear error
    try:
        six = eqx.filter_jit(lambda k: SparseMoE(D_IN, D_OUT, 6, key=k))(jax.random.key(0))
        shard_experts(six, mesh)
        out["indivisible_error"] = None
    except ValueError as e:
        out["indivisible_error"] = str(e)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
