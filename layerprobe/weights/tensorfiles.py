"""The files a checkpoint is stored in: safetensors headers checked against the file, memory-mapped shards opened
one at a time, and (opt-in) pickle state dicts loaded with ``torch.load(weights_only=True)``.

:mod:`layerprobe.weights.checkpoints` builds its sources on these.
"""

from __future__ import annotations

import json
import math
import mmap
import struct
from dataclasses import dataclass
from pathlib import Path

import torch

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt")
_DTYPES = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
    "F8_E4M3": torch.float8_e4m3fn,
    "F8_E5M2": torch.float8_e5m2,
}
_MAX_HEADER = 100 * 1024 * 1024


def pickle_refused(path: Path) -> ValueError:
    return ValueError(
        f"{path} is a pickle checkpoint: unpickling can run arbitrary code, so it is refused by default; "
        "convert it to safetensors, or pass --allow-pickle (allow_pickle=True) to load it with "
        "torch.load(weights_only=True)"
    )


@dataclass(frozen=True)
class TensorRef:
    """Where one tensor lives: its file, raw name, dtype, shape and byte range (absolute, for safetensors)."""

    file: Path
    key: str
    dtype: torch.dtype
    shape: tuple[int, ...]
    start: int = 0
    end: int = 0


def read_safetensors_header(path: Path) -> dict[str, TensorRef]:
    """Parse and check a safetensors header; a truncated or corrupt file raises ValueError naming it."""

    def bad(why: str) -> ValueError:
        return ValueError(
            f"{path} is not a valid safetensors file ({why}); it is truncated or corrupt: re-download or re-save it"
        )

    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise bad(f"{size} bytes, shorter than the 8-byte header length")
            (n,) = struct.unpack("<Q", head)
            if n > _MAX_HEADER or 8 + n > size:
                raise bad(f"header length {n} does not fit in a file of {size} bytes")
            raw = f.read(n)
    except OSError as e:
        raise OSError(f"cannot read {path}: {e.strerror or e}") from None
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise bad(f"header is not JSON: {e}") from None
    if not isinstance(header, dict):
        raise bad("header is not a JSON object")
    base, refs = 8 + n, {}
    for key, info in header.items():
        if key == "__metadata__":
            continue
        try:
            dtype = _DTYPES[info["dtype"]]
            shape = tuple(int(s) for s in info["shape"])
            begin, end = (int(x) for x in info["data_offsets"])
        except (KeyError, TypeError, ValueError):
            raise bad(f"tensor {key!r} has an unreadable entry {info!r}") from None
        nbytes = math.prod(shape) * torch.empty((), dtype=dtype).element_size()
        if end - begin != nbytes or begin < 0:
            raise bad(
                f"tensor {key!r} spans bytes {begin}..{end}, expected {nbytes} bytes for {info['dtype']} {list(shape)}"
            )
        if base + end > size:
            raise bad(f"tensor {key!r} ends at byte {base + end} but the file has {size} bytes")
        refs[key] = TensorRef(path, key, dtype, shape, base + begin, base + end)
    return refs


class Shard:
    """One open shard: a private read-only mapping of a safetensors file, or a pickle state dict (mmap'd)."""

    def __init__(self, path: Path):
        self.path = path
        if path.suffix == ".safetensors":
            with open(path, "rb") as f:
                # ACCESS_COPY: a private mapping torch can wrap without a copy; pages are never written.
                self.buf = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY)
            self.state = None
        else:
            self.buf, self.state = None, torch_load(path)  # type: ignore[assignment]

    def flat(self, ref: TensorRef) -> torch.Tensor:
        if self.state is not None:
            return self.state[ref.key].reshape(-1)
        count = math.prod(ref.shape)
        if count == 0:
            return torch.empty(0, dtype=ref.dtype)
        return torch.frombuffer(self.buf, dtype=ref.dtype, count=count, offset=ref.start)


def torch_load(path: Path) -> dict[str, torch.Tensor]:
    try:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as e:  # legacy (non-zip) files cannot be memory-mapped
            if "mmap" not in str(e):
                raise
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ValueError(f"cannot load {path} with torch.load(weights_only=True): {type(e).__name__}: {e}") from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{path} does not hold a flat state dict of tensors; save it with model.state_dict()")
    return state


def pickle_refs(path: Path) -> dict[str, TensorRef]:
    state = torch_load(path)
    return {k: TensorRef(path, k, v.dtype, tuple(v.shape)) for k, v in state.items()}


class ShardCache:
    """Keeps at most one shard of a source open; opening another drops the previous mapping."""

    def __init__(self):
        self.current: Shard | None = None

    def flat(self, ref: TensorRef) -> torch.Tensor:
        if self.current is None or self.current.path != ref.file:
            self.current = None  # the old mapping goes once the last tensor view of it is freed
            self.current = Shard(ref.file)
        return self.current.flat(ref)

    def close(self) -> None:
        self.current = None


def rowlen(shape: tuple[int, ...]) -> int:
    return math.prod(shape[1:]) if len(shape) > 1 else 1


def read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON ({e}); fix or re-save it") from None


# ---------------------------------------------------------------------------------------------------- sources
