"""The recorder's cost on the real-model cell (SmolLM2-135M), by schedule: what the studies paid and what a sparser
schedule would.

    OMP_NUM_THREADS=1 python benchmarks/bench_recorder_cell.py ~/.cache/layerprobe/models/smollm2-135m --lora
    OMP_NUM_THREADS=1 python benchmarks/bench_recorder_cell.py ~/.cache/layerprobe/models/smollm2-135m --select mlp

One model, AdamW, bf16 autocast, random tokens; steps alternate between plain training (clip_grad_norm_) and the
recorder (gradient norm every step, update ratio and drift every 5 steps, weight norm never), so machine noise hits
both alike. The recorder's own time per step is split into a step without update/drift (the gradient norm, which
replaces the clip) and the extra of a step with them; the cost of a schedule "update and drift every N" is then
(grad + extra / N) / plain step. Results: benchmarks/results/recorder_cell.txt.
"""
import argparse
import statistics
import tempfile
import time

import torch

from layerprobe.recorder import Recorder
from layerprobe.select import apply_requires_grad
from layerprobe.stages import load_model

ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
ap.add_argument("model")
ap.add_argument("--lora", action="store_true", help="CPT's LoRA (r32, alpha 128, all linear), batch 4 x 128")
ap.add_argument("--select", default="mlp", help="else full fine-tuning of this selection, batch 8 x 64 (study B)")
ap.add_argument("--steps", type=int, default=10, help="recorded steps (and as many plain ones), after 1 warm-up each")
args = ap.parse_args()
torch.manual_seed(0)
m = load_model(args.model)
if args.lora:
    from peft import LoraConfig, get_peft_model

    m = get_peft_model(m, LoraConfig(r=32, lora_alpha=128, target_modules=[
        "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]))
    batch, length, what = 4, 128, "LoRA r32 all linear (CPT)"
else:
    apply_requires_grad(m, args.select)
    batch, length, what = 8, 64, f"full fine-tuning of {args.select!r} (study B's SFT)"
params = [p for p in m.parameters() if p.requires_grad]
opt = torch.optim.AdamW(params, lr=1e-6)
x = torch.randint(0, 40000, (batch, length))
plain, grad_only, with_change = [], [], []
with tempfile.TemporaryDirectory() as tmp:
    rec = Recorder(m, tmp, phase="bench", grad_every=1, update_every=5, drift_every=5, weight_every="never")
    for i in range(2 * (args.steps + 1)):
        recorded = i % 2 == 1
        t0 = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = m(input_ids=x, labels=x).loss
        loss.backward()
        t1 = time.perf_counter()
        if recorded:
            rec.before_step(max_grad_norm=1.0)
        else:
            torch.nn.utils.clip_grad_norm_(params, 1.0)
        t2 = time.perf_counter()
        opt.step()
        t3 = time.perf_counter()
        if recorded:
            due = rec.update.due(rec.step)
            rec.after_step()
        t4 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        if i < 2:
            continue  # warm-up
        if recorded:
            (with_change if due else grad_only).append((t2 - t1) + (t4 - t3))
        else:
            plain.append(t4 - t0)
    rec.close()
step = statistics.median(plain)
g = statistics.median(grad_only)
extra = statistics.median(with_change) - g
print(f"{what}: {sum(p.numel() for p in params) / 1e6:.1f} M trainable, batch {batch} x {length}, "
      f"torch threads {torch.get_num_threads()}")
print(f"plain step {step:.3f} s (median of {len(plain)}); recorder without update/drift {g:.4f} s "
      f"(median of {len(grad_only)}), extra of an update+drift step {extra:.3f} s (median of {len(with_change)})")
for n in (1, 5, 10, 25):
    print(f"update and drift every {n:>2} steps: {100 * (g + extra / n) / step:5.2f} % of a plain step")
