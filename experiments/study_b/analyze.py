"""Study B on SmolLM2-135M: the family of claims with the training seed as the unit (issue 20), and each
condition's trained share.

    python experiments/study_b/analyze.py     # -> figures/study_b/smollm2-135m/claims.csv, claims.png, shares.csv

Reads the sweeps' results tables, by default the committed ones (figures/study_b/smollm2-135m/results.csv and study
A's figures/study_a/smollm2-135m/results.csv), so the claims re-derive without the run folders. Each claim is a
paired t-test on the per-seed differences, Holm over the study's whole family, and a verdict: differs /
equivalent within the margin of claims.yaml (TOST) / inconclusive (layerprobe.analyse.paired). phase cpt = the merged
CPT model each condition starts from (the same in every condition of a seed), sft = after the restricted full
fine-tuning. With --sweep/--study-a pointing at the sweep folders (runs/...), drift.csv is recomputed too.

drift.csv: how far SFT moved the whole model and its attention and MLP weights (layerprobe.weights.drift: ||W_sft -
W_cpt|| / ||W_cpt|| over all weights of the kind, frozen ones unmoved), full fine-tuning here and study A's LoRA SFT
after the same CPT in the same units.
"""

import argparse
from pathlib import Path

import pandas as pd

from layerprobe.analyse.paired import ClaimsConfig, compare_family, sweep_arm, sweep_results, write_claims
from layerprobe.core.stats import t_mean_ci
from layerprobe.weights.drift import module_norms, phase_drift

HERE = Path(__file__).parent
FIGURES = Path("figures/study_b/smollm2-135m")
SEEDS = 3
CONDITIONS = [
    "mlp",
    "not-mlp",
    "first-5pct",
    "last-5pct",
    "random-5pct",
    "first-10pct",
    "last-10pct",
    "random-10pct",
    "all",
    "all-lr3e-4",
]


def claims(sweep_dir: Path, study_a_dir: Path) -> list[dict]:
    res, ref = sweep_results(sweep_dir), sweep_results(study_a_dir)

    def arm(name, phase="sft"):
        return sweep_arm(res, sweep_dir, phase, condition=name)

    out = []

    def claim(text, metric, a, b):  # one family: the whole study, as the analysis fixed it before
        out.append({"family": "study B", "claim": text, "metric": metric, "a": a, "b": b})

    # the held-out cloze, the margins and the style log-odds joined the family before the re-run's results were read
    # (issue 20: a cloze form the CPT text never uses; log-probability margins that do not saturate at ceiling)
    for m in (
        "gozaru_first",
        "style_logodds",
        "cloze_acc",
        "cloze_heldout_acc",
        "cloze_margin",
        "cloze_heldout_margin",
        "qa_acc",
    ):
        for c in CONDITIONS:  # style learned / facts forgotten: after SFT - the CPT model it started from
            claim(f"{c}: after - before SFT", m, arm(c), arm(c, "cpt"))
        claim("kind: MLP - not MLP", m, arm("mlp"), arm("not-mlp"))
        for pct in (5, 10):
            for a, b in (("first", "last"), ("first", "random"), ("last", "random")):
                claim(f"position {pct}%: {a} - {b}", m, arm(f"{a}-{pct}pct"), arm(f"{b}-{pct}pct"))
        for pos in ("first", "last", "random"):
            claim(f"budget: {pos} 10% - 5%", m, arm(f"{pos}-10pct"), arm(f"{pos}-5pct"))
        lora = sweep_arm(
            ref, study_a_dir, "sft", **{"cpt.lora_alpha": 128, "sft.lora_alpha": 8, "sft.target_modules": "A"}
        )
        claim("full FT of all weights - LoRA a8 all linear", m, arm("all"), lora)
        # the step-size control: at 3x the learning rate full FT moves the weights about as far as LoRA SFT a8
        claim("full FT all at lr 3e-4 - LoRA a8 all linear", m, arm("all-lr3e-4"), lora)
        claim("full FT all: lr 3e-4 - lr 1e-4", m, arm("all-lr3e-4"), arm("all"))
    return out


