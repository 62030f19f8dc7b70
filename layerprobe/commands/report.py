"""``layerprobe report RUN_OR_SWEEP``: one self-contained HTML page of a run or a sweep."""

from __future__ import annotations

from layerprobe.report import write_report

HELP = "write one self-contained HTML report (tables, heatmaps, diff, attribution, provenance) of a run or a sweep"
EXAMPLE = (
    "layerprobe report runs/demo                      # -> runs/demo/report.html\n"
    "  layerprobe report runs/study_a --out study_a.html  # a sweep: results, intervals, figures, cell links"
)


def add_arguments(parser) -> None:
    parser.add_argument(
        "path",
        metavar="RUN_OR_SWEEP",
        help="a run folder (layerprobe train --out) or a sweep folder / figure folder with results.csv",
    )
    parser.add_argument("--out", metavar="FILE", help="the HTML file (default: RUN_OR_SWEEP/report.html)")
    parser.add_argument(
        "--no-cells",
        action="store_true",
        help="for a sweep: do not write the cells' own reports (links only to those that exist)",
    )


def run(args) -> int:
    print(write_report(args.path, args.out, cells=not args.no_cells))
    return 0
