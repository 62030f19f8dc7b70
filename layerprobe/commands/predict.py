"""``layerprobe predict SWEEP_DIR [SWEEP_DIR ...]``: predict each run's final forgetting and style from the first
part of its SFT (records and probe rows), validated leaving one group out, against two baselines; and which block's
movement tracks the probes' fall within runs (``layerprobe.analyse.within``), and each run's earliest probe step with 90
% of its style gain with what stopping there keeps (``layerprobe.evaluation.tradeoff``)."""

from __future__ import annotations

HELP = (
    "early warning: predict runs' final probe changes (and outcomes) from the first 20%% of SFT, validated "
    "leaving one condition / arm / world / seed out, against the mean and the carried-forward probe value"
)
EXAMPLE = (
    "layerprobe predict runs/dose_response --groups group,world --out runs/dose_response/predict\n"
    "  targets (default: every final.probe.* the runs have): final.probe.probe_logprob.cloze_heldout, "
    "final.probe.style_logodds.instruction, ... or an outcome (loss_rise, PHASE.KEY of summary.json)"
)


def add_arguments(parser) -> None:
    from layerprobe.analyse.predict import RIDGE, WINDOW

    parser.add_argument(
        "sweeps",
        nargs="+",
        metavar="SWEEP_DIR",
        help="folders of run folders trained with --sft.probe_every (summary.json, records/)",
    )
    parser.add_argument(
        "--targets", default="", metavar="A,B", help="what to predict (default: every final.probe.* column)"
    )
    parser.add_argument(
        "--groups",
        default="group",
        metavar="A,B",
        help="columns whose values are left out one at a time, one validation each (default "
        "'group': a sweep's condition group, e.g. the arm; also condition, world, seed)",
    )
    parser.add_argument(
        "--window", type=float, default=WINDOW, help=f"share of SFT's steps the prediction may see (default {WINDOW})"
    )
    parser.add_argument(
        "--ridge", type=float, default=RIDGE, help=f"ridge penalty on standardised features (default {RIDGE})"
    )
    parser.add_argument(
        "--out",
        metavar="DIR",
        help="where features.csv, predict.csv, predict_summary.csv, "
        "within.csv and tradeoff.csv go (default: SWEEP_DIR/predict)",
    )


def run(args) -> int:
    from pathlib import Path

    import pandas as pd

    from layerprobe.analyse.predict import feature_table, validate
    from layerprobe.analyse.within import within_runs
    from layerprobe.evaluation.tradeoff import best_step
    from layerprobe.record.records import load_records

    if not 0 < args.window < 1:
        raise ValueError(f"--window must be a share of the steps in (0, 1), got {args.window}")
    targets = [t for t in args.targets.split(",") if t]
    outcomes = [t for t in targets if not t.startswith("final.")]
    table = feature_table(args.sweeps, args.window, outcomes)
    targets = targets or [c for c in table if c.startswith("final.")]
    out = Path(args.out) if args.out else Path(args.sweeps[0]) / "predict"
    out.mkdir(parents=True, exist_ok=True)
    table.to_csv(out / "features.csv", index=False, float_format="%.6g")
    preds, summaries = [], []
    for groups in [g for g in args.groups.split(",") if g]:
        for target in targets:
            p, s = validate(table, target, groups, ridge=args.ridge)
            preds.append(p.assign(target=target, groups=groups))
            summaries.append(s)
    pd.concat(preds).to_csv(out / "predict.csv", index=False, float_format="%.6g")
    summary = pd.concat(summaries, ignore_index=True)
    summary.to_csv(out / "predict_summary.csv", index=False, float_format="%.4g")
    print(summary.to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    units = {r["run"]: f"world {r['world']}, seed {r['seed']}" for _, r in table.iterrows()}
    runs = {p.parent.name: p.parent for s in args.sweeps for p in Path(s).glob("*/summary.json")}
    records = {name: load_records(runs[name]) for name in units}
    within_runs(records, units).to_csv(out / "within.csv", index=False, float_format="%.4g")
    pd.DataFrame([{"run": name, **best_step(rec)} for name, rec in records.items()]).to_csv(
        out / "tradeoff.csv", index=False, float_format="%.4g"
    )
    print(f"wrote {out}/features.csv, predict.csv, predict_summary.csv, within.csv, tradeoff.csv ({len(table)} runs)")
    return 0
