"""How far a training phase moved the whole model and each kind of block, from its records.

``||W_end - W_start|| / ||W_start||`` over all weights of a group (the whole model, attention, MLP), frozen weights
counting as unmoved. The recorder writes each module's drift relative to that module's start weights; the start
checkpoint's module norms weight them together. LoRA phases are recorded in effective weights (W0 + s*B*A), so a
LoRA and a full fine-tuning come out in the same units::

    norms = module_norms("runs/a/merged")              # the SFT phase starts from the merged CPT model
    phase_drift("runs/a", "sft", norms)                # {"all": 0.0078, "attn": 0.0091, "mlp": 0.0080}
"""

from __future__ import annotations

import os
from collections import defaultdict
from pathlib import Path

import pandas as pd
from safetensors import safe_open

from layerprobe.core.names import parse_name
from layerprobe.record.records import load_records


def module_norms(model_dir: str | os.PathLike) -> pd.Series:
    """||W|| per (layer, block, module) of a safetensors checkpoint folder (a tied weight is saved, so counted,
    once)."""
    files = sorted(Path(model_dir).glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(
            f"expected *.safetensors in {model_dir}, found none; pass the folder of the model "
            "the phase started from (e.g. RUN/merged for SFT)"
        )
    sq: dict[tuple, float] = defaultdict(float)
    for f in files:
        with safe_open(str(f), "pt") as st:
            for name in st.keys():
                p = parse_name(name)
                sq[(p.layer, p.block, p.module)] += float(st.get_tensor(name).double().pow(2).sum())
    norms = pd.Series(sq).pow(0.5)
    norms.index.names = ["layer", "block", "module"]
    return norms


def drift_over_steps(
    run_dir: str | os.PathLike, phase: str, norms: pd.Series, blocks: tuple[str, ...] = ("attn", "mlp")
) -> pd.DataFrame:
    """Relative drift of the whole model (``all``) and of each block kind at every recorded step of the phase: one
    row per step (column ``step``), as :func:`phase_drift` computes it for the last."""
    r = load_records(run_dir, quantities=["drift_ratio"])
    d = r[(r["phase"] == phase) & (r["param"] == "") & (r["module"] != "")]
    if d.empty:
        raise ValueError(
            f"{run_dir} has no drift records for phase {phase!r}; record it with "
            "`layerprobe train --record` (drift_every not 'never')"
        )
    d = d.set_index(["layer", "block", "module"])
    unknown = d.index.unique().difference(norms.index)
    if len(unknown):
        raise ValueError(
            f"drift recorded for {list(unknown)[:3]} that the start checkpoint does not hold; "
            "pass the norms of the model this phase started from"
        )
    moved = (d["value"] * norms.reindex(d.index)).pow(2).groupby(d["step"].to_numpy())
    rows = {"all": moved.sum() / norms.pow(2).sum()}
    for block in blocks:
        in_block = d.index.get_level_values("block") == block
        group = norms[norms.index.get_level_values("block") == block]
        part = (d["value"][in_block] * norms.reindex(d.index[in_block])).pow(2)
        rows[block] = (
            part.groupby(d["step"].to_numpy()[in_block]).sum().reindex(rows["all"].index).fillna(0.0)
            / group.pow(2).sum()
        )
    out = pd.DataFrame(rows).pow(0.5)
    out.index.name = "step"
    return out.reset_index()


def phase_drift(
    run_dir: str | os.PathLike, phase: str, norms: pd.Series, blocks: tuple[str, ...] = ("attn", "mlp")
) -> dict[str, float]:
    """Relative drift of the whole model (``all``) and of each block kind at the phase's last recorded step."""
    last = drift_over_steps(run_dir, phase, norms, blocks).iloc[-1]
    return {k: float(last[k]) for k in ("all", *blocks)}
