"""``layerprobe relate SWEEP_DIR``: per-(layer, block) features of each run against the run's outcomes."""

from __future__ import annotations

HELP = "correlate per-(layer, block) drift, update and gradient mass of a sweep's runs with their outcomes (Spearman)"
EXAMPLE = ("layerprobe relate runs/study_a --outcomes retention_drop,gozaru_rate --out runs/study_a/relate\n"
           "  features: final_drift, update_path, grad_mass (+ diff quantities such as undo_frac); outcomes: "
           "retention_drop, qa_drop, loss_rise, gozaru_rate, eos_rate or PHASE.KEY of summary.json")


def add_arguments(parser) -> None:
    from layerprobe.relate import MIN_RUNS

    parser.add_argument("sweeps", nargs="+", metavar="SWEEP_DIR",
                        help="a folder of run folders (each with summary.json and records/), or run folders")
    parser.add_argument("--features", default="", metavar="A,B",
                        help="features to relate (default: all present)")
    parser.add_argument("--phases", default="", metavar="A,B", help="record phases to use (default: all present)")
    parser.add_argument("--outcomes", default="", metavar="A,B",
                        help="outcomes (default: every named outcome the summaries hold)")
    parser.add_argument("--min-runs", type=int, default=MIN_RUNS, metavar="N",
                        help=f"below N runs say there are too few for a claim (default {MIN_RUNS}: the least for "
                             "which an exact two-sided Spearman test can reach p < 0.05)")
    parser.add_argument("--alpha", type=float, default=0.05, help="q-value threshold for a finding (default 0.05)")
    parser.add_argument("--out", metavar="DIR", help="where relate.csv and the heatmaps go (default: SWEEP_DIR/relate)")
    parser.add_argument("--no-figures", action="store_true", help="write the table only")
    from layerprobe.commands.options import add_format_argument

    add_format_argument(parser)
    parser.add_argument("--top", type=int, default=10, metavar="N", help="rows of the printed table (default 10)")


def run(args) -> int:
    from pathlib import Path

    from layerprobe.relate import RelateConfig, relate_runs, write_outputs

    cfg = RelateConfig(features=args.features, phases=args.phases, outcomes=args.outcomes, min_runs=args.min_runs,
                       alpha=args.alpha)
    res = relate_runs(args.sweeps, cfg)
    out = Path(args.out) if args.out else Path(args.sweeps[0]) / "relate"
    t = res.table
    print(f"{res.n_runs} runs: {t[['feature', 'phase', 'layer', 'block']].drop_duplicates().shape[0]} feature cells x "
          f"{res.outcomes.shape[1]} outcomes = {len(t)} pairs, {t['p'].notna().sum()} with a defined rho "
          "(a feature or outcome constant over the runs has none)")
    for note in res.notes:
        print(note)
    t = t.dropna(subset=["rho"])
    if len(t):
        top = t.reindex(t["rho"].abs().sort_values(ascending=False).index).head(args.top)
        print(f"\nstrongest {len(top)} by |rho|:")
        print(top.to_string(index=False, float_format=lambda v: f"{v:.3g}"))
    if args.no_figures:
        out.mkdir(parents=True, exist_ok=True)
        res.table.to_csv(out / "relate.csv", index=False)
        paths = [out / "relate.csv"]
    else:
        from layerprobe.plot import figure_formats

        with figure_formats(args.format):
            paths = write_outputs(res, out, cfg.alpha)
    print(f"\nwrote {paths[0]}" + (f" and {len(paths) - 1} heatmaps in {out}" if len(paths) > 1 else ""))
    return 0
