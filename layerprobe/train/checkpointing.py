"""Checkpoints while a phase trains, so a killed run loses minutes, not the phase.

``SaveEvery`` asks the Trainer for a checkpoint once ``minutes`` have passed since the last one (a time budget, not
a step count: the most work a kill can lose), keeps the newest ``keep`` complete checkpoints, and first flushes the
recorder, so the records on disk reach the checkpoint's step. The stage resumes from the newest complete checkpoint
(:func:`layerprobe.core.rundir.last_checkpoint`, ``Trainer.train(resume_from_checkpoint=...)``); the pipeline removes
them when the stage is done.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

from transformers import TrainerCallback


class SaveEvery(TrainerCallback):
    """Set ``control.should_save`` every ``minutes`` of training (0 = never); flush ``flush`` (callbacks with a
    ``flush()``) before each save; keep the newest ``keep`` checkpoints."""

    def __init__(self, minutes: float, keep: int = 1, flush=()):
        if minutes < 0 or keep < 1:
            raise ValueError(
                f"checkpoint.minutes must be >= 0 (0 = off) and checkpoint.keep >= 1, got "
                f"minutes={minutes}, keep={keep}"
            )
        self.seconds, self.keep, self.flush = minutes * 60.0, keep, list(flush)
        self._last = time.monotonic()

    def on_train_begin(self, args, state, control, **kwargs):
        self._last = time.monotonic()

    def on_step_end(self, args, state, control, **kwargs):
        if not self.seconds or state.global_step >= state.max_steps:  # the last step: the stage saves itself
            return
        if time.monotonic() - self._last >= self.seconds:
            for cb in self.flush:
                cb.flush()
            control.should_save = True

    def on_save(self, args, state, control, **kwargs):
        self._last = time.monotonic()
        root = Path(args.output_dir)
        done = sorted(
            (int(d.name.rsplit("-", 1)[-1]), d)
            for d in root.glob("checkpoint-*")
            if d.name.rsplit("-", 1)[-1].isdigit() and (d / "trainer_state.json").is_file()
        )
        for _, d in done[: -self.keep]:
            shutil.rmtree(d, ignore_errors=True)
