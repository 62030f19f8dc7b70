"""Streaming checkpoint readers for ``layerprobe diff``.

A checkpoint is opened as a *source* that lists its tensors by canonical name (:func:`layerprobe.core.names.parse_name`)
and hands out one tensor at a time as an *operand*, which fills row chunks of that tensor into float32 buffers:

- :class:`WeightSource`: a ``.safetensors`` file, a folder with ``model.safetensors`` or shards listed in
  ``*.safetensors.index.json``, or (only with ``allow_pickle``) their ``.bin``/``.pt`` counterparts. Safetensors
  files are memory-mapped, never read whole; at most one shard of a source is mapped at a time.
- :class:`AdapterSource`: a peft LoRA folder; its operands are the effective update dW = s * B @ A of a module
  (``(B @ A).T * s`` for embeddings and ``fan_in_fan_out`` layers), computed chunk by chunk from one LoRA pair.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass
from pathlib import Path

import torch

from layerprobe.core.names import parse_name
from layerprobe.weights.tensorfiles import (
    PICKLE_SUFFIXES,
    ShardCache,
    TensorRef,
    pickle_refs,
    pickle_refused,
    read_json,
    read_safetensors_header,
    rowlen,
)

# ---------------------------------------------------------------------------------------------------- operands


class Flat:
    """A tensor stored whole (memory-mapped or small): ``kind`` is ``"value"`` (a weight) or ``"delta"``."""

    def __init__(self, flat: torch.Tensor, rowlen: int, kind: str = "value"):
        self.flat, self.rowlen, self.kind = flat, rowlen, kind

    def fill(self, r0: int, r1: int, out: torch.Tensor) -> None:
        out.copy_(self.flat[r0 * self.rowlen : r1 * self.rowlen])


class LoraDelta:
    """dW = s * B @ A of one module, rows ``r0:r1`` at a time; ``transpose`` for embeddings and Conv1D.

    ``A`` is r x in, ``B`` is out x r (embeddings: A is r x num_embeddings, B is dim x r), both float32.
    """

    kind = "delta"

    def __init__(self, lora_a: torch.Tensor, lora_b: torch.Tensor, scale: float, transpose: bool):
        self.a, self.b_scaled, self.transpose = lora_a, lora_b * scale, transpose
        self.shape = (
            (self.a.shape[1], self.b_scaled.shape[0]) if transpose else (self.b_scaled.shape[0], self.a.shape[1])
        )

    def fill(self, r0: int, r1: int, out: torch.Tensor) -> None:
        rows = out.view(r1 - r0, self.shape[1])
        if self.transpose:
            torch.mm(self.a[:, r0:r1].T, self.b_scaled.T, out=rows)
        else:
            torch.mm(self.b_scaled[r0:r1], self.a, out=rows)

    def factors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(left, right) with dW = left @ right (up to a transpose, which keeps the singular values)."""
        return self.b_scaled, self.a


class WeightSource:
    """Full weights: a safetensors file, a checkpoint folder (single file or sharded), or opt-in pickle."""

    kind = "weights"

    def __init__(self, path: Path, files: list[Path], refs: dict[str, TensorRef], config: dict):
        self.path, self.files, self.config = path, files, config
        self.refs: dict[str, TensorRef] = {}
        self.raw_names: dict[str, str] = {}
        lora = []
        for key, ref in refs.items():
            p = parse_name(key)
            if p.lora:
                lora.append(key)
                continue
            if p.canonical in self.refs:
                raise ValueError(
                    f"{path}: tensors {self.raw_names[p.canonical]!r} and {key!r} both map to "
                    f"{p.canonical!r}; the checkpoint mixes wrapped and plain names"
                )
            self.refs[p.canonical] = ref
            self.raw_names[p.canonical] = key
        if lora:
            raise ValueError(
                f"{path} holds LoRA factors ({lora[0]!r} and {len(lora) - 1} more) next to full weights; "
                "pass the adapter folder (adapter_config.json) or merge the adapter first"
            )
        self.aliases: dict[str, str] = {}
        self._order = {f: i for i, f in enumerate(files)}
        self._cache = ShardCache()

    @property
    def label(self) -> str:
        return str(self.path)

    def names(self) -> set[str]:
        return set(self.refs) | set(self.aliases)

    def ref(self, name: str) -> TensorRef:
        return self.refs[self.aliases.get(name, name)]

    def shape(self, name: str) -> tuple[int, ...]:
        return self.ref(name).shape

    def sort_key(self, name: str) -> tuple[int, int]:
        ref = self.ref(name)
        return self._order[ref.file], ref.start

    def ties_word_embeddings(self) -> bool:
        cfg = self.config
        return bool(cfg.get("tie_word_embeddings") or (cfg.get("text_config") or {}).get("tie_word_embeddings"))

    def alias(self, name: str, target: str) -> None:
        self.aliases[name] = target

    def operand(self, name: str) -> Flat:
        ref = self.ref(name)
        return Flat(self._cache.flat(ref), rowlen(ref.shape))

    def close(self) -> None:
        self._cache.close()


