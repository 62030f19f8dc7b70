"""``layerprobe cpt``: one stage of the pipeline, in a run folder (the stages before it must be done)."""

from __future__ import annotations

HELP = "continued pretraining (LoRA or full) of the base model on raw text, into <out>/cpt"
EXAMPLE = "layerprobe cpt --record --config experiments/study_a/config.yaml --out runs/demo"


def add_arguments(parser) -> None:
    from layerprobe.commands.train import add_arguments as train_arguments

    train_arguments(parser)


def run(args) -> int:
    from layerprobe.commands.train import run_stages

    return run_stages(args, only="cpt")
