"""How the cost of mixture-of-experts layers grows with the number of experts.

Run from the repository root:

    python benchmarks/moe.py                  # 64 to 8192 experts (a few minutes on 2 cores)
    python benchmarks/moe.py --quick          # 64 and 512 experts: a smoke test
    python benchmarks/moe.py --json out.json  # also save the numbers

For each number of experts ``E`` it times the forward plus backward pass (``jax.jit`` of the
gradient of ``sum(g * y)`` with respect to every parameter, for a fixed random ``g``) on a batch
of ``B`` tokens of width ``d``, and reads the compiled program's memory (arguments + outputs +
temporaries, from XLA's ``memory_analysis``: the parameters and their gradients included) of:

- ``cp-mumoe`` and ``tr-mumoe``: `factorjax.moe.MultilinearMoE` in CP and tensor-ring form at a
  fixed rank, with the authors' entmax-1.5 gate (the expert weight tensor ``(E, d, d)`` is
  never built); ``cp-mumoe-softmax``: the CP layer with a softmax gate, to separate the cost
  of the gate's sort (``E log E`` per token) from that of the factors; ``cp-mumoe-h3`` and
  ``tr-mumoe-h3``: the hierarchical layers with three levels of gates, ``E = E_1 E_2 E_3``
  balanced (``balanced_modes(E, 3)``: 64 = 4 x 4 x 4, 8192 = 16 x 16 x 32), whose gates and
  expert factors cost ``E_1 + E_2 + E_3`` instead of ``E``;
- ``dense-soft``: a soft MoE that holds its ``E`` dense experts ``(E, d, d)`` and mixes them
  for every token (``y = sum_e a_e W_e x``, softmax gate): its cost is linear in ``E``;
- ``sparse-top2``: `factorjax.moe.SparseMoE`, dense experts, top-2 routing.

A flat layer (one level) pays ``d E`` for its gate and ``E R`` (CP) or ``E R^2`` (TR) for its
expert factor, linear in ``E`` like any router; a hierarchical one pays the same for
``E_1 + E_2 + E_3``. The ratio columns divide each layer's figure at the largest ``E`` by its
own at the smallest: the goal is that the multilinear layers stay within 1.5x from 64 to 8192
experts. Points a layer cannot hold in memory (dense experts over ``--max-dense-gb``) are
skipped and say so. float32 throughout; times are the best of interleaved rounds.
"""

import argparse
import json
import os
import sys

import equinox as eqx
import jax
import jax.numpy as jnp

sys.path.insert(0, os.path.dirname(__file__))
from _timing import OtherLoad, machine, time_rounds

EXPERTS = (64, 256, 1024, 4096, 8192)
GOAL = 1.5


class DenseSoftMoE(eqx.Module):
    """A soft mixture of ``E`` dense experts, ``y = sum_e softmax(x W_g)_e W_e x + b``: the
    expert tensor is held and every expert is applied to every token."""

    gate: jax.Array
    experts: jax.Array
    bias: jax.Array

    def __init__(self, d_in, d_out, num_experts, *, key):
        k_w = key
        self.gate = jnp.zeros((d_in, num_experts))
        self.experts = jax.random.normal(k_w, (num_experts, d_out, d_in)) / jnp.sqrt(d_in)
        self.bias = jnp.zeros((d_out,))

    def __call__(self, x):
        a = jax.nn.softmax(x @ self.gate, axis=-1)
        return jnp.einsum("be,eoi,bi->bo", a, self.experts, x) + self.bias


def make_layers(d, num_experts, cp_rank, tr_rank, key):
    from factorjax.factorizations import balanced_modes
    from factorjax.moe import MultilinearMoE, SparseMoE

    k = jax.random.split(key, 4)
    levels = balanced_modes(num_experts, 3)  # e.g. 8192 = 16 x 16 x 32
    return {
        "cp-mumoe": lambda: MultilinearMoE(d, d, num_experts, cp_rank, format="cp", key=k[0]),
        "tr-mumoe": lambda: MultilinearMoE(d, d, num_experts, tr_rank, format="tr", key=k[1]),
        "cp-mumoe-h3": lambda: MultilinearMoE(
            d, d, num_experts, cp_rank, format="cp", levels=levels, key=k[0]
        ),
        "tr-mumoe-h3": lambda: MultilinearMoE(
            d, d, num_experts, tr_rank, format="tr", levels=levels, key=k[1]
        ),
        "cp-mumoe-softmax": lambda: MultilinearMoE(
            d, d, num_experts, cp_rank, format="cp", gate="softmax", key=k[0]
        ),
        "dense-soft": lambda: DenseSoftMoE(d, d, num_experts, key=k[2]),
        "sparse-top2": lambda: SparseMoE(d, d, num_experts, top_k=2, key=k[3]),
    }


