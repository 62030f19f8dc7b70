"""``layerprobe train``: CPT -> merge -> SFT -> eval into one run folder (the built-in toy world by default)."""

from __future__ import annotations

from layerprobe.core import rundir
from layerprobe.core.config import add_config_arguments, config_from_args
from layerprobe.report import write_report
from layerprobe.train.pipeline import default_out, format_table, run_pipeline

HELP = "run the whole pipeline (CPT -> merge -> SFT -> eval) into one run folder; the toy world by default"
EXAMPLE = (
    "layerprobe train --record\n"
    "  layerprobe train --record --config experiments/study_a/config.yaml --cpt.lora_alpha 32 --out runs/a32"
)


def add_arguments(parser) -> None:
    parser.usage = (
        f"layerprobe {parser.prog.split()[-1]} [--out DIR] [--overwrite] [--config FILE] [--record] "
        "[--SECTION.KEY VALUE ...]"
    )
    parser.add_argument(
        "--out",
        metavar="DIR",
        help="run folder (default: runs/<timestamp>); a rerun skips "
        "finished stages and, without --config, reuses the folder's config.yaml",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace a run folder made with another config")
    if parser.prog.split()[-1] == "train":
        parser.add_argument(
            "--no-report",
            action="store_true",
            help="do not write RUN/report.html (the HTML report: `layerprobe report RUN`)",
        )
    add_config_arguments(parser)


def run(args) -> int:
    return run_stages(args, only=None)


def run_stages(args, only: str | None) -> int:
    """Shared by train and the one-stage commands: build the config, run, print the lines and the table."""
    from pathlib import Path

    out = Path(args.out) if args.out else default_out()
    if not args.config and rundir.is_run(out):
        args.config = str(rundir.config_path(out))  # a run folder knows its config; flags still override it
        print(f"config     {args.config}", flush=True)
    cfg = config_from_args(args)
    summary = run_pipeline(
        cfg, out, overwrite=args.overwrite, progress=True, log=lambda s: print(s, flush=True), only=only
    )
    if "eval" in summary.get("stages", {}) and "cpt" in summary:
        print()
        print(format_table(summary))
        print(f"\nsummary: {out}/summary.json   wall time {summary['wall_seconds']:.0f}s")
        if only is None and not getattr(args, "no_report", False):
            print(f"report:  {write_report(out)}")
    return 0
