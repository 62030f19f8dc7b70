"""Causal attribution of an SFT change: revert part of it to the CPT weights (or apply only that part), evaluate.

For a group G of tensors (one layer, one block kind, one (layer, block) cell or any selector of
:mod:`layerprobe.train.select`), with base (CPT) weights W_b and tuned (SFT) weights W_t:

- ``revert G``: W_b on G, W_t elsewhere -- what the model loses when G's SFT change is undone;
- ``apply G``: W_t on G, W_b elsewhere -- what G's SFT change does on its own.

Only one model is ever in memory. The tuned model is loaded once; a tensor is set to its base or tuned value by
reading that value lazily from the checkpoint files (memory-mapped safetensors, one tensor at a time, via
:func:`layerprobe.weights.checkpoints.open_source`), or, for an SFT LoRA adapter, as W_b + s * B @ A. Setting a tensor
back copies the same bytes again, so a swap round trip is exact. Reverts run first (G to base, evaluate, G back
to tuned); then the whole model is set to base once and each G is applied alone.

A group whose tensors SFT left unchanged is not evaluated: its revert equals the tuned model and its apply
equals the base model, exactly (and the reverse for a group holding every changed tensor). Groups holding the
same changed tensors (tied embedding and head; ``attn`` when SFT trained only attention) are evaluated once.
Evaluations are cached in a JSON file under the evaluation service's key
(:func:`layerprobe.evaluation.evalservice.cache_key`: the two checkpoints' content hashes, the group and the mode, and
the caller's evaluation key), so a rerun is free.

Output: records (:data:`layerprobe.record.records.COLUMNS`) with ``phase="attribute"``, ``step=-1``, ``param`` = the
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

:func:`layerprobe.record.attribution_records.effects` divides each effect's share of the whole change by each
(``share_per_weight``, ``share_per_trained``, ``share_per_delta``): 1 means the group matters in proportion to its
size, no more. Shares of the groups of a partition need not add up to 1: reverting two groups together is not the sum
of reverting each. Over several seeds, :func:`layerprobe.record.attribution_records.over_seeds` gives each mean with its
Student-t interval, and :func:`layerprobe.record.attribution_records.paired_difference` the per-seed difference of two
groups (``attn - mlp``). The tensors are swapped by :class:`layerprobe.attribution.swap.WeightSwapper`.

torch is imported only inside the functions that need it. The records' effects table
(:func:`layerprobe.record.attribution_records.effects`) and its figures
(:func:`layerprobe.plot.effects.attribution_figures`) need no torch.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from layerprobe.attribution.attribution_runner import Evaluate, GroupRunner, describe_plan
from layerprobe.attribution.swap import EvalCache, WeightSwapper
from layerprobe.core.config import TrainConfig
from layerprobe.core.names import BLOCKS, parse_name
from layerprobe.core.rundir import content_hash
from layerprobe.evaluation.evalservice import Evaluation
from layerprobe.evaluation.harness import check as check_harness
from layerprobe.record.attribution_records import MODES, PHASE
from layerprobe.record.records import COLUMNS
from layerprobe.train.models import load_model, load_tokenizer
from layerprobe.train.pipeline import load_data, quiet_libraries
from layerprobe.train.select import select_params

GROUPINGS = ("layers", "blocks", "cells")


@dataclass
class AttributeConfig:
    groups: tuple[str, ...] = field(
        default=("layers", "blocks"),
        metadata={
            "help": "groups to revert/apply: 'layers' (each decoder layer), 'blocks' (each block kind over the whole "
            "model), 'cells' (each block of each layer), or any selector (mlp & layers:0-3)"
        },
    )
    modes: tuple[str, ...] = field(
        default=MODES,
        metadata={
            "help": "revert (base on the group, tuned elsewhere) and/or apply (tuned on the group, base elsewhere)"
        },
    )
    cache: str | None = field(default=None, metadata={"help": "JSON file caching evaluations (None = no cache)"})
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
    n_evaluated: int  # evaluations run now
    n_cached: int  # evaluations read from the cache
    n_reused: int  # groups holding the same changed tensors as one evaluated before
    n_known: int  # group x mode results known exactly without evaluating: SFT left G unchanged
    # (revert = tuned, apply = base), or G holds all of the change (the reverse)
    seconds: float  # wall time of the whole call
    eval_seconds: float  # of which evaluating
    groups: dict[str, int] = field(default_factory=dict)  # selector -> number of tensors

    def cost(self) -> str:
        per = self.eval_seconds / self.n_evaluated if self.n_evaluated else 0.0
        return (
            f"{self.n_evaluated} evaluation(s) run ({per:.1f}s each), {self.n_cached} from the cache, "
            f"{self.n_reused} shared with a group holding the same tensors, {self.n_known} known without "
            f"evaluating (group unchanged by SFT, or holding all of its change); wall time {self.seconds:.1f}s"
        )


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
            out += [
                f"{b} & layers:{i}"
                for i in layers
                for b in BLOCKS
                if any(p.layer == i and p.block == b for p in parsed)
            ]
        else:
            out.append(g)
    return list(dict.fromkeys(out))


def group_position(names: Iterable[str]) -> tuple[int, str]:
    """(layer, block) of a group: its single layer and block, or -1 / "" where it spans several."""
    parsed = [parse_name(n) for n in names]
    layers = {p.layer for p in parsed}
    blocks = {p.block for p in parsed}
    return (layers.pop() if len(layers) == 1 else -1), (blocks.pop() if len(blocks) == 1 else "")


# ------------------------------------------------------------------------------------------ library call


def load_float32(path: str):
    """Default model loader: a causal LM in float32 on the CPU."""
    import torch
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)


def attribute_change(
    base: str | os.PathLike,
    tuned: str | os.PathLike,
    evaluate: Evaluate,
    tokenizer=None,
    config: AttributeConfig | None = None,
    *,
    eval_key: str = "",
    load_model: Callable[[str], Any] = load_float32,
    log: Callable[[str], None] = lambda s: None,
    **options,
) -> AttributionResult:
    """Revert / apply each group of the SFT change and evaluate (see the module docstring).

    ``base``: the CPT model folder; ``tuned``: the SFT model folder or an SFT LoRA adapter folder (on ``base``).
    ``evaluate(model, tokenizer) -> {metric: value}`` must be deterministic; ``eval_key`` names what it measures
    (data, settings) for the cache. ``load_model(path)`` loads a folder (default: float32 on the CPU).
    ``options`` are :class:`AttributeConfig` fields.
    """
    from layerprobe.weights.checkpoints import open_source

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
        runner = GroupRunner(model, tokenizer, evaluate, swap, cache, log)
        text, runner.planned = describe_plan(groups, changed, todo, cfg.modes, cache)
        log(text)
        baselines, results = _evaluate_groups(runner, swap, changed, todo, cfg.modes)
    finally:
        base_src.close()
        tuned_src.close()
    numel = {n: swap.params[n].numel() for n in every}
    trained = {n: swap.trained(n) for n in swap.names()}
    records = _records(cfg.run, groups, changes, baselines, results, numel, trained)
    return AttributionResult(
        records,
        runner.evaluated,
        runner.cached,
        runner.reused,
        runner.known,
        time.time() - t_start,
        runner.eval_seconds,
        {g: len(n) for g, n in groups.items()},
    )


def attribute_with_config(
    base: str | os.PathLike,
    tuned: str | os.PathLike,
    cfg: TrainConfig,
    config: AttributeConfig | None = None,
    source: str | None = None,
    log: Callable[[str], None] = lambda s: None,
) -> AttributionResult:
    """:func:`attribute_change` with the evaluation a training config describes: its probes, held-out instructions
    and CPT documents (``cfg.data``, capped by ``cfg.eval``), scored as the pipeline's eval stage scores them, the
    evaluations cached by what they read. ``source``: the config file, named in messages (None: the built-in toy
    world)."""
    with quiet_libraries():
        data = load_data(cfg)
        evaluation = Evaluation.of(data.eval_set, cfg.eval, cfg.cpt.max_length, cfg.data.mc)
        eval_set = evaluation.data
        if not eval_set.probes and not eval_set.instructions and not cfg.eval.lm_eval_tasks:
            raise ValueError(
                f"nothing to evaluate: the config ({source or 'built-in toy world'}) gives no probes, "
                "no held-out instructions and no eval.lm_eval_tasks; set data.probes / "
                "data.instructions in --config"
            )
        if cfg.eval.lm_eval_tasks:
            check_harness(cfg.eval, cfg.data.mc)
        tok_dir = tuned if (Path(tuned) / "tokenizer_config.json").is_file() else base
        tokenizer = load_tokenizer(str(tok_dir))

        def evaluate(model, tok):  # counts and standard errors are no effects
            metrics, _ = evaluation.run(model, tok)
            return {k: v for k, v in metrics.items() if k != "n_probes" and not k.endswith(("/n", "_stderr"))}

        log(
            f"evaluation: {len(eval_set.probes)} probes, {len(eval_set.instructions)} instructions, "
            f"{len(eval_set.cpt_docs)} CPT documents for the loss (from {source or 'the built-in toy world'})"
        )
        return attribute_change(
            base, tuned, evaluate, tokenizer, config, eval_key=evaluation.key(), load_model=load_model, log=log
        )


def _evaluate_groups(
    runner: GroupRunner, swap: WeightSwapper, changed: dict[str, list[str]], todo: dict[str, bool], modes: Sequence[str]
) -> tuple[dict[str, dict], dict[tuple[str, str], dict]]:
    """The two baselines and every (group, mode)'s metrics: reverts first (from the tuned model), then applies
    (from the base model), then the results known without evaluating; leaves the model tuned."""
    baselines = {"tuned": runner.run("", "tuned", [], "tuned", None)}
    results: dict[tuple[str, str], dict] = {}
    if "revert" in modes:
        for g in changed:
            if todo[g]:
                results[(g, "revert")] = runner.run(g, "revert", changed[g], "base", "tuned")
    swap.set(swap.names(), "base")
    baselines["base"] = runner.run("", "base", [], "base", None)
    if "apply" in modes:
        for g in changed:
            if todo[g]:
                results[(g, "apply")] = runner.run(g, "apply", changed[g], "tuned", "base")
    swap.set(swap.names(), "tuned")
    for g in changed:
        for mode in modes:
            if (g, mode) not in results:
                results[(g, mode)] = dict(baselines["tuned" if (mode == "revert") == (not changed[g]) else "base"])
                runner.known += 1
    return baselines, results


def _resolve_groups(model, swap: WeightSwapper, specs: Sequence[str]) -> dict[str, list[str]]:
    """selector -> canonical tensor names of the swapper (tied names folded), in the swapper's order."""

    shapes = [(n, tuple(p.shape)) for n, p in model.named_parameters(remove_duplicate=False)]
    by_param = {id(p): parse_name(n).canonical for n, p in model.named_parameters()}
    raw = dict(model.named_parameters(remove_duplicate=False))
    groups: dict[str, list[str]] = {}
    for spec in expand_groups(shapes, specs):
        sel = select_params(model, spec)
        names = {by_param[id(raw[n])] for n in sel.names}
        groups[sel.spec] = [n for n in swap.names() if n in names]
    return groups


def _records(
    run: str,
    groups: dict[str, list[str]],
    changes: dict,
    baselines: dict,
    results: dict,
    numel: dict[str, int],
    trained: dict[str, int],
) -> pd.DataFrame:
    """``numel``: entries of each changed tensor; ``trained``: trained parameters behind each tensor's change."""
    rows = []
    per_tensor = {
        "weight_share": numel,
        "trained_share": trained,
        "delta_share": {n: d2 for n, (d2, _) in changes.items()},
    }
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
