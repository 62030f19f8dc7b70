"""Keep a phase's weights near where the phase started: decoupled L2-SP and a cap on each weight's drift.

After every optimizer step, for every trainable weight W with the phase's starting value W0 and D = W - W0:

* ``l2sp`` (L2-SP, Li et al., ICML 2018, in the decoupled form AdamW uses for weight decay, Loshchilov &
  Hutter, ICLR 2019): D <- (1 - lr * l2sp) * D, with the learning rate of W's optimizer group for that step.
* ``drift_cap``: D <- D * min(1, drift_cap * ||W0|| / ||D||), so the recorder's ``drift_ratio`` of every
  weight, and hence of every layer and block (ratios of summed squares), stays <= drift_cap.

LoRA is held in the same units as full fine-tuning, on the effective change D = s * B @ A: scaling B scales D
exactly, so both rules become a scalar on B. This assumes the adapter starts at D = 0 (peft's default init sets
one factor to zero); an adapter that starts elsewhere is refused. Full fine-tuning keeps one copy of the
trainable weights (W0); LoRA keeps nothing. The rules run as an optimizer step hook, so the Trainer's callbacks
(the recorder's update ratio and drift included) see the weights after them.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from transformers import TrainerCallback

from layerprobe.record.lora_norms import product_norm
from layerprobe.record.tracking import find_units


def check_strengths(l2sp: float, drift_cap: float) -> tuple[float, float]:
    for name, v in (("l2sp", l2sp), ("drift_cap", drift_cap)):
        if not (isinstance(v, (int, float)) and v >= 0 and math.isfinite(v)):
            raise ValueError(f"{name} must be a finite number >= 0 (0 = off), got {v!r}")
    return float(l2sp), float(drift_cap)


class Anchor:
    """Apply decoupled L2-SP and a drift cap to ``model``'s trainable weights after each optimizer step.

    Plain loop::

        anchor = Anchor(model, l2sp=10.0, drift_cap=0.05)
        anchor.attach(optimizer)       # runs after every optimizer.step(), with each group's learning rate

    or call ``anchor.apply(lr)`` yourself after each step.
    """

    def __init__(self, model: torch.nn.Module, l2sp: float = 0.0, drift_cap: float = 0.0):
        self.l2sp, self.drift_cap = check_strengths(l2sp, drift_cap)
        units = find_units(model)
        self.pairs = units.lora
        in_pairs = {id(t) for p in self.pairs for t in (p.a, p.b)}
        for p in self.pairs:
            if product_norm(p.b, p.a, p.scale) > 0:
                raise ValueError(
                    f"anchoring needs LoRA adapters that start at dW = s*B*A = 0 (peft's default "
                    f"init); {p.name} starts with a non-zero dW: start a new adapter"
                )
        self.dense = [d.param for d in units.dense if id(d.param) not in in_pairs]
        self.start = [w.detach().clone() for w in self.dense]
        self.start_norm = [float(torch.linalg.vector_norm(w, dtype=torch.float32)) for w in self.start]
        self.pair_start_norm = [p.base_norm_sq**0.5 for p in self.pairs]
        self._handle: Any = None  # the optimizer hook's handle, once attached

    @property
    def active(self) -> bool:
        return self.l2sp > 0 or self.drift_cap > 0

    def apply(self, lr: float | dict[int, float]) -> None:
        """Apply both rules once; ``lr`` is the step's learning rate, or a map id(param) -> learning rate."""
        if not self.active:
            return
        lr_of = (lambda p: lr.get(id(p), 0.0)) if isinstance(lr, dict) else (lambda p: lr)
        with torch.no_grad():
            for w, w0, n0 in zip(self.dense, self.start, self.start_norm):
                d = w - w0
                factor = self._factor(lr_of(w), lambda d=d: float(torch.linalg.vector_norm(d, dtype=torch.float32)), n0)
                if factor != 1.0:
                    w.copy_(w0.add(d, alpha=factor))
            for p, n0 in zip(self.pairs, self.pair_start_norm):
                factor = self._factor(lr_of(p.b), lambda p=p: product_norm(p.b, p.a, p.scale), n0)
                if factor != 1.0:
                    p.b.mul_(factor)

    def _factor(self, lr: float, drift_norm, start_norm: float) -> float:
        """The scalar the change D is multiplied by: the L2-SP shrink, then the cap on what is left."""
        factor = 1.0 - lr * self.l2sp if self.l2sp else 1.0
        if factor < 0:
            raise ValueError(
                f"learning_rate * l2sp = {lr * self.l2sp:g} > 1 would overshoot the starting weights; "
                "lower l2sp below 1 / learning_rate"
            )
        if self.drift_cap:
            limit, norm = self.drift_cap * start_norm, drift_norm() * factor
            if norm > limit:
                factor *= limit / norm
        return factor

    def attach(self, optimizer: torch.optim.Optimizer):
        """Run :meth:`apply` after every ``optimizer.step()`` with each parameter group's learning rate.
        Returns the hook handle (``.remove()`` detaches it)."""
        inner = getattr(optimizer, "optimizer", optimizer)  # accelerate wraps the torch optimizer

        def hook(opt, args, kwargs):
            self.apply({id(p): g["lr"] for g in opt.param_groups for p in g["params"]})

        self._handle = inner.register_step_post_hook(hook)
        return self._handle

    def detach(self) -> None:
        if self._handle is not None:
            self._handle.remove()
            self._handle = None


class AnchorCallback(TrainerCallback):
    """:class:`Anchor` for ``transformers.Trainer`` / ``trl.SFTTrainer``: starts from the weights at
    ``on_train_begin`` and hooks the Trainer's optimizer::

        Trainer(..., callbacks=[AnchorCallback(l2sp=10.0, drift_cap=0.05)])
    """

    def __init__(self, l2sp: float = 0.0, drift_cap: float = 0.0):
        self.l2sp, self.drift_cap = check_strengths(l2sp, drift_cap)
        self.anchor: Anchor | None = None

    def on_train_begin(self, args, state, control, model=None, optimizer=None, **kwargs):
        if optimizer is None:
            raise ValueError("AnchorCallback needs the Trainer's optimizer at on_train_begin; got none")
        self.anchor = Anchor(model, self.l2sp, self.drift_cap)
        self.anchor.attach(optimizer)

    def on_train_end(self, args, state, control, **kwargs):
        if self.anchor is not None:
            self.anchor.detach()
