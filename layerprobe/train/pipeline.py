"""``run_pipeline``: CPT -> merge -> SFT -> eval into one run folder (laid out by :mod:`layerprobe.core.rundir`).

A stage reruns only when its own inputs change (:mod:`layerprobe.train.fingerprint`): other eval settings re-evaluate,
other SFT settings keep CPT and merge. A folder whose stages were made from other inputs is refused unless
``overwrite``, which replaces exactly those stages after saying which. Before any stage runs, the whole config is
checked against the model and the data (:mod:`layerprobe.train.preflight`); CPT and SFT checkpoint while they train and
an interrupted phase resumes from its last checkpoint. One process at a time works in a folder (a lock).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from layerprobe.core import run_results, rundir
from layerprobe.core.config import TrainConfig, resolve
from layerprobe.core.config_data import TOYWORLD
from layerprobe.core.rundir import EVAL_PHASES, STAGES
from layerprobe.evaluation.evaluate import METRICS, OPTIONAL_METRICS
from layerprobe.evaluation.harness import check as check_harness
from layerprobe.sources.toyworld.base import architecture
from layerprobe.train.fingerprint import chain, changed_inputs, stage_inputs
from layerprobe.train.models import hidden_size, model_folder, resolve_precision
from layerprobe.train.preflight import check_phases, check_run
from layerprobe.train.run_data import load_data
from layerprobe.train.stage_table import STAGE_TABLE, PipelineData, RunContext
from layerprobe.train.threads import choose_threads, machine_info


def default_out() -> Path:
    return Path("runs") / time.strftime("%Y%m%d-%H%M%S")


# -- the run folder: which stages run, which are kept ---------------------------------------------------------


@dataclass
class Plan:
    """What a run does in its folder: each stage's state, and what changed since the folder's config."""

    state: dict[str, str]  # stage -> done | resume | run | stale (done, or checkpointed, with other inputs)
    changes: list[str]

    def stale(self) -> list[str]:
        return [s for s in STAGES if self.state[s] == "stale"]

    def changes_text(self) -> str:
        shown = "; ".join(self.changes[:3]) + (f"; ... ({len(self.changes)} in all)" if len(self.changes) > 3 else "")
        return shown or "inputs changed"


def plan_run(run_dir: Path, cfg: TrainConfig, fingerprints: dict[str, str], inputs: dict[str, dict]) -> Plan:
    """Compare each stage in ``run_dir`` with this config's fingerprints (call it holding the folder's lock).

    done: finished with the same inputs (skipped); resume: interrupted with the same inputs, with a checkpoint;
    stale: finished, or checkpointed, with other inputs (replaced only with overwrite); run: nothing kept.
    A folder of an older layerprobe (DONE without fingerprints) counts as done where its config is this one.
    """
    state = dict.fromkeys(STAGES, "run")
    if not rundir.is_run(run_dir):
        return Plan(state, [])
    old = run_results.read_config_dict(run_dir)
    try:
        same_config = resolve(old).hash() == cfg.hash()
    except ValueError:
        same_config = False
    first_stale = None
    for s in STAGES:
        info = rundir.read_done(run_dir, s)
        checkpoint = rundir.last_checkpoint(rundir.stage_dir(run_dir, s))
        if info is not None:
            fp = info.get("fingerprint", fingerprints[s] if same_config else None)
            state[s] = "done" if fp == fingerprints[s] else "stale"
        elif checkpoint is not None:
            state[s] = "resume" if rundir.started_fingerprint(run_dir, s) == fingerprints[s] else "stale"
        if state[s] == "stale" and first_stale is None:
            first_stale = (info or {}).get("inputs"), inputs[s]
    changes = changed_inputs(old, cfg.to_dict())
    if not changes and first_stale is not None:
        changes = changed_inputs(*first_stale)
    return Plan(state, changes)


@contextlib.contextmanager
def quiet_libraries():
    """Silence the libraries' own progress bars and deprecation chatter; the pipeline prints its own lines."""
    import warnings

    import datasets
    from transformers.utils import logging as hf_logging

    verbosity, hf_bars, ds_bars = (
        hf_logging.get_verbosity(),
        hf_logging.is_progress_bar_enabled(),
        datasets.is_progress_bar_enabled(),
    )
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    datasets.disable_progress_bars()
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=FutureWarning)
            warnings.filterwarnings("ignore", category=DeprecationWarning)
            yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if hf_bars:
            hf_logging.enable_progress_bar()
        if ds_bars:
            datasets.enable_progress_bars()


