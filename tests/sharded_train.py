"""Helper for test_recorder_sharded.py: a few steps of a tiny Llama with the recorder, sharded when started by
torchrun (2 CPU processes, gloo), or as the single-process reference otherwise.

    python tests/sharded_train.py OUT MODE      MODE: trainer | trainer-lora | loop | loop-lora | zero2 | zero3 | zero2-lora
    torchrun --nproc_per_node 2 tests/sharded_train.py OUT MODE

trainer*: FSDP2 through the Trainer (the model sharded at load time by transformers). loop*: ``fully_shard`` in a
hand-written loop; every recorder call runs under CommDebugMode and the collectives it issued are written to
OUT/collectives-r<rank>.json with the bytes of this rank's reference files. zero*: DeepSpeed ZeRO through the
Trainer (the single-process reference is the plain Trainer).
"""

import json
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(__file__))
from conftest import make_tiny_llama

from layerprobe.record.recorder import Recorder
from layerprobe.record.recorder_callback import RecorderCallback

out, mode = sys.argv[1], sys.argv[2]
world = int(os.environ.get("WORLD_SIZE", "1"))
SCHED = dict(update_every=1, drift_every=2, weight_every=1)


def add_lora(model):
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(3)
    model = get_peft_model(
        model,
        LoraConfig(r=4, lora_alpha=16, lora_dropout=0.0, target_modules=["q_proj", "v_proj", "down_proj", "lm_head"]),
    )
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():  # B starts at zero; give the first step's effective update a value (same on every rank)
        for n, p in model.named_parameters():
            if "lora_" in n:
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    return model


def model_for(mode):
    model = make_tiny_llama()
    return add_lora(model) if mode.endswith("lora") else model


g = torch.Generator().manual_seed(1)
ids = torch.randint(0, 64, (4, 16), generator=g)

if mode.startswith("zero"):
    from transformers import Trainer, TrainingArguments

    data = [{"input_ids": r, "labels": r.clone()} for r in ids]
    ds = {
        "zero_optimization": {"stage": int(mode[4])},
        "train_micro_batch_size_per_gpu": "auto",
        "train_batch_size": "auto",
        "gradient_accumulation_steps": "auto",
        "gradient_clipping": "auto",
    }
    args = TrainingArguments(
        output_dir=os.path.join(out, "hf"),
        per_device_train_batch_size=4 // world,
        max_steps=3,
        learning_rate=5e-3,
        max_grad_norm=0.05,
        report_to=[],
        use_cpu=True,
        save_strategy="no",
        seed=0,
        lr_scheduler_type="constant",
        disable_tqdm=True,
        dataloader_drop_last=True,
        deepspeed=ds if world > 1 else None,
    )
    Trainer(
        model=model_for(mode), args=args, train_dataset=data, callbacks=[RecorderCallback(out, phase="cpt", **SCHED)]
    ).train()
elif mode.startswith("trainer"):
    from transformers import Trainer, TrainingArguments

    data = [{"input_ids": r, "labels": r.clone()} for r in ids]  # one step consumes all 4 rows
    model = model_for("")
    if world > 1:  # FSDP2 on CPU: accelerate shards on GPUs only, transformers shards at load time on any device
        from transformers import AutoModelForCausalLM
        from transformers.distributed import DistributedConfig

        torch.distributed.init_process_group("gloo")
        saved = os.path.join(out, "base")
        if torch.distributed.get_rank() == 0:
            model.save_pretrained(saved)
        torch.distributed.barrier()
        model = AutoModelForCausalLM.from_pretrained(
            saved, distributed_config=DistributedConfig(fsdp_size=world), dtype=torch.float32
        )
        assert type(model.model.layers[0].mlp.up_proj.weight).__name__ == "DTensor"
    if mode.endswith("lora"):
        model = add_lora(model)
    args = TrainingArguments(
        output_dir=os.path.join(out, "hf"),
        per_device_train_batch_size=4 // world,
        max_steps=3,
        learning_rate=5e-3,
        max_grad_norm=0.05,
        report_to=[],
        use_cpu=True,
        save_strategy="no",
        seed=0,
        lr_scheduler_type="constant",
        disable_tqdm=True,
        dataloader_drop_last=True,
    )
    Trainer(model=model, args=args, train_dataset=data, callbacks=[RecorderCallback(out, phase="cpt", **SCHED)]).train()
else:
    from torch.distributed.tensor.debug import CommDebugMode

    model = model_for(mode)
    rank = 0
    if world > 1:
        from torch.distributed.fsdp import fully_shard

        torch.distributed.init_process_group("gloo")
        rank = torch.distributed.get_rank()
        for layer in (model.base_model.model.model if mode.endswith("lora") else model.model).layers:
            fully_shard(layer)
        fully_shard(model)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=5e-3)
    rec = Recorder(model, out, phase="cpt", reference_store="disk", **SCHED)  # its files show what each rank keeps
    per_rank = ids.chunk(world)[rank]
    counts = []
    for step in range(1, 4):
        loss = model(input_ids=per_rank, labels=per_rank).loss
        loss.backward()
        with CommDebugMode() as comm:
            rec.before_step(max_grad_norm=0.05)
        opt.step()
        with CommDebugMode() as comm2:
            rec.after_step()
        opt.zero_grad()
        counts.append(
            {
                "step": step,
                "before": {str(k): v for k, v in comm.get_comm_counts().items()},
                "after": comm2.get_total_counts(),
            }
        )
    local = [d.param.to_local() if hasattr(d.param, "to_local") else d.param for d in rec.units.dense]
    sizes = {
        "reference": os.path.getsize(rec.drift.store.path),
        "update": os.path.getsize(rec.update.store.path),
        "local": sum(t.numel() * t.element_size() for t in local),
        "whole": sum(d.param.numel() * d.param.element_size() for d in rec.units.dense),
    }
    with open(os.path.join(out, f"sizes-r{rank}.json"), "w") as f:
        json.dump(sizes, f)
    with CommDebugMode() as comm:
        rec.close()
    counts.append({"step": "close", "before": {str(k): v for k, v in comm.get_comm_counts().items()}, "after": 0})
    with open(os.path.join(out, f"collectives-r{rank}.json"), "w") as f:
        json.dump(counts, f)
    if world > 1:
        torch.distributed.destroy_process_group()
