"""What trains: a selection as a requires_grad mask (full fine-tuning) or as peft LoRA targets."""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable

from layerprobe.core.names import parse_name
from layerprobe.train.select.grammar import Selector
from layerprobe.train.select.selection import Selection, select_params

log = logging.getLogger("layerprobe.train.select")


def apply_requires_grad(model, spec: str | Selector) -> Selection:
    """Full fine-tuning: ``requires_grad`` True exactly on the selection, False elsewhere. Call it before the
    optimizer is built; an optimizer skips parameters without gradients, weight decay included."""
    sel = select_params(model, spec)
    for name, p in model.named_parameters(remove_duplicate=False):
        p.requires_grad_(name in sel.names)
    log.info(sel.describe())
    return sel


def lora_targets(model, spec: str | Selector) -> dict:
    """peft ``LoraConfig`` arguments ``target_modules`` and ``layers_to_transform`` that put adapters on exactly
    the modules whose parameters the selector picks.

    A (module names) x (layers) selection compiles to a list plus ``layers_to_transform``; any other one
    (``mlp + layers:0-1``) to a regex string, which peft matches with ``re.fullmatch`` against module names.
    Each result is checked with peft's own matcher. Selected parameters of modules LoRA cannot adapt (norms)
    stay out, with a warning; a selection of nothing but such parameters is an error.
    """
    import torch.nn as nn
    from transformers.pytorch_utils import Conv1D

    if hasattr(model, "peft_config"):
        raise ValueError("lora_targets needs the base model, before get_peft_model wraps it; got a peft model")
    sel = select_params(model, spec)
    tied = {n for n, _ in sel.tied}
    adaptable = {
        name
        for name, m in model.named_modules()
        if name and isinstance(m, (nn.Linear, nn.Embedding, nn.Conv1d, nn.Conv2d, nn.Conv3d, Conv1D))
    }
    targets, skipped = set(), []
    for name in sel.names - tied:
        module = name.rpartition(".")[0]
        (targets.add(module) if module in adaptable else skipped.append(name))
    if not targets:
        raise ValueError(
            f"selector {sel.spec!r} picks only parameters LoRA cannot adapt "
            f"({', '.join(sorted(skipped)[:4])}{', ...' if len(skipped) > 4 else ''}); "
            "LoRA adapts Linear, Embedding and Conv modules: "
            "select attn, mlp, embed or head"
        )
    if skipped:
        blocks = sorted({parse_name(n).block for n in skipped})
        log.warning(
            "%s: %d selected parameters (%s) sit in modules LoRA cannot adapt and stay frozen",
            sel.spec,
            len(skipped),
            ", ".join(blocks),
        )
    names = [name for name, _ in model.named_modules() if name]
    leaves = sorted({t.rpartition(".")[2] for t in targets})
    layers = sorted({parse_name(t).layer for t in targets})
    candidates: list[dict] = [dict(target_modules=leaves, layers_to_transform=None)]
    if layers[0] >= 0:
        candidates.append(dict(target_modules=leaves, layers_to_transform=layers))
    candidates.append(dict(target_modules=_module_regex(targets), layers_to_transform=None))
    for kwargs in candidates:
        if _peft_matches(kwargs, names) == targets:
            return kwargs
    raise RuntimeError(
        f"could not compile {sel.spec!r} to peft targets: the regex "
        f"{candidates[-1]['target_modules']!r} misses some selected modules (a layerprobe bug)"
    )


def _module_regex(modules: Iterable[str]) -> str:
    """One regex for a set of module names: ``model\\.layers\\.(?:0|1)\\.mlp\\.(?:down_proj|up_proj)|lm_head``."""
    layers_of: dict[tuple[str, str], set[int]] = {}
    for m in sorted(modules):
        layer, parts = parse_name(m).layer, m.split(".")
        i = next((i for i, s in enumerate(parts) if layer >= 0 and s == str(layer)), None)
        key = (m, "") if i is None else (".".join(parts[:i]), ".".join(parts[i + 1 :]))
        layers_of.setdefault(key, set()).update([] if i is None else [layer])
    suffixes: dict[tuple[str, tuple[int, ...]], list[str]] = {}
    for (prefix, suffix), layers in layers_of.items():
        suffixes.setdefault((prefix, tuple(sorted(layers))), []).append(re.escape(suffix))
    alts = []
    for (prefix, layer_ids), ends in suffixes.items():
        if not layer_ids:
            alts.append(re.escape(prefix))
            continue
        end = ends[0] if len(ends) == 1 else f"(?:{'|'.join(ends)})"
        alts.append(rf"{re.escape(prefix)}\.(?:{'|'.join(map(str, layer_ids))})\.{end}")
    return "|".join(alts)


def _peft_matches(kwargs: dict, module_names: list[str]) -> set[str]:
    from types import SimpleNamespace

    from peft.tuners.tuners_utils import check_target_module_exists

    cfg = SimpleNamespace(
        **kwargs, layers_pattern=None, exclude_modules=None, modules_to_save=None, target_parameters=None
    )
    return {n for n in module_names if check_target_module_exists(cfg, n)}
