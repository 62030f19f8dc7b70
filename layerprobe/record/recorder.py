"""The recorder: per-(layer, module) gradient norms, update ratios and drift during training.

``Recorder`` is the plain-PyTorch entry; ``RecorderCallback`` adapts it to ``transformers.Trainer`` (and
``trl.SFTTrainer`` and their subclasses)::

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

import logging
import math
import os
import sys
import time
import warnings
from collections import defaultdict
from collections.abc import Iterable
from pathlib import Path

import torch
from transformers import TrainerCallback

from layerprobe.core import rundir
from layerprobe.core.names import parse_name
from layerprobe.record import distributed, snapshot
from layerprobe.record.quantities import QUANTITIES, DriftRatio, GradNorm, Partial, Row, UpdateRatio, WeightNorm
from layerprobe.record.records import RecordWriter, drop_rows_after, write_meta
from layerprobe.record.schedules import Schedule, parse_schedule
from layerprobe.record.tracking import Units, find_units, is_lora_factor, param_label

logger = logging.getLogger("layerprobe")


def _rank() -> tuple[int, bool]:
    """(rank, distributed initialised)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), True
    return int(os.environ.get("RANK", 0)), False


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
        wanted = tuple(quantities) if quantities is not None else QUANTITIES
        unknown = [q for q in wanted if q not in QUANTITIES]
        if unknown:
            raise ValueError(f"unknown quantity {unknown[0]!r}: expected some of {', '.join(QUANTITIES)}")
        self.model, self.out_dir = model, Path(out_dir)
        self.run = run or self.out_dir.resolve().name
        self.phase, self.per_param = phase, per_param
        self.rank, self.distributed = _rank()
        self.active = self.rank == 0  # rank 0 writes
        sched = {
            "grad_norm": grad_every,
            "update_ratio": update_every,
            "drift_ratio": drift_every,
            "weight_norm": weight_every,
        }
        s = {q: parse_schedule(sched[q], max_steps) if q in wanted else parse_schedule("never") for q in QUANTITIES}
        snapshot.check_store(reference_store)
        self.grad = GradNorm(s["grad_norm"])
        self.weight = WeightNorm(s["weight_norm"])
        self.units: Units = find_units(model)
        if not self.units.dense:
            raise ValueError(
                "the model has no trainable parameters (requires_grad=True): nothing to record; "
                "unfreeze parameters or add an adapter before creating the recorder"
            )
        held = [q for q in ("update_ratio", "drift_ratio") if q in wanted and sched[q] != "never"]
        self.reference_store = _choose_store(self.units, reference_store, len(held), device_budget_gb, host_budget_gb)
        where, records = self.reference_store["store"], rundir.records_dir(self.out_dir)
        update = snapshot.make_store(where, records / f".update-{phase}-r{self.rank}.bin")
        drift = snapshot.make_store(where, records / f".reference-{phase}-r{self.rank}.bin", persist=True)
        self.update, self.drift = UpdateRatio(s["update_ratio"], update), DriftRatio(s["drift_ratio"], drift)
        params = [d.param for d in self.units.dense] + [p.base for p in self.units.lora]
        # sharded (FSDP2, ZeRO-3): every rank computes its part and the parts are summed in one all_reduce;
        # gradients read through DeepSpeed's collective accessor (ZeRO-1/2): every rank reads, rank 0 computes the
        # rest (the weights are whole); otherwise rank 0 alone computes
        self.group = distributed.shard_group(params)
        for d in self.units.dense:
            d.share = distributed.share(d.param, self.group)
        for pair in self.units.lora:
            pair.share, pair.a_share = distributed.share(pair.base, self.group), distributed.share(pair.a, self.group)
        self.computes = self.active or distributed.collective_reads(params)  # gradients
        self.owns_weights = self.active or self.group is not None  # update ratio, drift, weight norm, frozen
        self.step = 1  # the optimizer step being taken: rows at step s describe the s-th update
        self.summary: dict[str, float] = {}
        self.grad_scale = 1.0  # a loss scale the gradients still carry when read (DeepSpeed fp16)
        self._pending: list[Partial] = []
        self._closed = False
        self._warned_nonfinite = False
        self.writer: RecordWriter | None = None
        meta = dict(meta or {})
        if self.active:
            self.writer = RecordWriter(self.out_dir, self.run, phase, rank=self.rank, flush_every_s=flush_every_s)
            config = getattr(model, "config", None)
            write_meta(
                self.out_dir,
                phase,
                {
                    "run": self.run,
                    "model": type(model).__name__,
                    "model_path": getattr(config, "_name_or_path", None),
                    "model_config": getattr(config, "to_dict", lambda: None)(),
                    "quantities": list(wanted),
                    "grad_norm_clip": meta.pop("grad_norm_clip", "pre"),
                    "parameters": distributed.kind(params),
                    "sharded_over": _group_size(self.group),
                    "reference_store": self.reference_store,
                    "meta": meta,
                    "schedules": {q: getattr(s[q], "__name__", str(s[q])) for q in s},
                },
            )
            if resume_step:
                self._resume(resume_step)
            else:
                self._write_audit()
        self._drift_ready = self.owns_weights and "drift_ratio" in wanted and drift_every != "never"
        if self._drift_ready and not (resume_step and self.drift.resume(self.units)):
            self.drift.start(self.units)
        self._frozen_fingerprint = _fingerprint(model) if self.owns_weights else {}

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
            if clip and (coef < 1.0 or not math.isfinite(coef)):
                with torch.no_grad():
                    torch._foreach_mul_(
                        [g for d in self.units.dense if (g := distributed.grad(d.param)) is not None], coef
                    )
            if limit and (coef < 1.0 or not math.isfinite(coef)):
                factor = coef
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
            moved = _fingerprint(self.model, only=self._frozen_fingerprint)
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

    def _write_audit(self) -> None:
        """Parameter counts per (layer, block, module), trainable and total: the audit of what can train."""

        counts: dict[tuple[int, str, str], list[int]] = defaultdict(lambda: [0, 0])
        seen = set()
        for name, p in self.model.named_parameters():
            if id(p) in seen:
                continue
            seen.add(id(p))
            pn = parse_name(name)
            c = counts[(pn.layer, pn.block, pn.module)]
            n = getattr(p, "ds_numel", p.numel())  # ZeRO-3 parameters are empty outside forward
            c[0] += n
            c[1] += n if p.requires_grad else 0
        for (layer, block, module), (n, t) in counts.items():
            self._w.add(0, layer, block, module, "", "n_params", n)
            self._w.add(0, layer, block, module, "", "n_trainable", t)
        total = sum(c[0] for c in counts.values())
        trainable = sum(c[1] for c in counts.values())
        self._w.add(0, -1, "", "", "", "trainable_share", trainable / max(total, 1))
        self.summary["layerprobe/trainable_share"] = trainable / max(total, 1)

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


