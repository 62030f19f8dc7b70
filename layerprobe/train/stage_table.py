"""The pipeline's stages as a table: each :class:`Stage` is a name and what it does with a run's
:class:`RunContext`. :mod:`layerprobe.train.pipeline` decides which stages run (their fingerprints,
:mod:`layerprobe.train.fingerprint`) and walks :data:`STAGE_TABLE` in order.

Adding a stage: one entry here, what it reads in :func:`layerprobe.train.fingerprint.stage_inputs`, its name in
:data:`layerprobe.core.rundir.STAGES` (the folder layout). A training stage's callbacks are named
(:class:`PhaseCallbacks`), so the recorder and the probes are found by name, not by position.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

from layerprobe.core import run_results, rundir
from layerprobe.core.config import TrainConfig
from layerprobe.core.rundir import EVAL_PHASES, phase_model
from layerprobe.evaluation.evalservice import Evaluation
from layerprobe.evaluation.evaluate import EvalSet
from layerprobe.train import stages
from layerprobe.train.models import load_model, load_tokenizer

if TYPE_CHECKING:  # the callbacks import torch and transformers; the pipeline module stays light until a stage runs
    from layerprobe.record.recorder_callback import RecorderCallback
    from layerprobe.train.checkpointing import SaveEvery
    from layerprobe.train.keepbest import KeepStates
    from layerprobe.train.probes import ProbeCallback


@dataclass
class PipelineData:
    """What a run trains and evaluates on (:func:`layerprobe.train.pipeline.load_data`)."""

    cpt_docs: list[str]
    sft_rows: list[dict]
    eval_set: EvalSet
    description: str


@dataclass
class RunContext:
    """What every stage reads: the config, the run folder, the base model folder, the data, and how to report."""

    cfg: TrainConfig
    run_dir: Path
    base: str
    data: PipelineData
    progress: bool = False
    log: Callable[[str], None] = print
    threads_reason: str = ""  # why torch uses the threads it does (threads.choose_threads), for summary.json
    precision: str = ""  # which precision trains and why (models.resolve_precision), for summary.json


@dataclass(frozen=True)
class Stage:
    """One step of a run: ``run(ctx, out)`` fills the stage's folder ``out`` and returns its info (``what``,
    ``out``, ``seconds`` and what else the stage reports), which the pipeline marks done with its fingerprint."""

    name: str
    run: Callable[[RunContext, Path], dict]


@dataclass
class PhaseCallbacks:
    """A training phase's trainer callbacks by name: the recorder (``record``), the probes (``probe_every``), the
    states kept for ``keep_best`` (called by the probes) and the mid-phase checkpoints (always, last)."""

    recorder: RecorderCallback | None
    probes: ProbeCallback | None
    keeper: KeepStates | None
    saver: SaveEvery

    @classmethod
    def of(cls, cfg: TrainConfig, run_dir: Path, phase: str, eval_set: EvalSet | None = None, model_dir=None):
        """The probes score the evaluation's probes ``eval_set`` with the tokenizer of ``model_dir`` (the phase's
        input model)."""
        from layerprobe.train.checkpointing import SaveEvery

        pc = getattr(cfg, phase)
        recorder: RecorderCallback | None = None
        probes: ProbeCallback | None = None
        keeper: KeepStates | None = None
        if cfg.record:
            from layerprobe.record.recorder_callback import RecorderCallback

            r = cfg.recorder
            recorder = RecorderCallback(
                run_dir,
                run=run_dir.name,
                phase=phase,
                grad_every=r.grad_every,
                update_every=r.update_every,
                drift_every=r.drift_every,
                reference_store=r.reference_store,
                device_budget_gb=r.device_budget_gb,
                host_budget_gb=r.host_budget_gb,
            )
        if pc.probe_every:
            from layerprobe.train.probes import ProbeCallback

            if pc.keep_best:  # the trained state at each probe step, to choose from after the phase
                from layerprobe.train.keepbest import KeepStates

                keeper = KeepStates(run_dir)
            shown = (eval_set or EvalSet([], [], [])).limited(cfg.eval)  # what the evaluation scores
            probes = ProbeCallback(
                run_dir,
                shown.probes,
                shown.instructions,
                run=run_dir.name,
                phase=phase,
                tokenizer=load_tokenizer(model_dir) if model_dir else None,
                every=pc.probe_every,
                max_per_kind=pc.probe_max,
                batch_size=cfg.eval.batch_size,
                max_prompt_tokens=cfg.eval.max_prompt_tokens,
                after_probe=keeper,
            )
        writers = [c for c in (recorder, probes) if c is not None]
        # an anchored phase measures from the weights it starts with: resumed, it would anchor to the checkpoint
        minutes = 0.0 if pc.l2sp or pc.drift_cap else cfg.checkpoint.minutes
        return cls(recorder, probes, keeper, SaveEvery(minutes, cfg.checkpoint.keep, flush=writers))

    def trainer_callbacks(self) -> list:
        return [c for c in (self.recorder, self.probes) if c is not None] + [self.saver]


def _train(ctx: RunContext, out: Path, phase: str) -> dict:
    """CPT from the base model, or SFT from the merged CPT model; the recorder's and the probes' own seconds."""
    cfg = ctx.cfg
    start = ctx.base if phase == "cpt" else str(rundir.stage_dir(ctx.run_dir, "merge"))
    callbacks = PhaseCallbacks.of(cfg, ctx.run_dir, phase, ctx.data.eval_set, start)
    # stages.run_* are looked up at each call (not imported by name), so that a caller can replace one
    if phase == "cpt":
        info = stages.run_cpt(cfg, start, ctx.data.cpt_docs, out, callbacks.trainer_callbacks(), ctx.progress)
    else:
        info = stages.run_sft(
            cfg,
            start,
            ctx.data.sft_rows,
            out,
            callbacks.trainer_callbacks(),
            ctx.progress,
            replay_docs=ctx.data.cpt_docs,
        )
    if callbacks.recorder is not None:  # its own time in this phase: its cost, run by run
        info["record_seconds"] = round(callbacks.recorder.seconds, 2)
        info["reference_store"] = callbacks.recorder.reference_store
    if callbacks.probes is not None:
        info["probe_seconds"] = round(callbacks.probes.seconds, 2)
    if callbacks.keeper is not None:  # sft.keep_best: the states are kept; choose one and save it
        from layerprobe.train.keepbest import keep_best

        t_keep = time.time()
        kept = info["keep_best"] = keep_best(cfg, ctx.run_dir, start)
        info["keep_seconds"] = round(callbacks.keeper.seconds + time.time() - t_keep, 2)
        ctx.log(
            f"keep_best  step {kept['step']} of {kept['last_step']} ({kept['style_share']:.0%} of the style gain) "
            f"-> {kept['out']}"
        )
    return info


def _merge(ctx: RunContext, out: Path) -> dict:
    return stages.run_merge(ctx.base, rundir.stage_dir(ctx.run_dir, "cpt"), out)


def _evaluate(ctx: RunContext, out: Path) -> dict:
    """Every phase's model through the evaluation service (cached by content); metrics.csv and answers."""
    cfg, run_dir = ctx.cfg, ctx.run_dir
    t0 = time.time()
    out.mkdir(parents=True, exist_ok=True)
    results = {}
    phases = [p for p in EVAL_PHASES if (p != "base" or cfg.eval.base) and (p != "sft_best" or cfg.sft.keep_best)]
    seconds, hits, timing = {}, [], {}
    evaluation = Evaluation.of(ctx.data.eval_set, cfg.eval, cfg.cpt.max_length, cfg.data.mc)
    for phase in phases:
        t_phase = time.time()
        model_dir, adapter = phase_model(run_dir, phase, ctx.base)
        phase_timing: dict = {}

        def load(model_dir=model_dir, adapter=adapter):
            return load_model(model_dir, adapter), load_tokenizer(adapter or model_dir)

        metrics, rows, hit = evaluation.of_folders(
            [model_dir] + ([adapter] if adapter else []), load, ctx.progress, phase_timing
        )
        if not hit:
            timing[phase] = phase_timing
        seconds[phase] = round(time.time() - t_phase, 1)
        hits += [phase] if hit else []
        results[phase] = metrics
        run_results.write_answers(run_dir, phase, rows)
    run_results.write_metrics(run_dir, results)  # the one table of evaluation numbers; summary.json is derived from it
    n = evaluation.data
    cached = f" ({', '.join(hits)} from the evaluation cache)" if hits else ""
    tasks = f" and {len(cfg.eval.lm_eval_tasks)} lm-eval task(s)" if cfg.eval.lm_eval_tasks else ""
    return {
        "what": f"evaluated the {', '.join(phases)} models on {len(n.probes)} probes and {len(n.instructions)} "
        f"held-out instructions{tasks}{cached}",
        "out": str(out),
        "seconds": round(time.time() - t0, 1),
        "phase_seconds": seconds,
        "cached": hits,
        "generation": timing,
    }


STAGE_TABLE: tuple[Stage, ...] = (
    Stage("cpt", partial(_train, phase="cpt")),  # continued pretraining of the base model (LoRA or full)
    Stage("merge", _merge),  # the CPT adapter merged into the base weights
    Stage("sft", partial(_train, phase="sft")),  # supervised fine-tuning of the merged model (LoRA or full)
    Stage("eval", _evaluate),  # retention, style, EOS and general text of every phase's model
)
