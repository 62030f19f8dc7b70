"""After training: the frozen parameters that moved, checked against reference weights saved before it."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from layerprobe.core.names import parse_name


def frozen_moved(model, reference) -> list[str]:
    """Names of frozen parameters (``requires_grad`` False) that differ from ``reference``, bit for bit.

    ``reference``: a state dict taken before training, or a path to a ``.safetensors`` file, a folder of
    them (``save_pretrained`` output), or a ``torch.save``-d state dict. Parameters are looked up by name,
    then by canonical name (so a peft-wrapped model compares with its base checkpoint), then under any
    other name of the same tied tensor; a frozen parameter found under none of them is an error.
    """
    import contextlib

    import torch

    with contextlib.ExitStack() as stack:
        keys, get = _reference(reference, stack)
        aliases: dict[int, list[str]] = {}
        params = {}
        for name, p in model.named_parameters(remove_duplicate=False):
            aliases.setdefault(id(p), []).append(name)
            params[id(p)] = p
        moved, missing = [], []
        for pid, names in aliases.items():
            p = params[pid]
            if p.requires_grad or (parse_name(names[0]).lora is not None and names[0] not in keys):
                continue
            key = next((k for n in names for k in (n, parse_name(n).canonical) if k in keys), None)
            if key is None:
                missing.append(names[0])
                continue
            ref = get(key)
            with torch.no_grad():
                if tuple(ref.shape) != tuple(p.shape) or not torch.equal(p.detach().to("cpu", ref.dtype), ref.cpu()):
                    moved.extend(names)
        if missing:
            raise ValueError(
                f"the reference has no tensor for frozen parameters {missing[:5]}"
                f"{' ...' if len(missing) > 5 else ''}; pass a state dict or checkpoint of this model "
                "taken before training"
            )
        return sorted(moved)


def _reference(reference, stack) -> tuple[set[str], Any]:
    if isinstance(reference, Mapping):
        return set(reference), reference.__getitem__
    import torch
    from safetensors import safe_open

    path = Path(reference)
    if not path.exists():
        raise FileNotFoundError(
            f"no reference weights at {path}: expected a .safetensors file, a folder of them "
            "or a torch.save-d state dict"
        )
    files = sorted(path.glob("*.safetensors")) if path.is_dir() else [path]
    if path.is_dir() and not files:
        raise FileNotFoundError(f"no .safetensors files in {path}; save the reference with save_pretrained")
    if files[0].suffix != ".safetensors":
        state = torch.load(files[0], map_location="cpu", weights_only=True)
        return set(state), state.__getitem__
    handles = {}
    for f in files:
        h = stack.enter_context(safe_open(str(f), framework="pt"))
        handles.update(dict.fromkeys(h.keys(), h))
    return set(handles), lambda k: handles[k].get_tensor(k)
