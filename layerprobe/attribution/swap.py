"""The two pieces of attribution that touch a model: :class:`WeightSwapper` sets a group of its tensors to their
base (CPT) or tuned (SFT) values, read lazily from the checkpoints, and :class:`EvalCache` keeps each evaluation
of a (group, mode) in a JSON file under the evaluation service's key
(:func:`layerprobe.evaluation.evalservice.cache_key`: the checkpoints' content hashes, the group and mode swapped, and
the caller's evaluation key).

torch is imported only inside the methods that need it.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from layerprobe.core.names import parse_name
from layerprobe.evaluation.evalservice import cache_key


class WeightSwapper:
    """Sets any tensor of an in-memory model to its base or its tuned value, read lazily from the checkpoints.

    ``model`` holds the tuned weights (``state="tuned"``) or the base weights (``state="base"``); ``base`` is a
    full-weights source, ``tuned`` a full-weights source or a LoRA adapter source on ``base`` (both from
    :func:`layerprobe.weights.checkpoints.open_source`). Call :meth:`measure` once before :meth:`set`.
    """

    def __init__(self, model, base, tuned, state: str):
        if base.kind != "weights":
            raise ValueError(
                f"the base must hold full weights (a model folder or .safetensors file), got the "
                f"adapter {base.label}; pass the CPT model (merged/) as the base"
            )
        self.base, self.tuned = base, tuned
        self.params: dict[str, Any] = {}  # name -> the model's torch Parameter
        for name, p in model.named_parameters():  # tied tensors once, under their first name
            self.params.setdefault(parse_name(name).canonical, p)
        missing = [n for n in self.params if n not in base.names()]
        if missing:
            raise ValueError(
                f"{len(missing)} tensors of the model are not in the base {base.label} (first: "
                f"{missing[:3]}); pass the checkpoint the model was built from"
            )
        if tuned.kind == "weights":
            gone = [n for n in self.params if n not in tuned.names()]
            if gone:
                raise ValueError(
                    f"{len(gone)} tensors of the model are not in the tuned {tuned.label} (first: "
                    f"{gone[:3]}); base and tuned must be the same architecture"
                )
        else:
            extra = sorted(n for n in tuned.names() if n not in self.params)
            if extra:
                raise ValueError(
                    f"the adapter {tuned.label} updates {len(extra)} tensors the model does not hold as "
                    f"separate parameters (first: {extra[:3]}; tied?); merge it and pass the merged model"
                )
        for name, p in self.params.items():
            shape = tuple(base.shape(name))
            if tuned.kind == "adapter" and name in tuned.names():
                tuned.fit_shape(name, shape)
            other = tuned.shape(name) if tuned.kind == "weights" or name in tuned.names() else shape
            if tuple(p.shape) != shape or tuple(other) != shape:
                raise ValueError(
                    f"{name}: shape {list(p.shape)} in the model, {list(shape)} in the base, "
                    f"{list(other)} in the tuned checkpoint; they must match"
                )
        self.state = dict.fromkeys(self.params, state)
        self.unchanged: set[str] = set()

    def names(self) -> list[str]:
        return list(self.params)

    def value(self, name: str, which: str):
        """The flat base or tuned value of one tensor (a view into the mapped file where possible)."""
        import torch

        base = self.base.operand(name).flat
        if which == "base":
            return base
        if self.tuned.kind == "weights":
            return self.tuned.operand(name).flat
        if name not in self.tuned.names():
            return base
        op = self.tuned.operand(name)
        if op.kind == "value":  # modules_to_save: a full replacement
            return op.flat
        delta = torch.empty(base.numel(), dtype=torch.float32)
        rows = self.base.shape(name)[0] if len(self.base.shape(name)) else 1
        op.fill(0, rows, delta)
        return base.float() + delta

    def set(self, names: Iterable[str], which: str) -> int:
        """Set ``names`` to their ``which`` ('base' or 'tuned') values; returns the number of tensors copied."""
        import torch

        n = 0
        with torch.no_grad():
            for name in names:
                if self.state[name] != which and name not in self.unchanged:
                    p = self.params[name]
                    p.copy_(self.value(name, which).view(p.shape))
                    n += 1
                self.state[name] = which
        return n

    def measure(self) -> dict[str, tuple[float, float]]:
        """(||W_t - W_b||^2, ||W_b||^2) of every tensor; tensors SFT left unchanged are never copied again."""
        out = {n: self.change(n) for n in self.params}
        self.unchanged = {n for n, (d2, _) in out.items() if d2 == 0}
        return out

    def change(self, name: str) -> tuple[float, float]:
        """(||W_t - W_b||^2, ||W_b||^2) of one tensor, in float64, from the files; for a LoRA pair the change is
        s * B @ A itself (not rounded into W_b), its squared norm from the factors: tr((B^T B)(A A^T)) * s^2."""
        import torch

        from layerprobe.weights.checkpoints import LoraDelta

        b = self.base.operand(name).flat
        adapter = self.tuned.kind == "adapter"
        op = self.tuned.operand(name) if adapter and name in self.tuned.names() else None
        factors = op.factors() if isinstance(op, LoraDelta) else None
        # the tuned value is read only where it is stored whole (full weights, modules_to_save)
        t = self.value(name, "tuned") if not adapter or (op is not None and op.kind == "value") else None
        d2 = w2 = 0.0
        step = 1 << 22
        for i in range(0, b.numel(), step):
            bi = b[i : i + step].double()
            if t is not None:
                d2 += float(torch.sum((t[i : i + step].double() - bi) ** 2))
            w2 += float(torch.sum(bi * bi))
        if factors is not None:
            left, right = (f.double() for f in factors)
            d2 = float(torch.sum((left.T @ left) * (right @ right.T)))
        elif op is not None and op.kind == "delta":  # a LoRA bias: the delta is stored whole
            d2 = float(torch.sum(op.flat.double() ** 2))
        return d2, w2

    def trained(self, name: str) -> int:
        """How many trained parameters stand behind one tensor's change. An adapter: r * (in + out) for a LoRA
        pair (A is r x in, B is out x r; the sizes of the two factors as stored), every entry of a
        ``modules_to_save`` tensor or of a LoRA bias, 0 for a tensor it leaves alone. Full weights: every entry of
        a tensor SFT changed, 0 for one it left unchanged (call :meth:`measure` first)."""
        if self.tuned.kind == "weights":
            return 0 if name in self.unchanged else self.params[name].numel()
        if name not in self.tuned.names():
            return 0
        if self.tuned.is_lora(name):
            e = self.tuned.loras[name]
            return math.prod(e.a.shape) + math.prod(e.b.shape)
        return math.prod(self.tuned.shape(name))


class EvalCache:
    """Evaluations in a JSON file: key -> {group, mode, metrics, seconds}; rewritten atomically on each put.

    The key is the evaluation service's (:func:`layerprobe.evaluation.evalservice.cache_key`): the variant's model (the
    two checkpoints' content hashes and the group and mode swapped) and the evaluation's key."""

    def __init__(self, path: str | os.PathLike | None, base: str, tuned: str, eval_key: str):
        self.path = Path(path) if path else None
        self.base, self.tuned, self.eval_key = base, tuned, eval_key
        self.entries: dict[str, dict] = {}
        if self.path is not None and self.path.is_file():
            try:
                self.entries = json.loads(self.path.read_text())
            except json.JSONDecodeError as e:
                raise ValueError(f"the cache {self.path} is not valid JSON ({e}); delete it to start afresh") from None

    def key(self, group: str, mode: str) -> str:
        return cache_key({"base": self.base, "tuned": self.tuned, "variant": [group, mode]}, self.eval_key)

    def get(self, group: str, mode: str) -> dict | None:
        e = self.entries.get(self.key(group, mode))
        return dict(e["metrics"]) if e else None

    def put(self, group: str, mode: str, metrics: dict, seconds: float) -> None:
        self.entries[self.key(group, mode)] = {
            "group": group,
            "mode": mode,
            "metrics": metrics,
            "seconds": round(seconds, 3),
        }
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_suffix(".json.tmp")
            tmp.write_text(json.dumps(self.entries, indent=1, sort_keys=True))
            os.replace(tmp, self.path)
