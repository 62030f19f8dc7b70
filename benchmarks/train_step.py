"""Time a few training steps of a model (bf16 autocast, AdamW, random tokens): LoRA r32 alpha128 on all linear
modules, or full fine-tuning of a selection. Prints the upper median of the steps after the warm-up ones.

    OMP_NUM_THREADS=1 python benchmarks/train_step.py ~/.cache/layerprobe/models/smollm2-135m --select "last:5%"
    OMP_NUM_THREADS=2 python benchmarks/train_step.py ~/.cache/layerprobe/models/smollm2-135m --lora --batch 4 --length 128 --steps 8 --warmup 2
Results: benchmarks/results/full_ft_step_smollm2.txt, threads_vs_processes.txt.
"""
import argparse
import time

import torch

from layerprobe.select import apply_requires_grad
from layerprobe.stages import load_model

ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
ap.add_argument("model")
ap.add_argument("--lora", action="store_true", help="a LoRA adapter on all linear modules instead of --select")
ap.add_argument("--select", default="all", help="full fine-tuning of this selection ('all' = every weight)")
ap.add_argument("--batch", type=int, default=8)
ap.add_argument("--length", type=int, default=64)
ap.add_argument("--steps", type=int, default=5)
ap.add_argument("--warmup", type=int, default=1, help="first steps left out of the median")
args = ap.parse_args()
torch.manual_seed(0)
m = load_model(args.model)
if args.lora:
    from peft import LoraConfig, get_peft_model

    m = get_peft_model(m, LoraConfig(r=32, lora_alpha=128, target_modules=[
        "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]))
elif args.select != "all":
    apply_requires_grad(m, args.select)
opt = torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=1e-5)
x = torch.randint(0, 40000, (args.batch, args.length))
ts = []
for _ in range(args.steps):
    t = time.time()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = m(input_ids=x, labels=x).loss
    loss.backward()
    opt.step()
    opt.zero_grad()
    ts.append(time.time() - t)
timed = sorted(ts[args.warmup:])
print("lora" if args.lora else args.select, f"upper median step {timed[len(timed) // 2]:.2f} s",
      [round(t, 2) for t in ts])
