"""Helper script for test_recorder_ddp.py: a few Trainer steps with the recorder (single process or torchrun)."""

import os
import sys

import torch

sys.path.insert(0, os.path.dirname(__file__))
from conftest import make_tiny_llama
from transformers import Trainer, TrainingArguments

from layerprobe.record.recorder_callback import RecorderCallback

out, per_device, use_cpu = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "1"
fsdp = dict(fsdp=True, fsdp_config={"version": 2}) if sys.argv[4:] == ["fsdp"] else {}  # accelerate: DDP on CPU
g = torch.Generator().manual_seed(1)
ids = torch.randint(0, 64, (4, 16), generator=g)
data = [{"input_ids": r, "labels": r.clone()} for r in ids]  # one step consumes all 4 rows, in any order
args = TrainingArguments(
    output_dir=os.path.join(out, "hf"),
    per_device_train_batch_size=per_device,
    max_steps=3,
    learning_rate=5e-3,
    max_grad_norm=0.05,
    report_to=[],
    use_cpu=use_cpu,
    save_strategy="no",
    seed=0,
    lr_scheduler_type="constant",
    disable_tqdm=True,
    dataloader_drop_last=True,
    **fsdp,
)
Trainer(
    model=make_tiny_llama(),
    args=args,
    train_dataset=data,
    callbacks=[RecorderCallback(out, phase="cpt", update_every=1, drift_every=1)],
).train()
if (
    torch.distributed.is_initialized()
):  # a clean teardown: without it gloo's threads can abort the exit ("terminate called")
    torch.distributed.destroy_process_group()
