"""`layerprobe plot`: heatmaps of a run's records."""

from layerprobe.commands.options import add_format_argument

HELP = (
    "draw a run's figures: heatmaps of its records (layer x step, layer x module), and of its diff "
    "(RUN/diff/*.parquet) and attribution (RUN/attribute/) when present"
)
EXAMPLE = "layerprobe plot runs/demo --out figures/demo --format svg"


def add_arguments(p):
    p.add_argument("run_dir", help="a run folder (with records/) or a folder of runs")
    p.add_argument("--out", default=None, help="folder for the PNG files (default: RUN_DIR/figures)")
    p.add_argument(
        "--quantity",
        action="append",
        default=None,
        help="quantity to draw as layer x step (repeatable; default grad_norm, update_ratio, drift_ratio)",
    )

    add_format_argument(p)


def run(args):
    from layerprobe.plot import figure_formats, plot_run
    from layerprobe.plot.run import run_figures

    with figure_formats(args.format):
        paths = (
            plot_run(args.run_dir, args.out, quantities=args.quantity)
            if args.quantity
            else run_figures(args.run_dir, args.out)
        )
        for path in paths:
            print(path)
    return 0
