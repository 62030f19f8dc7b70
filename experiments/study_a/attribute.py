"""Causal attribution on study A's SmolLM2 grid: most-forgetting and reference cells, over seeds (issues 12, 20).

    python experiments/study_a/attribute.py --max-instructions 30
    # -> figures/study_a/smollm2-135m/attribution.csv (means, intervals), attribution_seeds.csv (one row per seed)

Cells: the grid cell with the largest mean retention_drop (cloze accuracy after CPT - after SFT) over seeds in the
grid's results.csv (the most-forgetting cell) and the reference cell (CPT alpha 128, SFT alpha 8, all linear modules
"A") when the grid has it; once if they are the same. For each seed with a run folder, `layerprobe attribute`
reverts the SFT change on one group (the CPT weights there, SFT's elsewhere) and applies it alone; groups:
attention, MLP, and three bands of ten layers, which partition the changed weights twice.

attribution_seeds.csv, per cell x seed x group x mode x metric: the effect, the whole SFT effect, the share of it
(1 = the group alone carries it), the group's share of the weights SFT changed (weight_share), of the parameters
it trained (trained_share: r * (in + out) per LoRA matrix) and of ||W_t - W_b||^2 (delta_share), and share / each
(share_per_weight, share_per_trained, share_per_delta: 1 = as much as that measure of its size predicts). Derived
rows per seed: `attn - mlp` (attention's values minus the MLP's, paired by seed) and `sum of parts: ...` (the
shares and denominators of a partition added: where the share differs from 1 the groups' effects do not add up).

attribution.csv, per cell x group x mode x metric: n_seeds, the mean over seeds with a 95 % Student-t interval of
the effect (lo, hi), the share (share_lo, share_hi) and each ratio (<ratio>_lo, <ratio>_hi), and the means of
sft_effect and the denominators. Re-derive any interval from attribution_seeds.csv alone: group it by (cell, group,
mode, metric) and apply layerprobe.core.stats.t_mean_ci to the column. One seed: the intervals are NaN.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from layerprobe.record.attribution_records import DENOMINATORS, effects, over_seeds, paired_difference
from layerprobe.record.records import load_records

KEYS = ["cpt.lora_alpha", "sft.lora_alpha", "sft.target_modules"]
REFERENCE = (128, 8, "A")  # the reference cell of study A: CPT alpha 128, SFT alpha 8, all linear modules
BANDS = ["layers:0-9", "layers:10-19", "layers:20-29"]
METRICS = ["qa_acc", "cloze_acc", "gozaru_first", "style_logodds"]
# attribute(run_dir, out_dir, groups, selectors) -> the run's attribution records
Attribute = Callable[[Path, Path, Sequence[str], Sequence[str]], pd.DataFrame]


def cell_label(key: Sequence) -> str:
    return f"CPT a{key[0]} SFT a{key[1]} {key[2]}"


def pick_cells(results: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """label -> the results rows (one per seed) of the most-forgetting cell, then of the reference cell if present."""
    missing = [k for k in [*KEYS, "cell", "seed", "retention_drop"] if k not in results.columns]
    if missing:
        raise ValueError(
            f"results.csv lacks the columns {missing}; expected a study A grid's results (columns "
            f"{', '.join(KEYS)}, cell, seed, retention_drop)"
        )
    as_text = results[KEYS].astype(str)
    drop = results.groupby(KEYS)["retention_drop"].mean().sort_values(ascending=False)
    picked = {}
    for key in (drop.index[0], REFERENCE):
        rows = results[(as_text == [str(v) for v in key]).all(axis=1)]
        if len(rows):
            picked.setdefault(cell_label(key), rows)
        else:
            print(f"reference cell {cell_label(key)}: not in this grid, skipped")
    return picked


def layerprobe_attribute(max_probes: int, max_instructions: int) -> Attribute:
    """`layerprobe attribute --run RUN` in a subprocess (evaluating as the run's config says); returns its records."""

    def attribute(run: Path, out: Path, groups: Sequence[str], selectors: Sequence[str]) -> pd.DataFrame:
        cmd = [
            sys.executable,
            "-m",
            "layerprobe",
            "attribute",
            "--run",
            str(run),
            "--groups",
            ",".join(groups),
            *[a for s in selectors for a in ("--select", s)],
            "--max-probes",
            str(max_probes),
            "--max-instructions",
            str(max_instructions),
            "--out",
            str(out),
        ]
        subprocess.run(cmd, check=True)
        return load_records(out / "attribute.parquet")

    return attribute


def per_seed_effects(
    grid: Path, cells: dict[str, pd.DataFrame], attribute: Attribute, bands: Sequence[str], metrics: Sequence[str]
) -> pd.DataFrame:
    """effects() of attn, mlp and the bands, one row per cell x seed x group x mode x metric."""
    frames = []
    for label, rows in cells.items():
        for cell, seed in zip(rows["cell"], rows["seed"]):
            run = grid / cell
            if not run.is_dir():
                print(f"{label}, seed {seed}: no run folder {run}, skipped")
                continue
            print(f"{label}, seed {seed}: attributing {run}", flush=True)
            e = effects(attribute(run, run / "attribute", ["blocks"], list(bands)))
            frames.append(e.assign(cell=label, seed=int(seed)))
    if not frames:
        raise SystemExit(f"no run folder of the chosen cells in {grid}; run the study A sweep first")
    e = pd.concat(frames, ignore_index=True)
    e = e[e["metric"].isin(metrics) & e["group"].isin(["attn", "mlp", *bands])]
    first = ["cell", "seed", "group", "mode", "metric"]
    return e[first + [c for c in e.columns if c not in first]].reset_index(drop=True)


def sum_of_parts(per_seed: pd.DataFrame, parts: Sequence[str], label: str) -> pd.DataFrame:
    """Per cell x seed x mode x metric: effect, share and denominators added over ``parts`` (ratios left out)."""
    d = per_seed[per_seed["group"].isin(parts)]
    keys = ["cell", "seed", "mode", "metric"]
    counts = d.groupby(keys)["group"].nunique()
    if (counts != len(parts)).any():
        raise ValueError(f"sum of parts {label!r}: some seeds lack one of {list(parts)}")
    values = ["effect", "share", *[c for c in DENOMINATORS if c in d.columns]]
    out = d.groupby(keys, sort=False)[values].sum().reset_index()
    out["sft_effect"] = d.groupby(keys, sort=False)["sft_effect"].first().to_numpy()
    return out.assign(group=label, layer=-1, block="")


def seed_table(per_seed: pd.DataFrame, bands: Sequence[str]) -> pd.DataFrame:
    """The per-seed rows with the derived ones: attn - mlp (paired by seed) and the two sums of parts."""
    derived = [
        paired_difference(per_seed, "attn", "mlp"),
        sum_of_parts(per_seed, ["attn", "mlp"], "sum of parts: attn + mlp"),
        sum_of_parts(per_seed, bands, f"sum of parts: {len(bands)} layer bands"),
    ]
    table = pd.concat([per_seed, *derived], ignore_index=True)
    return table[per_seed.columns]


def summary_table(seeds: pd.DataFrame) -> pd.DataFrame:
    """Means and 95 % t intervals over seeds (layerprobe.attribution.attribute.over_seeds), columns in reading order."""
    s = over_seeds(seeds)
    ratios = [c for r in DENOMINATORS.values() if r in s.columns for c in (r, f"{r}_lo", f"{r}_hi")]
    order = [
        "cell",
        "group",
        "mode",
        "metric",
        "n_seeds",
        "effect",
        "lo",
        "hi",
        "sft_effect",
        "share",
        "share_lo",
        "share_hi",
        *[c for c in DENOMINATORS if c in s.columns],
        *ratios,
    ]
    return s[order]


def main(argv: Sequence[str] | None = None, attribute: Attribute | None = None) -> pd.DataFrame:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--grid", type=Path, default=Path("runs/study_a-smollm2-135m"))
    ap.add_argument("--out", type=Path, default=Path("figures/study_a/smollm2-135m"))
    ap.add_argument("--max-probes", type=int, default=57, help="probes of each kind per evaluation (cost)")
    ap.add_argument("--max-instructions", type=int, default=60, help="held-out instructions per evaluation (cost)")
    ap.add_argument("--bands", nargs="+", default=BANDS, help="layer bands partitioning the decoder layers")
    ap.add_argument("--metrics", nargs="+", default=METRICS, help="metrics kept in the tables")
    args = ap.parse_args(argv)
    cells = pick_cells(pd.read_csv(args.grid / "results.csv"))
    for label, rows in cells.items():
        print(f"cell {label}: seeds {sorted(rows['seed'])}")
    attribute = attribute or layerprobe_attribute(args.max_probes, args.max_instructions)
    seeds = seed_table(per_seed_effects(args.grid, cells, attribute, args.bands, args.metrics), args.bands)
    table = summary_table(seeds)
    args.out.mkdir(parents=True, exist_ok=True)
    # nine digits: intervals re-derived from this file match attribution.csv's six
    seeds.to_csv(args.out / "attribution_seeds.csv", index=False, float_format="%.9g")
    table.to_csv(args.out / "attribution.csv", index=False, float_format="%.6g")
    with pd.option_context("display.width", 250, "display.max_columns", 40):
        print(table.replace([np.inf, -np.inf], np.nan).to_string(index=False, float_format=lambda v: f"{v:.3g}"))
    print(f"wrote {args.out / 'attribution.csv'} and {args.out / 'attribution_seeds.csv'}")
    return table


if __name__ == "__main__":
    main()
