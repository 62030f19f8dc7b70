"""Median LoRA training step of a model (r32 alpha128, all linear, bf16 autocast, 4 x 128 tokens); run it once with
OMP_NUM_THREADS=2 and twice at once with OMP_NUM_THREADS=1 to compare threads with processes.

    OMP_NUM_THREADS=2 python benchmarks/lora_step_threads.py ~/.cache/layerprobe/models/smollm2-135m two-threads
"""
import time, sys, torch
from layerprobe.stages import load_model
from peft import LoraConfig, get_peft_model
torch.manual_seed(0)
m = load_model(sys.argv[1])
m = get_peft_model(m, LoraConfig(r=32, lora_alpha=128, target_modules=["q_proj","k_proj","v_proj","o_proj","gate_proj","up_proj","down_proj"]))
opt = torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=1e-4)
x = torch.randint(0, 40000, (4, 128))
ts = []
for i in range(8):
    t = time.time()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = m(input_ids=x, labels=x).loss
    loss.backward(); opt.step(); opt.zero_grad()
    ts.append(time.time() - t)
print(sys.argv[2], "median step", sorted(ts[2:])[3])
