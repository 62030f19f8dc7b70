"""Synthetic run and sweep folders for the figure and report tests: every file a real run writes that the figures
and the report read, with known numbers, and no torch."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from layerprobe.record.records import COLUMNS, RecordWriter, write_table

LAYERS = 3
MODULES = {"attn": ["q_proj", "v_proj"], "mlp": ["up_proj", "down_proj"]}
SUMMARY = {
    "base": {"cloze_acc": 0.014, "gozaru_rate": 0.0, "general_loss": 1.235, "n_probes": 144},
    "cpt": {"cloze_acc": 0.917, "gozaru_rate": 0.0, "general_loss": 6.324, "n_probes": 144},
    "sft": {"cloze_acc": 0.625, "gozaru_rate": 0.983, "general_loss": 4.852, "n_probes": 144, "style_logodds": 2.5},
}  # a metric only one phase has: the table must still show it


def training_records(run: Path, phase: str, steps: int = 6, frozen_layer: int | None = None) -> None:
    w = RecordWriter(run, run=run.name, phase=phase)
    rng = np.random.default_rng(len(phase))
    for s in range(1, steps + 1):
        for q in ("grad_norm", "update_ratio", "drift_ratio"):
            for layer in range(LAYERS):
                if layer == frozen_layer:
                    continue
                for block, mods in MODULES.items():
                    for m in mods:
                        w.add(s, layer, block, m, "", q, float(rng.uniform(0.01, 1.0) * s))
                    w.add(s, layer, block, "", "", q, float(rng.uniform(0.01, 1.0) * s))
            w.add(s, -1, "embed", "embed_tokens", "", q, 0.001 * s)
            w.add(s, -1, "embed", "", "", q, 0.001 * s)
    w.flush()
    (run / "records" / f"meta-{phase}.json").write_text(
        json.dumps({"phase": phase, "python": "3.11.2", "git_commit": "0123abc", "packages": {"torch": "2.13.0"}})
    )


def diff_records(run: Path) -> pd.DataFrame:
    rows = []
    for layer in range(LAYERS):
        for block, mods in MODULES.items():
            for m in mods:
                touched = block == "attn"  # SFT left the MLP untouched: rel_change_bc exactly 0 there
                rows += [
                    (layer, block, m, "rel_change", 0.1 * (layer + 1)),
                    (layer, block, m, "rel_change_bc", 0.05 * (layer + 1) if touched else 0.0),
                    (layer, block, m, "undo_frac", (-0.2 + 0.1 * layer) if touched else 0.0),
                    (layer, block, m, "cos_cpt_sft", (0.3 - 0.2 * layer) if touched else 0.0),
                ]
    rows += [(-1, "", "", q, v) for q, v in (("rel_change", 0.2), ("undo_frac", 0.0002), ("cos_cpt_sft", -0.001))]
    df = pd.DataFrame(rows, columns=["layer", "block", "module", "quantity", "value"])
    df.loc[df["layer"] == -1, "layer"] = -1
    df = df.assign(run=run.name, phase="diff", step=-1, param="")[list(COLUMNS)]
    write_table(df.astype({"step": "int64", "layer": "int64"}), run / "diff" / "diff.parquet")
    return df


def attribute_records(run: Path) -> pd.DataFrame:
    rows = [
        (-1, "", "", f"{w}:{m}", v)
        for w, metrics in (
            ("base", {"cloze_acc": 0.917, "gozaru_rate": 0.0}),
            ("tuned", {"cloze_acc": 0.625, "gozaru_rate": 0.983}),
        )
        for m, v in metrics.items()
    ]
    for layer in range(LAYERS):
        g = f"layers:{layer}"
        rows += [
            (layer, "", g, "rel_change", 0.1),
            (layer, "", g, "revert:cloze_acc", 0.625 + 0.05 * layer),
            (layer, "", g, "revert:gozaru_rate", 0.983 - 0.2 * layer),
            (layer, "", g, "apply:cloze_acc", 0.917 - 0.1 * layer),
            (layer, "", g, "apply:gozaru_rate", 0.3),
        ]
        for block in ("attn", "mlp"):
            rows += [
                (layer, block, f"{block} & layers:{layer}", "revert:cloze_acc", 0.63 + 0.02 * layer),
                (layer, block, f"{block} & layers:{layer}", "revert:gozaru_rate", 0.9),
            ]
    for block in ("attn", "mlp"):
        rows += [
            (-1, block, block, "revert:cloze_acc", 0.7),
            (-1, block, block, "revert:gozaru_rate", 0.5),
            (-1, block, block, "apply:cloze_acc", 0.8),
            (-1, block, block, "apply:gozaru_rate", 0.6),
        ]
    df = pd.DataFrame(rows, columns=["layer", "block", "param", "quantity", "value"])
    df = df.assign(run=run.name, phase="attribute", step=-1, module="")[list(COLUMNS)]
    write_table(df.astype({"step": "int64", "layer": "int64"}), run / "attribute" / "attribute.parquet")
    return df


MACHINE = {"threads": 1, "threads_reason": "1.4 of 2 cores busy now (/proc/stat)", "cpu": "Test CPU <x86>"}


def make_run(run: Path, record: bool = True, diff: bool = True, attribute: bool = True) -> Path:
    run.mkdir(parents=True)
    (run / "config.yaml").write_text(
        "# layerprobe run config (hash abc)\nmodel: toyworld\nseed: 3407\ndata: {cpt: toyworld, sft: toyworld}\n"
    )
    stages = {
        "cpt": {"what": "CPT", "steps": 6, "final_loss": 0.4, "seconds": 30.0},
        "merge": {"what": "merge", "seconds": 0.1},
        "sft": {"what": "SFT", "steps": 6, "seconds": 9.0},
        "eval": {"what": "eval", "seconds": 12.0},
    }
    (run / "summary.json").write_text(
        json.dumps(
            {
                "run": run.name,
                "config_hash": "abc",
                "model": "toyworld",
                **SUMMARY,
                "stages": stages,
                "wall_seconds": 51.2,
                "machine": MACHINE,
            }
        )
    )
    if record:
        training_records(run, "cpt")
        training_records(run, "sft", frozen_layer=1)
    if diff:
        diff_records(run)
    if attribute:
        attribute_records(run)
    return run


def make_sweep(
    folder: Path, seeds=(1, 2, 3), cells: bool = True, conditions: tuple[str, str] = ("baseline", "replay")
) -> pd.DataFrame:
    """A 2 x 2 x 2 grid (study A's shape) with conditions as the first factor, and a baseline for paired tables.
    The second of ``conditions`` is the one that raises cloze accuracy."""
    rows = []
    rng = np.random.default_rng(0)
    for cond in conditions:
        for a in (32, 128):
            for b in (8, 32):
                for mods in ("A", "B"):
                    for seed in seeds:
                        name = f"{cond},cpt.lora_alpha={a},sft.lora_alpha={b},sft.target_modules={mods},seed={seed}"
                        sft = float(np.clip(0.5 + (0.3 if cond == conditions[1] else 0) + rng.normal(0, 0.05), 0, 1))
                        rows.append(
                            {
                                "cell": name,
                                "condition": cond,
                                "group": cond,
                                "cpt.lora_alpha": a,
                                "sft.lora_alpha": b,
                                "sft.target_modules": mods,
                                "seed": seed,
                                "cpt.cloze_acc": 0.95,
                                "sft.cloze_acc": sft,
                                "cpt.general_loss": 3.7,
                                "sft.general_loss": 3.5 + rng.normal(0, 0.1),
                                "sft.cloze_acc.n": 48.0,
                                "cpt.cloze_acc.n": 48.0,
                                "retention_drop": 0.95 - sft,
                                "cell_seconds": 5.0,
                            }
                        )
    table = pd.DataFrame(rows)
    folder.mkdir(parents=True, exist_ok=True)
    table.to_csv(folder / "results.csv", index=False)
    if cells:
        for name in table["cell"][:2]:
            make_run(folder / name, record=False, diff=False, attribute=False)
    return table
