"""The recorder: per-(layer, module) gradient norms, update ratios and drift during training.

``Recorder`` is the plain-PyTorch entry (set up by :mod:`layerprobe.record.recorder_setup`); ``RecorderCallback``
(:mod:`layerprobe.record.recorder_callback`) adapts it to ``transformers.Trainer`` (and ``trl.SFTTrainer`` and their
subclasses)::

    trainer = Trainer(model, args, train_dataset=ds, callbacks=[RecorderCallback("runs/a", phase="cpt")])

Hand-written loop::

    rec = Recorder(model, "runs/a", phase="cpt")
    for batch in loader:
        model(**batch).loss.backward()
        rec.before_step(max_grad_norm=1.0)   # records pre-clip gradient norms, then clips like clip_grad_norm_
        opt.step()
        rec.after_step()                     # update ratio, drift, weight norm on their schedules
        opt.zero_grad()
    rec.close()

Under DDP rank 0 alone computes and writes. Under FSDP2 and DeepSpeed ZeRO every rank computes the part of its own
shard (``layerprobe.record.distributed``) and one all_reduce per step adds the parts; rank 0 writes.
"""

from __future__ import annotations

import math
import os
import warnings
from collections import defaultdict
from collections.abc import Iterable
from pathlib import Path

import torch

from layerprobe.record import distributed, snapshot
from layerprobe.record.quantities import DriftRatio, GradNorm, Partial, Row, UpdateRatio, WeightNorm
from layerprobe.record.recorder_setup import (
    choose_store,
    frozen_fingerprint,
    rank,
    reference_stores,
    run_meta,
    schedules,
    shard,
    trainable_units,
    wanted_quantities,
    write_audit,
)
from layerprobe.record.records import RecordWriter, drop_rows_after, write_meta
from layerprobe.record.schedules import Schedule
from layerprobe.record.tracking import Units, is_lora_factor


