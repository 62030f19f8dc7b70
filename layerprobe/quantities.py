"""Recorded quantities: one small class each. Scheduling and saving live in the recorder.

Each quantity returns rows ``(name, layer, block, module, numerator_norm, denominator_norm | None)``;
the recorder turns them into per-parameter values and per-(layer, block, module) ratios of summed squares.
LoRA pairs are reported under the canonical name of the weight they adapt, in the same units as a dense
weight (the effective W = W0 + s * B @ A).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from layerprobe import lora_norms
from layerprobe.schedules import Schedule
from layerprobe.tracking import Units

Row = tuple[str, int, str, str, float, "float | None"]
CHUNK_ELEMS = 1 << 20  # 4 MB of float32: the working set of the chunked passes


def _rows(units_list, nums, dens=None) -> list[Row]:
    return [(u.name, u.layer, u.block, u.module, float(n), None if dens is None else float(d))
            for u, n, d in zip(units_list, nums, dens if dens is not None else nums)]


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

    @staticmethod
    def norms(units: Units) -> list[torch.Tensor]:
        grads = [d.param.grad for d in units.dense]
        present = [g for g in grads if g is not None]
        it = iter(torch._foreach_norm(present, 2, dtype=torch.float32) if present else [])
        zero = torch.zeros((), dtype=torch.float32)
        return [next(it) if g is not None else zero for g in grads]

    def rows(self, units: Units, norms: list[torch.Tensor]) -> list[Row]:
        values = torch.stack(norms).tolist() if norms else []
        return _rows(units.dense, values)


class WeightNorm(Quantity):
    """||W|| after the update; for LoRA pairs the effective weight ||W0 + s B A||."""

    name = "weight_norm"

    def rows(self, units: Units) -> list[Row]:
        params = [d.param.detach() for d in units.dense]
        vals = torch.stack(torch._foreach_norm(params, 2, dtype=torch.float32)).tolist() if params else []
        lora = [lora_norms.effective_weight_norm(p.base, p.b, p.a, p.scale, p.transposed, p.base_norm_sq)
                for p in units.lora]
        return _rows(units.dense, vals) + _rows(units.lora, lora)


class UpdateRatio(Quantity):
    """||W_{t+1} - W_t|| / ||W_t|| for one optimizer step.

    ``snapshot`` copies the trainable tensors into buffers allocated once and reused; ``rows`` subtracts in place.
    """

    name = "update_ratio"

    def __init__(self, schedule: Schedule):
        super().__init__(schedule)
        self._buf: list[torch.Tensor] | None = None
        self._lora_norm_before: list[float] = []

    @property
    def ready(self) -> bool:
        """Whether a snapshot was taken (``before_step`` ran for this step)."""
        return self._buf is not None

    def snapshot(self, units: Units) -> None:
        params = [d.param.detach() for d in units.dense]
        if self._buf is None:
            self._buf = [torch.empty_like(p) for p in params]
        torch._foreach_copy_(self._buf, params)
        self._lora_norm_before = [
            lora_norms.effective_weight_norm(p.base, p.b, p.a, p.scale, p.transposed, p.base_norm_sq)
            for p in units.lora]

    def rows(self, units: Units) -> list[Row]:
        assert self._buf is not None, "snapshot() must run before the optimizer step"
        params = [d.param.detach() for d in units.dense]
        dens = torch.stack(torch._foreach_norm(self._buf, 2, dtype=torch.float32)).tolist() if params else []
        torch._foreach_sub_(self._buf, params)
        nums = torch.stack(torch._foreach_norm(self._buf, 2, dtype=torch.float32)).tolist() if params else []
        rows = _rows(units.dense, nums, dens)
        index = {id(d.param): i for i, d in enumerate(units.dense)}
        for pair, before in zip(units.lora, self._lora_norm_before):
            # the pre-step factors are in the snapshot buffers (A, B are trainable dense units)
            a0 = self._before(pair.a, params, index)
            b0 = self._before(pair.b, params, index)
            num = lora_norms.product_diff_norm(pair.b, pair.a, b0, a0, pair.scale)
            rows.append((pair.name, pair.layer, pair.block, pair.module, num, before))
        return rows

    def _before(self, param: torch.Tensor, params: list[torch.Tensor], index: dict[int, int]) -> torch.Tensor:
        i = index.get(id(param))
        return param.detach() if i is None else params[i] + self._buf[i]  # buf holds W_t - W_{t+1}


class DriftRatio(Quantity):
    """||W_t - W_ref|| / ||W_ref||, W_ref being the weights at the start of the phase.

    Dense references are written once to a safetensors file and read back in row chunks, so no second copy
    of the weights is held in memory; LoRA references are the (small) starting factors.
    """

    name = "drift_ratio"

    def __init__(self, schedule: Schedule, reference_path: str | os.PathLike):
        super().__init__(schedule)
        self.path = Path(reference_path)
        self._lora_ref: list[tuple[torch.Tensor, torch.Tensor, float]] = []
        self._ref_norms: list[float] = []
        self._scratch: torch.Tensor | None = None

    def start(self, units: Units) -> None:
        from safetensors.torch import save_file

        self.path.parent.mkdir(parents=True, exist_ok=True)
        tensors = {d.name: d.param.detach().contiguous() for d in units.dense}
        tmp = self.path.with_suffix(".tmp")
        save_file(tensors, str(tmp))
        os.replace(tmp, self.path)
        self._ref_norms = torch.stack(torch._foreach_norm(list(tensors.values()), 2, dtype=torch.float32)).tolist() \
            if tensors else []
        self._lora_ref = [(p.a.detach().clone(), p.b.detach().clone(),
                           lora_norms.effective_weight_norm(p.base, p.b, p.a, p.scale, p.transposed, p.base_norm_sq))
                          for p in units.lora]
        self._scratch = torch.empty(CHUNK_ELEMS, dtype=torch.float32)

    def rows(self, units: Units) -> list[Row]:
        from safetensors import safe_open

        nums = []
        with safe_open(str(self.path), framework="pt") as f:
            for d in units.dense:
                nums.append(self._diff_norm(d.param.detach(), f.get_slice(d.name)))
        rows = _rows(units.dense, nums, self._ref_norms)
        for pair, (a0, b0, ref_norm) in zip(units.lora, self._lora_ref):
            rows.append((pair.name, pair.layer, pair.block, pair.module,
                         lora_norms.product_diff_norm(pair.b, pair.a, b0, a0, pair.scale), ref_norm))
        return rows

    def _diff_norm(self, w: torch.Tensor, ref) -> float:
        flat_rows = w.reshape(w.shape[0], -1) if w.dim() > 1 else w.reshape(1, -1)
        per_row = max(flat_rows.shape[1], 1)
        step = max(1, CHUNK_ELEMS // per_row)
        total = 0.0
        for i in range(0, flat_rows.shape[0], step):
            cur = flat_rows[i:i + step] if w.dim() > 1 else flat_rows
            r = ref[i:i + step] if w.dim() > 1 else ref[:]
            out = self._scratch[: cur.numel()].view(cur.shape) if cur.numel() <= CHUNK_ELEMS else None
            diff = torch.sub(cur.float(), r.reshape(cur.shape).float(), out=out)
            total += float(torch.linalg.vector_norm(diff).double() ** 2)
            if w.dim() <= 1:
                break
        return total ** 0.5

    def close(self) -> None:
        self._scratch = None
        self.path.unlink(missing_ok=True)


QUANTITIES = ("grad_norm", "weight_norm", "update_ratio", "drift_ratio")
