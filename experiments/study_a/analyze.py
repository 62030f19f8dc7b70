"""Study A on SmolLM2-135M: the family of paired claims (issue 12) from the grid and controls sweep folders.

    python experiments/study_a/analyze.py        # -> figures/study_a/smollm2-135m/claims.csv, claims.png

Every claim compares two arms on the same probes and seeds (layerprobe.paired): exact McNemar p, a paired bootstrap
interval over seeds and probes, Holm's correction over the whole family. Claims whose cells are not finished on
every seed are listed as missing and left out of the family. Arms: the grid's cells by CPT alpha, SFT alpha and SFT
modules (A = all linear, B = attention); the controls by name; phase cpt = the merged CPT model, sft = after SFT.
"""

import argparse
from pathlib import Path


from layerprobe.paired import compare_family, sweep_arm, sweep_results, write_claims

SEEDS = 3


def claims(grid_dir: Path, controls_dir: Path) -> list[dict]:
    grid, ctl = sweep_results(grid_dir), sweep_results(controls_dir)

    def cell(cpt_alpha, sft_alpha, modules, phase="sft"):
        return sweep_arm(grid, grid_dir, phase, **{"cpt.lora_alpha": cpt_alpha, "sft.lora_alpha": sft_alpha,
                                                   "sft.target_modules": modules})

    def control(name, phase="sft"):
        return sweep_arm(ctl, controls_dir, phase, condition=name)

    out = []
    for m in ("cloze_acc", "qa_acc"):
        for ca in (128, 32):  # Q1: SFT forgets CPT facts (after SFT - before SFT, same run)
            for sa in (8, 32):
                for mod in ("A", "B"):
                    out.append({"claim": f"Q1 forgetting: CPT a{ca} SFT a{sa} {mod}: after - before SFT", "metric": m,
                                "a": cell(ca, sa, mod), "b": cell(ca, sa, mod, "cpt")})
        out.append({"claim": "Q2 CPT a128 - a32 (merged CPT model)", "metric": m,
                    "a": cell(128, 8, "A", "cpt"), "b": cell(32, 8, "A", "cpt")})
        out.append({"claim": "control: CPT on MLP - CPT on all (merged CPT model)", "metric": m,
                    "a": control("cpt-mlp-sft-attn", "cpt"), "b": cell(128, 8, "A", "cpt")})
    for m in ("cloze_acc", "qa_acc", "style_logodds"):  # gozaru_first is 1.000 in every grid cell: no contrast
        for sa in (8, 32):
            for mod in ("A", "B"):
                out.append({"claim": f"Q2 CPT a128 - a32 after SFT a{sa} {mod}", "metric": m,
                            "a": cell(128, sa, mod), "b": cell(32, sa, mod)})
        for ca in (128, 32):
            for mod in ("A", "B"):
                out.append({"claim": f"Q2 SFT a8 - a32, CPT a{ca} {mod}", "metric": m,
                            "a": cell(ca, 8, mod), "b": cell(ca, 32, mod)})
        for ca in (128, 32):
            for sa in (8, 32):
                out.append({"claim": f"Q3 SFT B (attn) - A (all), CPT a{ca} SFT a{sa}", "metric": m,
                            "a": cell(ca, sa, "B"), "b": cell(ca, sa, "A")})
        ref = cell(128, 8, "A")
        out += [
            {"claim": "control: a8 at 4x lr - a32 (CPT a128, A)", "metric": m, "a": control("alpha8-lr4x"),
             "b": cell(128, 32, "A")},
            {"claim": "control: a8 at 4x lr - a8 (CPT a128, A)", "metric": m, "a": control("alpha8-lr4x"), "b": ref},
            {"claim": "control: SFT on MLP - on all (CPT a128, a8)", "metric": m, "a": control("mlp-sft"), "b": ref},
            {"claim": "control: SFT on MLP - on attn (CPT a128, a8)", "metric": m, "a": control("mlp-sft"),
             "b": cell(128, 8, "B")},
            {"claim": "control: CPT MLP + SFT attn - CPT all + SFT attn", "metric": m,
             "a": control("cpt-mlp-sft-attn"), "b": cell(128, 8, "B")},
            {"claim": "null: SFT seed 101 - the reference's SFT seed", "metric": m, "a": control("sft-reseed"),
             "b": ref},
        ]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--grid", type=Path, default=Path("runs/study_a-smollm2-135m"))
    ap.add_argument("--controls", type=Path, default=Path("runs/study_a-controls-smollm2-135m"))
    ap.add_argument("--out", type=Path, default=Path("figures/study_a/smollm2-135m"))
    args = ap.parse_args()
    table = compare_family(claims(args.grid, args.controls), min_seeds=SEEDS)
    print(write_claims(table, args.out))


if __name__ == "__main__":
    main()
