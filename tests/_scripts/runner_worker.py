"""A worker for tests/test_runner.py, run as a subprocess: ``python runner_worker.py JSON``.

JSON holds ``mode`` (``"map_runs"`` or ``"sweep"``), ``result`` (a path: the worker writes its
findings there as JSON) and the mode's arguments:

- ``map_runs``: ``sizes``, the batch sizes to compare `map_runs` with the plain call on.
- ``sweep``: ``out_dir``, ``config`` (fields of `SensingSweepConfig`), ``x64`` (enable
  float64 first), ``distributed`` (optional: ``port``, ``num_processes``, ``process_id`` of a
  `jax.distributed` job on this machine with gloo CPU collectives) and ``checkpoint_delay``
  (optional: seconds to sleep after each checkpoint is saved, to widen the window in which a
  test can kill the sweep between two checkpoints; the results do not change).

The device count comes from ``XLA_FLAGS`` in the environment, set by the parent before this
interpreter imports jax. Every global jax setting is applied here, before anything is traced.
"""

import json
import os
import sys
import time
import traceback


def _map_runs(args: dict) -> dict:
    import jax
    import jax.numpy as jnp
    import numpy as np

    from factorjax.dynamics.parallel import map_runs

    def one(row):
        x, y = row["x"], row["y"]
        return {"sum": jnp.sum(x * y[0]), "pair": (jnp.sin(x) + y[1], x @ x), "y": y * 2.0}

    fn = jax.vmap(one)
    out = {"local_device_count": jax.local_device_count(), "cases": []}
    rng = np.random.default_rng(0)
    for size in args["sizes"]:
        batch = {
            "x": rng.standard_normal((size, 3)).astype(np.float32),
            "y": rng.standard_normal((size, 2)).astype(np.float32),
        }
        got = map_runs(fn, batch)
        want = jax.device_get(fn(batch))
        leaves_got, tree_got = jax.tree.flatten(got)
        leaves_want, tree_want = jax.tree.flatten(want)
        case = {
            "size": size,
            "same_tree": tree_got == tree_want,
            "shapes": [list(np.shape(a)) for a in leaves_got],
            "want_shapes": [list(np.shape(a)) for a in leaves_want],
            "numpy": all(isinstance(a, np.ndarray) for a in leaves_got),
        }
        if case["same_tree"] and case["shapes"] == case["want_shapes"]:
            case["max_abs_diff"] = max(
                float(np.max(np.abs(np.asarray(a) - np.asarray(b)), initial=0.0))
                for a, b in zip(leaves_got, leaves_want, strict=True)
            )
        out["cases"].append(case)

    # A run whose scan starts from constants (as `train` starts `diverged = False`) while its
    # body reads the sharded input: refused by shard_map's varying-axis check unless map_runs
    # turns it off.
    def from_constant(seed):
        return jax.lax.scan(lambda c, _: (c * 0.5 + seed, None), 0.0, None, length=3)[0]

    seeds = np.arange(5, dtype=np.float32)
    got = map_runs(jax.vmap(from_constant), seeds)
    want = np.asarray(jax.vmap(from_constant)(seeds))
    out["scan_from_constant_max_abs_diff"] = float(np.max(np.abs(got - want)))
    return out


def _sweep(args: dict) -> dict:
    import jax

    if args.get("x64"):
        jax.config.update("jax_enable_x64", True)
    dist = args.get("distributed")
    if dist:
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(
            coordinator_address=f"localhost:{dist['port']}",
            num_processes=dist["num_processes"],
            process_id=dist["process_id"],
            initialization_timeout=60,
        )
    from pathlib import Path

    import factorjax.experiments.sensing_sweep as ss
    from factorjax.dynamics import RunStore

    # Count what this process computes and writes.
    counts = {"map_runs": 0, "record": 0, "save_checkpoint": 0, "write_config": 0}
    map_runs = ss.map_runs

    def counting_map_runs(fn, batch, **kw):
        counts["map_runs"] += 1
        return map_runs(fn, batch, **kw)

    ss.map_runs = counting_map_runs
    for name in ("record", "save_checkpoint", "write_config"):
        method = getattr(RunStore, name)

        def counted(self, *a, _method=method, _name=name, **kw):
            counts[_name] += 1
            out = _method(self, *a, **kw)
            if _name == "save_checkpoint" and args.get("checkpoint_delay"):
                time.sleep(args["checkpoint_delay"])
            return out

        setattr(RunStore, name, counted)

    cfg = ss.SensingSweepConfig(
        **{k: tuple(v) if isinstance(v, list) else v for k, v in args["config"].items()}
    )
    records = ss.run_sensing_sweep("runner-test", cfg, Path(args["out_dir"]), quiet=True)
    out = {
        "process_index": jax.process_index(),
        "process_count": jax.process_count(),
        "local_device_count": jax.local_device_count(),
        "x64": bool(jax.config.jax_enable_x64),
        "run_ids": [r["run_id"] for r in records],
        "counts": counts,
    }
    if dist:
        jax.distributed.shutdown()
    return out


def main() -> None:
    args = json.loads(sys.argv[1])
    try:
        out = {"map_runs": _map_runs, "sweep": _sweep}[args["mode"]](args)
    except BaseException:
        # Exit at once: a failed process of a distributed job would otherwise wait in the
        # shutdown barrier for its partner, which itself waits for it in a collective.
        traceback.print_exc()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(1)
    with open(args["result"], "w") as f:
        json.dump(out, f)


if __name__ == "__main__":
    main()