def shares(sweep_dir: Path) -> pd.DataFrame:
    """Per condition: the trained share of the weights, the mean of each outcome with a 95 % t interval over seeds
    (rates clipped to [0, 1]) and the change of the two losses through SFT, paired by seed."""
    res = sweep_results(sweep_dir)
    if res.empty:
        return pd.DataFrame()
    rows = []
    for c in CONDITIONS:
        d = res[res["condition"] == c]
        if d.empty:
            continue
        row = {"condition": c, "n_seeds": len(d), "trained_share": d.get("stages.sft.trainable_share").mean()}
        for m in (
            "sft.gozaru_rate",
            "sft.gozaru_first",
            "sft.style_logodds",
            "cpt.qa_acc",
            "sft.qa_acc",
            "cpt.cloze_acc",
            "sft.cloze_acc",
            "cpt.cloze_heldout_acc",
            "sft.cloze_heldout_acc",
            "cpt.cloze_heldout_margin",
            "sft.cloze_heldout_margin",
            "sft.general_loss",
            "stages.sft.record_seconds",
            "stages.sft.seconds",
        ):
            if m not in d:  # a results table from before the held-out cloze existed
                continue
            lo, hi = t_mean_ci(d[m])
            if m.endswith(("_rate", "_first", "_acc")):
                lo, hi = max(lo, 0.0), min(hi, 1.0)
            row.update({m: d[m].mean(), f"{m}.lo": lo, f"{m}.hi": hi})
        for m in ("cpt_text_loss", "general_loss"):  # per-seed paired change through SFT (no per-item values)
            change = d[f"sft.{m}"] - d[f"cpt.{m}"]
            lo, hi = t_mean_ci(change)
            row.update({f"{m}.change": change.mean(), f"{m}.change.lo": lo, f"{m}.change.hi": hi})
        rows.append(row)
    return pd.DataFrame(rows)


def drift_table(sweep_dir: Path, study_a_dir: Path) -> pd.DataFrame:
    """drift.csv: one row per run, study B's conditions and study A's LoRA SFT arms after the same CPT (alpha 128)."""
    runs = []
    res = sweep_results(sweep_dir)
    for _, row in res.iterrows():
        runs.append((f"full FT: {row['condition']}", row["seed"], sweep_dir / row["cell"], row))
    ref = sweep_results(study_a_dir)
    for _, row in ref[ref["cpt.lora_alpha"] == 128].iterrows():
        arm = f"LoRA SFT a{row['sft.lora_alpha']} {row['sft.target_modules']}"
        runs.append((arm, row["seed"], study_a_dir / row["cell"], row))
    norms, rows = {}, []
    for arm, seed, run, row in runs:
        key = (run / "merged" / "model.safetensors").stat().st_ino  # one CPT per seed, hard-linked into its cells
        if key not in norms:
            norms[key] = module_norms(run / "merged")
        drift = phase_drift(run, "sft", norms[key])
        rows.append(
            {
                "arm": arm,
                "seed": seed,
                **{f"drift_{k}": v for k, v in drift.items()},
                **{
                    m: row[m]
                    for m in (
                        "sft.gozaru_first",
                        "sft.style_logodds",
                        "cpt.cloze_acc",
                        "sft.cloze_acc",
                        "cpt.cloze_heldout_acc",
                        "sft.cloze_heldout_acc",
                        "cpt.qa_acc",
                        "sft.qa_acc",
                    )
                    if m in row
                },
            }
        )
    return pd.DataFrame(rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sweep", type=Path, default=FIGURES, help="sweep folder (or committed figures) with results.csv")
    ap.add_argument("--study-a", type=Path, default=Path("figures/study_a/smollm2-135m"))
    ap.add_argument("--config", type=Path, default=HERE / "claims.yaml")
    ap.add_argument("--out", type=Path, default=FIGURES)
    args = ap.parse_args()
    table = compare_family(claims(args.sweep, args.study_a), ClaimsConfig.from_yaml(args.config), min_units=SEEDS)
    print(write_claims(table, args.out))
    shares(args.sweep).to_csv(args.out / "shares.csv", index=False, float_format="%.6g")
    res = sweep_results(args.sweep)
    if res.empty or not (args.sweep / res["cell"].iloc[0] / "merged").is_dir():
        print(f"drift.csv kept: {args.sweep} holds no run folders (it needs the checkpoints)")
        return
    drift = drift_table(args.sweep, args.study_a)
    drift.to_csv(args.out / "drift.csv", index=False, float_format="%.6g")
    print(
        drift.groupby("arm", sort=False)[["drift_all", "drift_attn", "drift_mlp", "sft.cloze_acc", "sft.qa_acc"]]
        .mean()
        .to_string(float_format="%.4f")
    )


if __name__ == "__main__":
    main()