def run_pipeline(
    cfg: TrainConfig,
    out_dir: str | os.PathLike | None = None,
    overwrite: bool = False,
    progress: bool = False,
    log: Callable[[str], None] | None = None,
    only: str | None = None,
    reuse_from=(),
) -> dict:
    """Run CPT -> merge -> SFT -> eval (and figures) into ``out_dir``; returns the summary dict.

    Stages finished in ``out_dir`` with the same inputs are skipped and an interrupted training stage resumes
    from its checkpoint; stages made from other inputs are refused unless ``overwrite`` (then only they run
    again). ``only`` runs one stage (the ones before it must be done). ``reuse_from``: run folders (or folders
    of them) whose finished CPT and merge with the same inputs are linked in instead of training again.
    ``summary.json`` is written only once every stage is done.
    """
    with quiet_libraries():
        return _run(cfg, out_dir, overwrite, progress, log or (lambda s: None), only, reuse_from)


def _run(
    cfg: TrainConfig,
    out_dir,
    overwrite: bool,
    progress: bool,
    log: Callable[[str], None],
    only: str | None,
    reuse_from=(),
) -> dict:
    if only is not None and only not in STAGES:
        raise ValueError(f"unknown stage {only!r}; expected one of {', '.join(STAGES)}")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    threads, threads_reason = choose_threads(cfg.threads)
    t_start = time.time()
    run_dir = Path(out_dir) if out_dir else default_out()
    if not run_results.is_empty_or_run(run_dir):
        raise FileExistsError(
            f"{run_dir} exists and is not a layerprobe run folder (no {rundir.CONFIG}); choose another --out"
        )
    if only not in (None, STAGES[0]) and not rundir.is_run(run_dir):
        raise FileNotFoundError(
            f"{run_dir} is not a run folder with finished stages; run `layerprobe train --out "
            f"{run_dir}` or the stages before {only} first"
        )
    rundir.check_free(run_dir)  # another process on this folder: refused before anything is built
    data = load_data(cfg)
    if cfg.eval.lm_eval_tasks:  # the harness installed, its tasks known: before a base model is built or downloaded
        check_harness(cfg.eval, cfg.data.mc)
    if cfg.model == TOYWORLD:  # selectors and targets checked before the toy base model is built (a minute)
        check_phases(cfg, architecture(cfg.toy))
    t0 = time.time()
    base = model_folder(cfg.model, cfg, progress=progress)
    base_seconds = round(time.time() - t0, 1)
    if cfg.model == TOYWORLD:
        built = json.loads((Path(base) / "build.json").read_text())
        how = f"built in {base_seconds:.0f}s" if base_seconds > 5 else "cached"
        log(f"base       toy base model, {built['params'] / 1e6:.1f}M parameters ({how}) -> {base}")
    else:
        log(f"base       {cfg.model} -> {base}")
    check_run(cfg, base, data)  # both phases' selectors and targets, and the data, before any stage runs
    _check_probes(cfg, data)
    inputs = stage_inputs(cfg, data, rundir.content_hash(base))
    fingerprints = chain(inputs)
    log(f"data       {data.description}")
    precision = resolve_precision(cfg.precision, hidden_size(base))[1]
    log(f"precision  {precision}")
    log(f"threads    {threads} ({threads_reason})")

    with rundir.locked(run_dir):
        ctx = RunContext(cfg, run_dir, base, data, progress, log, threads_reason, precision)
        infos, ran, resumed = _run_stages(ctx, fingerprints, inputs, overwrite, only, list(reuse_from))
        if "eval" not in infos:
            return {"run": run_dir.name, "config_hash": cfg.hash(), "stages": infos}
        if not ran and rundir.summary_path(run_dir).is_file():  # a finished run: nothing to redo or rewrite
            return run_results.read_summary(run_dir) or {}
        figures = _figures(run_dir, cfg, log)
        summary = _summary(ctx, infos, resumed, figures, base_seconds, round(time.time() - t_start, 1))
        run_results.write_summary(run_dir, summary)
        return summary


