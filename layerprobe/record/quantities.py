"""Recorded quantities: one small class each. Scheduling, reducing over ranks and saving live in the recorder.

Each quantity returns a :class:`Partial`: this rank's pieces (sums of squares, and for LoRA small Gram matrices)
that add up over shards, and a ``finish`` that turns their sums into rows
``(name, layer, block, module, numerator_norm, denominator_norm | None)``. Unsharded, the pieces are the whole
sums. LoRA pairs are reported under the canonical name of the weight they adapt, in the same units as a dense
weight (the effective W = W0 + s * B @ A).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from layerprobe.record import distributed, lora_norms
from layerprobe.record.schedules import Schedule
from layerprobe.record.snapshot import DiskSnapshot, MemorySnapshot
from layerprobe.record.tracking import LoraPair, Units

Row = tuple[str, int, str, str, float, "float | None"]


@dataclass
class Partial:
    """One quantity at one step: ``tensors`` are this rank's pieces; ``finish(sums)`` makes rows of their sums."""

    quantity: str
    step: int
    tensors: list[torch.Tensor]
    finish: Callable[[list[torch.Tensor]], list[Row]]
    sums: list[torch.Tensor] = field(default_factory=list)


def _rows(units_list, nums, dens=None) -> list[Row]:
    return [
        (u.name, u.layer, u.block, u.module, float(n), None if dens is None else float(d))
        for u, n, d in zip(units_list, nums, dens if dens is not None else nums)
    ]


def _sq_norms(tensors: list[torch.Tensor | None], units: Units) -> torch.Tensor:
    """Squared L2 norms in float64 (0 for None) times each unit's share of the sum over ranks; one foreach kernel."""
    present = [t for t in tensors if t is not None]
    device = present[0].device if present else torch.device("cpu")
    out = torch.zeros(len(tensors), dtype=torch.float64, device=device)
    if present:
        norms = torch.stack(torch._foreach_norm(present, 2, dtype=torch.float32)).double()
        idx = torch.tensor([i for i, t in enumerate(tensors) if t is not None], device=device)
        out[idx] = norms * norms
    return out * torch.tensor([d.share for d in units.dense], dtype=torch.float64, device=device)


def _weight_parts(p: LoraPair, b: torch.Tensor, a: torch.Tensor) -> list[torch.Tensor]:
    """This rank's pieces of the effective weight norm of pair ``p`` with factors ``b, a`` (this rank's pieces)."""
    parts = lora_norms.weight_parts(
        distributed.weight(p.base),
        distributed.rows_like(b, p.b, p.base),
        distributed.whole(a, p.a, p.a_share),
        p.transposed,
        p.base_norm_sq,
    )
    return [t * p.share for t in parts[:3]] + parts[3:]


class Quantity:
    """A quantity recorded at the optimizer steps its schedule selects."""

    name = ""

    def __init__(self, schedule: Schedule):
        self.schedule = schedule

    def due(self, step: int) -> bool:
        return bool(self.schedule(step))


class GradNorm(Quantity):
    """L2 norm of each trainable parameter's accumulated gradient, before clipping."""

    name = "grad_norm"

    def partial(self, units: Units, step: int, scale: float = 1.0) -> Partial:
        """``scale``: a loss scale the gradients still carry (DeepSpeed fp16), divided out."""
        sq = _sq_norms([distributed.grad(d.param) for d in units.dense], units)
        if scale != 1.0:
            sq = sq / (scale * scale)
        return Partial(self.name, step, [sq], lambda s: _rows(units.dense, s[0].sqrt().tolist()))


class WeightNorm(Quantity):
    """||W|| after the update; for LoRA pairs the effective weight ||W0 + s B A||."""

    name = "weight_norm"

    def partial(self, units: Units, step: int) -> Partial:
        tensors = [_sq_norms([distributed.weight(d.param) for d in units.dense], units)]
        for p in units.lora:
            tensors += _weight_parts(p, distributed.weight(p.b), distributed.weight(p.a))

        def finish(s):
            lora = [lora_norms.weight_norm_from(s[1 + 4 * i : 5 + 4 * i], p.scale) for i, p in enumerate(units.lora)]
            return _rows(units.dense, s[0].sqrt().tolist()) + _rows(units.lora, lora)

        return Partial(self.name, step, tensors, finish)


