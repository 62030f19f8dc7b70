"""``layerprobe sweep CONFIG``: a grid of pipeline runs (conditions x grid x seeds), resumable, with a results table."""

from __future__ import annotations

HELP = "run a sweep (conditions x grid x seeds, each cell a run folder); resumable; writes results.csv and figures"
EXAMPLE = ("layerprobe sweep experiments/study_a/sweep.yaml --dry-run\n"
           "  layerprobe sweep experiments/study_b/sweep.yaml --only 'random*' --set sft.max_steps=20\n"
           "  layerprobe sweep experiments/study_a/sweep.yaml --redraw --format svg   # figures from results.csv")
SHOWN = ("cpt.cloze_acc", "sft.cloze_acc", "retention_drop", "sft.gozaru_rate", "sft.eos_rate", "cpt.general_loss",
         "sft.general_loss", "cell_seconds")


def add_arguments(parser) -> None:
    from layerprobe.commands.options import add_format_argument

    parser.add_argument("config", metavar="CONFIG", help="sweep YAML (base, grid, conditions, seeds, out, plot)")
    parser.add_argument("--out", metavar="DIR", help="sweep folder (default: the YAML's out:)")
    parser.add_argument("--figures", metavar="DIR", help="figure folder (default: the YAML's figures:, else "
                        "<out>/figures)")
    parser.add_argument("--only", metavar="NAME_GLOB", help="run only the cells whose names match, e.g. 'mlp*'")
    parser.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config key in every cell (repeatable), e.g. --set model=smollm2-135m")
    parser.add_argument("--dry-run", action="store_true", help="list the cells and what each one sets; run nothing")
    parser.add_argument("--collect", action="store_true",
                        help="rebuild results.csv and the figures from the finished cells; run nothing")
    parser.add_argument("--redraw", action="store_true",
                        help="redraw the figures and interval tables from the figure folder's results.csv alone "
                             "(no cell folders needed); run nothing")
    parser.add_argument("--no-reuse", action="store_true",
                        help="train CPT in every cell instead of reusing an identical finished CPT")
    add_format_argument(parser)
    parser.add_argument("--verbose", action="store_true", help="also print each cell's pipeline lines")


def parse_sets(sets: list[str]) -> dict:
    import yaml

    out = {}
    for s in sets:
        key, eq, value = s.partition("=")
        if not eq or not key.strip():
            raise ValueError(f"--set expects KEY=VALUE such as model=smollm2-135m, got {s!r}")
        out[key.strip()] = yaml.safe_load(value) if value.strip() else ""
    return out


def run(args) -> int:
    from layerprobe.plot.style import figure_formats

    with figure_formats(args.format):
        return _run(args)


def _run(args) -> int:
    from layerprobe import rundir
    from layerprobe.sweep import (RESULTS, SWEEP_JSON, collect, format_results, load_sweep, redraw, run_sweep,
                                  select_cells)

    sweep = load_sweep(args.config, out=args.out, overrides=parse_sets(args.sets), figures=args.figures)
    cells = select_cells(sweep, args.only)
    if args.dry_run:
        for i, c in enumerate(cells, 1):
            done = rundir.summary_path(sweep.out / c.name).is_file()
            sets = ", ".join(f"{k}={v}" for k, v in c.overrides.items())
            print(f"[{i}/{len(cells)}] {c.name}{'  (finished)' if done else ''}\n        {sets}")
        print(f"{len(cells)} cells -> {sweep.out}")
        return 0
    if args.redraw:
        table = redraw(sweep)
        print(f"redrew the figures and interval tables of {len(table)} cells from {sweep.figures / RESULTS}")
        return 0
    if args.collect:
        table = collect(sweep)
    else:
        table = run_sweep(sweep, only=args.only, log=lambda s: print(s, flush=True),
                          pipeline_log=(lambda s: print("      " + s, flush=True)) if args.verbose else None,
                          reuse=not args.no_reuse)
    failed = table.attrs.get("failed", [])
    if table.empty:
        print(f"no finished cells in {sweep.out} yet")
        return 1 if failed else 0
    print()
    print(format_results(table, sweep.axes + ["seed"], list(SHOWN)))
    print(f"\nresults: {sweep.out / RESULTS}   log: {sweep.out / SWEEP_JSON}   figures: {sweep.figures}")
    return 1 if failed else 0
