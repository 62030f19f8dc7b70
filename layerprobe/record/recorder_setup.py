"""Setting a :class:`layerprobe.record.recorder.Recorder` up: the quantities and their schedules, the trainable units,
where the drift and update references live, the shards, the run's meta, the audit of what can train and the frozen
weights' hashes. The per-step work is the recorder's own.
"""

from __future__ import annotations

import hashlib
import os
from collections import defaultdict
from collections.abc import Iterable
from pathlib import Path

import torch

from layerprobe.core import rundir
from layerprobe.core.names import parse_name
from layerprobe.record import distributed, snapshot
from layerprobe.record.quantities import QUANTITIES
from layerprobe.record.records import RecordWriter
from layerprobe.record.schedules import Schedule, parse_schedule
from layerprobe.record.tracking import Units, find_units, is_lora_factor, param_label


def rank() -> tuple[int, bool]:
    """(rank, distributed initialised)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), True
    return int(os.environ.get("RANK", 0)), False


def wanted_quantities(quantities: Iterable[str] | None) -> tuple[str, ...]:
    """The quantities to record (all of :data:`layerprobe.record.quantities.QUANTITIES` when none are named)."""
    wanted = tuple(quantities) if quantities is not None else QUANTITIES
    unknown = [q for q in wanted if q not in QUANTITIES]
    if unknown:
        raise ValueError(f"unknown quantity {unknown[0]!r}: expected some of {', '.join(QUANTITIES)}")
    return wanted


def schedules(every: dict, wanted: tuple[str, ...], max_steps: int | None) -> dict[str, Schedule]:
    """Each quantity's schedule from its interval ``every[q]``; one not wanted never runs."""
    return {q: parse_schedule(every[q], max_steps) if q in wanted else parse_schedule("never") for q in QUANTITIES}


def trainable_units(model: torch.nn.Module) -> Units:
    """The model's trainable units (:func:`layerprobe.record.tracking.find_units`); none is an error saying what to
    do."""
    units = find_units(model)
    if not units.dense:
        raise ValueError(
            "the model has no trainable parameters (requires_grad=True): nothing to record; "
            "unfreeze parameters or add an adapter before creating the recorder"
        )
    return units


def choose_store(units: Units, store: str, held: int, device_gb: float, host_gb: float) -> dict:
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


def reference_stores(where: str, out_dir: Path, phase: str, rank: int) -> tuple:
    """(update store, drift store) of this rank in ``where``; the drift reference persists, for a resume."""
    records = rundir.records_dir(out_dir)
    update = snapshot.make_store(where, records / f".update-{phase}-r{rank}.bin")
    drift = snapshot.make_store(where, records / f".reference-{phase}-r{rank}.bin", persist=True)
    return update, drift


def shard(units: Units) -> tuple:
    """(process group, the units' parameters): each unit's share of its shard set.

    Sharded (FSDP2, ZeRO-3): every rank computes its part and the parts are summed in one all_reduce; gradients
    read through DeepSpeed's collective accessor (ZeRO-1/2): every rank reads, rank 0 computes the rest (the weights
    are whole); otherwise rank 0 alone computes (the group is None)."""
    params = [d.param for d in units.dense] + [p.base for p in units.lora]
    group = distributed.shard_group(params)
    for d in units.dense:
        d.share = distributed.share(d.param, group)
    for pair in units.lora:
        pair.share, pair.a_share = distributed.share(pair.base, group), distributed.share(pair.a, group)
    return group, params


def run_meta(model, run: str, wanted, s: dict, params: list, group, store: dict, meta: dict | None) -> dict:
    """What ``records/meta-<phase>.json`` holds: the model, the quantities and their schedules, the clipping, the
    sharding, the reference store and the caller's ``meta``."""
    meta = dict(meta or {})
    config = getattr(model, "config", None)
    return {
        "run": run,
        "model": type(model).__name__,
        "model_path": getattr(config, "_name_or_path", None),
        "model_config": getattr(config, "to_dict", lambda: None)(),
        "quantities": list(wanted),
        "grad_norm_clip": meta.pop("grad_norm_clip", "pre"),
        "parameters": distributed.kind(params),
        "sharded_over": None if group is None else torch.distributed.get_world_size(group),
        "reference_store": store,
        "meta": meta,
        "schedules": {q: getattr(s[q], "__name__", str(s[q])) for q in s},
    }


def write_audit(model: torch.nn.Module, writer: RecordWriter) -> float:
    """Parameter counts per (layer, block, module), trainable and total, at step 0: the audit of what can train.
    Returns the trainable share."""
    counts: dict[tuple[int, str, str], list[int]] = defaultdict(lambda: [0, 0])
    seen = set()
    for name, p in model.named_parameters():
        if id(p) in seen:
            continue
        seen.add(id(p))
        pn = parse_name(name)
        c = counts[(pn.layer, pn.block, pn.module)]
        n = getattr(p, "ds_numel", p.numel())  # ZeRO-3 parameters are empty outside forward
        c[0] += n
        c[1] += n if p.requires_grad else 0
    for (layer, block, module), (n, t) in counts.items():
        writer.add(0, layer, block, module, "", "n_params", n)
        writer.add(0, layer, block, module, "", "n_trainable", t)
    total = sum(c[0] for c in counts.values())
    trainable = sum(c[1] for c in counts.values())
    writer.add(0, -1, "", "", "", "trainable_share", trainable / max(total, 1))
    return trainable / max(total, 1)


def frozen_fingerprint(model: torch.nn.Module, only: dict | None = None) -> dict[str, tuple[int, str, str, bytes]]:
    """A hash of each frozen parameter's bytes, to prove afterwards that it did not move."""
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
