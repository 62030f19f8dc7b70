"""``layerprobe cpt|merge|sft|eval``: one stage of the pipeline in a run folder (the stages before it must be done).

The four commands are one table: each is ``layerprobe train`` limited to its stage (``run_stages(only=...)``).
"""

from __future__ import annotations

from types import SimpleNamespace

from layerprobe.commands.train import add_arguments, run_stages

STAGES = {
    "cpt": (
        "continued pretraining (LoRA or full) of the base model on raw text, into <out>/cpt",
        "layerprobe cpt --record --config experiments/study_a/config.yaml --out runs/demo",
    ),
    "merge": (
        "merge the CPT LoRA into the base model (checked against base + s*B*A), into <out>/merged",
        "layerprobe merge --out runs/demo   # after the stages before it; reuses runs/demo/config.yaml",
    ),
    "sft": (
        "supervised fine-tuning (new LoRA or full) of the CPT model, loss on answers only, into <out>/sft",
        "layerprobe sft --out runs/demo   # after the stages before it; reuses runs/demo/config.yaml",
    ),
    "eval": (
        "evaluate the base, CPT and SFT models of a run (cloze, QA, CPT-text loss, style, EOS; lm-evaluation-"
        "harness tasks with --eval.lm_eval_tasks) and write summary.json",
        "layerprobe eval --out runs/demo   # after the stages before it; reuses runs/demo/config.yaml\n"
        "  layerprobe eval --out runs/demo --overwrite --eval.lm_eval_include my_tasks/ --eval.lm_eval_tasks "
        "my_task --eval.lm_eval_limit 200",
    ),
}


def command(stage: str) -> SimpleNamespace:
    """The command module's interface (HELP, EXAMPLE, add_arguments, run) for one stage."""

    def run(args) -> int:
        return run_stages(args, only=stage)

    help_, example = STAGES[stage]
    return SimpleNamespace(HELP=help_, EXAMPLE=example, add_arguments=add_arguments, run=run)
