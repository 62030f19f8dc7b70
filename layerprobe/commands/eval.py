"""``layerprobe eval``: one stage of the pipeline, in a run folder (the stages before it must be done)."""

from __future__ import annotations

HELP = "evaluate the base, CPT and SFT models of a run (cloze, QA, CPT-text loss, style, EOS) and write summary.json"
EXAMPLE = "layerprobe eval --out runs/demo   # after the stages before it; reuses runs/demo/config.yaml"


def add_arguments(parser) -> None:
    from layerprobe.commands.train import add_arguments as train_arguments

    train_arguments(parser)


def run(args) -> int:
    from layerprobe.commands.train import run_stages

    return run_stages(args, only="eval")