def _choose_store(units: Units, store: str, held: int, device_gb: float, host_gb: float) -> dict:
    """The reference store for ``held`` copies (update, drift) of this rank's trainable tensors, with its reason
    and size (:func:`layerprobe.record.snapshot.choose_store`)."""
    tensors = [distributed.weight(d.param) for d in units.dense]
    nbytes = held * sum(t.numel() * t.element_size() for t in tensors)
    device = tensors[0].device
    lora_only = bool(units.lora) and all(is_lora_factor(d.name) for d in units.dense)
    if store == "auto":
        device_budget, host_budget = snapshot.budgets(device, device_gb, host_gb)
    else:
        device_budget = host_budget = 0.0
    where, reason = snapshot.choose_store(store, nbytes, device.type, lora_only, device_budget, host_budget)
    return {"store": where, "asked": store, "reason": reason, "bytes": nbytes, "device": str(device)}


def _group_size(group) -> int | None:
    return None if group is None else torch.distributed.get_world_size(group)


def _ratio(num: float, den: float) -> float:
    if den == 0.0:
        return 0.0 if num == 0.0 else math.inf
    return num / den


def _fingerprint(model: torch.nn.Module, only: dict | None = None) -> dict[str, tuple[int, str, str, bytes]]:
    """A hash of each frozen parameter's bytes, to prove afterwards that it did not move."""
    import hashlib

    out, seen = {}, set()
    for name, p in model.named_parameters():
        if id(p) in seen or (only is None and p.requires_grad):
            continue
        seen.add(id(p))
        pn, key = parse_name(name), param_label(name)
        if only is not None and key not in only:
            continue
        t = distributed.weight(p).contiguous().cpu()
        digest = hashlib.blake2b(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"", digest_size=16).digest()
        out[key] = (pn.layer, pn.block, pn.module, digest)
    return out


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
