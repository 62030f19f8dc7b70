"""The recorder's cost in whole study cells, and a check that the recorder of this commit writes the numbers the
studies' cells recorded.

For each cell of benchmarks/recorder_cells.yaml (run with this commit) and the study cell of the same
config (run with the recorder of the studies' commits): the recorder's own time in each trained stage
(``stages.<stage>.record_seconds``) as a share of the stage, whether the outcomes are the same, and per phase and
quantity the largest relative difference between the two records, row by row.

    OMP_NUM_THREADS=1 layerprobe sweep benchmarks/recorder_cells.yaml
    python benchmarks/recorder_cells.py > benchmarks/results/recorder_cells.txt
"""

import argparse
import json
from pathlib import Path

import pandas as pd

from layerprobe.record.records import load_records
from layerprobe.sweep.results import flatten

STUDY_CELLS = {  # condition here -> the study cell of the same config, by seed
    "lora-sft": "runs/study_a-smollm2-135m/cpt.lora_alpha=128,sft.lora_alpha=8,sft.target_modules=A,seed={seed}",
    "full-all": "runs/study_b-smollm2-135m/all,seed={seed}",
    "full-mlp": "runs/study_b-smollm2-135m/mlp,seed={seed}",
    "full-not-mlp": "runs/study_b-smollm2-135m/not-mlp,seed={seed}",
    "full-all-lr3e-4": "runs/study_b-smollm2-135m/all-lr3e-4,seed={seed}",
}
SEEDS = (1, 2, 3)
KEY = ["phase", "step", "layer", "block", "module", "param", "quantity"]
QUANTITIES = ["grad_norm", "update_ratio", "drift_ratio", "weight_norm"]


def summary(run: Path) -> dict | None:
    f = run / "summary.json"
    return json.loads(f.read_text()) if f.is_file() else None


def cost(summ: dict) -> dict[str, tuple[float, float]]:
    return {
        s: (v["record_seconds"], v["seconds"])
        for s, v in summ["stages"].items()
        if "record_seconds" in v and "reused_from" not in v
    }  # a CPT linked in from another cell: shown there


def same_outcomes(new: dict, old: dict) -> str:
    a, b = ({k: v for k, v in flatten(x).items() if k.split(".")[0] in ("base", "cpt", "sft")} for x in (new, old))
    differ = [k for k in a if a[k] != b.get(k)]
    return f"outcomes ({len(a)} in summary.json): " + ("identical" if not differ else f"differ: {differ}")


def largest_differences(new: Path, old: Path, phases) -> pd.DataFrame:
    a, b = (
        df[df["phase"].isin(phases)].drop(columns="run") for df in (load_records(p, QUANTITIES) for p in (new, old))
    )
    both = a.merge(b, on=KEY, how="outer", suffixes=("", "_study"), indicator=True)
    both["rel"] = (both["value"] - both["value_study"]).abs() / both["value_study"].abs().clip(lower=1e-30)
    return (
        both.groupby(["phase", "quantity"])
        .agg(rows=("rel", "size"), unmatched=("_merge", lambda m: (m != "both").sum()), max_rel_diff=("rel", "max"))
        .reset_index()
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cells", type=Path, default=Path("runs/recorder-cells-smollm2-135m"))
    args = ap.parse_args()
    for cell, study in (
        (f"{c},seed={seed}", Path(s.format(seed=seed))) for seed in SEEDS for c, s in STUDY_CELLS.items()
    ):
        run = args.cells / cell
        new, study_summary = summary(run), summary(study)
        if new is None:
            print(f"{cell}: not finished")
            continue
        print(f"== {cell}: {new['wall_seconds']:.0f} s (study cell: {study})")
        old = cost(study_summary) if study_summary else {}
        own = cost(new)
        for stage, (rec, total) in own.items():
            line = f"{stage}: recorder {rec:.2f} s of {total:.1f} s = {100 * rec / total:.2f} %"
            if stage in old:
                line += (
                    f"   (study cell: {old[stage][0]:.2f} s of {old[stage][1]:.1f} s = "
                    f"{100 * old[stage][0] / old[stage][1]:.2f} %, not counting the recorder's start and close)"
                )
            print(line)
        if study_summary:
            print(same_outcomes(new, study_summary))
            print(largest_differences(run, study, list(own)).to_string(index=False))


if __name__ == "__main__":
    main()
