"""``RecorderCallback``: the :class:`layerprobe.record.recorder.Recorder` inside ``transformers.Trainer`` (and
``trl.SFTTrainer`` and their subclasses)::

    trainer = Trainer(model, args, train_dataset=ds, callbacks=[RecorderCallback("runs/a", phase="cpt")])
"""

from __future__ import annotations

import os
import sys
import time
import warnings
from pathlib import Path

from transformers import TrainerCallback

from layerprobe.record import distributed
from layerprobe.record.recorder import Recorder


class RecorderCallback(TrainerCallback):
    """A ``transformers.TrainerCallback`` that runs a :class:`Recorder` inside ``Trainer``/``SFTTrainer``.

    Gradient norms are recorded *before* clipping: the callback takes clipping over from the Trainer for the
    duration of training (it sets ``args.max_grad_norm`` to 0, clips in ``on_pre_optimizer_step`` with the same
    formula, DTensor-aware under FSDP2, and restores the value at the end), because Trainer's hooks only ever see
    clipped gradients. Under DeepSpeed, whose engine steps inside ``backward`` and clips inside its optimizer,
    the callback runs the recorder around the ZeRO optimizer's ``step`` instead (gradients there are pre-clip;
    DeepSpeed's clip factor is recorded). Only FSDP version 1 clips out of reach: recorded after clipping and
    labelled ``grad_norm_clip: post`` in ``records/meta-<phase>.json``.
    A few per-block summary scalars are added to the Trainer's logs, so any ``report_to`` backend shows them.

    Args:
        out_dir: run folder; records go to ``<out_dir>/records/``.
        **kwargs: passed to :class:`Recorder` (``run``, ``phase``, ``grad_every``, ``update_every``,
            ``drift_every``, ``weight_every``, ``quantities``, ``per_param``, ``flush_every_s``, ``meta``,
            ``reference_store``, ``device_budget_gb``, ``host_budget_gb``).
    """

    def __init__(self, out_dir: str | os.PathLike, **kwargs):
        self.out_dir = Path(out_dir)
        self.kwargs = kwargs
        probe_unknown = set(kwargs) - {
            "run",
            "phase",
            "grad_every",
            "update_every",
            "drift_every",
            "weight_every",
            "quantities",
            "per_param",
            "flush_every_s",
            "meta",
            "reference_store",
            "device_budget_gb",
            "host_budget_gb",
        }
        if probe_unknown:
            raise TypeError(f"RecorderCallback got unknown keyword(s) {sorted(probe_unknown)}")
        self.recorder: Recorder | None = None
        self._max_norm: float | None = None
        self._restore_norm = None
        self._args = None
        self._zero = None  # the ZeRO optimizer whose step the recorder wraps (DeepSpeed)
        self._t_record = 0.0

    @property
    def seconds(self) -> float:
        """Wall time this callback spent recording so far (its cost to the run): around the optimizer steps, and
        starting (audit, frozen-weight hashes, the drift reference) and closing the recorder."""
        return self._t_record

    @property
    def reference_store(self) -> dict:
        """The recorder's reference store: ``store``, ``asked``, ``reason``, ``bytes``, ``device`` ({} before
        training began)."""
        return dict(self.recorder.reference_store) if self.recorder is not None else {}

    def on_train_begin(self, args, state, control, model=None, optimizer=None, **kwargs):
        t = time.perf_counter()
        self._move_to_front()
        _warn_if_torchrun_without_ddp(args)
        zero = getattr(optimizer, "optimizer", None) if getattr(args, "deepspeed", None) else None
        fsdp1 = any(type(m).__name__ == "FullyShardedDataParallel" for m in model.modules())
        if getattr(args, "fsdp", None) and not fsdp1 and not any(distributed.is_dtensor(p) for p in model.parameters()):
            warnings.warn(
                "layerprobe: TrainingArguments asked for FSDP but the model is not sharded (accelerate "
                "applies FSDP on GPUs only; on CPU it runs DDP); recorded as DDP. For FSDP2 on CPU load "
                "the model with from_pretrained(..., distributed_config=DistributedConfig(fsdp_size=N))",
                RuntimeWarning,
                stacklevel=2,
            )
        clips = bool(args.max_grad_norm and args.max_grad_norm > 0)
        self.recorder = Recorder(
            model,
            self.out_dir,
            max_steps=state.max_steps or None,
            meta={
                "seed": args.seed,
                "grad_norm_clip": "post" if fsdp1 and clips else "pre",
                "trainer_args": {k: str(v) for k, v in args.to_dict().items()},
            },
            resume_step=state.global_step,
            **self.kwargs,
        )
        self.recorder.step = state.global_step + 1
        self._args = args
        if zero is not None:
            self._wrap_zero_step(zero, state)
        elif fsdp1 and clips:
            warnings.warn(
                "layerprobe: FSDP version 1 clips inside its own step; grad_norm is recorded after clipping "
                "(labelled grad_norm_clip=post in the records' meta); use FSDP2 (fsdp_config "
                "{'version': 2}) for pre-clip norms",
                RuntimeWarning,
                stacklevel=2,
            )
        elif clips:
            self._max_norm, self._restore_norm = args.max_grad_norm, args.max_grad_norm
            args.max_grad_norm = 0.0
        self._t_record += time.perf_counter() - t

    def _wrap_zero_step(self, zero, state) -> None:
        """Under DeepSpeed the engine steps inside ``backward``: run the recorder around the ZeRO optimizer's step,
        where gradients are reduced but not yet clipped and the weights not yet updated."""
        original = zero.step
        clip = float(getattr(zero, "clip_grad", 0.0) or 0.0) or None

        def step(*a, **kw):
            t = time.perf_counter()
            self.recorder.grad_scale = float(getattr(zero, "loss_scale", 1.0) or 1.0)
            self.recorder.before_step(step=state.global_step + 1, optimizer_clips=clip)
            self._t_record += time.perf_counter() - t
            out = original(*a, **kw)
            t = time.perf_counter()
            self.recorder.after_step(step=state.global_step + 1)
            self._t_record += time.perf_counter() - t
            return out

        zero.step, self._zero = step, zero

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        if self._zero is None:
            t = time.perf_counter()
            self.recorder.before_step(self._max_norm, step=state.global_step + 1)
            self._t_record += time.perf_counter() - t

    def on_optimizer_step(self, args, state, control, **kwargs):
        if self._zero is None:
            t = time.perf_counter()
            self.recorder.after_step(step=state.global_step + 1)
            self._t_record += time.perf_counter() - t

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs is not None and self.recorder is not None and self.recorder.active and "loss" in logs:
            logs.update({k: round(v, 6) for k, v in self.recorder.summary.items()})

    def flush(self) -> None:
        if self.recorder is not None:
            self.recorder.flush()

    def on_train_end(self, args, state, control, **kwargs):
        if self._restore_norm is not None:
            args.max_grad_norm = self._restore_norm
            self._restore_norm = None
        if self._zero is not None:
            del self._zero.step  # the instance attribute hid the class's step
            self._zero = None
        if self.recorder is not None:
            t = time.perf_counter()
            self.recorder.close()
            self._t_record += time.perf_counter() - t

    def _move_to_front(self):
        """Run this callback's ``on_log`` before the reporting callbacks (W&B, TensorBoard, MLflow), so they see
        the summaries it adds. Trainer puts user callbacks last; the handler is the caller of this event."""
        handler = sys._getframe(2).f_locals.get("self")
        callbacks = getattr(handler, "callbacks", None)
        if isinstance(callbacks, list) and self in callbacks:
            callbacks.remove(self)
            callbacks.insert(0, self)


def _warn_if_torchrun_without_ddp(args) -> None:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and getattr(args, "world_size", world) < world:
        warnings.warn(
            f"layerprobe: torchrun started {world} processes but the Trainer is not running distributed "
            f"(its world size is {args.world_size}), so each process trains its own copy of the model; "
            "on CPU pass use_cpu=True to TrainingArguments for gloo DDP",
            RuntimeWarning,
            stacklevel=3,
        )
