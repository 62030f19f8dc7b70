"""What the recorder tracks in a model: dense trainable parameters and LoRA pairs, under canonical names."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from layerprobe.core.names import parse_name
from layerprobe.record import distributed


@dataclass
class Dense:
    """A trainable parameter updated directly (full fine-tuning, LoRA factors, modules_to_save copies)."""

    name: str  # canonical name, or `<target>.lora_A` / `.lora_B` for LoRA factors
    layer: int
    block: str
    module: str
    param: torch.nn.Parameter
    share: float = 1.0  # see layerprobe.record.distributed.share: 0 on ranks whose whole copy is counted elsewhere


@dataclass
class LoraPair:
    """One adapted module: the effective weight is base + scale * B @ A (transposed for embeddings and Conv1D)."""

    name: str  # canonical name of the adapted weight
    layer: int
    block: str
    module: str
    a: torch.nn.Parameter
    b: torch.nn.Parameter
    scale: float
    base: torch.Tensor
    transposed: bool
    base_norm_sq: float = field(default=0.0)  # of this rank's rows of the base under FSDP2
    share: float = 1.0  # of the base's rows (and B's, cut to them), see layerprobe.record.distributed.share
    a_share: float = 1.0


@dataclass
class Units:
    dense: list[Dense]
    lora: list[LoraPair]

    @property
    def trainable(self) -> list[torch.nn.Parameter]:
        return [d.param for d in self.dense]


def find_units(model: torch.nn.Module) -> Units:
    """Collect the trainable parameters of ``model`` (a plain or peft-wrapped module), deduplicating tied ones."""
    lora, lora_params = [], set()
    for mod_name, mod in model.named_modules():
        for p in _lora_pair(mod_name, mod):
            lora.append(p)
            lora_params.update({id(p.a), id(p.b)})
    dense, seen = [], set()
    for name, param in model.named_parameters():
        if not param.requires_grad or id(param) in seen:
            continue
        seen.add(id(param))
        pn = parse_name(name)
        dense.append(Dense(param_label(name), pn.layer, pn.block, pn.module, param))
    return Units(dense=dense, lora=lora)


def param_label(name: str) -> str:
    """The records' ``param`` for a parameter: its canonical name; LoRA factors get ``<target>.lora_A``/``_B``."""
    pn = parse_name(name)
    if pn.lora:
        return pn.canonical.removesuffix(".weight") + f".lora_{pn.lora}"
    return pn.canonical


def is_lora_factor(param: str) -> bool:
    """Whether a records ``param`` (see :func:`param_label`) names a LoRA factor rather than a weight."""
    return param.endswith((".lora_A", ".lora_B"))


def _lora_pair(mod_name: str, mod: torch.nn.Module) -> list[LoraPair]:
    try:
        from peft.tuners.lora import LoraLayer
    except ImportError:  # peft is a dependency, but keep plain-torch use possible
        return []
    if not isinstance(mod, LoraLayer):
        return []
    base = mod.get_base_layer()
    weight = getattr(base, "weight", None)
    if weight is None:
        return []
    pairs = []
    a: Any
    b: Any
    for adapter in mod.active_adapters:
        if adapter in getattr(mod, "lora_A", {}):
            a, b = mod.lora_A[adapter].weight, mod.lora_B[adapter].weight
            transposed = bool(getattr(mod, "fan_in_fan_out", False))
        elif adapter in getattr(mod, "lora_embedding_A", {}):
            a, b = mod.lora_embedding_A[adapter], mod.lora_embedding_B[adapter]
            transposed = True  # embedding weight is (num_embeddings x d); dW = (B @ A).T
        else:
            continue
        if not (a.requires_grad or b.requires_grad):
            continue
        if getattr(mod, "use_dora", {}).get(adapter, False):
            raise ValueError(
                f"{mod_name}: DoRA adapters are not supported by the recorder (dW is not s*B*A); "
                "train with use_dora=False or record the factors only"
            )
        pn = parse_name(mod_name + ".weight")
        _check_shardable(mod_name, weight, b, transposed)
        local = distributed.weight(weight)  # this rank's rows under FSDP2: the norm is summed over ranks later
        norm_sq = float(torch.linalg.vector_norm(local, dtype=torch.float32).double() ** 2)
        pairs.append(
            LoraPair(
                pn.canonical,
                pn.layer,
                pn.block,
                pn.module,
                a,
                b,
                float(mod.scaling[adapter]),
                weight,
                transposed,
                norm_sq,
            )
        )
    return pairs


def _check_shardable(mod_name: str, weight: torch.Tensor, b: torch.Tensor, transposed: bool) -> None:
    """LoRA's effective norms split over ranks only when W0 and B hold the same output rows on each rank."""
    if distributed.is_zero3(weight) or distributed.is_zero3(b):
        raise ValueError(
            f"{mod_name}: LoRA under DeepSpeed ZeRO-3 partitions flat tensors, so the effective "
            "weight's norms cannot be summed from shards; train the adapter with ZeRO-2 (the weights "
            "stay whole) or FSDP2"
        )
    if not distributed.is_dtensor(weight):
        return
    if transposed:
        raise ValueError(
            f"{mod_name}: a transposed LoRA target (embedding or Conv1D) under FSDP2 shards W0 and B "
            "on different axes, so its effective norms cannot be summed from shards; leave "
            "embed_tokens/lm_head out of target_modules or record this run without FSDP2"
        )
    rows_w, rows_b = distributed.weight(weight).shape[0], distributed.weight(b).shape[0]
    if distributed.is_dtensor(b) and rows_w != rows_b:
        raise ValueError(
            f"{mod_name}: expected W0 and lora_B sharded on the same output rows, got {rows_w} and "
            f"{rows_b} rows on this rank; apply fully_shard with one mesh and Shard(0) to both"
        )
