"""A copy of tensors kept on disk, not in memory: the reference weights of drift and update ratios.

``write`` streams each tensor to one raw file in 4 MB pieces (a GPU tensor is copied to the host piece by piece);
``pairs`` reads it back into one reused 4 MB buffer beside the matching piece of the live tensor. The process
never holds a second copy of the weights: the extra memory is the buffer, whatever the model's size.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

import torch

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
