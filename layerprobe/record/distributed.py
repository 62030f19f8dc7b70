"""Sharded parameters: each rank's own piece of a weight and its gradient, and one sum over the shards.

Under FSDP2 (``fully_shard``) parameters and gradients are DTensors sharded on dim 0; under DeepSpeed ZeRO-3 each
rank holds a flat partition, read through ``deepspeed.utils`` (``safe_get_local_fp32_param``,
``safe_get_local_grad``); under ZeRO-1/2 the weights are whole on every rank and the gradient is assembled by
``safe_get_full_grad``. Every recorded number is a sum of squares (or a small r x r / r x n matrix for LoRA) that
splits over shards, so each rank computes its own part and :func:`sum_over_shards` adds them in **one**
``all_reduce`` of one packed float64 vector per call. Under DDP or a single process nothing is sharded and nothing
is reduced.
"""

from __future__ import annotations

import torch
from typing_extensions import TypeIs

try:
    from torch.distributed.tensor import DTensor, Replicate, Shard
except ImportError:  # very old torch: no FSDP2
    DTensor = Replicate = Shard = None  # type: ignore[misc, assignment]


def is_dtensor(t) -> TypeIs[DTensor]:
    return DTensor is not None and isinstance(t, DTensor)


def is_zero3(p) -> bool:
    return hasattr(p, "ds_id")


def is_zero12(p) -> bool:
    return hasattr(p, "_hp_mapping") and not hasattr(p, "ds_id")


def weight(p: torch.Tensor) -> torch.Tensor:
    """This rank's piece of a weight (the whole weight when it is not sharded)."""
    if is_dtensor(p):
        return p.to_local().detach()
    if is_zero3(p):
        if p.requires_grad:
            from deepspeed.utils import safe_get_local_fp32_param

            return safe_get_local_fp32_param(p).detach()
        return p.ds_tensor.detach()  # type: ignore[attr-defined]  # DeepSpeed ZeRO-3 attribute
    return p.detach()


def grad(p: torch.Tensor) -> torch.Tensor | None:
    """This rank's piece of a parameter's accumulated gradient, or None. Under ZeRO-1/2 the whole gradient
    (``safe_get_full_grad`` runs a collective: every rank must call it, in the same order)."""
    if is_zero3(p):
        from deepspeed.utils import safe_get_local_grad

        return safe_get_local_grad(p)
    if is_zero12(p):
        from deepspeed.utils import safe_get_full_grad

        return safe_get_full_grad(p)
    g = p.grad
    return g.to_local() if is_dtensor(g) else g


def kind(params) -> str:
    """How the parameters are held: ``fsdp2``, ``zero3``, ``zero1/2`` or ``whole`` (single process, DDP)."""
    for test, name in ((is_dtensor, "fsdp2"), (is_zero3, "zero3"), (is_zero12, "zero1/2")):
        if any(test(p) for p in params):
            return name
    return "whole"


def collective_reads(params) -> bool:
    """Whether reading these parameters needs every rank (sharded weights or DeepSpeed's gradient accessors)."""
    return any(is_dtensor(p) or is_zero3(p) or is_zero12(p) for p in params)


def shard_group(params):
    """The process group the parameters are sharded over (None when nothing is sharded).

    FSDP2: the mesh dimension holding ``Shard(0)`` (HSDP's replicate dimension holds equal copies and is not
    summed over). ZeRO-3: the data-parallel group of the partitions."""
    groups = []
    for p in params:
        if is_zero3(p):
            groups.append(p.ds_process_group)
        elif is_dtensor(p):
            shard_dims = [i for i, pl in enumerate(p.placements) if not isinstance(pl, Replicate)]
            if len(shard_dims) != 1 or p.placements[shard_dims[0]] != Shard(0):
                raise ValueError(
                    f"expected parameters sharded on dim 0 over one mesh dimension (FSDP2, HSDP), "
                    f"got placements {p.placements}; record tensor-parallel models per shard instead"
                )
            groups.append(p.device_mesh.get_group(shard_dims[0]))
    if not groups:
        return None
    if any(g is not groups[0] for g in groups):
        raise ValueError(
            "expected all trainable parameters sharded over one process group, got several; "
            "apply fully_shard with one mesh for the whole model"
        )
    return groups[0]


def sum_over_shards(parts: list[torch.Tensor], group) -> list[torch.Tensor]:
    """Add each rank's local ``parts`` over ``group`` with one all_reduce; returns float64 CPU tensors."""
    if not parts:
        return []
    if group is None:  # nothing to add: no packing
        return [t.detach().to(device="cpu", dtype=torch.float64) for t in parts]
    device = parts[0].device
    flat = torch.cat([t.detach().to(device=device, dtype=torch.float64).reshape(-1) for t in parts])
    torch.distributed.all_reduce(flat, group=group)
    flat = flat.cpu()
    out, i = [], 0
    for t in parts:
        out.append(flat[i : i + t.numel()].view(t.shape))
        i += t.numel()
    return out


def row_offset(p: torch.Tensor) -> int:
    """Where this rank's rows of ``p`` start in the whole tensor (0 when it is not sharded)."""
    if not is_dtensor(p):
        return 0
    from torch.distributed.tensor._utils import compute_local_shape_and_global_offset

    return compute_local_shape_and_global_offset(p.shape, p.device_mesh, p.placements)[1][0]


def share(p: torch.Tensor, group) -> float:
    """1 where this rank's piece of ``p`` enters a sum over ``group``: always for a sharded ``p``; for a tensor
    every rank holds whole (a LoRA factor added after ``fully_shard``) only on the group's first rank."""
    if group is None or is_dtensor(p) or is_zero3(p):
        return 1.0
    return 1.0 if torch.distributed.get_rank(group) == 0 else 0.0


def rows_like(local: torch.Tensor, p: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """The rows of ``p`` (``local`` = this rank's piece of it) that this rank holds of ``like`` (same row count):
    a whole ``p`` beside a row-sharded ``like`` is cut to ``like``'s rows."""
    if is_dtensor(p) or not is_dtensor(like):
        return local
    start = row_offset(like)
    return local[start : start + like.to_local().shape[0]]


def whole(local: torch.Tensor, p: torch.Tensor, share_: float = 1.0) -> torch.Tensor:
    """This rank's summand of the whole ``p``: its rows placed in zeros of ``p``'s shape (row-sharded ``p``), or
    ``p`` times its share (whole on every rank). Summed over the ranks it is ``p``, so a small factor is gathered
    inside the same all_reduce as the sums of squares."""
    if not is_dtensor(p):
        return local.double() * share_
    out = torch.zeros(p.shape, dtype=torch.float64, device=local.device)
    start = row_offset(p)
    out[start : start + local.shape[0]] = local
    return out
