"""Time a few training steps of a model (bf16 autocast, AdamW, random tokens): LoRA r32 alpha128 on all linear
modules, or full fine-tuning of a selection. Prints the upper median of the steps after the warm-up ones.

    OMP_NUM_THREADS=1 python benchmarks/train_step.py ~/.cache/layerprobe/models/smollm2-135m --select "last:5%"
    OMP_NUM_THREADS=2 python benchmarks/train_step.py ~/.cache/layerprobe/models/smollm2-135m --lora --batch 4 --length 128 --steps 8 --warmup 2

--recorder: the recorder's cost by schedule. Steps alternate between plain training (clip_grad_norm_) and the
recorder (gradient norm every step, update ratio and drift every 5 steps), so machine noise hits both alike; the
recorder's own time is split into a step without update/drift (the gradient norm, which replaces the clip) and the
extra of a step with them, so "update and drift every N" costs (grad + extra / N) / plain step. The first such
step also creates the update snapshot's file (once per phase, like the drift reference the recorder writes when it
starts): it is reported on its own and left out of the median.

    OMP_NUM_THREADS=1 python benchmarks/train_step.py ~/.cache/layerprobe/models/smollm2-135m --lora --batch 4 --length 128 --recorder --steps 20
Results: benchmarks/results/full_ft_step_smollm2.txt, threads_vs_processes.txt, recorder_cell.txt.
"""

import argparse
import statistics
import tempfile
import time

import torch

from layerprobe.record.recorder import Recorder
from layerprobe.train.models import load_model
from layerprobe.train.select import apply_requires_grad

ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
ap.add_argument("model")
ap.add_argument("--lora", action="store_true", help="a LoRA adapter on all linear modules instead of --select")
ap.add_argument("--select", default="all", help="full fine-tuning of this selection ('all' = every weight)")
ap.add_argument("--batch", type=int, default=8)
ap.add_argument("--length", type=int, default=64)
ap.add_argument("--steps", type=int, default=5, help="timed steps (with --recorder: recorded ones, as many plain)")
ap.add_argument("--warmup", type=int, default=1, help="first steps left out of the median")
ap.add_argument("--recorder", action="store_true", help="time the recorder against plain steps (see above)")
args = ap.parse_args()
if args.recorder and (args.warmup + args.steps) // 5 - args.warmup // 5 < 2:
    ap.error(
        f"--recorder needs two update+drift steps (every 5th) after the warm-up, got --steps {args.steps} "
        f"with --warmup {args.warmup}: use --steps 10 or more"
    )
torch.manual_seed(0)
m = load_model(args.model)
if args.lora:
    from peft import LoraConfig, get_peft_model

    m = get_peft_model(
        m,
        LoraConfig(
            r=32,
            lora_alpha=128,
            target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        ),
    )
elif args.select != "all":
    apply_requires_grad(m, args.select)
params = [p for p in m.parameters() if p.requires_grad]
opt = torch.optim.AdamW(params, lr=1e-5)
x = torch.randint(0, 40000, (args.batch, args.length))
what = "lora" if args.lora else args.select


def forward_backward():
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = m(input_ids=x, labels=x).loss
    loss.backward()


if not args.recorder:
    ts = []
    for _ in range(args.steps):
        t = time.time()
        forward_backward()
        opt.step()
        opt.zero_grad()
        ts.append(time.time() - t)
    timed = sorted(ts[args.warmup :])
    print(what, f"upper median step {timed[len(timed) // 2]:.2f} s", [round(t, 2) for t in ts])
    raise SystemExit

plain, grad_only, with_change = [], [], []
with tempfile.TemporaryDirectory() as tmp:
    rec = Recorder(m, tmp, phase="bench", grad_every=1, update_every=5, drift_every=5, weight_every="never")
    for i in range(2 * (args.warmup + args.steps)):
        recorded = i % 2 == 1
        t0 = time.perf_counter()
        forward_backward()
        t1 = time.perf_counter()
        if recorded:
            rec.before_step(max_grad_norm=1.0)
        else:
            torch.nn.utils.clip_grad_norm_(params, 1.0)
        t2 = time.perf_counter()
        opt.step()
        t3 = time.perf_counter()
        due = recorded and rec.update.due(rec.step)
        if recorded:
            rec.after_step()
        t4 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        if i < 2 * args.warmup:
            continue
        if recorded:
            (with_change if due else grad_only).append((t2 - t1) + (t4 - t3))
        else:
            plain.append(t4 - t0)
    rec.close()
step, g = statistics.median(plain), statistics.median(grad_only)
first, extra = with_change[0] - g, statistics.median(with_change[1:]) - g
print(
    f"{what}: {sum(p.numel() for p in params) / 1e6:.1f} M trainable, batch {args.batch} x {args.length}, "
    f"torch threads {torch.get_num_threads()}"
)
print(
    f"plain step {step:.3f} s (median of {len(plain)}); recorder without update/drift {g:.4f} s "
    f"(median of {len(grad_only)}), extra of an update+drift step {extra:.3f} s (median of {len(with_change) - 1}; "
    f"the first, which creates the snapshot file: {first:.3f} s)"
)
for n in (1, 5, 10, 25):
    print(f"update and drift every {n:>2} steps: {100 * (g + extra / n) / step:5.2f} % of a plain step")