@dataclass
class _LoraEntry:
    module: str  # canonical module path (no ``.weight``), what peft's rank/alpha patterns match
    a: TensorRef | None = None
    b: TensorRef | None = None
    embedding: bool = False
    transpose: bool = False

    @property
    def factors(self) -> tuple[TensorRef, TensorRef]:
        """(A, B); AdapterSource refuses an adapter with a pair missing either."""
        assert self.a is not None and self.b is not None, f"{self.module}: a LoRA pair without its A or B"
        return self.a, self.b


class AdapterSource:
    """A peft LoRA adapter folder: each target module's effective update dW = s * B @ A, never merged."""

    kind = "adapter"

    def __init__(self, path: Path, file: Path, refs: dict[str, TensorRef], config: dict):
        self.path, self.files, self.config = path, [file], config
        if str(config.get("peft_type", "LORA")).upper() != "LORA":
            raise ValueError(
                f"{path}: expected a LoRA adapter, got peft_type={config.get('peft_type')!r}; "
                "only LoRA adapters have an effective dW = s*B*A to diff"
            )
        if config.get("use_dora"):
            raise ValueError(
                f"{path}: DoRA adapters (use_dora=true) are not supported: their update is not s*B*A; "
                "merge the adapter and diff the merged checkpoint"
            )
        self.loras: dict[str, _LoraEntry] = {}
        self.values: dict[str, TensorRef] = {}  # modules_to_save: full replacement weights
        self.biases: dict[str, tuple[TensorRef, str]] = {}  # lora_B.bias (lora_bias=True): delta of the bias
        unknown = []
        for key, ref in refs.items():
            p = parse_name(key)
            if ".base_layer." in key:
                continue  # peft's copy of the base weight of an adapted embedding: not part of the update
            if p.lora in ("A", "B"):
                if p.canonical.endswith(".bias"):
                    self.biases[p.canonical] = (ref, p.canonical.removesuffix(".bias"))
                    continue
                e = self.loras.setdefault(p.canonical, _LoraEntry(p.canonical[: -len(".weight")]))
                setattr(e, p.lora.lower(), ref)
                e.embedding = e.embedding or ".lora_embedding_" in key
            elif p.lora is None and not re.search(r"\.(lora_|token_adapter|trainable_tokens)", key):
                self.values[p.canonical] = ref
            else:
                unknown.append(key)
        if unknown:
            raise ValueError(
                f"{path}: cannot compute the update of {len(unknown)} adapter tensors "
                f"(first: {unknown[:3]}); only LoRA A/B pairs and modules_to_save are supported"
            )
        half = [n for n, e in self.loras.items() if e.a is None or e.b is None]
        if half:
            raise ValueError(
                f"{path}: LoRA pairs without their A or B factor: {half[:10]} ({len(half)} in all); "
                "the adapter file is incomplete, re-save it"
            )
        for e in self.loras.values():
            e.transpose = e.embedding or bool(config.get("fan_in_fan_out"))
        self._cache = ShardCache()

    @property
    def label(self) -> str:
        return str(self.path)

    def names(self) -> set[str]:
        return set(self.loras) | set(self.values) | set(self.biases)

    def is_lora(self, name: str) -> bool:
        return name in self.loras

    def scale(self, module: str, rank: int) -> float:
        """peft's scaling: lora_alpha / r (or / sqrt(r) with use_rslora), alpha from alpha_pattern when it matches."""
        cfg = self.config
        alpha = cfg.get("lora_alpha", 8)
        for pattern, value in (cfg.get("alpha_pattern") or {}).items():
            if re.match(rf"(.*\.)?({pattern})$", module):
                alpha = value
                break
        return alpha / math.sqrt(rank) if cfg.get("use_rslora") else alpha / rank

    def shape(self, name: str) -> tuple[int, ...]:
        if name in self.values:
            return self.values[name].shape
        if name in self.biases:
            return self.biases[name][0].shape
        e = self.loras[name]
        a, b = e.factors
        n_a, n_b = a.shape[1], b.shape[0]
        return (n_a, n_b) if e.transpose else (n_b, n_a)

    def fit_shape(self, name: str, base_shape: tuple[int, ...]) -> None:
        """Follow the base weight's layout: peft ignores ``fan_in_fan_out`` on nn.Linear (only Conv1D is stored
        transposed), so a config-wide flag is checked against each base shape."""
        e = self.loras.get(name)
        if e is not None and not e.embedding and self.shape(name) != tuple(base_shape):
            e.transpose = not e.transpose
            if self.shape(name) != tuple(base_shape):
                e.transpose = not e.transpose

    def operand(self, name: str) -> Flat | LoraDelta:
        if name in self.values:
            ref = self.values[name]
            return Flat(self._cache.flat(ref), rowlen(ref.shape), kind="value")
        if name in self.biases:
            ref, module = self.biases[name]
            rank = self.loras[module + ".weight"].factors[0].shape[0]
            return Flat(self._cache.flat(ref).float() * self.scale(module, rank), 1, kind="delta")
        e = self.loras[name]
        ref_a, ref_b = e.factors
        a = self._cache.flat(ref_a).float().view(ref_a.shape)
        b = self._cache.flat(ref_b).float().view(ref_b.shape)
        if a.shape[0] != b.shape[1]:
            raise ValueError(
                f"{self.path}: LoRA factors of {name} do not chain: A is {list(a.shape)}, "
                f"B is {list(b.shape)}; the adapter file is corrupt"
            )
        return LoraDelta(a, b, self.scale(e.module, a.shape[0]), e.transpose)

    def close(self) -> None:
        self._cache.close()


