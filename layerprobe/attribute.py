"""Causal attribution of an SFT change: revert part of it to the CPT weights (or apply only that part), evaluate.

For a group G of tensors (one layer, one block kind, one (layer, block) cell or any selector of
:mod:`layerprobe.select`), with base (CPT) weights W_b and tuned (SFT) weights W_t:

- ``revert G``: W_b on G, W_t elsewhere -- what the model loses when G's SFT change is undone;
- ``apply G``: W_t on G, W_b elsewhere -- what G's SFT change does on its own.

Only one model is ever in memory. The tuned model is loaded once; a tensor is set to its base or tuned value by
reading that value lazily from the checkpoint files (memory-mapped safetensors, one tensor at a time, via
:func:`layerprobe.checkpoints.open_source`), or, for an SFT LoRA adapter, as W_b + s * B @ A. Setting a tensor
back copies the same bytes again, so a swap round trip is exact. Reverts run first (G to base, evaluate, G back
to tuned); then the whole model is set to base once and each G is applied alone.

A group whose tensors SFT left unchanged is not evaluated: its revert equals the tuned model and its apply
equals the base model, exactly (and the reverse for a group holding every changed tensor). Groups holding the
same changed tensors (tied embedding and head; ``attn`` when SFT trained only attention) are evaluated once.
Evaluations are cached in a JSON file under the evaluation service's key (:func:`layerprobe.evalservice.cache_key`:
the two checkpoints' content hashes, the group and the mode, and the caller's evaluation key), so a rerun is free.

Output: records (:data:`layerprobe.records.COLUMNS`) with ``phase="attribute"``, ``step=-1``, ``param`` = the
group's selector, ``layer``/``block`` = the group's single layer / block (-1 / "" when it spans several),
``quantity`` = ``revert:<metric>`` or ``apply:<metric>`` (the metric's value, not a difference); baselines
``tuned:<metric>`` and ``base:<metric>`` (``param=""``), ``rel_change`` = ||W_t - W_b|| / ||W_b|| over G, and
three denominators, G's share of

- ``weight_share``: the dense entries SFT changed (every entry of each changed tensor);
- ``trained_share``: the parameters SFT trained -- for a LoRA adapter r * (in + out) per adapted matrix (lora_A is
  r x in, lora_B is out x r, read from the adapter), the entries of a ``modules_to_save`` tensor or a LoRA bias;
  for full weights the entries of each changed tensor (= ``weight_share``);
- ``delta_share``: the squared change ||W_t - W_b||^2 (summed over G / over every tensor; for LoRA
  ||s * B @ A||^2, from the factors, tensor by tensor).

:func:`effects` divides each effect's share of the whole change by each (``share_per_weight``,
``share_per_trained``, ``share_per_delta``): 1 means the group matters in proportion to its size, no more. Shares
of the groups of a partition need not add up to 1: reverting two groups together is not the sum of reverting each.
Over several seeds, :func:`over_seeds` gives each mean with its Student-t interval, and :func:`paired_difference`
the per-seed difference of two groups (``attn - mlp``).

torch is imported only inside the functions that need it; :func:`plot_attribution` draws from records alone.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np
import pandas as pd

from layerprobe.names import BLOCKS, parse_name
from layerprobe.records import COLUMNS

PHASE = "attribute"
MODES = ("revert", "apply")
GROUPINGS = ("layers", "blocks", "cells")
# each denominator recorded per group -> the ratio effects() writes (the effect's share / the group's share)
DENOMINATORS = {"weight_share": "share_per_weight", "trained_share": "share_per_trained",
                "delta_share": "share_per_delta"}
# the per-seed columns over_seeds() gives a mean and an interval ("effect" keeps the names lo / hi)
SEED_VALUES = ("effect", "share", *DENOMINATORS.values())
Evaluate = Callable[[object, object], dict]


@dataclass
class AttributeConfig:
    groups: tuple[str, ...] = field(default=("layers", "blocks"), metadata={
        "help": "groups to revert/apply: 'layers' (each decoder layer), 'blocks' (each block kind over the whole "
                "model), 'cells' (each block of each layer), or any selector (mlp & layers:0-3)"})
    modes: tuple[str, ...] = field(default=MODES, metadata={
        "help": "revert (base on the group, tuned elsewhere) and/or apply (tuned on the group, base elsewhere)"})
    cache: str | None = field(default=None, metadata={
        "help": "JSON file caching evaluations (None = no cache)"})
    run: str = field(default="attribute", metadata={"help": "run name written in the records"})

    def __post_init__(self):
        for name in ("groups", "modes"):
            value = getattr(self, name)
            if isinstance(value, str):
                value = tuple(v.strip() for v in value.split(",") if v.strip())
            setattr(self, name, tuple(value))
        if not self.groups:
            raise ValueError(f"expected at least one group ({', '.join(GROUPINGS)} or a selector), got none")
        bad = [m for m in self.modes if m not in MODES]
        if bad or not self.modes:
            raise ValueError(f"modes must be some of {', '.join(MODES)}; got {list(self.modes)}")


@dataclass
class AttributionResult:
    records: pd.DataFrame
    n_evaluated: int           # evaluations run now
    n_cached: int              # evaluations read from the cache
    n_reused: int              # groups holding the same changed tensors as one evaluated before
    n_known: int               # group x mode results known exactly without evaluating: SFT left G unchanged
                               # (revert = tuned, apply = base), or G holds all of the change (the reverse)
    seconds: float             # wall time of the whole call
    eval_seconds: float        # of which evaluating
    groups: dict[str, int] = field(default_factory=dict)   # selector -> number of tensors

    def cost(self) -> str:
        per = self.eval_seconds / self.n_evaluated if self.n_evaluated else 0.0
        return (f"{self.n_evaluated} evaluation(s) run ({per:.1f}s each), {self.n_cached} from the cache, "
                f"{self.n_reused} shared with a group holding the same tensors, {self.n_known} known without "
                f"evaluating (group unchanged by SFT, or holding all of its change); wall time {self.seconds:.1f}s")


# ------------------------------------------------------------------------------------------ groups

def expand_groups(named_shapes: Sequence[tuple[str, tuple[int, ...]]], groups: Iterable[str]) -> list[str]:
    """Selectors for ``layers``/``blocks``/``cells`` (over the tensors present), other entries kept as given."""
    parsed = [parse_name(n) for n, _ in named_shapes]
    layers = sorted({p.layer for p in parsed if p.layer >= 0})
    blocks = [b for b in BLOCKS if any(p.block == b for p in parsed)]
    out: list[str] = []
    for g in groups:
        if g == "layers":
            out += [f"layers:{i}" for i in layers]
        elif g == "blocks":
            out += blocks
        elif g == "cells":
            out += [f"{b} & layers:{i}" for i in layers for b in BLOCKS
                    if any(p.layer == i and p.block == b for p in parsed)]
        else:
            out.append(g)
    return list(dict.fromkeys(out))


def group_position(names: Iterable[str]) -> tuple[int, str]:
    """(layer, block) of a group: its single layer and block, or -1 / "" where it spans several."""
    parsed = [parse_name(n) for n in names]
    layers = {p.layer for p in parsed}
    blocks = {p.block for p in parsed}
    return (layers.pop() if len(layers) == 1 else -1), (blocks.pop() if len(blocks) == 1 else "")


# ------------------------------------------------------------------------------------------ weights

class WeightSwapper:
    """Sets any tensor of an in-memory model to its base or its tuned value, read lazily from the checkpoints.

    ``model`` holds the tuned weights (``state="tuned"``) or the base weights (``state="base"``); ``base`` is a
    full-weights source, ``tuned`` a full-weights source or a LoRA adapter source on ``base`` (both from
    :func:`layerprobe.checkpoints.open_source`). Call :meth:`measure` once before :meth:`set`.
    """

    def __init__(self, model, base, tuned, state: str):
        if base.kind != "weights":
            raise ValueError(f"the base must hold full weights (a model folder or .safetensors file), got the "
                             f"adapter {base.label}; pass the CPT model (merged/) as the base")
        self.base, self.tuned = base, tuned
        self.params: dict[str, object] = {}
        for name, p in model.named_parameters():  # tied tensors once, under their first name
            self.params.setdefault(parse_name(name).canonical, p)
        missing = [n for n in self.params if n not in base.names()]
        if missing:
            raise ValueError(f"{len(missing)} tensors of the model are not in the base {base.label} (first: "
                             f"{missing[:3]}); pass the checkpoint the model was built from")
        if tuned.kind == "weights":
            gone = [n for n in self.params if n not in tuned.names()]
            if gone:
                raise ValueError(f"{len(gone)} tensors of the model are not in the tuned {tuned.label} (first: "
                                 f"{gone[:3]}); base and tuned must be the same architecture")
        else:
            extra = sorted(n for n in tuned.names() if n not in self.params)
            if extra:
                raise ValueError(f"the adapter {tuned.label} updates {len(extra)} tensors the model does not hold as "
                                 f"separate parameters (first: {extra[:3]}; tied?); merge it and pass the merged model")
        for name, p in self.params.items():
            shape = tuple(base.shape(name))
            if tuned.kind == "adapter" and name in tuned.names():
                tuned.fit_shape(name, shape)
            other = tuned.shape(name) if tuned.kind == "weights" or name in tuned.names() else shape
            if tuple(p.shape) != shape or tuple(other) != shape:
                raise ValueError(f"{name}: shape {list(p.shape)} in the model, {list(shape)} in the base, "
                                 f"{list(other)} in the tuned checkpoint; they must match")
        self.state = {n: state for n in self.params}
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

        from layerprobe.checkpoints import LoraDelta

        b = self.base.operand(name).flat
        adapter = self.tuned.kind == "adapter"
        op = self.tuned.operand(name) if adapter and name in self.tuned.names() else None
        factors = op.factors() if isinstance(op, LoraDelta) else None
        # the tuned value is read only where it is stored whole (full weights, modules_to_save)
        t = self.value(name, "tuned") if not adapter or (op is not None and op.kind == "value") else None
        d2 = w2 = 0.0
        step = 1 << 22
        for i in range(0, b.numel(), step):
            bi = b[i:i + step].double()
            if t is not None:
                d2 += float(torch.sum((t[i:i + step].double() - bi) ** 2))
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


# ------------------------------------------------------------------------------------------ cache

class EvalCache:
    """Evaluations in a JSON file: key -> {group, mode, metrics, seconds}; rewritten atomically on each put.

    The key is the evaluation service's (:func:`layerprobe.evalservice.cache_key`): the variant's model (the two
    checkpoints' content hashes and the group and mode swapped) and the evaluation's key."""

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
        from layerprobe.evalservice import cache_key

        return cache_key({"base": self.base, "tuned": self.tuned, "variant": [group, mode]}, self.eval_key)

    def get(self, group: str, mode: str) -> dict | None:
        e = self.entries.get(self.key(group, mode))
        return dict(e["metrics"]) if e else None

    def put(self, group: str, mode: str, metrics: dict, seconds: float) -> None:
        self.entries[self.key(group, mode)] = {"group": group, "mode": mode, "metrics": metrics,
                                               "seconds": round(seconds, 3)}
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_suffix(".json.tmp")
            tmp.write_text(json.dumps(self.entries, indent=1, sort_keys=True))
            os.replace(tmp, self.path)


# ------------------------------------------------------------------------------------------ library call

def load_float32(path: str):
    """Default model loader: a causal LM in float32 on the CPU."""
    import torch
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)


def attribute_change(base: str | os.PathLike, tuned: str | os.PathLike, evaluate: Evaluate, tokenizer=None,
                     config: AttributeConfig | None = None, *, eval_key: str = "",
                     load_model: Callable[[str], object] = load_float32, log: Callable[[str], None] = lambda s: None,
                     **options) -> AttributionResult:
    """Revert / apply each group of the SFT change and evaluate (see the module docstring).

    ``base``: the CPT model folder; ``tuned``: the SFT model folder or an SFT LoRA adapter folder (on ``base``).
    ``evaluate(model, tokenizer) -> {metric: value}`` must be deterministic; ``eval_key`` names what it measures
    (data, settings) for the cache. ``load_model(path)`` loads a folder (default: float32 on the CPU).
    ``options`` are :class:`AttributeConfig` fields.
    """
    from layerprobe.checkpoints import open_source
    from layerprobe.rundir import content_hash

    if config is not None and options:
        raise ValueError("pass either config= or keyword options, not both")
    cfg = config or AttributeConfig(**options)
    t_start = time.time()
    base_src, tuned_src = open_source(base), open_source(tuned)
    try:
        adapter = tuned_src.kind == "adapter"
        model = load_model(str(base if adapter else tuned))
        model.eval()
        swap = WeightSwapper(model, base_src, tuned_src, state="base" if adapter else "tuned")
        changes = swap.measure()
        swap.set(swap.names(), "tuned")
        groups = _resolve_groups(model, swap, cfg.groups)
        every = {n for n, (d2, _) in changes.items() if d2 > 0}
        changed = {g: [n for n in names if n in every] for g, names in groups.items()}
        # reverting all of the change gives the base model, applying all of it the tuned one: nothing to evaluate
        todo = {g: bool(c) and set(c) != every for g, c in changed.items()}
        cache = EvalCache(cfg.cache, content_hash(base), content_hash(tuned), eval_key)
        runner = _Runner(model, tokenizer, evaluate, swap, cache, log)
        text, runner.planned = _plan(groups, changed, todo, cfg.modes, cache)
        log(text)
        baselines = {"tuned": runner.run("", "tuned", [], "tuned", None)}
        results: dict[tuple[str, str], dict] = {}
        if "revert" in cfg.modes:
            for g in groups:
                if todo[g]:
                    results[(g, "revert")] = runner.run(g, "revert", changed[g], "base", "tuned")
        swap.set(swap.names(), "base")
        baselines["base"] = runner.run("", "base", [], "base", None)
        if "apply" in cfg.modes:
            for g in groups:
                if todo[g]:
                    results[(g, "apply")] = runner.run(g, "apply", changed[g], "tuned", "base")
        swap.set(swap.names(), "tuned")
        for g in groups:
            for mode in cfg.modes:
                if (g, mode) not in results:
                    results[(g, mode)] = dict(baselines["tuned" if (mode == "revert") == (not changed[g]) else "base"])
                    runner.known += 1
    finally:
        base_src.close()
        tuned_src.close()
    numel = {n: swap.params[n].numel() for n in every}
    trained = {n: swap.trained(n) for n in swap.names()}
    records = _records(cfg.run, groups, changes, baselines, results, numel, trained)
    return AttributionResult(records, runner.evaluated, runner.cached, runner.reused, runner.known,
                             time.time() - t_start, runner.eval_seconds, {g: len(n) for g, n in groups.items()})


def _resolve_groups(model, swap: WeightSwapper, specs: Sequence[str]) -> dict[str, list[str]]:
    """selector -> canonical tensor names of the swapper (tied names folded), in the swapper's order."""
    from layerprobe.select import select_params

    shapes = [(n, tuple(p.shape)) for n, p in model.named_parameters(remove_duplicate=False)]
    by_param = {id(p): parse_name(n).canonical for n, p in model.named_parameters()}
    raw = dict(model.named_parameters(remove_duplicate=False))
    groups: dict[str, list[str]] = {}
    for spec in expand_groups(shapes, specs):
        sel = select_params(model, spec)
        names = {by_param[id(raw[n])] for n in sel.names}
        groups[sel.spec] = [n for n in swap.names() if n in names]
    return groups


class _Runner:
    """Runs one evaluation with a group swapped and swaps back; reads the cache first, and evaluates a tensor set
    shared by several groups (tied embedding and head, a selector equal to a layer) once."""

    def __init__(self, model, tokenizer, evaluate: Evaluate, swap: WeightSwapper, cache: EvalCache, log):
        self.model, self.tokenizer, self.evaluate, self.swap, self.cache, self.log = \
            model, tokenizer, evaluate, swap, cache, log
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


def _plan(groups: dict, changed: dict, todo: dict, modes: Sequence[str], cache: EvalCache) -> tuple[str, int]:
    """What will be evaluated, in words, and how many evaluations at most."""
    runs = [(g, m) for g in groups for m in modes if todo[g]] + [("", "tuned"), ("", "base")]
    cached = sum(cache.get(g, m) is not None for g, m in runs)
    text = (f"{len(groups)} groups x {len(modes)} mode(s): at most {len(runs)} evaluations (2 baselines included), "
            f"{cached} cached")
    same = [g for g in groups if not changed[g]]
    whole = [g for g in groups if changed[g] and not todo[g]]
    if same:
        text += f"; unchanged by SFT (revert = tuned, apply = base): {', '.join(same)}"
    if whole:
        text += f"; holding all of the SFT change (revert = base, apply = tuned): {', '.join(whole)}"
    return text, len(runs) - cached


def _records(run: str, groups: dict[str, list[str]], changes: dict, baselines: dict, results: dict,
             numel: dict[str, int], trained: dict[str, int]) -> pd.DataFrame:
    """``numel``: entries of each changed tensor; ``trained``: trained parameters behind each tensor's change."""
    rows = []
    per_tensor = {"weight_share": numel, "trained_share": trained,
                  "delta_share": {n: d2 for n, (d2, _) in changes.items()}}
    totals = {q: sum(v.values()) for q, v in per_tensor.items()}
    for which, metrics in baselines.items():
        rows += [(-1, "", "", f"{which}:{k}", v) for k, v in metrics.items()]
    for g, names in groups.items():
        layer, block = group_position(names)
        d2 = sum(changes[n][0] for n in names)
        w2 = sum(changes[n][1] for n in names)
        rows.append((layer, block, g, "rel_change", math.sqrt(d2 / w2) if w2 > 0 else math.nan))
        for q, values in per_tensor.items():
            share = sum(values.get(n, 0) for n in names) / totals[q] if totals[q] else math.nan
            rows.append((layer, block, g, q, share))
        for (grp, mode), metrics in results.items():
            if grp == g:
                rows += [(layer, block, g, f"{mode}:{k}", v) for k, v in metrics.items()]
    df = pd.DataFrame(rows, columns=["layer", "block", "param", "quantity", "value"])
    df.insert(0, "step", -1)
    df.insert(0, "phase", PHASE)
    df.insert(0, "run", run)
    df["module"] = ""
    return df[list(COLUMNS)].astype({"step": "int64", "layer": "int64", "value": "float64"})


# ------------------------------------------------------------------------------------------ reading the records

def effects(records: pd.DataFrame) -> pd.DataFrame:
    """One row per group x mode x metric: value, effect (revert: value - tuned; apply: value - base), the full SFT
    effect (tuned - base) and share = effect / (base - tuned) for revert, effect / (tuned - base) for apply:
    1 means this group alone carries the whole change of the metric."""
    d = records[records["phase"] == PHASE]
    split = d["quantity"].str.split(":", n=1, expand=True)
    d = d.assign(mode=split[0], metric=split[1])
    base = d[(d["mode"] == "base") & (d["param"] == "")].set_index("metric")["value"]
    tuned = d[(d["mode"] == "tuned") & (d["param"] == "")].set_index("metric")["value"]
    rel = d[d["quantity"] == "rel_change"].set_index("param")["value"]
    out = d[d["mode"].isin(MODES)][["param", "layer", "block", "mode", "metric", "value"]].copy()
    out = out.rename(columns={"param": "group"})
    out["sft_effect"] = out["metric"].map(tuned - base).to_numpy()
    ref = np.where(out["mode"] == "revert", out["metric"].map(tuned), out["metric"].map(base))
    out["effect"] = out["value"] - ref
    full = np.where(out["mode"] == "revert", -out["sft_effect"], out["sft_effect"])
    with np.errstate(divide="ignore", invalid="ignore"):
        out["share"] = np.where(full != 0, out["effect"] / full, np.nan) + 0.0  # no -0
    out["rel_change"] = out["group"].map(rel).to_numpy()
    present = set(d["quantity"])
    for denominator, ratio in DENOMINATORS.items():  # records written before a denominator existed lack it
        if denominator in present:
            ws = d[d["quantity"] == denominator].set_index("param")["value"]
            out[denominator] = out["group"].map(ws).to_numpy()
            with np.errstate(divide="ignore", invalid="ignore"):
                out[ratio] = out["share"] / out[denominator]
    return out.reset_index(drop=True)


def paired_difference(per_seed: pd.DataFrame, a: str = "attn", b: str = "mlp") -> pd.DataFrame:
    """Per-seed rows of the group ``"a - b"``: for each seed (and cell, mode, metric) the effect, share, ratios and
    denominators of group ``a`` minus those of group ``b``, paired by seed; ``sft_effect`` stays the seed's own.
    ``per_seed``: :func:`effects` rows with a ``seed`` column (and optionally ``cell``)."""
    keys = [c for c in ("cell", "seed", "mode", "metric") if c in per_seed.columns]
    if "seed" not in keys:
        raise ValueError(f"paired_difference needs a 'seed' column; got columns {list(per_seed.columns)}")
    values = [c for c in ("effect", "share", *DENOMINATORS, *DENOMINATORS.values()) if c in per_seed.columns]
    left = per_seed[per_seed["group"] == a].set_index(keys)
    right = per_seed[per_seed["group"] == b].set_index(keys)
    if left.empty or right.empty:
        raise ValueError(f"paired_difference needs rows of both groups {a!r} and {b!r}; got groups "
                         f"{sorted(per_seed['group'].unique())}")
    both = left.index.intersection(right.index)
    if len(both) != len(left) or len(both) != len(right):
        raise ValueError(f"groups {a!r} and {b!r} are not paired: {len(left)} and {len(right)} rows, {len(both)} "
                         f"with the same {', '.join(keys)}; attribute both groups in every seed")
    out = left.loc[both, values] - right.loc[both, values]
    out["sft_effect"] = left.loc[both, "sft_effect"]
    out = out.reset_index().assign(group=f"{a} - {b}", layer=-1, block="")
    return out[[c for c in per_seed.columns if c in out.columns]]


def over_seeds(per_seed: pd.DataFrame, level: float = 0.95) -> pd.DataFrame:
    """Mean over seeds with a Student-t interval (:func:`layerprobe.stats.t_mean_ci`) per cell x group x mode x
    metric of per-seed :func:`effects` rows (a ``seed`` column; rows of :func:`paired_difference` welcome).

    Columns: ``n_seeds``; ``effect`` with ``lo`` / ``hi``; ``share`` and each ratio (``share_per_weight``, ...)
    with ``<name>_lo`` / ``<name>_hi`` -- each ratio is computed per seed, then averaged; ``sft_effect`` and the
    denominators (``weight_share``, ...) as means. One seed, or a value that is NaN or infinite in some seed: the
    interval is NaN (and the mean too, in the second case); the per-seed rows show why."""
    from layerprobe.stats import t_mean_ci

    if "seed" not in per_seed.columns:
        raise ValueError(f"over_seeds needs a 'seed' column (one row per seed); got columns {list(per_seed.columns)}")
    keys = [c for c in ("cell", "group", "mode", "metric") if c in per_seed.columns]
    twice = per_seed.duplicated([*keys, "seed"])
    if twice.any():
        raise ValueError(f"over_seeds got {int(twice.sum())} rows twice for the same seed (first: "
                         f"{per_seed.loc[twice, [*keys, 'seed']].iloc[0].to_dict()}); pass each seed's rows once")
    rows = []
    for key, d in per_seed.groupby(keys, sort=False):
        row = dict(zip(keys, key), n_seeds=len(d))
        for col in [c for c in SEED_VALUES if c in d.columns]:
            x = d[col].to_numpy(dtype=float)
            finite = bool(np.isfinite(x).all())
            lo, hi = t_mean_ci(x, level) if finite else (math.nan, math.nan)
            names = ("lo", "hi") if col == "effect" else (f"{col}_lo", f"{col}_hi")
            row.update({col: float(x.mean()) if finite else math.nan, names[0]: lo, names[1]: hi})
        for col in [c for c in ("sft_effect", *DENOMINATORS) if c in d.columns]:
            row[col] = float(d[col].mean())
        rows.append(row)
    return pd.DataFrame(rows)


def plot_attribution(records: pd.DataFrame, out_dir: str | os.PathLike,
                     metrics: Sequence[str] | None = None) -> list[Path]:
    """Per metric: bars of the effect per layer and per other group, revert on top, apply below (see
    :func:`layerprobe.plot.effects.attribution_figures`, which draws them)."""
    from layerprobe.plot.effects import attribution_figures

    return attribution_figures(records, out_dir, metrics)
