"""The dose-response experiment's SFT learning rates, chosen from the committed SmolLM2 drifts (no new runs).

Study A and study B (figures/study_b/smollm2-135m/drift.csv) ran the same SFT (50 steps, batch 8) after the same
CPT as this experiment, so their whole-model drifts are its pilot: one learning rate per arm, two for full
fine-tuning of all weights (1e-4 -> 0.297 %, 3e-4 -> 0.782 %), whose ratio gives the exponent k of
drift ~ lr^k (k = 0.88) used for every arm. LoRA on the MLP alone has no pilot run; its drift is taken as the
MLP drift of LoRA on all linear modules times the MLP's share of the whole model's norm (sqrt of squared norms,
read from full fine-tuning of the MLP: drift_all / drift_mlp).

It also writes power.csv: how small a difference in CPT-text loss rise the design can detect, from the spread of
study B's paired seed differences (each restricted condition minus all weights, same CPT per seed), at 3 and 9
blocks and the primary family's Holm level (alpha / 30: 2 outcomes x 15 pairs of arms), power 0.8.

    python experiments/dose_response/pilot.py      # -> experiments/dose_response/pilot.csv, power.csv
"""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from layerprobe.analyse.paired import detectable

HERE = Path(__file__).parent
DRIFT = Path("figures/study_b/smollm2-135m/drift.csv")
RESULTS = Path("figures/study_b/smollm2-135m/results.csv")
TARGETS = (0.003, 0.012)  # whole-model drift ||W_sft - W_cpt|| / ||W_cpt||, low and high dose
# arm -> (pilot arm in drift.csv, its learning rate)
PILOTS = {
    "lora-all": ("LoRA SFT a8 A", 3e-3),
    "lora-attn": ("LoRA SFT a8 B", 3e-3),
    "lora-mlp": (None, 3e-3),
    "full-all": ("full FT: all", 1e-4),
    "full-first10": ("full FT: first-10pct", 1e-4),
    "full-last10": ("full FT: last-10pct", 1e-4),
}


def main() -> None:
    d = pd.read_csv(DRIFT).groupby("arm")[["drift_all", "drift_mlp"]].mean()
    k = math.log(d.loc["full FT: all-lr3e-4", "drift_all"] / d.loc["full FT: all", "drift_all"]) / math.log(3)
    mlp_share = d.loc["full FT: mlp", "drift_all"] / d.loc["full FT: mlp", "drift_mlp"]
    rows = []
    for arm, (pilot, lr) in PILOTS.items():
        drift = d.loc[pilot, "drift_all"] if pilot else d.loc["LoRA SFT a8 A", "drift_mlp"] * mlp_share
        for dose, target in zip(("low", "high"), TARGETS):
            rows.append(
                {
                    "arm": arm,
                    "pilot": pilot or "estimate: LoRA SFT a8 A drift_mlp x mlp share",
                    "pilot_lr": lr,
                    "pilot_drift": drift,
                    "k": k,
                    "dose": dose,
                    "target_drift": target,
                    "lr": lr * (target / drift) ** (1 / k),
                }
            )
    out = pd.DataFrame(rows)
    out.to_csv(HERE / "pilot.csv", index=False, float_format="%.4g")
    print(out.to_string(index=False, float_format="%.4g"))
    power().to_csv(HERE / "power.csv", index=False, float_format="%.4g")


def power(family: int = 30, alpha: float = 0.05) -> pd.DataFrame:
    res = pd.read_csv(RESULTS).pivot_table(index="seed", columns="condition", values="loss_rise")
    rows = []
    for cond in [c for c in res.columns if c != "all"]:
        diffs = res[cond] - res["all"]
        sd = float(diffs.std(ddof=1))
        rows.append(
            {
                "contrast": f"{cond} - all",
                "outcome": "loss_rise",
                "n_seeds": len(diffs),
                "mean_diff": float(diffs.mean()),
                "sd_diff": sd,
                **{f"mde_{n}_blocks": detectable(n, alpha / family) * sd for n in (3, 9)},
            }
        )
    return pd.DataFrame(rows)


if __name__ == "__main__":
    main()