def open_source(path: str | os.PathLike, allow_pickle: bool = False) -> WeightSource | AdapterSource:
    """Open a checkpoint folder, a single ``.safetensors`` file or a peft adapter folder (see module docs)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(
            f"no checkpoint at {path}: expected a folder with model.safetensors (or shards "
            "and model.safetensors.index.json), a .safetensors file or a peft adapter folder"
        )
    if path.is_file():
        if path.suffix in PICKLE_SUFFIXES:
            if not allow_pickle:
                raise pickle_refused(path)
            return WeightSource(path, [path], pickle_refs(path), _config_beside(path))
        if path.suffix != ".safetensors":
            raise ValueError(f"expected a .safetensors file or a checkpoint folder, got {path}")
        return WeightSource(path, [path], read_safetensors_header(path), _config_beside(path))
    if (path / "adapter_config.json").exists():
        config = read_json(path / "adapter_config.json")
        file = path / "adapter_model.safetensors"
        if file.exists():
            return AdapterSource(path, file, read_safetensors_header(file), config)
        legacy = path / "adapter_model.bin"
        if legacy.exists():
            if not allow_pickle:
                raise pickle_refused(legacy)
            return AdapterSource(path, legacy, pickle_refs(legacy), config)
        raise FileNotFoundError(f"{path} has adapter_config.json but no adapter_model.safetensors")
    config = read_json(path / "config.json") if (path / "config.json").exists() else {}
    indexes = sorted(path.glob("*.safetensors.index.json"))
    singles = sorted(path.glob("*.safetensors"))
    if len(singles) > 1 and path / "model.safetensors" in singles:
        singles = [path / "model.safetensors"]
    if len(indexes) == 1:
        return _sharded(path, indexes[0], config, read_safetensors_header)
    if not indexes and len(singles) == 1:
        return WeightSource(path, singles, read_safetensors_header(singles[0]), config)
    pickles = sorted(path.glob("*.bin.index.json")) or sorted(p for p in path.iterdir() if p.suffix in PICKLE_SUFFIXES)
    if not indexes and not singles and pickles:
        if not allow_pickle:
            raise pickle_refused(pickles[0])
        if pickles[0].name.endswith(".index.json"):
            return _sharded(path, pickles[0], config, pickle_refs)
        if len(pickles) == 1:
            return WeightSource(path, pickles, pickle_refs(pickles[0]), config)
    found = [p.name for p in sorted(path.iterdir())][:10]
    raise ValueError(
        f"cannot tell which weights to read in {path}: expected one model.safetensors, one "
        f"*.safetensors.index.json with its shards, or adapter_config.json; found {found}"
    )


def _sharded(path: Path, index: Path, config: dict, read) -> WeightSource:
    weight_map = read_json(index).get("weight_map")
    if not isinstance(weight_map, dict) or not weight_map:
        raise ValueError(f"{index} has no 'weight_map' of tensor name -> shard file; re-save the checkpoint")
    files = list(dict.fromkeys(path / f for f in weight_map.values()))
    absent = [f.name for f in files if not f.exists()]
    if absent:
        raise FileNotFoundError(f"{index} lists shards that are not in {path}: {absent[:10]} ({len(absent)} missing)")
    refs: dict[str, TensorRef] = {}
    for f in files:
        refs.update(read(f))
    lost = [k for k in weight_map if k not in refs or refs[k].file != path / weight_map[k]]
    if lost:
        raise ValueError(
            f"{index} maps {len(lost)} tensors to shards that do not hold them (first: {lost[:10]}); "
            "the index and the shards are out of step, re-save the checkpoint"
        )
    return WeightSource(path, files, {k: refs[k] for k in weight_map}, config)


def _config_beside(file: Path) -> dict:
    cfg = file.parent / "config.json"
    return read_json(cfg) if cfg.exists() else {}
