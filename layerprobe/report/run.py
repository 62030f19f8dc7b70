"""The report of one run folder: what the run measured (base / CPT / SFT), where the weights moved (heatmaps per
phase on one colour scale, three-way diff, causal attribution, when present) and how it was made (config,
model, data, versions, commit, wall times). Everything is read from the run's files; nothing is trained."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import pandas as pd

from layerprobe.core import rundir
from layerprobe.report.page import Page

SUMMARY = rundir.SUMMARY
PHASES = rundir.EVAL_PHASES
PHASE_TITLES = {"base": "base", "cpt": "after CPT", "sft": "after SFT", "sft_best": "at the kept SFT step"}


def summary_table(summary: dict) -> pd.DataFrame:
    """One row per metric, one column per evaluated model: every numeric key the phases hold, in first-seen order
    (new metrics appear without a change here)."""
    phases = [p for p in PHASES if isinstance(summary.get(p), dict)]
    keys = list(
        dict.fromkeys(
            k
            for p in phases
            for k, v in summary[p].items()
            if v is None or (isinstance(v, (int, float)) and not isinstance(v, bool))
        )
    )
    rows = [{"metric": k, **{PHASE_TITLES[p]: summary[p].get(k) for p in phases}} for k in keys]
    df = pd.DataFrame(rows, columns=["metric", *[PHASE_TITLES[p] for p in phases]])
    for c in df.columns[1:]:
        df[c] = pd.to_numeric(df[c], errors="coerce")
    return df


def stage_table(summary: dict) -> pd.DataFrame:
    rows = [
        {
            "stage": s,
            "what": info.get("what", ""),
            "steps": info.get("steps"),
            "final loss (nats/token)": info.get("final_loss"),
            "seconds": info.get("seconds"),
        }
        for s, info in (summary.get("stages") or {}).items()
    ]
    return pd.DataFrame(rows)


def _records(run: Path) -> pd.DataFrame | None:
    from layerprobe.record.records import load_records

    try:
        return load_records(run)
    except (FileNotFoundError, ValueError):
        return None


def _provenance(run: Path, summary: dict, config: dict) -> tuple[pd.DataFrame, str]:
    """Rows of what made the run, and a note on where the versions come from."""
    from layerprobe.record.records import git_commit, package_versions

    metas = [json.loads(f.read_text()) for f in sorted(rundir.records_dir(run).glob("meta-*.json"))]
    data = config.get("data") or {}
    rows = [
        ("model", summary.get("model") or config.get("model", "")),
        ("base model folder", summary.get("base_model", "")),
        ("CPT data", data.get("cpt", "")),
        ("SFT data", data.get("sft", "")),
        ("seed", config.get("seed", "")),
        ("config hash", summary.get("config_hash", "")),
        ("wall time of the run (s)", summary.get("wall_seconds", "")),
        ("base model build or load (s)", summary.get("base_seconds", "")),
    ]
    rows += [(f"machine: {k}", v) for k, v in (summary.get("machine") or {}).items()]  # what the numbers depend on
    if metas:
        meta = metas[0]
        rows += [
            ("git commit (at training)", meta.get("git_commit") or "not a git checkout"),
            ("python (at training)", meta.get("python", "")),
        ]
        rows += [(f"{k} (at training)", v) for k, v in (meta.get("packages") or {}).items()]
        note = f"Versions and commit as recorded at training ({', '.join(m.get('phase', '?') for m in metas)})."
    else:
        rows += [("git commit (now, at report time)", git_commit(Path(__file__).parent) or "not a git checkout")]
        rows += [(f"{k} (now)", v) for k, v in package_versions().items()]
        note = (
            "This run has no records/meta-*.json (trained without --record): the versions and commit below are "
            "those of the report, not necessarily of the training."
        )
    return pd.DataFrame(rows, columns=["what", "value"]).astype({"value": str}), note


def build_run_page(run: Path, link_up: str = "") -> Page:
    """The page of one run folder (see the module docstring)."""
    import yaml

    summary_file, config_file = rundir.summary_path(run), rundir.config_path(run)
    summary = json.loads(summary_file.read_text()) if summary_file.is_file() else {}
    config = yaml.safe_load(config_file.read_text()) if config_file.is_file() else {}
    page = Page(f"layerprobe run {run.name}")
    if link_up:
        page.raw(f"<p class='muted'><a href='{link_up}'>back to the sweep</a></p>")
    page.text(f"Model: {summary.get('model') or config.get('model', '?')}. Folder: {run.resolve()}.", "muted")

    page.heading("What the run measured", anchor="summary")
    if summary:
        page.table(summary_table(summary), text_columns=("metric",))
        page.text("Accuracies and rates are shares of the probes / answers; losses are in nats per token.", "muted")
        kept = summary.get("keep_best")
        if isinstance(kept, dict):  # sft.keep_best: which step, and what stopping there bought
            page.text(
                f"The kept SFT step (sft.keep_best {kept.get('rule', '')}): step {kept.get('step')} of "
                f"{kept.get('last_step')}, {kept.get('style_share', float('nan')):.0%} of the style gain; its "
                f"model is evaluated in full as '{PHASE_TITLES['sft_best']}'. On the probes, stopping there keeps "
                + ", ".join(f"{k.split('.', 1)[1]} {v:+.3f}" for k, v in kept.items() if k.startswith("kept."))
                + " nats of log-probability against the end, and gives up "
                f"{kept.get('style_lost', float('nan')):.3f} nats of style log-odds.",
                "muted",
            )
    else:
        page.note(f"No {SUMMARY} yet: the run has not finished its evaluation stage.")

    records = _records(run)
    training = (
        None if records is None else records[records["phase"].isin(["cpt", "sft"]) & (records["block"] != "eval")]
    )
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        _training(page, run, training, tmp / "records")
        _diff(page, run, tmp / "diff")
        _attribution(page, run, tmp / "attribute")
        stages = stage_table(summary)
        page.heading("How it was made", anchor="provenance")
        if len(stages):
            page.table(stages, digits=3, text_columns=("stage", "what"))
        prov, note = _provenance(run, summary, config)
        page.text(note, "muted")
        page.table(prov, text_columns=("what", "value"))
        if config_file.is_file():
            page.heading(config_file.name, level=3)
            page.pre(config_file.read_text(encoding="utf-8"))
    return page


def _training(page: Page, run: Path, training: pd.DataFrame | None, out: Path) -> None:
    """The records' heatmaps per quantity, and the probes over training steps, drawn into ``out``."""
    from layerprobe.plot import plot_run
    from layerprobe.plot.probes import FIGURE as PROBE_FIGURE

    page.heading("Where the weights moved during training", anchor="heatmaps")
    if training is not None and len(training):
        paths = plot_run(run, out)
        by_kind: dict[str, list[Path]] = {}
        for p in paths:
            by_kind.setdefault(p.stem.split("_", 1)[1], []).append(p)
        probed = by_kind.pop(PROBE_FIGURE, [])
        if by_kind:
            page.text(
                "Per quantity, CPT and SFT side by side on one colour scale; grey cells have no value "
                "(frozen or not recorded).",
                "muted",
            )
        for kind, group in by_kind.items():
            page.heading(kind.replace("_", " "), level=3)
            page.figures(group, [p.stem.replace("_", " ") for p in group])
        if probed:
            page.heading("When the probes moved during training", anchor="probes")
            page.text(
                "Per phase, on one step axis: the per-layer drift (or update ratio) on top, and the probes "
                "scored by likelihood every few steps below it (log-probability of the gold answer, the "
                "share whose every gold token is the top choice, the style log-odds). The last point is "
                "the trained model, which the evaluation above scores with the same scorer.",
                "muted",
            )
            page.figures(probed, [p.stem.replace("_", " ") for p in probed])
    else:
        page.note(
            "No training records in this run (train with --record to get per-layer heatmaps, "
            "--sft.probe_every N to probe the facts and style during SFT)."
        )