def _check_probes(cfg: TrainConfig, data: PipelineData) -> None:
    """Probes during training need something to score, and keep_best needs style twins: refused before any work."""
    if cfg.cpt.probe_every or cfg.sft.probe_every:
        from layerprobe.train.probes import probe_subset

        shown = data.eval_set.limited(cfg.eval)
        if not any(probe_subset(shown.probes, shown.instructions)):
            raise ValueError(
                "cpt.probe_every / sft.probe_every need probes to score, got no cloze or QA probes and no "
                "held-out instructions with a plain twin; give data.probes, or set probe_every to 0"
            )
        if cfg.sft.keep_best and not probe_subset([], shown.instructions, cfg.sft.probe_max)[1]:
            raise ValueError(
                f"sft.keep_best {cfg.sft.keep_best} chooses by the style log-odds, but no held-out instruction has "
                "a plain twin to score it against; give data.instructions with a 'plain' field (or "
                "data.sft_rewrite gozaru), or set sft.keep_best ''"
            )


# what summary.json keeps of each stage's info (the rest stays in the stage's DONE marker)
_STAGE_KEYS = (
    *("what", "out", "steps", "final_loss", "seconds", "record_seconds", "reference_store", "probe_seconds"),
    *("keep_seconds", "trainable_params", "trainable_share", "reused_from"),
)


def _summary(
    ctx: RunContext, infos: dict[str, dict], resumed: bool, figures: list[str], base_seconds: float, wall_seconds: float
) -> dict:
    """summary.json: the evaluation's numbers per phase, each stage's info and what the numbers depend on."""
    metrics = run_results.read_metrics(ctx.run_dir) or infos["eval"].get("metrics", {})  # (older runs: in DONE)
    return {
        "run": ctx.run_dir.name,
        "config_hash": ctx.cfg.hash(),
        "model": ctx.cfg.model,
        "base_model": ctx.base,
        "resumed": resumed,
        **{p: metrics[p] for p in EVAL_PHASES if p in metrics},
        **({"keep_best": infos["sft"]["keep_best"]} if "keep_best" in infos["sft"] else {}),
        "stages": {s: {k: v for k, v in infos[s].items() if k in _STAGE_KEYS} for s in STAGES},
        "base_seconds": base_seconds,
        "wall_seconds": wall_seconds,
        "figures": figures,
        "machine": {**machine_info(), "threads_reason": ctx.threads_reason, "precision": ctx.precision},
    }


def _run_stages(
    ctx: RunContext,
    fingerprints: dict[str, str],
    inputs: dict[str, dict],
    overwrite: bool,
    only: str | None,
    reuse_from: list,
) -> tuple[dict[str, dict], bool, bool]:
    """Run the stages the plan asks for; returns (stage infos, whether any ran, whether the folder had any)."""
    run_dir = ctx.run_dir
    plan, resumed = _settled_plan(ctx, fingerprints, inputs, overwrite, only, reuse_from)
    infos: dict[str, dict] = {}
    ran = False
    for i, stage in enumerate(STAGE_TABLE, 1):
        head = f"[{i}/{len(STAGE_TABLE)}] {stage.name:<6}"
        state = plan.state[stage.name]
        if only is not None and stage.name != only:
            if state == "done":
                infos[stage.name] = rundir.read_done(run_dir, stage.name) or {}
            continue
        if state == "done":
            infos[stage.name] = info = _kept(run_dir, stage.name, fingerprints, inputs)
            how = f"reused from {info['reused_from']}" if info.get("reused_from") else "skipped"
            ctx.log(f"{head} already done, {how} -> {info['out']}")
            continue
        ran = True
        rundir.summary_path(run_dir).unlink(missing_ok=True)
        for later in STAGES[i:]:  # what was made from this stage's old output cannot stay
            if plan.state[later] == "done":
                rundir.clear_stage(run_dir, later)
                plan.state[later] = "run"
        if state == "resume":
            point = rundir.last_checkpoint(rundir.stage_dir(run_dir, stage.name))
            ctx.log(
                f"{head} resuming from {point.name if point else '?'} (an interrupted attempt with the same inputs)"
            )
        else:
            rundir.clear_stage(run_dir, stage.name)
        out = rundir.mark_started(run_dir, stage.name, fingerprints[stage.name])
        info = {**stage.run(ctx, out), "fingerprint": fingerprints[stage.name], "inputs": inputs[stage.name]}
        rundir.mark_done(run_dir, stage.name, info)
        infos[stage.name] = info
        ctx.log(f"{head} {info['what']} ({info['seconds']:.0f}s) -> {info['out']}")
    return infos, ran, resumed


