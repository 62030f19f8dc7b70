"""Nulls for undo_frac and cos(dCPT, dSFT) on SmolLM2-135M (issue 12), per seed of study A's reference cell.

    python experiments/study_a/nulls.py       # -> figures/study_a/smollm2-135m/nulls.csv, nulls.png

For each seed with both runs finished: the reference cell (CPT alpha 128, SFT alpha 8, all linear modules) and
the control sft-reseed (the same CPT, another SFT seed). Three streaming diffs per seed:
  base -> CPT -> SFT (reference)     cos_cpt_sft, undo_frac
  base -> CPT -> SFT (sft-reseed)    the same statistics from an SFT run that differs only in its seed
  CPT -> SFT (reference) -> SFT (reseed, applied on top)   cos(dSFT_ref, dSFT_reseed): how alike two SFT updates are
and the mean cosine between the CPT adapter's lora_A and each SFT adapter's (the reference SFT shares its seed with
its CPT, and so its initialisation);
and the diff's random-update null (null_sd_cos, null_sd_undo_frac: a norm-matched random SFT update, mean 0).
Rows: per decoder layer (block "" = all its modules) and the whole model (layer -1). The diffs are cached in the
sweep folder's nulls/ (gitignored); the table and figure are committed.
"""

import argparse
from pathlib import Path

import pandas as pd

from layerprobe.plot.study import null_panel
from layerprobe.sources.presets import resolve_model
from layerprobe.weights.diff import diff_checkpoints

REF = "cpt.lora_alpha=128,sft.lora_alpha=8,sft.target_modules=A,seed={seed}"
RESEED = "sft-reseed,seed={seed}"
QUANTITIES = ["cos_cpt_sft", "undo_frac", "null_sd_cos", "null_sd_undo_frac"]


def _diff(cache: Path, a, b, c) -> pd.DataFrame:
    if cache.is_file():
        return pd.read_parquet(cache)
    df = diff_checkpoints(a, b, c)
    cache.parent.mkdir(parents=True, exist_ok=True)
    df.to_parquet(cache)
    return df


def lora_a_cosine(cpt: Path, sft: Path) -> float:
    """Mean cosine between the CPT adapter's and the SFT adapter's lora_A of each module both adapt: near 1 when the
    two stages drew the same initialisation (the same seed for the same shapes), near 0 otherwise."""
    import torch
    from safetensors.torch import load_file

    a, b = load_file(cpt / "adapter_model.safetensors"), load_file(sft / "adapter_model.safetensors")
    keys = [k for k in a if "lora_A" in k and k in b]
    return float(
        sum(torch.nn.functional.cosine_similarity(a[k].flatten(), b[k].flatten(), dim=0) for k in keys) / len(keys)
    )


def groups(df: pd.DataFrame, suffix: str = "") -> pd.DataFrame:
    """cos_cpt_sft, undo_frac and their random-update nulls per (layer, block) and for the whole model (layer -1,
    block "")."""
    rows = df[(df["param"] == "") & (df["module"] == "") & df["quantity"].isin(QUANTITIES)]
    return rows.pivot_table(index=["layer", "block"], columns="quantity", values="value").add_suffix(suffix)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--grid", type=Path, default=Path("runs/study_a-smollm2-135m"))
    ap.add_argument("--controls", type=Path, default=Path("runs/study_a-controls-smollm2-135m"))
    ap.add_argument("--out", type=Path, default=Path("figures/study_a/smollm2-135m"))
    ap.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    args = ap.parse_args()
    base = resolve_model("smollm2-135m")
    frames = []
    for seed in args.seeds:
        ref, re = args.grid / REF.format(seed=seed), args.controls / RESEED.format(seed=seed)
        if not ((ref / "sft" / "DONE").is_file() and (re / "sft" / "DONE").is_file()):
            print(f"seed {seed}: reference or reseed run not finished, skipped")
            continue
        cache = args.grid / "nulls" / f"seed={seed}"
        d_ref = _diff(cache / "ref.parquet", base, ref / "merged", ref / "sft")
        d_re = _diff(cache / "reseed.parquet", base, re / "merged", re / "sft")
        d_ss = _diff(cache / "sft_vs_sft.parquet", ref / "merged", ref / "sft", re / "sft")
        t = groups(d_ref).join(groups(d_re, "_reseed")[["cos_cpt_sft_reseed", "undo_frac_reseed"]])
        t["cos_sft_sft"] = groups(d_ss)["cos_cpt_sft"]  # cos(B - A, C - B) = cos(dSFT_ref, dSFT_reseed)
        t["lora_a_cos"] = lora_a_cosine(ref / "cpt", ref / "sft")  # same for every row of the seed
        t["lora_a_cos_reseed"] = lora_a_cosine(ref / "cpt", re / "sft")
        frames.append(t.reset_index().assign(seed=seed))
        m = t.loc[(-1, "")]
        print(
            f"seed {seed}: model cos_cpt_sft {m['cos_cpt_sft']:+.4f} (reseed {m['cos_cpt_sft_reseed']:+.4f}, random "
            f"null sd {m['null_sd_cos']:.4f}), undo_frac {m['undo_frac']:+.4f}; "
            f"cos(dSFT, dSFT') {m['cos_sft_sft']:+.3f}; "
            f"cos(lora_A of CPT, of SFT) {m['lora_a_cos']:.3f} (reseed {m['lora_a_cos_reseed']:.3f})"
        )
    if not frames:
        raise SystemExit("no seed has both runs finished; run the study A sweeps first")
    table = pd.concat(frames, ignore_index=True)
    args.out.mkdir(parents=True, exist_ok=True)
    table.to_csv(args.out / "nulls.csv", index=False, float_format="%.6g")
    null_panel(table, args.out / "nulls.png")
    print(f"{args.out / 'nulls.csv'}")


if __name__ == "__main__":
    main()
