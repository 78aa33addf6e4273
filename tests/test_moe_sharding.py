"""Tests of expert-parallel sharding (`shard_experts`, `expert_mesh`).

The 8-device checks run in a subprocess (``tests/_scripts/moe_sharding_worker.py``) with
``--xla_force_host_platform_device_count=8``, so the device count never leaks into other
tests. The worker builds each layer of its ``LAYERS`` table with 8 experts, places it with
`shard_experts`, and runs one jitted program (forward and gradient) on the unsharded and on
the sharded layer; here we check that the results agree and where each leaf landed.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import equinox as eqx
import jax
import numpy as np
import pytest

from factorjax.moe._sharding import expert_mesh, expert_shardings, shard_experts
from factorjax.moe._sparse import SparseMoE

ROOT = Path(__file__).resolve().parents[1]
WORKER = ROOT / "tests" / "_scripts" / "moe_sharding_worker.py"
DEVICES = 8
TIMEOUT = 120  # seconds; a hung worker fails the test instead of blocking the suite
# One worker runs the whole file, so the 8-device subprocess starts once (--dist loadgroup).
pytestmark = pytest.mark.xdist_group("moe_sharding")

# names in the worker's LAYERS table
LAYERS = ["sparse_dense", "sparse_lowrank", "mumoe_cp", "mumoe_tr", "latent", "basis"]
EPS32 = float(np.finfo(np.float32).eps)
# The worker's sizes: d_in 8, top_k 2, 8 experts, 12 tokens. Sharding only reorders the
# float32 sums, so each result differs from the unsharded one by at most n eps |scale| with n
# the number of terms summed into it: d_in products per expert output, top_k experts and the
# E-way softmax of the router (forward), and those again summed over the tokens (gradient).
# The other layers' longest sums are no longer: multilinear d_in + 1 + E + R + d_in (gate
# logits) = 29, latent d_in + latent + top_k + E = 22, basis d_in + rank + bases + top_k + E = 24.
N_FORWARD = 32
N_GRAD = 12 * N_FORWARD


def _env(devices: int) -> dict:
    """The environment of a worker with ``devices`` CPU devices (set before it imports jax):
    any device-count flag already in XLA_FLAGS is replaced."""
    env = dict(os.environ)
    flags = [
        f
        for f in env.get("XLA_FLAGS", "").split()
        if not f.startswith("--xla_force_host_platform_device_count")
    ]
    env["XLA_FLAGS"] = " ".join([*flags, f"--xla_force_host_platform_device_count={devices}"])
    env["JAX_PLATFORMS"] = "cpu"
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [env.get("PYTHONPATH")])])
    return env


@pytest.fixture(scope="session")
def worker() -> dict:
    proc = subprocess.run(
        [sys.executable, str(WORKER), json.dumps({"layers": LAYERS})],
        env=_env(DEVICES),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.slow  # the 8-device subprocess
@pytest.mark.parametrize("name", LAYERS)
def test_sharded_equals_unsharded(worker, name):
    assert worker["devices"] == DEVICES
    r = worker["layers"][name]
    assert r["forward_diff"] <= N_FORWARD * EPS32 * r["forward_scale"], r
    assert r["aux_diff"] <= N_FORWARD * EPS32 * r["aux_scale"], r
    assert r["grad_diff"] <= N_GRAD * EPS32 * r["grad_scale"], r


@pytest.mark.slow  # the 8-device subprocess
@pytest.mark.parametrize("name", LAYERS)
def test_placement(worker, name):
    placement = worker["layers"][name]["placement"]
    assert any(p["axis"] is not None for p in placement)
    if name.startswith("sparse"):
        assert placement[0]["axis"] == 1  # the router (d_in, E)
        assert all(p["axis"] == 0 for p in placement[1:])  # experts and biases
    for p in placement:
        if p["axis"] is None:  # replicated: every device holds all of it
            assert all(s is None for s in p["spec"]) and p["shard_shapes_ok"], p
            continue
        assert p["spec"] == [None] * p["axis"] + ["expert"], p
        assert p["shape"][p["axis"]] == DEVICES  # 8 experts
        assert p["shard_shapes_ok"], p  # each device holds 1/8 along the expert axis
        assert p["devices"] == DEVICES, p


@pytest.mark.slow  # the 8-device subprocess
def test_indivisible_experts(worker):
    msg = worker["indivisible_error"]
    assert msg is not None
    assert "SparseMoE.router" in msg and "6 experts" in msg and "8 devices" in msg


def test_one_device_and_errors():
    layer = SparseMoE(4, 3, 3, key=jax.random.key(0))
    mesh = expert_mesh(1)
    assert mesh.axis_names == ("expert",)
    placed = shard_experts(layer, mesh)
    x = np.ones((2, 4), np.float32)
    np.testing.assert_array_equal(placed(x), layer(x))
    shardings = jax.tree.leaves(expert_shardings(layer, mesh))
    assert [tuple(s.spec) for s in shardings] == [(None, "expert"), ("expert",), ("expert",)]
    with pytest.raises(TypeError, match=r"`layer` must be a mixture-of-experts layer"):
        shard_experts(eqx.nn.Linear(2, 2, key=jax.random.key(0)), mesh)
    with pytest.raises(ValueError, match=r"`axis_name` must be an axis of the mesh"):
        shard_experts(layer, mesh, axis_name="data")
    with pytest.raises(TypeError, match=r"`mesh` must be a jax.sharding.Mesh"):
        shard_experts(layer, "mesh")
    with pytest.raises(ValueError, match=r"`num_devices` must be at most"):
        expert_mesh(len(jax.devices()) + 1)
