"""``layerprobe diff A B [C]``: what changed in the weights, per layer and module, streaming."""

from __future__ import annotations

import sys
from pathlib import Path

from layerprobe.commands.options import add_format_argument

HELP = "diff two or three checkpoints (or a LoRA adapter against its base) per layer and module, streaming"
EXAMPLE = (
    "layerprobe diff base/ cpt_merged/ sft_merged/ --out diff.parquet --figures figs/   "
    "# three-way: undo_frac = share of the CPT change that SFT pushed back"
)
_FIGURES = {
    "delta": ("delta_norm",),
    "two": ("rel_change", "cosine"),
    "three": ("rel_change", "rel_change_bc", "undo_frac", "cos_cpt_sft"),
}


def add_arguments(parser) -> None:
    parser.add_argument(
        "checkpoints",
        nargs="+",
        metavar="CHECKPOINT",
        help="A B [C]: checkpoint folders (model.safetensors or shards + index), .safetensors files "
        "or peft adapter folders (applied to the checkpoint before them); one adapter alone "
        "gives its dW",
    )
    parser.add_argument("--out", metavar="FILE", help="write the records table (.parquet or .csv)")
    parser.add_argument("--figures", metavar="DIR", help="write layer x module heatmaps (PNG) here")

    add_format_argument(parser)
    parser.add_argument(
        "--allow-missing",
        action="store_true",
        help="diff the tensors the checkpoints share and list the others, instead of failing",
    )
    parser.add_argument(
        "--allow-pickle",
        action="store_true",
        help="load .bin/.pt checkpoints with torch.load(weights_only=True) (refused by default)",
    )
    parser.add_argument(
        "--svd",
        type=int,
        default=0,
        metavar="K",
        help="also the top K singular values and rank90 of each 2-D delta (slower)",
    )
    parser.add_argument("--run", help="run name in the records (default: B_vs_A)")
    parser.add_argument("--threads", type=int, help="worker threads (default: torch's thread count)")
    parser.add_argument("--top", type=int, default=10, metavar="N", help="rows in the printed tables (default 10)")


def run(args) -> int:
    from layerprobe.record.records import table_path, write_table
    from layerprobe.weights.diff import DiffConfig, diff_checkpoints

    if len(args.checkpoints) > 3:
        raise ValueError(f"expected 1 to 3 checkpoints (A B [C]), got {len(args.checkpoints)}: {args.checkpoints}")
    if args.out:
        table_path(args.out)  # before the diff, not after it
    cfg = DiffConfig(
        svd=args.svd,
        allow_missing=args.allow_missing,
        allow_pickle=args.allow_pickle,
        run=args.run,
        threads=args.threads,
        progress=sys.stderr.isatty(),
    )
    df = diff_checkpoints(*args.checkpoints, config=cfg)  # type: ignore[misc]  # 1 to 3 paths, checked above
    mode = df.attrs["mode"]
    skipped, tied = df.attrs["skipped"], df.attrs["tied"]
    if skipped:
        print(f"skipped {len(skipped)} tensors (--allow-missing); first {min(10, len(skipped))}:")
        for line in skipped[:10]:
            print("  " + line)
    for line in tied:
        print("tied embeddings: " + line)
    cells = df[(df["param"] == "") & (df["module"] != "")]
    wide = cells.pivot_table(index=["layer", "block", "module"], columns="quantity", values="value").reset_index()
    for by in _FIGURES[mode][:1] + (("undo_frac",) if mode == "three" else ()):
        cols = ["layer", "block", "module"] + [q for q in _FIGURES[mode] + ("delta_norm",) if q in wide]
        top = wide.sort_values(by, ascending=False, na_position="last").head(args.top)[list(dict.fromkeys(cols))]
        print(f"\ntop {len(top)} layer x module cells by {by}:")
        print(top.to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    total = df[(df["block"] == "") & (df["param"] == "")].set_index("quantity")["value"]
    print("\nwhole model: " + ", ".join(f"{q}={total[q]:.4g}" for q in _FIGURES[mode] if q in total))
    if mode == "three":
        print(
            f"an unrelated SFT update (random, same norm per tensor) gives cos_cpt_sft 0 +- "
            f"{total['null_sd_cos']:.2g} and undo_frac 0 +- {total['null_sd_undo_frac']:.2g} (1 sd)"
        )
    if args.out:
        print(f"wrote {len(df)} records to {write_table(df, args.out)}")
    if args.figures:
        from layerprobe.plot import figure_formats

        with figure_formats(args.format):
            for path in write_figures(df, args.figures, _FIGURES[mode]):
                print(f"wrote {path}")
    return 0


def write_figures(df, out_dir, quantities) -> list[Path]:
    """One layer x module heatmap per quantity (``diff_<quantity>.png``), from the aggregated rows; signed
    quantities (undo_frac, cosines) on the diverging map centred at 0, untouched weights grey."""
    from layerprobe.plot import heatmap_layer_module

    return [heatmap_layer_module(df, q, Path(out_dir) / f"diff_{q}.png", phase="diff") for q in quantities]
