"""Reference stores: the copy of the weights that drift and update ratios are measured against.

Three stores, one interface (``write``, ``attach``, ``get``, ``pairs``, ``close``):

- ``disk`` (:class:`DiskSnapshot`): ``write`` streams each tensor to one raw file in 4 MB pieces (a GPU tensor is
  copied to the host piece by piece); ``pairs`` reads it back into one reused 4 MB buffer beside the matching piece
  of the live tensor. The process never holds a second copy of the weights: the extra memory is the buffer.
- ``device`` and ``host`` (:class:`MemorySnapshot`): a copy in the model's device memory, or in host memory (pinned
  and filled by asynchronous copies when the model is on a GPU; a plain copy on CPU).

Every store pairs the same 4 MB pieces, so the recorded numbers are the same bit for bit whichever holds the copy
(and a device store never needs more than one piece of scratch memory). :func:`choose_store` picks one by size and
device for ``auto``.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

import torch

from layerprobe.core.config_phase import STORES, check_store

CHUNK_BYTES = 1 << 22  # 4 MB: the working set of a pass


class DiskSnapshot:
    """Tensors by name in one file; ``pairs(name, live)`` yields (live piece, stored piece) as float32."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self._index: dict[str, tuple[int, torch.Size, torch.dtype]] = {}
        self._buf: torch.Tensor | None = None
        self._reader: BinaryIO | None = None  # one open handle for all reads between two writes

    def write(self, tensors: dict[str, torch.Tensor], overwrite: bool = False) -> None:
        """Write ``tensors``. By default into a new file that replaces the old one, so a kill mid-write never leaves
        a half-written file under the name. ``overwrite``: write into the existing file when it has the same size:
        no new file, so the kernel does not drop and refill the old one's cached pages (much faster for a repeated
        snapshot of the same tensors; only for a copy nobody reads after a kill, such as the update's)."""
        self._close_reader()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        size = sum(t.numel() * t.element_size() for t in tensors.values())
        in_place = overwrite and self.path.is_file() and self.path.stat().st_size == size
        index, offset = {}, 0
        tmp = self.path if in_place else self.path.with_suffix(".tmp")
        with open(tmp, "r+b" if in_place else "wb") as f:
            for name, t in tensors.items():
                flat = t.detach().reshape(-1)
                per = max(1, CHUNK_BYTES // max(flat.element_size(), 1))
                for i in range(0, flat.numel(), per):
                    f.write(flat[i : i + per].cpu().contiguous().view(torch.uint8).numpy())  # type: ignore[call-overload]
                index[name] = (offset, t.shape, t.dtype)
                offset += flat.numel() * flat.element_size()
        if not in_place:
            os.replace(tmp, self.path)
        self._index = index

    def attach(self, tensors: dict[str, torch.Tensor]) -> bool:
        """Read an existing file that ``write`` made for tensors of these names, shapes and dtypes (in this order),
        e.g. from a process that was killed and is resumed: the index is rebuilt, nothing is written. Returns
        False (and attaches nothing) when there is no such file or its size disagrees."""
        self._close_reader()
        index, offset = {}, 0
        for name, t in tensors.items():
            index[name] = (offset, t.shape, t.dtype)
            offset += t.numel() * t.element_size()
        if not self.path.is_file() or self.path.stat().st_size != offset:
            return False
        self._index = index
        return True

    @property
    def ready(self) -> bool:
        return bool(self._index) and self.path.exists()

    def get(self, name: str) -> torch.Tensor:
        """One whole stored tensor (for small ones, such as LoRA factors)."""
        offset, shape, dtype = self._index[name]
        out = torch.empty(shape, dtype=dtype)
        f = self._read_at(offset)
        f.readinto(out.reshape(-1).view(torch.uint8).numpy())
        return out

    def pairs(self, name: str, live: torch.Tensor) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """(live piece, stored piece), both flat float32, covering the tensor in order. The stored piece may be a
        view of the reused buffer: use it before asking for the next."""
        offset, shape, dtype = self._index[name]
        if live.numel() != shape.numel():
            raise ValueError(
                f"snapshot of {name} holds {shape.numel()} values but the live tensor has "
                f"{live.numel()}; the model changed shape after the snapshot was written"
            )
        if self._buf is None:
            self._buf = torch.empty(CHUNK_BYTES, dtype=torch.uint8)
        flat = live.detach().reshape(-1)
        size = torch.empty((), dtype=dtype).element_size()
        per = CHUNK_BYTES // size
        for i in range(0, flat.numel(), per):
            n = min(per, flat.numel() - i)
            raw = self._buf[: n * size]
            self._read_at(offset + i * size).readinto(raw.numpy())
            stored = raw.view(dtype).to(device=flat.device, dtype=torch.float32)
            yield flat[i : i + n].float(), stored

    def _read_at(self, offset: int):
        if self._reader is None:
            self._reader = open(self.path, "rb")
        self._reader.seek(offset)
        return self._reader

    def _close_reader(self) -> None:
        if self._reader is not None:
            self._reader.close()
            self._reader = None

    def close(self) -> None:
        self._close_reader()
        self._buf, self._index = None, {}
        self.path.unlink(missing_ok=True)


class MemorySnapshot:
    """Tensors by name in memory: ``where="device"`` beside the live tensors (same device), ``"host"`` in host
    memory (pinned, filled with ``non_blocking`` copies when the tensors are on a GPU; a plain copy on CPU).
    ``pairs`` yields the same 4 MB pieces as :class:`DiskSnapshot`, so the numbers computed from them are identical.

    ``persist``: also write the tensors once to ``path`` (a :class:`DiskSnapshot` file), so that a resumed process
    can ``attach`` to the reference of the phase's start; the file is read only by ``attach``. The buffers are
    reused by the next ``write`` of the same shapes (pinned memory is slow to allocate).
    """

    def __init__(self, path: str | os.PathLike, where: str, persist: bool = False):
        if where not in ("device", "host"):
            raise ValueError(f"where must be 'device' or 'host', got {where!r}")
        self.where, self.persist = where, persist
        self.disk = DiskSnapshot(path)
        self.path = self.disk.path
        self._tensors: dict[str, torch.Tensor] = {}
        self._copied: object | None = None  # a CUDA event after the last asynchronous copy to pinned memory

    def _buffer(self, name: str, like: torch.Tensor) -> torch.Tensor:
        old = self._tensors.get(name)
        if old is not None and old.shape == like.shape and old.dtype == like.dtype:
            return old
        if self.where == "device":
            return torch.empty_like(like, memory_format=torch.contiguous_format)
        return torch.empty(like.shape, dtype=like.dtype, pin_memory=like.is_cuda)

    def _fill(self, tensors: dict[str, torch.Tensor]) -> None:
        new = {}
        for name, t in tensors.items():
            src = t.detach()
            buf = self._buffer(name, src)
            # pinned destination: the copy is queued on the current stream, behind the kernels that made ``src``
            # and before the optimizer step that changes it; ``_wait`` holds readers until it has landed
            buf.copy_(src, non_blocking=buf.is_pinned())
            new[name] = buf
        self._tensors = new
        self._copied = _cuda_event() if any(b.is_pinned() for b in new.values()) else None

    def write(self, tensors: dict[str, torch.Tensor], overwrite: bool = False) -> None:
        """Copy ``tensors`` (``overwrite`` is the disk store's; memory is always written in place)."""
        self._fill(tensors)
        if self.persist:
            self.disk.write(tensors)

    def attach(self, tensors: dict[str, torch.Tensor]) -> bool:
        """Load the file a persisting ``write`` made for tensors of these names, shapes and dtypes (a resumed
        process); False when there is none or it does not match."""
        if not self.persist or not self.disk.attach(tensors):
            return False
        self._fill({name: self.disk.get(name).to(t.device) for name, t in tensors.items()})
        return True

    @property
    def ready(self) -> bool:
        return bool(self._tensors)

    def _wait(self) -> None:
        if self._copied is not None:
            self._copied.synchronize()  # type: ignore[attr-defined]
            self._copied = None

    def get(self, name: str) -> torch.Tensor:
        """One whole stored tensor (callers move it to the live tensor's device)."""
        self._wait()
        return self._tensors[name]

    def pairs(self, name: str, live: torch.Tensor) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """(live piece, stored piece), both flat float32 on the live tensor's device, in the disk store's pieces."""
        stored = self.get(name).reshape(-1)
        if live.numel() != stored.numel():
            raise ValueError(
                f"snapshot of {name} holds {stored.numel()} values but the live tensor has "
                f"{live.numel()}; the model changed shape after the snapshot was written"
            )
        flat = live.detach().reshape(-1)
        per = CHUNK_BYTES // max(stored.element_size(), 1)
        for i in range(0, flat.numel(), per):
            piece = stored[i : i + per].to(flat.device, non_blocking=stored.is_pinned())
            yield flat[i : i + per].float(), piece.float()

    def close(self) -> None:
        self._wait()
        self._tensors = {}
        self.disk.close()


def _cuda_event():
    event = torch.cuda.Event()
    event.record()
    return event


def make_store(store: str, path: str | os.PathLike, persist: bool = False) -> DiskSnapshot | MemorySnapshot:
    """The store named ``store`` (one of ``device``, ``host``, ``disk``; ``auto`` is resolved by
    :func:`choose_store` first). ``persist``: a memory store also writes its first copy to ``path`` (resume)."""
    if store == "disk":
        return DiskSnapshot(path)
    if store in ("device", "host"):
        return MemorySnapshot(path, store, persist)
    raise ValueError(f"reference_store must be one of {', '.join(STORES[1:])} here, got {store!r}")


def choose_store(
    store: str,
    nbytes: int,
    device: str,
    lora_only: bool,
    device_budget: float,
    host_budget: float,
) -> tuple[str, str]:
    """(store, reason) for references of ``nbytes`` bytes in all of tensors on ``device`` (``"cuda"``, ``"cpu"``,
    ...). An explicit store is kept. ``auto``: on a GPU, device memory for LoRA factors always and otherwise when
    ``nbytes`` fits ``device_budget`` bytes, then pinned host memory when it fits ``host_budget``, else disk; on CPU
    (where device memory is host memory) host memory when it fits ``host_budget``, else disk."""
    check_store(store)
    size = f"{nbytes / 2**20:.1f} MiB"
    if store != "auto":
        return store, f"asked for ({size} of references on {device})"
    gb = 1e9
    if device == "cuda":
        if lora_only:
            return "device", f"LoRA factors only ({size}): always on the device"
        if nbytes <= device_budget:
            return "device", f"{size} fits the device budget of {device_budget / gb:.1f} GB"
        if nbytes <= host_budget:
            return "host", f"{size} exceeds the device budget of {device_budget / gb:.1f} GB, fits the host " + (
                f"budget of {host_budget / gb:.1f} GB"
            )
        return "disk", f"{size} exceeds the device and host budgets ({device_budget / gb:.1f}, " + (
            f"{host_budget / gb:.1f} GB)"
        )
    if nbytes <= host_budget:
        return "host", f"{size} fits the host budget of {host_budget / gb:.1f} GB (model on {device})"
    return "disk", f"{size} exceeds the host budget of {host_budget / gb:.1f} GB (model on {device})"


def budgets(device: torch.device, device_gb: float = 0.0, host_gb: float = 0.0) -> tuple[float, float]:
    """(device budget, host budget) in bytes: the given GB, or by default a tenth of the GPU's memory and a
    quarter of the host memory available now (``MemAvailable``)."""
    dev = device_gb * 1e9
    if not dev and device.type == "cuda":
        dev = torch.cuda.get_device_properties(device).total_memory / 10
    host = host_gb * 1e9 or available_memory() / 4
    return dev, host


def available_memory(meminfo: str = "/proc/meminfo") -> float:
    """Bytes of host memory available now (0 where /proc/meminfo is missing)."""
    try:
        for line in Path(meminfo).read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024.0
    except OSError:
        pass
    return 0.0
