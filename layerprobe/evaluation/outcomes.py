"""The outcomes of a run: what fine-tuning did, defined once from a summary's metrics (before = cpt, after = sft).

Sweeps (results.csv), relate (the outcomes it correlates with layer features) and reports all read them here.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

from layerprobe.evaluation.harness import is_harness_metric

# name -> (definition as text, function of a summary {model: {metric: value}})
OUTCOMES: dict[str, tuple[str, Callable[[dict], float]]] = {
    "retention_drop": ("cpt.cloze_acc - sft.cloze_acc", lambda s: s["cpt"]["cloze_acc"] - s["sft"]["cloze_acc"]),
    "qa_drop": ("cpt.qa_acc - sft.qa_acc", lambda s: s["cpt"]["qa_acc"] - s["sft"]["qa_acc"]),
    "loss_rise": (
        "sft.cpt_text_loss - cpt.cpt_text_loss",
        lambda s: s["sft"]["cpt_text_loss"] - s["cpt"]["cpt_text_loss"],
    ),
    "gozaru_rate": ("sft.gozaru_rate", lambda s: s["sft"]["gozaru_rate"]),
    "eos_rate": ("sft.eos_rate", lambda s: s["sft"]["eos_rate"]),
}


DROP = "drop"  # drop.KEY = cpt.KEY - sft.KEY of any metric: drop.mc_acc, drop.lm_eval/hellaswag/acc


def harness_drops(summary: dict) -> list[str]:
    """``drop.lm_eval/<task>/<metric>`` for each lm-evaluation-harness score the summary's CPT model has (not its
    stderr or document count): general forgetting as the field reports it."""
    return [f"{DROP}.{k}" for k in summary.get("cpt", {}) if is_harness_metric(k) and not k.endswith(("_stderr", "/n"))]


def is_dotted(name: str) -> bool:
    """``PHASE.KEY`` of a summary (sft.eos_rate)."""
    phase, _, key = name.partition(".")
    return bool(phase and key)


def read_outcomes(summary: dict, names: Sequence[str]) -> dict[str, float]:
    """The named outcomes (or ``PHASE.KEY`` values, or ``drop.KEY``) of one summary; NaN where a metric is missing
    or null."""
    out = {}
    for name in names:
        try:
            if name in OUTCOMES:
                out[name] = float(OUTCOMES[name][1](summary))
            elif name.startswith(DROP + "."):
                key = name[len(DROP) + 1 :]
                out[name] = float(summary["cpt"][key]) - float(summary["sft"][key])
            else:
                phase, key = name.split(".", 1)
                out[name] = float(summary[phase][key])
        except (KeyError, TypeError, ValueError):
            out[name] = math.nan
    return out