class Recorder:
    """Records gradient norms, weight norms, update ratios and drift of a model's trainable weights.

    Args:
        model: the model being trained (plain or peft-wrapped).
        out_dir: run folder; records go to ``<out_dir>/records/`` as Parquet parts.
        run: run name written in every row (default: the folder's name).
        phase: phase name (``cpt``, ``sft``, ...).
        grad_every / update_every / drift_every / weight_every: schedules: an interval in steps, ``"every:N"``,
            ``"log:K"`` (K log-spaced steps, needs ``max_steps``), ``"never"`` or a ``Callable[[int], bool]``.
        quantities: which quantities to record (default all of ``grad_norm, weight_norm, update_ratio, drift_ratio``).
        per_param: also write one row per parameter (aggregated (layer, block, module) rows are always written).
        max_steps: the number of optimizer steps, for log-spaced schedules.
        flush_every_s: write a Parquet part at least this often, so a killed job loses little.
        meta: extra run metadata written to ``records/meta-<phase>.json``.
        resume_step: the phase resumes after this step (a checkpoint's): see :meth:`_resume`.
        reference_store: where the drift and update references live: ``"device"``, ``"host"``, ``"disk"`` or
            ``"auto"`` (by size and device, :func:`layerprobe.record.snapshot.choose_store`); the choice and its reason
            are in ``reference_store`` and the records' meta. The numbers are the same in every store. A memory store
            also writes the drift reference to disk once, at the phase's start, for a resume.
        device_budget_gb / host_budget_gb: what ``auto`` may use (0: a tenth of the GPU's memory; a quarter of
            the host memory available at the start).
    """

    def __init__(
        self,
        model: torch.nn.Module,
        out_dir: str | os.PathLike,
        *,
        run: str | None = None,
        phase: str = "train",
        grad_every: int | str | Schedule = 1,
        update_every: int | str | Schedule = 25,
        drift_every: int | str | Schedule = 25,
        weight_every: int | str | Schedule = 25,
        quantities: Iterable[str] | None = None,
        per_param: bool = True,
        max_steps: int | None = None,
        flush_every_s: float = 30.0,
        meta: dict | None = None,
        resume_step: int = 0,
        reference_store: str = "auto",
        device_budget_gb: float = 0.0,
        host_budget_gb: float = 0.0,
    ):
        wanted = wanted_quantities(quantities)
        self.model, self.out_dir = model, Path(out_dir)
        self.run = run or self.out_dir.resolve().name
        self.phase, self.per_param = phase, per_param
        self.rank, self.distributed = rank()
        self.active = self.rank == 0  # rank 0 writes
        every = {"grad_norm": grad_every, "update_ratio": update_every, "drift_ratio": drift_every}
        s = schedules({**every, "weight_norm": weight_every}, wanted, max_steps)
        snapshot.check_store(reference_store)
        self.grad, self.weight = GradNorm(s["grad_norm"]), WeightNorm(s["weight_norm"])
        self.units: Units = trainable_units(model)
        held = [q for q in ("update_ratio", "drift_ratio") if q in wanted and every[q] != "never"]
        self.reference_store = choose_store(self.units, reference_store, len(held), device_budget_gb, host_budget_gb)
        update, drift = reference_stores(self.reference_store["store"], self.out_dir, phase, self.rank)
        self.update, self.drift = UpdateRatio(s["update_ratio"], update), DriftRatio(s["drift_ratio"], drift)
        self.group, params = shard(self.units)
        self.computes = self.active or distributed.collective_reads(params)  # gradients
        self.owns_weights = self.active or self.group is not None  # update ratio, drift, weight norm, frozen
        self.step = 1  # the optimizer step being taken: rows at step s describe the s-th update
        self.summary: dict[str, float] = {}
        self.grad_scale = 1.0  # a loss scale the gradients still carry when read (DeepSpeed fp16)
        self._pending: list[Partial] = []
        self._closed = False
        self._warned_nonfinite = False
        self.writer: RecordWriter | None = None
        if self.active:
            self.writer = RecordWriter(self.out_dir, self.run, phase, rank=self.rank, flush_every_s=flush_every_s)
            info = run_meta(model, self.run, wanted, s, params, self.group, self.reference_store, meta)
            write_meta(self.out_dir, phase, info)
            if resume_step:
                self._resume(resume_step)
            else:
                share = write_audit(model, self._w)
                self.summary["layerprobe/trainable_share"] = share
        self._drift_ready = self.owns_weights and "drift_ratio" in wanted and drift_every != "never"
        if self._drift_ready and not (resume_step and self.drift.resume(self.units)):
            self.drift.start(self.units)
        self._frozen_fingerprint = frozen_fingerprint(model) if self.owns_weights else {}

    # -- the two points of a training step -----------------------------------------------------------

    def before_step(
        self, max_grad_norm: float | None = None, step: int | None = None, *, optimizer_clips: float | None = None
    ) -> float:
        """Call after backward, before the optimizer step. Records pre-clip gradient norms, clips when
        ``max_grad_norm`` is given (exactly as ``torch.nn.utils.clip_grad_norm_``) and returns the clip factor.
        ``optimizer_clips``: the optimizer clips at this norm itself (DeepSpeed); its factor is recorded, not applied.

        Under FSDP2/ZeRO every rank must call it (one all_reduce sums the ranks' parts)."""
        if step is not None:
            self.step = step
        clip = max_grad_norm is not None and max_grad_norm > 0
        if clip and any(distributed.is_zero3(d.param) or distributed.is_zero12(d.param) for d in self.units.dense):
            raise ValueError(
                f"expected max_grad_norm=None under DeepSpeed, got {max_grad_norm}: DeepSpeed clips "
                "inside its step; set gradient_clipping in its config and pass optimizer_clips"
            )
        due = self.computes and self.grad.due(self.step)
        factor = 1.0
        grads = self.grad.partial(self.units, self.step, self.grad_scale) if clip or due else None
        if grads is not None and not due:
            grads.quantity = ""  # needed for clipping only
        self._reduce([grads] if grads is not None else [])
        if grads is not None:
            total = float(grads.sums[0].sum()) ** 0.5
            limit = max_grad_norm if clip else optimizer_clips
            coef = limit / (total + 1e-6) if limit else 1.0
            # as clip_grad_norm_'s clamp(max=1): a NaN factor is applied, an infinite one (limit inf) is not
            if limit and (coef < 1.0 or math.isnan(coef)):
                factor = coef
                if clip:
                    with torch.no_grad():
                        torch._foreach_mul_(
                            [g for d in self.units.dense if (g := distributed.grad(d.param)) is not None], coef
                        )
            if due and self.active:
                self._check_finite(total)
                self._emit_scalar("grad_norm_total", total)
                if limit:
                    self._emit_scalar("clip_factor", min(factor, 1.0))
        if self.owns_weights and self.update.due(self.step):
            self.update.snapshot(self.units, self.step)
        return factor

    def after_step(self, step: int | None = None) -> None:
        """Call after the optimizer step (before or after zero_grad). Under sharding, what it computes is summed over
        ranks together with the next step's gradient norms (or at ``close``): one all_reduce per step."""
        if step is not None:
            self.step = step
        if self.owns_weights:
            if self.update.due(self.step) and self.update.ready(self.step):
                self._pending.append(self.update.partial(self.units, self.step))
            if self._drift_ready and self.drift.due(self.step):
                self._pending.append(self.drift.partial(self.units, self.step))
            if self.weight.due(self.step):
                self._pending.append(self.weight.partial(self.units, self.step))
            if self.group is None:
                self._reduce([])
            if self.active:
                self._w.maybe_flush()
        self.step += 1

    def close(self) -> None:
        """Record the end of the phase (final drift of all trainable weights, frozen weights unchanged) and flush.
        Under FSDP2/ZeRO every rank must call it."""
        if self._closed:
            return
        self._closed = True
        if self.owns_weights:
            last = self.step - 1
            parts = []
            if self._drift_ready and last >= 1 and not self.drift.due(last):
                parts.append(self.drift.partial(self.units, last))
            moved = frozen_fingerprint(self.model, only=self._frozen_fingerprint)
            flags = [float(moved[name][3] != before[3]) for name, before in self._frozen_fingerprint.items()]
            frozen = Partial("", max(last, 0), [torch.tensor(flags, dtype=torch.float64)], lambda s: [])
            self._reduce(parts + [frozen])
            if self.active:
                for (name, (layer, block, module, _)), flag in zip(
                    self._frozen_fingerprint.items(), frozen.sums[0].tolist()
                ):
                    self._w.add(max(last, 0), layer, block, module, name, "frozen_moved", float(flag > 0))
                self._w.flush()
        self.drift.close()
        self.update.close()
        self.writer = None

    def _reduce(self, parts: list[Partial]) -> None:
        """Sum the pending parts and ``parts`` over the shards (one all_reduce when sharded) and write their rows."""
        parts, self._pending = self._pending + parts, []
        if not parts:
            return
        sums = distributed.sum_over_shards([t for p in parts for t in p.tensors], self.group)
        i = 0
        for p in parts:
            p.sums, i = sums[i : i + len(p.tensors)], i + len(p.tensors)
            if self.active and p.quantity:
                self._emit(p.quantity, p.finish(p.sums), p.step)

    # -- output ---------------------------------------------------------------------------------------

    def _emit(self, quantity: str, rows: list[Row], step: int) -> None:
        """Write per-parameter rows and ratios of summed squares per (layer, block, module), per (layer, block)
        (module "") and per block (into the log summary).

        LoRA factors get their own per-parameter rows, but the aggregates of the weight-space quantities
        (weight norm, update ratio, drift) sum only the effective weights W0 + s*B*A, so they are in the units of
        full fine-tuning. Gradients exist only for the factors, so gradient-norm aggregates sum those."""
        w = self._w
        sums: dict[tuple, list] = defaultdict(lambda: [0.0, 0.0, False])
        for name, layer, block, module, num, den in rows:
            if self.per_param:
                w.add(step, layer, block, module, name, quantity, num if den is None else _ratio(num, den))
            if quantity != GradNorm.name and is_lora_factor(name):
                continue
            for key in ((layer, block, module), (layer, block, ""), ("summary", block)):
                acc = sums[key]
                acc[0] += num * num
                acc[1] += den * den if den is not None else 0.0
                acc[2] = den is not None
        for key, (n2, d2, has_den) in sums.items():
            value = _ratio(n2**0.5, d2**0.5) if has_den else n2**0.5
            if key[0] == "summary":
                self.summary[f"layerprobe/{quantity}/{key[1]}"] = value
            else:
                w.add(step, *key, "", quantity, value)  # type: ignore[call-arg]  # key: layer, block, module

    @property
    def _w(self) -> RecordWriter:
        """The writer: only the writing rank has one, and only until :meth:`close`."""
        assert self.writer is not None, "this recorder writes no records (not the writing rank, or closed)"
        return self.writer

    def _emit_scalar(self, quantity: str, value: float) -> None:
        self._w.add(self.step, -1, "", "", "", quantity, value)
        self.summary[f"layerprobe/{quantity}"] = value

    def _resume(self, step: int) -> None:
        """Continue the records of a phase resumed from its checkpoint at ``step``: rows the killed attempt wrote
        after it are dropped (they are recorded again), the audit rows of step 0 are kept, not written twice."""

        self._w.flush()
        drop_rows_after(self.out_dir, self.phase, self.rank, step)
        self.writer = RecordWriter(
            self.out_dir, self.run, self.phase, rank=self.rank, flush_every_s=self._w.flush_every_s
        )

    def flush(self) -> None:
        """Write the buffered rows now (before a checkpoint, so the records on disk reach its step)."""
        if self.active and self.writer is not None:
            self.writer.flush()

    def _check_finite(self, total: float) -> None:
        if not math.isfinite(total) and not self._warned_nonfinite:
            self._warned_nonfinite = True
            warnings.warn(
                f"layerprobe: non-finite gradient norm ({total}) at step {self.step}; recorded as such "
                "(further occurrences are recorded without a warning)",
                RuntimeWarning,
                stacklevel=3,
            )


def _ratio(num: float, den: float) -> float:
    if den == 0.0:
        return 0.0 if num == 0.0 else math.inf
    return num / den
