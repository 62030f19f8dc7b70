"""Study A's MLP-only SFT control in fp32 (modules_fp32.yaml): its own family of claims, fixed before its runs ended.

    python experiments/study_a/analyze_modules.py   # -> figures/study_a/smollm2-135m/modules_fp32/claims.csv

The grid ran in bf16 on another CPU, so these two arms are compared only with each other: SFT on the MLP
(gate, up, down) against SFT on all linear modules, both after the same CPT (alpha 128) with SFT alpha 8, and each
arm's forgetting (after - before SFT). Paired t on the per-seed differences, Holm over this family, TOST at the
margins of claims.yaml (layerprobe.analyse.paired), as for analyze.py.
"""

import argparse
from pathlib import Path

from layerprobe.analyse.paired import ClaimsConfig, compare_family, sweep_arm, sweep_results, write_claims

HERE = Path(__file__).parent
FIGURES = Path("figures/study_a/smollm2-135m/modules_fp32")
SEEDS = 3
KNOWLEDGE = ("cloze_acc", "cloze_heldout_acc", "cloze_margin", "cloze_heldout_margin", "qa_acc")
ARMS = {"mlp-sft": "SFT on MLP", "all-linear": "SFT on all linear"}


def claims(folder: Path) -> list[dict]:
    results = sweep_results(folder)

    def arm(name, phase="sft"):
        return sweep_arm(results, folder, phase, condition=name)

    out = []
    for m in (*KNOWLEDGE, "style_logodds", "gozaru_first"):
        out.append(
            {
                "claim": "SFT on MLP - on all linear (CPT a128, SFT a8, fp32)",
                "metric": m,
                "a": arm("mlp-sft"),
                "b": arm("all-linear"),
            }
        )
    for m in KNOWLEDGE:
        for name, text in ARMS.items():
            out.append(
                {
                    "claim": f"SFT forgets: {text} (CPT a128, SFT a8, fp32): after - before SFT",
                    "metric": m,
                    "a": arm(name),
                    "b": arm(name, "cpt"),
                }
            )
    return [{**c, "family": "mlp-sft fp32"} for c in out]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--sweep", type=Path, default=FIGURES, help="the sweep folder (or committed figures) with results.csv"
    )
    ap.add_argument("--config", type=Path, default=HERE / "claims.yaml")
    ap.add_argument("--out", type=Path, default=FIGURES)
    args = ap.parse_args()
    table = compare_family(claims(args.sweep), ClaimsConfig.from_yaml(args.config), min_units=SEEDS)
    print(write_claims(table, args.out))


if __name__ == "__main__":
    main()
