"""Study A on SmolLM2-135M: the family of claims, with the training seed as the unit (issue 20).

    python experiments/study_a/analyze.py     # -> figures/study_a/smollm2-135m/claims.csv, claims.png

Reads the sweeps' results tables (one row per cell: each seed's mean over the probes), by default the committed
ones in figures/study_a/smollm2-135m/ (grid) and .../controls/, so the claims re-derive without the run folders;
point --grid/--controls at the sweep folders (runs/...) to add the per-item McNemar description. Each claim is a
paired t-test on the per-seed differences, Holm over the whole study's family of claims (Q1-Q3,
controls and the seed null together, as the analysis fixed it before the runs), and a verdict:
differs / equivalent within the margin of claims.yaml (TOST) / inconclusive (layerprobe.analyse.paired).
Arms: the grid's cells by CPT alpha, SFT alpha and SFT modules ("all linear" = q,k,v,o,gate,up,down; "attention"
= q,k,v,o); the controls by name; phase cpt = the merged CPT model, sft = after SFT.
"""

import argparse
from pathlib import Path

from layerprobe.analyse.paired import ClaimsConfig, compare_family, sweep_arm, sweep_results, write_claims

HERE = Path(__file__).parent
FIGURES = Path("figures/study_a/smollm2-135m")
SEEDS = 3
MODULES = {"A": "all linear", "B": "attention"}  # the sweep's names for the two SFT module sets


def claims(grid_dir: Path, controls_dir: Path) -> list[dict]:
    grid, ctl = sweep_results(grid_dir), sweep_results(controls_dir)

    def cell(cpt_alpha, sft_alpha, modules, phase="sft"):
        return sweep_arm(
            grid,
            grid_dir,
            phase,
            **{"cpt.lora_alpha": cpt_alpha, "sft.lora_alpha": sft_alpha, "sft.target_modules": modules},
        )

    def control(name, phase="sft"):
        return sweep_arm(ctl, controls_dir, phase, condition=name)

    out = []

    def claim(question, text, metric, a, b):  # one family: the whole study, as the analysis fixed it before
        out.append({"family": "study A", "claim": f"{question}: {text}", "metric": metric, "a": a, "b": b})

    for m in ("cloze_acc", "cloze_heldout_acc", "cloze_margin", "cloze_heldout_margin", "qa_acc"):
        for ca in (128, 32):  # Q1: SFT forgets CPT facts (after SFT - before SFT, same run)
            for sa in (8, 32):
                for mod, name in MODULES.items():
                    claim(
                        "Q1",
                        f"SFT forgets: CPT a{ca}, SFT a{sa} {name}: after - before SFT",
                        m,
                        cell(ca, sa, mod),
                        cell(ca, sa, mod, "cpt"),
                    )
        claim("Q2", "CPT a128 - a32, merged CPT model", m, cell(128, 8, "A", "cpt"), cell(32, 8, "A", "cpt"))
        claim(
            "controls",
            "CPT on MLP - CPT on all linear, merged CPT model",
            m,
            control("cpt-mlp-sft-attn", "cpt"),
            cell(128, 8, "A", "cpt"),
        )
    for m in (
        "cloze_acc",
        "cloze_heldout_acc",
        "cloze_heldout_margin",
        "qa_acc",
        "style_logodds",
    ):  # gozaru_first is 1.000 in every grid cell: no contrast
        for sa in (8, 32):
            for mod, name in MODULES.items():
                claim("Q2", f"CPT a128 - a32, after SFT a{sa} {name}", m, cell(128, sa, mod), cell(32, sa, mod))
        for ca in (128, 32):
            for mod, name in MODULES.items():
                claim("Q2", f"SFT a8 - a32, CPT a{ca}, {name}", m, cell(ca, 8, mod), cell(ca, 32, mod))
        for ca in (128, 32):
            for sa in (8, 32):
                claim(
                    "Q3",
                    f"SFT on attention - on all linear, CPT a{ca} SFT a{sa}",
                    m,
                    cell(ca, sa, "B"),
                    cell(ca, sa, "A"),
                )
        ref = cell(128, 8, "A")
        claim(
            "controls",
            "SFT a8 at 4x lr - SFT a32 (CPT a128, all linear)",
            m,
            control("alpha8-lr4x"),
            cell(128, 32, "A"),
        )
        claim("controls", "SFT a8 at 4x lr - SFT a8 (CPT a128, all linear)", m, control("alpha8-lr4x"), ref)
        claim("controls", "SFT on MLP - on all linear (CPT a128, SFT a8)", m, control("mlp-sft"), ref)
        claim("controls", "SFT on MLP - on attention (CPT a128, SFT a8)", m, control("mlp-sft"), cell(128, 8, "B"))
        claim(
            "controls",
            "CPT on MLP + SFT on attention - CPT on all + SFT on attention",
            m,
            control("cpt-mlp-sft-attn"),
            cell(128, 8, "B"),
        )
        claim("seed null", "SFT seed 101 - the reference's SFT seed (same CPT)", m, control("sft-reseed"), ref)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--grid", type=Path, default=FIGURES, help="sweep folder (or committed figures) with results.csv")
    ap.add_argument(
        "--controls",
        type=Path,
        default=FIGURES / "controls",
        help="the controls' sweep folder; 'none' for a grid without controls (their claims are missing)",
    )
    ap.add_argument("--config", type=Path, default=HERE / "claims.yaml")
    ap.add_argument("--out", type=Path, default=FIGURES)
    ap.add_argument("--tested-only", action="store_true", help="leave the claims that could not be tested out")
    args = ap.parse_args()
    table = compare_family(claims(args.grid, args.controls), ClaimsConfig.from_yaml(args.config), min_units=SEEDS)
    print(write_claims(table[table["missing"] == ""] if args.tested_only else table, args.out))


if __name__ == "__main__":
    main()
