"""Median full fine-tuning step of a model with only a selection trainable (bf16 autocast, AdamW, 8 x 64 tokens).

    OMP_NUM_THREADS=1 python benchmarks/full_ft_step.py ~/.cache/layerprobe/models/smollm2-135m "last:5%"
"""
import time, sys, torch
from layerprobe.stages import load_model
from layerprobe.select import apply_requires_grad
torch.manual_seed(0)
m = load_model(sys.argv[1])
sel = apply_requires_grad(m, sys.argv[2]) if sys.argv[2] != "all" else None
if sel is None:
    for p in m.parameters(): p.requires_grad_(True)
opt = torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=1e-5)
x = torch.randint(0, 40000, (8, 64))
ts = []
for i in range(5):
    t = time.time()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = m(input_ids=x, labels=x).loss
    loss.backward(); opt.step(); opt.zero_grad()
    ts.append(time.time() - t)
print(sys.argv[2], "median step", sorted(ts[1:])[2], [round(t,2) for t in ts])
