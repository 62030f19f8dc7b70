"""What :mod:`layerprobe.analyse.relate` computes and reads: its constants, :class:`RelateConfig` and the result's
columns (the method is described in :mod:`layerprobe.analyse.relate`)."""

from __future__ import annotations

from dataclasses import dataclass, field

import pandas as pd

from layerprobe.evaluation.outcomes import OUTCOMES
from layerprobe.evaluation.outcomes import is_dotted as _dotted

RECORD_FEATURES = ("final_drift", "update_path", "grad_mass")
_SOURCE = {"final_drift": "drift_ratio", "update_path": "update_ratio", "grad_mass": "grad_norm"}
_SFT_CHANGE = ("cos_cpt_sft", "undo_frac", "null_sd_cos", "null_sd_undo_frac")  # diff quantities of SFT's change
MIN_RUNS = 5
EXACT_MAX_RUNS = 9  # rho of up to 9 units: all 9! orderings (once per tie pattern)
PERMUTATIONS = 2000
MIN_WITHIN = 40  # 2 / 0.05: with fewer orderings an exact within-group p cannot fall below 0.025
REFINE = 4  # a p below alpha is refined to B = REFINE * m / alpha orderings for the m tests of its stratum
CONTROL = "total_drift"
TABLE_FILE = "relate.csv"
FEATURES_FILE = "features.parquet"
DESIGN_COLUMNS = ("study", "method", "cpt_group", "total_drift", "total_drift_from")
FEATURE_COLUMNS = (
    "run",
    "study",
    "method",
    "cpt_group",
    "phase",
    "layer",
    "block",
    "feature",
    "value",
    "frozen",
    "total_drift",
    "total_drift_from",
)  # then one column per outcome
TABLE_COLUMNS = (
    "stratum",
    "feature",
    "phase",
    "layer",
    "block",
    "outcome",
    "rho",
    "rho_tested",
    "p",
    "q",
    "partial_rho",
    "partial_rho_tested",
    "partial_p",
    "partial_q",
    "n_runs",
    "n_frozen",
    "n_groups",
    "n_eff",
    "p_method",
)
_CELL = ["feature", "phase", "layer", "block"]


@dataclass
class RelateConfig:
    features: tuple[str, ...] = field(
        default=(),
        metadata={
            "help": f"features to relate: {', '.join(RECORD_FEATURES)} or a diff quantity (rel_change, undo_frac, "
            "cos_cpt_sft, ...); empty = all present"
        },
    )
    phases: tuple[str, ...] = field(
        default=(),
        metadata={
            "help": "record phases to take features from (cpt, sft); diff quantities are always phase 'diff'; "
            "empty = all present"
        },
    )
    outcomes: tuple[str, ...] = field(
        default=(),
        metadata={
            "help": f"outcomes: {', '.join(OUTCOMES)}, PHASE.KEY of summary.json (sft.eos_rate) or drop.KEY "
            "(cpt - sft: drop.lm_eval/hellaswag/acc); "
            "empty = every named outcome the summaries hold, with drop.KEY of each harness score"
        },
    )
    min_runs: int = field(
        default=MIN_RUNS,
        metadata={
            "help": "fewer runs than this: say plainly there are too few runs for a claim (5 is the least for which "
            "an exact two-sided Spearman test can give p < 0.05)"
        },
    )
    alpha: float = field(default=0.05, metadata={"help": "q-value threshold reported as a finding"})
    permutations: int = field(
        default=PERMUTATIONS,
        metadata={
            "help": "random permutations per test when there are more orderings than this (else all are enumerated)"
        },
    )
    min_within: int = field(
        default=MIN_WITHIN,
        metadata={
            "help": "permute within CPT groups only when they allow at least this many orderings of the outcome; "
            "else permute whole groups (their means)"
        },
    )
    seed: int = field(default=0, metadata={"help": "seed of the random permutations"})

    def __post_init__(self):
        for name in ("features", "phases", "outcomes"):
            value = getattr(self, name)
            if isinstance(value, str):
                value = tuple(v.strip() for v in value.split(",") if v.strip())
            setattr(self, name, tuple(value))
        for o in self.outcomes:
            if o not in OUTCOMES and not _dotted(o):
                raise ValueError(
                    f"unknown outcome {o!r}: expected one of {', '.join(OUTCOMES)} or PHASE.KEY "
                    "of summary.json such as sft.eos_rate"
                )
        if not isinstance(self.min_runs, int) or self.min_runs < 3:
            raise ValueError(f"min_runs must be an int >= 3 (Spearman needs 3 runs to vary), got {self.min_runs!r}")
        if not 0 < self.alpha < 1:
            raise ValueError(f"alpha must lie in (0, 1), got {self.alpha!r}")
        if not isinstance(self.permutations, int) or self.permutations < 100:
            raise ValueError(f"permutations must be an int >= 100, got {self.permutations!r}")
        if not isinstance(self.min_within, int) or self.min_within < 1:
            raise ValueError(f"min_within must be a positive int, got {self.min_within!r}")


@dataclass
class RelateResult:
    table: pd.DataFrame  # TABLE_COLUMNS, one row per stratum x (feature, phase, layer, block) x outcome
    features: pd.DataFrame  # FEATURE_COLUMNS + one column per outcome: what features.parquet holds
    outcomes: pd.DataFrame  # one row per run, one column per outcome
    design: pd.DataFrame  # one row per run: DESIGN_COLUMNS
    n_runs: int
    notes: list[str]  # plain sentences: too few runs, constant outcomes, dropped runs, findings

    def findings(self, alpha: float = 0.05, stratum: str = "all") -> pd.DataFrame:
        t = self.table[self.table["stratum"] == stratum] if stratum else self.table
        return t[t["q"] < alpha].sort_values("q")
