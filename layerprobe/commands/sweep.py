"""``layerprobe sweep CONFIG``: a grid of pipeline runs (conditions x grid x seeds), resumable, with a results table."""

from __future__ import annotations

from layerprobe.commands.options import add_format_argument

HELP = "run a sweep (conditions x grid x seeds, each cell a run folder); resumable; writes results.csv and figures"
EXAMPLE = (
    "layerprobe sweep experiments/study_a/sweep.yaml --dry-run\n"
    "  layerprobe sweep experiments/study_a/sweep.yaml --workers 2          # 2 cells at once on this machine\n"
    "  layerprobe sweep experiments/study_a/sweep.yaml --executor ray --address auto --cell-gpus 1\n"
    "  layerprobe sweep experiments/study_a/sweep.yaml --executor slurm --partition gpu --cell-gpus 1 --time 60\n"
    "  layerprobe sweep experiments/study_b/sweep.yaml --only 'random*' --set sft.max_steps=20\n"
    "  layerprobe sweep experiments/study_a/sweep.yaml --redraw --format svg   # figures from results.csv"
)
SHOWN = (
    "cpt.cloze_acc",
    "sft.cloze_acc",
    "retention_drop",
    "sft.gozaru_rate",
    "sft.eos_rate",
    "cpt.general_loss",
    "sft.general_loss",
    "cell_seconds",
)


def add_arguments(parser) -> None:
    parser.add_argument("config", metavar="CONFIG", help="sweep YAML (base, grid, conditions, seeds, out, plot)")
    parser.add_argument("--out", metavar="DIR", help="sweep folder (default: the YAML's out:)")
    parser.add_argument(
        "--figures", metavar="DIR", help="figure folder (default: the YAML's figures:, else <out>/figures)"
    )
    parser.add_argument("--only", metavar="NAME_GLOB", help="run only the cells whose names match, e.g. 'mlp*'")
    parser.add_argument(
        "--set",
        dest="sets",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config key in every cell (repeatable), e.g. --set model=smollm2-135m",
    )
    parser.add_argument("--dry-run", action="store_true", help="list the cells and what each one sets; run nothing")
    parser.add_argument(
        "--collect",
        action="store_true",
        help="rebuild results.csv and the figures from the finished cells; run nothing",
    )
    parser.add_argument(
        "--redraw",
        action="store_true",
        help="redraw the figures and interval tables from the figure folder's results.csv alone "
        "(no cell folders needed); run nothing",
    )
    parser.add_argument(
        "--no-reuse", action="store_true", help="train CPT in every cell instead of reusing an identical finished CPT"
    )
    add_format_argument(parser)
    parser.add_argument("--verbose", action="store_true", help="also print each cell's pipeline lines")
    run = parser.add_argument_group("where cells run (default: the YAML's executor:, else local with one worker)")
    run.add_argument(
        "--executor",
        metavar="NAME",
        help="local (this machine), ray (pip install 'layerprobe[ray]') "
        "or slurm (pip install 'layerprobe[slurm]'); another name than the YAML's drops its settings",
    )
    run.add_argument(
        "--workers",
        type=int,
        metavar="N",
        help="cells at once; local: N worker processes with "
        "cores/N torch threads (or one GPU) each; ray, slurm: at most N cells in flight",
    )
    run.add_argument("--cell-cpus", type=int, metavar="N", help="CPU cores (torch threads) per cell")
    run.add_argument("--cell-gpus", type=int, metavar="N", help="GPUs per cell (ray, slurm)")
    run.add_argument(
        "--address",
        metavar="ADDR",
        help="ray: join this cluster ('auto': the one running here); default: start a local one",
    )
    run.add_argument("--partition", metavar="NAME", help="slurm: the partition of the jobs")
    run.add_argument("--time", type=int, metavar="MINUTES", help="slurm: minutes a cell's job may run (default 120)")
    run.add_argument(
        "--slurm-cluster",
        choices=["slurm", "local"],
        help="slurm: 'local' runs the jobs through submitit's local executor on this machine (a test)",
    )


def executor_config(args, sweep):
    """The sweep YAML's executor: with the command line's options on top (another --executor starts afresh)."""
    from dataclasses import asdict

    from layerprobe.sweep.executors import ExecutorConfig

    given = {
        k: getattr(args, k)
        for k in ("workers", "cell_cpus", "cell_gpus", "address", "partition", "time", "slurm_cluster")
        if getattr(args, k, None) is not None
    }
    if args.executor and args.executor != sweep.executor.name:
        return ExecutorConfig(name=args.executor, **given)
    return ExecutorConfig(**{**asdict(sweep.executor), **given})


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
    from layerprobe.sweep import (
        RESULTS,
        SWEEP_JSON,
        collect,
        format_results,
        load_sweep,
        make_plan,
        redraw,
        run_sweep,
        select_cells,
    )

    sweep = load_sweep(args.config, out=args.out, overrides=parse_sets(args.sets), figures=args.figures)
    executor = executor_config(args, sweep)
    cells = select_cells(sweep, args.only)
    if args.dry_run:
        plan = make_plan(cells, sweep.out, reuse=not args.no_reuse, reuse_from=sweep.reuse_from)
        pending = [c.name for c in cells if c.name not in plan.finished]
        for i, c in enumerate(cells, 1):
            role = "finished" if c.name in plan.finished else plan.role(c.name, pending)
            sets = ", ".join(f"{k}={v}" for k, v in c.overrides.items())
            print(f"[{i}/{len(cells)}] {c.name}  ({role})\n        {sets}")
        print(f"{plan.summary(pending)} -> {sweep.out}; executor: {executor.describe()}")
        return 0
    if args.redraw:
        table = redraw(sweep)
        print(f"redrew the figures and interval tables of {len(table)} cells from {sweep.figures / RESULTS}")
        return 0
    if args.collect:
        table = collect(sweep)
    else:
        table = run_sweep(
            sweep,
            only=args.only,
            log=lambda s: print(s, flush=True),
            pipeline_log=(lambda s: print("      " + s, flush=True)) if args.verbose else None,
            reuse=not args.no_reuse,
            executor=executor,
        )
    failed = table.attrs.get("failed", [])
    if table.empty:
        print(f"no finished cells in {sweep.out} yet")
        return 1 if failed else 0
    print()
    print(format_results(table, sweep.axes + ["seed"], list(SHOWN)))
    print(f"\nresults: {sweep.out / RESULTS}   log: {sweep.out / SWEEP_JSON}   figures: {sweep.figures}")
    return 1 if failed else 0
