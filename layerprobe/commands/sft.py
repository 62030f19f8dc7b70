"""``layerprobe sft``: one stage of the pipeline, in a run folder (the stages before it must be done)."""

from __future__ import annotations

HELP = "supervised fine-tuning (new LoRA or full) of the CPT model, loss on answers only, into <out>/sft"
EXAMPLE = "layerprobe sft --out runs/demo   # after the stages before it; reuses runs/demo/config.yaml"


def add_arguments(parser) -> None:
    from layerprobe.commands.train import add_arguments as train_arguments

    train_arguments(parser)


def run(args) -> int:
    from layerprobe.commands.train import run_stages

    return run_stages(args, only="sft")
