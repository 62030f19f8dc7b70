"""``layerprobe attribute``: which layers' SFT change caused the forgetting, and which carry the style."""

from __future__ import annotations

from layerprobe.commands.options import add_format_argument
from layerprobe.core import rundir
from layerprobe.core.config import TrainConfig, resolve
from layerprobe.core.config_values import load_yaml

HELP = (
    "revert each layer / block of the SFT change to the CPT weights (and apply each alone), evaluate retention "
    "and style, plot the per-layer effect"
)
EXAMPLE = (
    "layerprobe attribute --run runs/demo            # base = runs/demo/merged, tuned = runs/demo/sft\n"
    "  layerprobe attribute --base cpt_merged/ --tuned sft_adapter/ --config study.yaml --groups layers,cells "
    "--select 'mlp & layers:0-3'"
)


def add_arguments(parser) -> None:
    _model_arguments(parser)
    _evaluation_arguments(parser)
    parser.add_argument(
        "--out", metavar="DIR", help="records, figures and cache go here (default: RUN_DIR/attribute, else ./attribute)"
    )
    parser.add_argument("--cache", metavar="FILE", help="evaluation cache (default: OUT/cache.json)")
    parser.add_argument("--no-cache", action="store_true", help="evaluate everything again, keep no cache")
    parser.add_argument("--top", type=int, default=8, metavar="N", help="groups per metric in the printed table")
    add_format_argument(parser)


def _model_arguments(parser) -> None:
    """The two models and the groups of weights swapped between them."""
    parser.add_argument(
        "--run",
        metavar="RUN_DIR",
        help="a run folder of `layerprobe train`: base = RUN_DIR/merged, tuned = RUN_DIR/sft, "
        "evaluation as in RUN_DIR/config.yaml",
    )
    parser.add_argument("--base", metavar="CPT_MODEL", help="the CPT model folder (merged safetensors)")
    parser.add_argument(
        "--tuned", metavar="SFT_MODEL", help="the SFT model folder, or an SFT LoRA adapter folder trained on --base"
    )
    parser.add_argument(
        "--groups",
        default="layers,blocks",
        metavar="A,B",
        help="layers (each decoder layer), blocks (each block kind), cells (each block of each "
        "layer); default layers,blocks",
    )
    parser.add_argument(
        "--select",
        action="append",
        default=[],
        metavar="SELECTOR",
        help="one more group, as a selector (mlp & layers:0-3); repeatable",
    )
    parser.add_argument(
        "--modes",
        default="revert,apply",
        metavar="A,B",
        help="revert (CPT weights on the group) and/or apply (SFT change on the group only)",
    )


def _evaluation_arguments(parser) -> None:
    parser.add_argument(
        "--config",
        metavar="FILE",
        help="YAML config whose data and eval sections define the evaluation (default: the run's "
        "config.yaml with --run, else the built-in toy world)",
    )
    parser.add_argument(
        "--probes",
        metavar="FILE",
        help="knowledge probes (JSONL/JSON/Parquet: kind cloze|qa, prompt, answer) instead of the config's data.probes",
    )
    parser.add_argument(
        "--max-probes",
        type=int,
        metavar="N",
        help="evaluate at most N probes of each kind (overrides eval.max_probes; fewer = cheaper)",
    )
    parser.add_argument(
        "--max-instructions",
        type=int,
        metavar="N",
        help="evaluate at most N held-out instructions (overrides eval.max_instructions)",
    )
    parser.add_argument(
        "--lm-eval-tasks",
        metavar="A,B",
        help="lm-evaluation-harness tasks to run on every variant too (tasks of the harness, of "
        "eval.lm_eval_include, layerprobe_mc); default none: the config's eval.lm_eval_tasks "
        "are not run here unless named",
    )


def _inputs(args):
    """(base, tuned, config path, output folder, evaluation config) from --run or --base/--tuned."""
    from pathlib import Path

    base, tuned, config = args.base, args.tuned, args.config
    if args.run:
        run_dir = Path(args.run)
        base = base or str(rundir.stage_dir(run_dir, "merge"))
        tuned = tuned or str(rundir.stage_dir(run_dir, "sft"))
        if not config and rundir.is_run(run_dir):
            config = str(rundir.config_path(run_dir))
    if not base or not tuned:
        raise ValueError(
            f"expected --run RUN_DIR, or --base CPT_MODEL and --tuned SFT_MODEL; got base={base!r}, tuned={tuned!r}"
        )
    out = Path(args.out or (rundir.attribute_dir(args.run) if args.run else "attribute"))
    cfg = resolve(load_yaml(config)) if config else TrainConfig()
    if args.probes:
        cfg.data.probes = args.probes
    if args.max_probes is not None:
        cfg.eval.max_probes = args.max_probes
    if args.max_instructions is not None:
        cfg.eval.max_instructions = args.max_instructions
    cfg.eval.lm_eval_tasks = [t.strip() for t in (args.lm_eval_tasks or "").split(",") if t.strip()]
    return base, tuned, config, out, cfg


def _print_effects(records, top: int) -> None:
    from layerprobe.record.attribution_records import effects

    e = effects(records)
    for metric in dict.fromkeys(e["metric"]):
        m = e[e["metric"] == metric]
        full = m["sft_effect"].iloc[0]
        if full == 0 and (m["effect"] == 0).all():
            print(f"\n{metric}: {m['value'].iloc[0]:.4g} in the tuned model, the base model and every variant")
            continue
        wide = m.pivot_table(index="group", columns="mode", values=["effect", "share"], aggfunc="first")
        wide.columns = [f"{mode} {what}" for what, mode in wide.columns]
        wide = wide[[c for c in ("revert effect", "revert share", "apply effect", "apply share") if c in wide]]
        wide["rel_change"] = m.groupby("group")["rel_change"].first()
        for col in ("weight_share", "trained_share", "delta_share"):
            if col in m:
                wide[col.replace("_", " ")] = m.groupby("group")[col].first()
        wide = wide.reindex(wide[wide.columns[0]].abs().sort_values(ascending=False).index).head(top)
        print(
            f"\n{metric}: tuned - base = {full:+.4g}; revert effect = value - tuned, apply effect = value - base, "
            "share = effect / whole change (1 = this group alone accounts for all of it); the group's share of "
            "the weights SFT changed (weight share), of the parameters it trained (trained share: r*(in+out) per "
            "LoRA matrix) and of ||W_t - W_b||^2 (delta share): a share above one of them is more than that "
            "measure of its size predicts"
        )
        print(wide.to_string(float_format=lambda v: f"{v:+.3g}"))


def run(args) -> int:
    from pathlib import Path

    from layerprobe.attribution.attribute import AttributeConfig, attribute_with_config
    from layerprobe.plot import figure_formats
    from layerprobe.plot.effects import attribution_figures
    from layerprobe.record.records import write_table

    base, tuned, config, out, cfg = _inputs(args)
    acfg = AttributeConfig(
        groups=tuple(g for g in args.groups.split(",") if g.strip()) + tuple(args.select),
        modes=args.modes,
        run=Path(tuned).name if not args.run else Path(args.run).name,
        cache=None if args.no_cache else str(args.cache or out / "cache.json"),
    )
    res = attribute_with_config(base, tuned, cfg, acfg, source=config, log=lambda s: print(s, flush=True))
    print(f"\ncost: {res.cost()}")
    _print_effects(res.records, args.top)
    path = write_table(res.records, rundir.attribute_records(out))
    with figure_formats(args.format):
        figures = attribution_figures(res.records, out / "figures")
    print(f"\nwrote {path} and {len(figures)} figures in {out / 'figures'}")
    return 0