def _diff(page: Page, run: Path, out: Path) -> None:
    """The run's three-way diff (base, CPT, SFT): the whole model's numbers and the figures, drawn into ``out``."""
    from layerprobe.plot.run import diff_figures, diff_records

    diff = diff_records(run)
    if diff is not None:
        page.heading("Three-way diff: base, CPT, SFT", anchor="diff")
        whole = diff[(diff["block"] == "") & (diff["param"] == "")]
        if len(whole):
            page.table(whole[["quantity", "value"]].reset_index(drop=True), digits=4, text_columns=("quantity",))
        figs = diff_figures(diff, out)
        page.figures(figs, [p.stem.replace("_", " ", 1) for p in figs])


def _attribution(page: Page, run: Path, out: Path) -> None:
    """The run's causal attribution: the whole SFT effect, the groups' sizes and the figures, drawn into ``out``."""
    from layerprobe.plot.effects import attribution_figures
    from layerprobe.record.attribution_records import DENOMINATORS, effects

    attr = rundir.attribute_records(rundir.attribute_dir(run))
    if attr.is_file():
        from layerprobe.record.records import load_records

        page.heading("Causal attribution: which layers carry the SFT change", anchor="attribution")
        rec = load_records(attr)
        e = effects(rec)
        whole = e.groupby("metric", sort=False)["sft_effect"].first().reset_index()
        whole.columns = ["metric", "SFT model - CPT model"]
        page.table(whole, digits=4, text_columns=("metric",))
        sizes = [c for c in DENOMINATORS if c in e.columns]
        spans = e[e["layer"] < 0].groupby("group", sort=False)[sizes].first().reset_index()
        if sizes and len(spans):
            page.text(
                "Size of each group spanning several layers, three ways: its share of the weights SFT "
                "changed (weight), of the parameters SFT trained (trained: r * (in + out) per LoRA matrix) "
                "and of ||W_SFT - W_CPT||^2 (delta). A group's share of an effect divided by one of them: "
                "1 = as much as that size predicts.",
                "muted",
            )
            page.table(spans, digits=3, text_columns=("group",))
        figs = attribution_figures(rec, out)
        page.figures(figs, [p.stem.replace("_", " ") for p in figs])