class _Change(Quantity):
    """||W_t - R|| / ||R|| against reference weights R (this rank's shard only) held by a store of
    :mod:`layerprobe.record.snapshot` (disk: read back in 4 MB pieces, no second copy in memory; device or host memory),
    compared in the same 4 MB pieces whichever store holds R. LoRA pairs: the effective weights from the stored
    factors."""

    fixed_reference = False  # R stays the same all phase: its LoRA norms are computed once (the costly part)

    def __init__(self, schedule: Schedule, store: str | os.PathLike | DiskSnapshot | MemorySnapshot):
        super().__init__(schedule)
        self.store = store if isinstance(store, (DiskSnapshot, MemorySnapshot)) else DiskSnapshot(store)
        self._lora_ref_norms: list[float] | None = None  # set by the first finish on rank 0
        self._ref_sent = False

    def write(self, units: Units, overwrite: bool = False) -> None:
        self.store.write({d.name: distributed.weight(d.param) for d in units.dense}, overwrite)
        self._lora_ref_norms, self._ref_sent = None, False

    def partial(self, units: Units, step: int) -> Partial:
        norms, counts = [], []  # per piece ||W - R||, ||R|| (on the weights' device: one copy to the host at the end)
        for d in units.dense:
            pieces = [
                torch.stack([torch.linalg.vector_norm(live - ref), torch.linalg.vector_norm(ref)])
                for live, ref in self.store.pairs(d.name, distributed.weight(d.param))
            ]
            norms += pieces
            counts.append(len(pieces))
        values = torch.stack(norms).cpu().tolist() if norms else []
        sums, i = [], 0  # per dense unit: ||W - R||^2, ||R||^2, summed over its pieces in order
        for d, n in zip(units.dense, counts):
            diff_sq = ref_sq = 0.0
            for diff, ref in values[i : i + n]:
                diff_sq += diff**2
                ref_sq += ref**2
            sums.append((diff_sq * d.share, ref_sq * d.share))
            i += n
        tensors = [torch.tensor(sums, dtype=torch.float64).reshape(-1, 2)]
        # every rank decides alike whether the reference's LoRA norm pieces are sent (the reduce needs equal sizes)
        with_ref = not (self.fixed_reference and self._ref_sent)
        self._ref_sent = True
        names = {id(d.param): d.name for d in units.dense}
        for p in units.lora:
            a1, b1 = distributed.weight(p.a), distributed.weight(p.b)
            a0 = self.store.get(names[id(p.a)]).to(a1.device) if id(p.a) in names else a1
            b0 = self.store.get(names[id(p.b)]).to(b1.device) if id(p.b) in names else b1
            rows_b = [distributed.rows_like(b, p.b, p.base) for b in (b1, b0)]
            whole_a = [distributed.whole(a, p.a, p.a_share) for a in (a1, a0)]
            gram, a1w, a0w = lora_norms.diff_parts(rows_b[0], whole_a[0], rows_b[1], whole_a[1])
            tensors += [gram * p.share, a1w, a0w] + (_weight_parts(p, b0, a0) if with_ref else [])

        def finish(s):
            dense = s[0].sqrt()
            rows = _rows(units.dense, dense[:, 0].tolist(), dense[:, 1].tolist()) if len(units.dense) else []
            k = 7 if with_ref else 3
            if with_ref:
                self._lora_ref_norms = [
                    lora_norms.weight_norm_from(s[4 + k * i : 1 + k * (i + 1)], p.scale)
                    for i, p in enumerate(units.lora)
                ]
            for i, p in enumerate(units.lora):
                rows.append(
                    (
                        p.name,
                        p.layer,
                        p.block,
                        p.module,
                        lora_norms.diff_norm_from(s[1 + k * i : 4 + k * i], p.scale),
                        self._lora_ref_norms[i],
                    )
                )
            return rows

        return Partial(self.name, step, tensors, finish)

    def close(self) -> None:
        self.store.close()


class UpdateRatio(_Change):
    """||W_{t+1} - W_t|| / ||W_t|| for one optimizer step; W_t is written to disk just before a recorded step."""

    name = "update_ratio"

    def __init__(self, schedule: Schedule, store: str | os.PathLike | DiskSnapshot | MemorySnapshot):
        super().__init__(schedule, store)
        self.snapshot_step: int | None = None

    def snapshot(self, units: Units, step: int) -> None:
        self.write(units, overwrite=True)
        self.snapshot_step = step

    def ready(self, step: int) -> bool:
        """Whether the weights before ``step`` were written (``before_step`` ran for this step)."""
        return self.snapshot_step == step


class DriftRatio(_Change):
    """||W_t - W_ref|| / ||W_ref||, W_ref being the weights at the start of the phase."""

    name = "drift_ratio"
    fixed_reference = True

    def start(self, units: Units) -> None:
        self.write(units)

    def resume(self, units: Units) -> bool:
        """Measure from the phase's start again after a resume: reuse the reference the first attempt wrote.
        Returns False when it is gone (the caller then starts a new reference)."""
        return self.store.attach({d.name: distributed.weight(d.param) for d in units.dense})


QUANTITIES = ("grad_norm", "weight_norm", "update_ratio", "drift_ratio")
