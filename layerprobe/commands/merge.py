"""``layerprobe merge``: one stage of the pipeline, in a run folder (the stages before it must be done)."""

from __future__ import annotations

HELP = "merge the CPT LoRA into the base model (checked against base + s*B*A), into <out>/merged"
EXAMPLE = "layerprobe merge --out runs/demo   # after the stages before it; reuses runs/demo/config.yaml"


def add_arguments(parser) -> None:
    from layerprobe.commands.train import add_arguments as train_arguments

    train_arguments(parser)


def run(args) -> int:
    from layerprobe.commands.train import run_stages

    return run_stages(args, only="merge")
