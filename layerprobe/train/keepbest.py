"""Keep the best SFT step (``sft.keep_best retention_style``): the trained state at every probe step, the step that
:func:`layerprobe.evaluation.tradeoff.best_step` chooses (the one owner of the rule), and that step's model, saved to
evaluate.

While SFT trains, :class:`KeepStates` (the SFT :class:`~layerprobe.train.probes.ProbeCallback`'s ``after_probe``) writes
the trainable weights at each probe step to ``RUN/sft/kept/step-NNNNNN.safetensors``
(:func:`layerprobe.core.rundir.kept_state`): for LoRA the adapter's factors, for full fine-tuning with ``sft.select``
only the unfrozen weights (the frozen ones are the merged CPT model's), never a second whole model in memory. After SFT,
:func:`keep_best` chooses the step from the run's probe rows, puts that step's state into a fresh trainable wrapper
of the SFT's input model and saves it as the SFT stage saves its own model, in ``RUN/sft/kept/best/`` with
``choice.json``; the evaluation scores it as the model ``sft_best``. Every kept state stays on disk::

    keep_best(cfg, "runs/a", "runs/a/merged")   # {'step': 20, 'style_share': 0.93, 'kept.cloze': 0.41, ...}
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

from layerprobe.core import rundir
from layerprobe.core.config import TrainConfig
from layerprobe.evaluation.tradeoff import SHARE, best_step
from layerprobe.record.records import load_records
from layerprobe.train.models import load_model, load_tokenizer, make_trainable, save_model


def trainable_state(model) -> dict:
    """The trainable weights of ``model`` by their parameter names, on the CPU (shared tensors once)."""
    return {n: p.detach().cpu().contiguous() for n, p in model.named_parameters() if p.requires_grad}


class KeepStates:
    """``after_probe`` of a ProbeCallback: writes :func:`trainable_state` at each probe step into ``run_dir``'s
    :func:`~layerprobe.core.rundir.kept_dir` (atomically: a kill leaves no half file). ``seconds``: its own time."""

    def __init__(self, run_dir: str | os.PathLike):
        self.run_dir = Path(run_dir)
        self.seconds = 0.0

    def __call__(self, model, step: int) -> None:
        from safetensors.torch import save_file

        t = time.perf_counter()
        path = rundir.kept_state(self.run_dir, step)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        save_file(trainable_state(model), str(tmp), metadata={"step": str(step)})
        os.replace(tmp, path)
        self.seconds += time.perf_counter() - t


def load_state(cfg: TrainConfig, start: str, state: str | os.PathLike):
    """The SFT's input model ``start`` made trainable as SFT made it (:func:`~layerprobe.train.models.make_trainable`),
    with the kept ``state`` in its trainable weights: the model SFT had at that step."""
    from safetensors.torch import load_file

    model, _ = make_trainable(load_model(start), cfg.sft, cfg.phase_seed(cfg.sft))
    weights = load_file(str(state))
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    if set(weights) != trainable:
        odd = sorted(set(weights) ^ trainable)
        raise ValueError(
            f"{state} holds other weights than this config's SFT trains ({len(odd)} differ, e.g. {odd[0]}); "
            "it was kept by another sft config: run SFT again"
        )
    model.load_state_dict(weights, strict=False)
    return model


def keep_best(cfg: TrainConfig, run_dir: str | os.PathLike, start: str) -> dict:
    """Choose the SFT step by ``cfg.sft.keep_best`` from ``run_dir``'s probe rows, save that step's model (SFT's
    input model ``start`` with the kept state) in :func:`~layerprobe.core.rundir.best_dir` with ``choice.json``, and
    return the choice (:func:`~layerprobe.evaluation.tradeoff.best_step`'s dict, the rule, the kept steps, where it
    went)."""
    choice = best_step(load_records(run_dir, quantities=["style_logodds", "probe_logprob"]), "sft", SHARE)
    steps = rundir.kept_steps(run_dir)
    if choice["step"] not in steps:
        raise FileNotFoundError(
            f"sft.keep_best chose step {choice['step']}, but {rundir.kept_dir(run_dir)} holds states of steps "
            f"{steps}; run SFT again (layerprobe sft --out {run_dir} --overwrite)"
        )
    model = load_state(cfg, start, rundir.kept_state(run_dir, choice["step"]))
    out = rundir.best_dir(run_dir)
    shutil.rmtree(out, ignore_errors=True)
    save_model(model, load_tokenizer(start), out, cfg.sft)
    info = {
        **choice,
        "rule": f"{cfg.sft.keep_best}: the earliest probe step whose style log-odds reached {SHARE:.0%} of the "
        "final gain",
        "kept_steps": steps,
        "out": str(out),
    }
    rundir.write_json(out / rundir.CHOICE, info)
    return info
