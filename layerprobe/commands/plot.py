"""`layerprobe plot`: heatmaps of a run's records."""

HELP = "draw seaborn heatmaps (layer x step, layer x module) from the records of a run folder"
EXAMPLE = "layerprobe plot runs/demo --out figures/demo"


def add_arguments(p):
    p.add_argument("run_dir", help="a run folder (with records/) or a folder of runs")
    p.add_argument("--out", default=None, help="folder for the PNG files (default: RUN_DIR/figures)")
    p.add_argument("--quantity", action="append", default=None,
                   help="quantity to draw as layer x step (repeatable; default grad_norm, update_ratio, drift_ratio)")


def run(args):
    from layerprobe.plot import plot_run

    kw = {"quantities": args.quantity} if args.quantity else {}
    for path in plot_run(args.run_dir, args.out, **kw):
        print(path)
    return 0
