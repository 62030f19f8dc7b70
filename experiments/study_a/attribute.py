"""Causal attribution on study A's most-forgetting SmolLM2 cell, over its seeds (issue 12).

    python experiments/study_a/attribute.py --max-instructions 30   # -> figures/study_a/smollm2-135m/attribution.csv

The most-forgetting cell is the grid cell with the largest mean retention_drop (cloze accuracy after CPT - after SFT) over
seeds in the grid's results.csv. For each of its seeds, `layerprobe attribute` reverts the SFT change on one
group (the CPT weights there, SFT's elsewhere) and applies it alone; groups: attention, MLP, and three bands of ten
layers, which partition the changed weights twice. Per group, mode and metric the table has the effect's mean and
95 % t interval over seeds, the share of the whole SFT effect (1 = the group alone carries it), the group's share
of the weights SFT changed, and share / weight share (1 = as much as its size predicts). `sum of parts` rows add
the shares of each partition: where they differ from 1 the groups' effects do not add up.
"""

import argparse
import subprocess
import sys
from pathlib import Path

import pandas as pd

from layerprobe.attribute import effects
from layerprobe.records import load_records
from layerprobe.stats import t_mean_ci

BANDS = ["layers:0-9", "layers:10-19", "layers:20-29"]
METRICS = ["qa_acc", "cloze_acc", "gozaru_first", "style_logodds"]


def most_forgetting(results: pd.DataFrame) -> tuple[str, pd.DataFrame]:
    keys = ["cpt.lora_alpha", "sft.lora_alpha", "sft.target_modules"]
    drop = results.groupby(keys)["retention_drop"].mean().sort_values(ascending=False)
    best = drop.index[0]
    cells = results[(results[keys] == pd.Series(best, index=keys)).all(axis=1)]
    return f"CPT a{best[0]} SFT a{best[1]} {best[2]}", cells


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--grid", type=Path, default=Path("runs/study_a-smollm2-135m"))
    ap.add_argument("--out", type=Path, default=Path("figures/study_a/smollm2-135m"))
    ap.add_argument("--max-probes", type=int, default=57, help="probes of each kind per evaluation (cost)")
    ap.add_argument("--max-instructions", type=int, default=60, help="held-out instructions per evaluation (cost)")
    args = ap.parse_args()
    name, cells = most_forgetting(pd.read_csv(args.grid / "results.csv"))
    print(f"most-forgetting cell: {name}, seeds {sorted(cells['seed'])}")
    frames = []
    for cell, seed in zip(cells["cell"], cells["seed"]):
        out = args.grid / cell / "attribute"
        cmd = [sys.executable, "-m", "layerprobe", "attribute", "--run", str(args.grid / cell), "--groups", "blocks",
               *[a for b in BANDS for a in ("--select", b)], "--max-probes", str(args.max_probes),
               "--max-instructions", str(args.max_instructions), "--out", str(out)]
        subprocess.run(cmd, check=True)
        frames.append(effects(load_records(out / "attribute.parquet")).assign(seed=seed))
    e = pd.concat(frames, ignore_index=True)
    e = e[e["metric"].isin(METRICS) & e["group"].isin(["attn", "mlp", *BANDS])]
    rows = []
    for (group, mode, metric), d in e.groupby(["group", "mode", "metric"], sort=False):
        lo, hi = t_mean_ci(d["effect"])
        rows.append({"cell": name, "group": group, "mode": mode, "metric": metric, "n_seeds": len(d),
                     "effect": d["effect"].mean(), "lo": lo, "hi": hi, "sft_effect": d["sft_effect"].mean(),
                     "share": d["share"].mean(), "weight_share": d["weight_share"].mean(),
                     "share_per_weight": d["share"].mean() / d["weight_share"].mean()})
    table = pd.DataFrame(rows)
    for parts, label in ((["attn", "mlp"], "sum of parts: attn + mlp"), (BANDS, "sum of parts: three layer bands")):
        for (mode, metric), d in table[table["group"].isin(parts)].groupby(["mode", "metric"]):
            rows.append({"cell": name, "group": label, "mode": mode, "metric": metric, "n_seeds": d["n_seeds"].min(),
                         "share": d["share"].sum(), "weight_share": d["weight_share"].sum()})
    table = pd.DataFrame(rows)
    args.out.mkdir(parents=True, exist_ok=True)
    table.to_csv(args.out / "attribution.csv", index=False, float_format="%.6g")
    print(table.to_string(index=False))


if __name__ == "__main__":
    main()
