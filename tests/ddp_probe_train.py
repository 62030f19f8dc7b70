"""Helper script for test_probes_ddp.py: a few Trainer steps with probes every step (single process or torchrun)."""

import os
import sys

import torch

sys.path.insert(0, os.path.dirname(__file__))
from conftest import tiny_model_and_tokenizer
from test_probes_during import INSTRUCTIONS, PROBES, TEXTS
from transformers import Trainer, TrainingArguments

from layerprobe.train.probes import ProbeCallback

out, per_device = sys.argv[1], int(sys.argv[2])
model, tok = tiny_model_and_tokenizer(TEXTS)
g = torch.Generator().manual_seed(1)
ids = torch.randint(0, len(tok), (4, 16), generator=g)
data = [{"input_ids": r, "labels": r.clone()} for r in ids]  # one step consumes all 4 rows, in any order
args = TrainingArguments(
    output_dir=os.path.join(out, "hf"),
    per_device_train_batch_size=per_device,
    max_steps=3,
    learning_rate=5e-2,
    report_to=[],
    use_cpu=True,
    save_strategy="no",
    seed=0,
    lr_scheduler_type="constant",
    disable_tqdm=True,
    dataloader_drop_last=True,
)
Trainer(
    model=model.train(),
    args=args,
    train_dataset=data,
    callbacks=[
        ProbeCallback(out, PROBES, INSTRUCTIONS, tokenizer=tok, phase="sft", every=1, max_per_kind=0, flush_every_s=0.0)
    ],
).train()
if torch.distributed.is_initialized():
    torch.distributed.destroy_process_group()
