"""The evaluations of :mod:`layerprobe.attribution.attribute`: one evaluation per group and mode with the group swapped
(and swapped back), read from the cache first and shared by groups holding the same changed tensors; and the plan of
what will be evaluated, in words."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

from layerprobe.attribution.swap import EvalCache, WeightSwapper

Evaluate = Callable[[object, object], dict]  # (model, tokenizer) -> {metric: value}


class GroupRunner:
    """Runs one evaluation with a group swapped and swaps back; reads the cache first, and evaluates a tensor set
    shared by several groups (tied embedding and head, a selector equal to a layer) once."""

    def __init__(self, model, tokenizer, evaluate: Evaluate, swap: WeightSwapper, cache: EvalCache, log):
        self.model, self.tokenizer, self.evaluate, self.swap, self.cache, self.log = (
            model,
            tokenizer,
            evaluate,
            swap,
            cache,
            log,
        )
        self.evaluated = self.cached = self.reused = self.known = 0
        self.eval_seconds = 0.0
        self.planned = 0
        self._done: dict[tuple[str, frozenset], dict] = {}

    def run(self, group: str, mode: str, names: list[str], which: str, restore: str | None) -> dict:
        """Evaluate with ``names`` set to ``which`` (then set back to ``restore``, unless None)."""
        same = self._done.get((mode, frozenset(names))) if names else None
        if same is not None:
            self.reused += 1
            self.cache.put(group, mode, same, 0.0)
            return dict(same)
        hit = self.cache.get(group, mode)
        if hit is not None:
            self.cached += 1
            self._done[(mode, frozenset(names))] = hit
            return hit
        self.swap.set(names, which)
        t0 = time.time()
        metrics = {k: float(v) for k, v in self.evaluate(self.model, self.tokenizer).items()}
        dt = time.time() - t0
        if restore is not None:
            self.swap.set(names, restore)
        self.evaluated += 1
        self.eval_seconds += dt
        self.cache.put(group, mode, metrics, dt)
        self._done[(mode, frozenset(names))] = metrics
        shown = ", ".join(f"{k}={v:.4g}" for k, v in metrics.items())
        left = max(self.planned - self.evaluated, 0) * self.eval_seconds / self.evaluated
        self.log(f"{mode:>6} {group or '(whole model)':<24} {shown}  ({dt:.1f}s; at most ~{left:.0f}s left)")
        return metrics


def describe_plan(groups: dict, changed: dict, todo: dict, modes: Sequence[str], cache: EvalCache) -> tuple[str, int]:
    """What will be evaluated, in words, and how many evaluations at most."""
    runs = [(g, m) for g in groups for m in modes if todo[g]] + [("", "tuned"), ("", "base")]
    cached = sum(cache.get(g, m) is not None for g, m in runs)
    text = (
        f"{len(groups)} groups x {len(modes)} mode(s): at most {len(runs)} evaluations (2 baselines included), "
        f"{cached} cached"
    )
    same = [g for g in groups if not changed[g]]
    whole = [g for g in groups if changed[g] and not todo[g]]
    if same:
        text += f"; unchanged by SFT (revert = tuned, apply = base): {', '.join(same)}"
    if whole:
        text += f"; holding all of the SFT change (revert = base, apply = tuned): {', '.join(whole)}"
    return text, len(runs) - cached