def _settled_plan(
    ctx: RunContext,
    fingerprints: dict[str, str],
    inputs: dict[str, dict],
    overwrite: bool,
    only: str | None,
    reuse_from,
) -> tuple[Plan, bool]:
    """The plan once its refusals are checked (stages before ``only`` not done; stale stages without
    ``overwrite``), stale stages cleared, the config written and a finished CPT from ``reuse_from`` adopted; and
    whether the folder held stages of this config before (a CPT adopted from elsewhere does not count)."""
    cfg, run_dir = ctx.cfg, ctx.run_dir
    plan = plan_run(run_dir, cfg, fingerprints, inputs)
    if only is not None:
        for s in STAGES[: STAGES.index(only)]:
            if plan.state[s] != "done":
                why = f" (its inputs changed: {plan.changes_text()})" if plan.state[s] == "stale" else ""
                raise ValueError(
                    f"stage {s} is not done in {run_dir} for this config{why}; run `layerprobe {s} "
                    f"--out {run_dir}` (or `layerprobe train --out {run_dir}`) first"
                )
    stale = plan.stale()
    if stale:
        kept = [s for s in STAGES if plan.state[s] == "done"]
        if not overwrite:
            raise FileExistsError(
                f"{run_dir} was made with a different config ({plan.changes_text()}): {', '.join(stale)} would run "
                f"again{'; kept: ' + ', '.join(kept) if kept else ''}; pass --overwrite to replace "
                f"{'that stage' if len(stale) == 1 else 'those stages'}, or choose another --out"
            )
        ctx.log(
            f"overwrite  {', '.join(stale)} {'runs' if len(stale) == 1 else 'run'} again ({plan.changes_text()}); "
            f"kept: {', '.join(kept) or 'nothing'}"
        )
        for s in stale:
            rundir.clear_stage(run_dir, s)
            plan.state[s] = "run"
    resumed = any(plan.state[s] in ("done", "resume") for s in STAGES)
    run_results.write_config(run_dir, cfg)
    if reuse_from and only is None and plan.state["cpt"] == plan.state["merge"] == "run":
        donor = rundir.find_done(reuse_from, {s: fingerprints[s] for s in ("cpt", "merge")}, exclude=run_dir)
        if donor is not None:  # the same CPT inputs finished elsewhere: start from its CPT and merge
            for s in ("cpt", "merge"):
                rundir.clear_stage(run_dir, s)
                rundir.adopt_stage(donor, run_dir, s)
                plan.state[s] = "done"
    return plan, resumed


def _kept(run_dir: Path, stage: str, fingerprints: dict[str, str], inputs: dict[str, dict]) -> dict:
    """A stage done before with the same inputs; an older layerprobe's marker gets this one's fingerprint."""
    info = rundir.read_done(run_dir, stage) or {}
    if info.get("fingerprint") != fingerprints[stage]:
        info = {**info, "fingerprint": fingerprints[stage], "inputs": inputs[stage]}
        rundir.mark_done(run_dir, stage, info)
    return info


def _figures(run_dir: Path, cfg: TrainConfig, log) -> list[str]:
    """Heatmaps of the run's records and the probes over steps (only runs that recorded or probed have training
    records to draw)."""
    if not (cfg.record or cfg.cpt.probe_every or cfg.sft.probe_every):
        return []
    from layerprobe.plot import plot_run

    paths = [str(p) for p in plot_run(run_dir) or []]
    log(f"figures    {len(paths)} heatmaps -> {run_dir / 'figures'}")
    return paths


def format_table(summary: dict) -> str:
    """The before/after table: one row per metric, one column per evaluated model."""
    phases = [p for p in EVAL_PHASES if p in summary]
    label = {"cpt": "cpt (before)", "sft": "sft (after)", "sft_best": "sft (kept)"}

    def cell(v, metric: str) -> str:
        if v is None or (isinstance(v, float) and math.isnan(v)):
            return "n/a"
        return f"{v:.0f}" if metric == "n_probes" or metric.endswith("/n") else f"{v:.3f}"  # counts as counts

    shown = METRICS + tuple(m for m in OPTIONAL_METRICS if any(m in summary[p] for p in phases))
    shown += tuple(dict.fromkeys(m for p in phases for m in summary[p] if m.startswith("lm_eval/")))  # harness tasks
    width = max(14, *(len(m) + 1 for m in shown))
    lines = [" " * width + "".join(f"{label.get(p, p):>14}" for p in phases)]
    lines += [f"{m:<{width}}" + "".join(f"{cell(summary[p].get(m), m):>14}" for p in phases) for m in shown]
    return "\n".join(lines)
