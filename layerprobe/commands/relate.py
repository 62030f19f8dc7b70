"""``layerprobe relate SWEEP_DIR [SWEEP_DIR ...]``: per-(layer, block) features of each run against the run's
outcomes, per stratum (all runs, per SFT method, per study), with p-values that respect shared CPTs."""

from __future__ import annotations

from layerprobe.commands.options import add_format_argument

HELP = (
    "correlate per-(layer, block) drift, update and gradient mass of sweeps' runs with their outcomes (Spearman "
    "and partial Spearman given the total SFT drift, per stratum, permutations within CPT groups)"
)
EXAMPLE = (
    "layerprobe relate runs/study_a runs/study_b --outcomes retention_drop,gozaru_rate --out runs/relate\n"
    "  layerprobe relate --features runs/relate/features.parquet --out runs/relate   (again, from the inputs "
    "relate kept)\n"
    "  features: final_drift, update_path, grad_mass (+ diff quantities such as undo_frac); outcomes: "
    "retention_drop, qa_drop, loss_rise, gozaru_rate, eos_rate or PHASE.KEY of summary.json"
)


def add_arguments(parser) -> None:
    from layerprobe.analyse.relate_config import FEATURES_FILE, MIN_RUNS, MIN_WITHIN, PERMUTATIONS

    parser.add_argument(
        "sweeps",
        nargs="*",
        metavar="SWEEP_DIR",
        help="folders of run folders (each with summary.json and records/), or run folders; each "
        "folder named is a study",
    )
    parser.add_argument(
        "--features",
        action="append",
        default=[],
        metavar="A,B | FILE",
        help="features to relate (default: all present), or a feature table (.parquet, the "
        f"{FEATURES_FILE} relate writes) to recompute from without run folders; may repeat",
    )
    parser.add_argument("--phases", default="", metavar="A,B", help="record phases to use (default: all present)")
    parser.add_argument(
        "--outcomes", default="", metavar="A,B", help="outcomes (default: every named outcome the summaries hold)"
    )
    parser.add_argument(
        "--min-runs",
        type=int,
        default=MIN_RUNS,
        metavar="N",
        help=f"below N runs say there are too few for a claim (default {MIN_RUNS}: the least for "
        "which an exact two-sided Spearman test can reach p < 0.05)",
    )
    parser.add_argument("--alpha", type=float, default=0.05, help="q-value threshold for a finding (default 0.05)")
    parser.add_argument(
        "--permutations",
        type=int,
        default=PERMUTATIONS,
        metavar="N",
        help=f"random permutations per test when there are more orderings (default {PERMUTATIONS})",
    )
    parser.add_argument(
        "--min-within",
        type=int,
        default=MIN_WITHIN,
        metavar="N",
        help="permute within CPT groups only when they allow at least N orderings, else permute "
        f"whole groups (default {MIN_WITHIN})",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the random permutations (default 0)")
    parser.add_argument(
        "--out",
        metavar="DIR",
        help="where relate.csv, features.parquet and the heatmaps go "
        "(default: SWEEP_DIR/relate, or the feature table's folder)",
    )
    parser.add_argument("--no-figures", action="store_true", help="write the tables only")

    add_format_argument(parser)
    parser.add_argument("--top", type=int, default=10, metavar="N", help="rows of the printed table (default 10)")


def run(args) -> int:
    from pathlib import Path

    from layerprobe.analyse.relate import relate_features, relate_runs, write_outputs
    from layerprobe.analyse.relate_config import RelateConfig

    files = [f for f in args.features if f.endswith(".parquet") or Path(f).is_file()]
    names = ",".join(f for f in args.features if f not in files)
    if len(files) > 1 or (files and args.sweeps) or not (files or args.sweeps):
        raise ValueError(
            f"expected sweep folders or one feature table (--features FILE.parquet), got "
            f"{len(args.sweeps)} folder(s) and {len(files)} table(s)"
        )
    cfg = RelateConfig(
        features=names,  # type: ignore[arg-type]  # a comma-separated string is parsed by RelateConfig
        phases=args.phases,
        outcomes=args.outcomes,
        min_runs=args.min_runs,
        alpha=args.alpha,
        permutations=args.permutations,
        min_within=args.min_within,
        seed=args.seed,
    )
    res = relate_features(files[0], cfg) if files else relate_runs(args.sweeps, cfg)
    out = Path(args.out) if args.out else Path(files[0]).parent if files else Path(args.sweeps[0]) / "relate"
    t = res.table
    cells = t[["feature", "phase", "layer", "block"]].drop_duplicates().shape[0]
    print(
        f"{res.n_runs} runs in {res.design['cpt_group'].nunique()} CPT groups; strata: "
        f"{', '.join(dict.fromkeys(t['stratum']))}; {cells} feature cells x {res.outcomes.shape[1]} outcomes "
        f"= {len(t)} pairs, {t['p'].notna().sum()} with a p-value (a feature or outcome constant over the runs "
        "has none)"
    )
    for note in res.notes:
        print(note)
    t = t.dropna(subset=["rho_tested"])
    if len(t):
        top = t.reindex(t["rho_tested"].abs().sort_values(ascending=False).index).head(args.top)
        print(f"\nstrongest {len(top)} by |rho_tested| (the statistic each p tests):")
        print(top.to_string(index=False, float_format=lambda v: f"{v:.3g}"))
    if args.no_figures:
        paths = write_outputs(res, out, cfg.alpha, figures=False)
    else:
        from layerprobe.plot import figure_formats

        with figure_formats(args.format):
            paths = write_outputs(res, out, cfg.alpha)
    print(f"\nwrote {paths[0]}, {paths[1]}" + (f" and {len(paths) - 2} heatmaps in {out}" if len(paths) > 2 else ""))
    return 0
