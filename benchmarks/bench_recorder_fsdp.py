"""Per-step overhead of the recorder under FSDP2 (fully_shard, 2 CPU processes, gloo) against plain FSDP2 training.

Run:  OMP_NUM_THREADS=1 torchrun --nproc_per_node 2 benchmarks/bench_recorder_fsdp.py [--steps 10]

A 6-layer, hidden-384 Llama-shaped model (vocab 8192), each layer and the root sharded with ``fully_shard``; batch
4 x 256 tokens per rank, AdamW, clipping at 1.0 (plain: ``torch.nn.utils.clip_grad_norm_`` on the DTensors; with the
recorder: ``Recorder.before_step(max_grad_norm=1.0)``). Variants run alternately, one step each per turn, so machine
noise hits all alike; medians of per-step wall time on rank 0, and the recorder's own time inside the step.
  plain: no recorder.   grad: gradient norms every step (update/drift/weight never).
  every: gradient norms, update ratio, drift and weight norm every step.
The default schedule (gradient norms every step, update/drift/weight every 25 steps) is amortised from these two:
grad + (every - grad) / 25, of the recorder's own time.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist
from torch.distributed.fsdp import fully_shard
from transformers import LlamaConfig, LlamaForCausalLM

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from layerprobe.record.recorder import Recorder

SPECS = {
    "plain": None,
    "grad": dict(grad_every=1, update_every="never", drift_every="never", weight_every="never"),
    "every": dict(grad_every=1, update_every=1, drift_every=1, weight_every=1),
}


def build(out: str, spec):
    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=8192,
        hidden_size=384,
        intermediate_size=1024,
        num_hidden_layers=6,
        num_attention_heads=6,
        num_key_value_heads=6,
        max_position_embeddings=256,
    )
    model = LlamaForCausalLM(cfg)
    for layer in model.model.layers:
        fully_shard(layer)
    fully_shard(model)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    rec = Recorder(model, out, phase="bench", **spec) if spec is not None else None
    return model, opt, rec


def step(model, opt, rec, batch, times, rec_times):
    dist.barrier()
    t0 = time.perf_counter()
    model(input_ids=batch, labels=batch).loss.backward()
    tr = time.perf_counter()
    if rec is not None:
        rec.before_step(max_grad_norm=1.0)
    else:
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    own = time.perf_counter() - tr
    opt.step()
    tr = time.perf_counter()
    if rec is not None:
        rec.after_step()
    own += time.perf_counter() - tr
    opt.zero_grad(set_to_none=True)
    dist.barrier()
    times.append(time.perf_counter() - t0)
    rec_times.append(own)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=10, help="measured steps per variant (after 1 warm-up step)")
    args = ap.parse_args()
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    batch = torch.randint(0, 8192, (4, 256), generator=torch.Generator().manual_seed(rank))
    with tempfile.TemporaryDirectory() as tmp:
        runs = {n: build(os.path.join(tmp, n), spec) + ([], []) for n, spec in SPECS.items()}
        for model, opt, rec, times, rec_times in runs.values():
            step(model, opt, rec, batch, times, rec_times)  # warm-up: optimizer state, snapshot files
            times.clear(), rec_times.clear()
        for _ in range(args.steps):
            for model, opt, rec, times, rec_times in runs.values():
                step(model, opt, rec, batch, times, rec_times)
        for model, opt, rec, *_ in runs.values():
            if rec is not None:
                rec.close()
    if rank == 0:
        model = runs["plain"][0]
        mb = sum(p.numel() * p.element_size() for p in model.parameters()) / 2**20
        plain = statistics.median(runs["plain"][3])
        print(
            f"torch {torch.__version__}, {world} processes (gloo, CPU), OMP_NUM_THREADS="
            f"{os.environ.get('OMP_NUM_THREADS')}, {os.cpu_count()} cores; model {mb:.0f} MB of fp32 weights "
            f"({mb / world:.0f} MB per rank); {args.steps} steps per variant, alternating"
        )
        print(f"{'variant':<9} {'median step s':>13} {'vs plain':>9} {'recorder s/step':>16} {'recorder/plain':>15}")
        for name, (*_, times, rec_times) in runs.items():
            med, own = statistics.median(times), statistics.median(rec_times)
            vs = f"{100 * (med / plain - 1):+.1f} %"
            share = f"{100 * own / plain:.2f} %" if name != "plain" else "(clip only)"
            print(f"{name:<9} {med:13.3f} {vs:>9} {own:16.4f} {share:>15}")
        g, e = statistics.median(runs["grad"][4]), statistics.median(runs["every"][4])
        print(
            f"amortised at the default schedule (grad every step, update+drift+weight every 25 steps): "
            f"{100 * (g + (e - g) / 25) / plain:.2f} % of a plain step (recorder's own time; plain FSDP2's own "
            f"clip_grad_norm_ is {100 * statistics.median(runs['plain'][4]) / plain:.2f} %)"
        )
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