def dense_bytes(d, num_experts):
    return 4 * num_experts * d * d


def measure(layer, x, g, rounds):
    params, static = eqx.partition(layer, eqx.is_inexact_array)

    def loss(p):
        y = eqx.combine(p, static)(x)
        return jnp.sum(g * y)

    step = jax.jit(jax.grad(loss))
    compiled = step.lower(params).compile()
    mem = compiled.memory_analysis()
    peak = None
    if mem is not None:
        peak = mem.argument_size_in_bytes + mem.output_size_in_bytes + mem.temp_size_in_bytes
    jax.block_until_ready(step(params))  # warm up
    best, _ = time_rounds({"f": lambda: step(params)}, rounds, min_block_s=0.05)
    n = sum(a.size for a in jax.tree.leaves(params))
    return {"seconds": best["f"], "peak_bytes": peak, "params": int(n)}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="64 and 512 experts only")
    p.add_argument("--d", type=int, default=512, help="input and output width")
    p.add_argument("--batch", type=int, default=128, help="tokens per batch")
    p.add_argument("--cp-rank", type=int, default=512)
    p.add_argument("--tr-rank", type=int, default=16)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--max-dense-gb", type=float, default=1.1,
                   help="skip dense-expert layers whose expert tensor exceeds this")  # fmt: skip
    p.add_argument("--json", help="save the numbers here")
    args = p.parse_args(argv)
    experts = (64, 512) if args.quick else EXPERTS
    kx, kg, kl = jax.random.split(jax.random.key(0), 3)
    x = jax.random.normal(kx, (args.batch, args.d))
    g = jax.random.normal(kg, (args.batch, args.d))
    results: dict[str, dict[int, dict]] = {}
    with OtherLoad() as load:
        for e in experts:
            for name, make in make_layers(args.d, e, args.cp_rank, args.tr_rank, kl).items():
                dense_gb = dense_bytes(args.d, e) / 2**30
                if name in ("dense-soft", "sparse-top2") and dense_gb > args.max_dense_gb:
                    results.setdefault(name, {})[e] = {"skipped": f"{dense_gb:.1f} GiB experts"}
                    continue
                r = measure(make(), x, g, args.rounds)
                results.setdefault(name, {})[e] = r
                peak = "?" if r["peak_bytes"] is None else f"{r['peak_bytes'] / 2**20:.0f} MiB"
                print(f"E={e:5d} {name:<12} {1e3 * r['seconds']:9.2f} ms  {peak:>10}  "
                      f"{r['params']:>12,} params", flush=True)  # fmt: skip
    print()
    print(f"d = {args.d}, batch {args.batch}, CP rank {args.cp_rank}, TR rank {args.tr_rank}; "
          f"forward + backward; ratios to each layer's own E = {experts[0]}")  # fmt: skip
    head = ["layer"] + [f"E={e}" for e in experts] + [f"time x (E={experts[-1]})", "memory x"]
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    summary = {}
    for name, row in results.items():
        base = row[experts[0]]
        cells = []
        for e in experts:
            r = row[e]
            if "skipped" in r:
                cells.append(f"skipped ({r['skipped']})")
            else:
                mem = "" if r["peak_bytes"] is None else f" / {r['peak_bytes'] / 2**20:.0f} MiB"
                cells.append(f"{1e3 * r['seconds']:.1f} ms{mem}")
        last = row[experts[-1]]
        if "skipped" in last:
            t_ratio = m_ratio = "-"
        else:
            t_ratio = f"{last['seconds'] / base['seconds']:.2f}"
            m_ratio = (
                f"{last['peak_bytes'] / base['peak_bytes']:.2f}"
                if last["peak_bytes"] and base["peak_bytes"] else "?"
            )  # fmt: skip
        summary[name] = {"time_ratio": t_ratio, "memory_ratio": m_ratio}
        print("| " + " | ".join([name, *cells, t_ratio, m_ratio]) + " |")
    print(f"\nOther processes kept {load.cores:.2f} cores busy meanwhile." if load.cores is not None
          else "")  # fmt: skip
    for name in ("cp-mumoe", "tr-mumoe", "cp-mumoe-h3", "tr-mumoe-h3", "cp-mumoe-softmax"):
        s = summary.get(name)
        if s and s["time_ratio"] != "-":
            ok = float(s["time_ratio"]) <= GOAL and float(s["memory_ratio"]) <= GOAL
            print(f"goal (time and memory within {GOAL}x from E={experts[0]} to "
                  f"E={experts[-1]}), {name}: {'met' if ok else 'NOT met'} "
                  f"(time {s['time_ratio']}x, memory {s['memory_ratio']}x)")  # fmt: skip
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"machine": machine(), "args": vars(args), "results": results,
                       "summary": summary}, fh, indent=1)  # fmt: skip


if __name__ == "__main__":
    main()
