"""The disk snapshot behind drift and update ratios gives back exactly what was written, piece by piece."""

import torch

from layerprobe import snapshot
from layerprobe.snapshot import DiskSnapshot


def test_roundtrip_in_pieces(tmp_path, monkeypatch):
    monkeypatch.setattr(snapshot, "CHUNK_BYTES", 64)  # many pieces, one tensor spanning several
    g = torch.Generator().manual_seed(0)
    tensors = {"w": torch.randn(7, 9, generator=g), "b16": torch.randn(33, generator=g).bfloat16(),
               "scalar": torch.tensor(2.5), "empty": torch.zeros(0, 4)}
    snap = DiskSnapshot(tmp_path / "s.bin")
    snap.write(tensors)
    assert (tmp_path / "s.bin").stat().st_size == sum(t.numel() * t.element_size() for t in tensors.values())
    for name, t in tensors.items():
        assert torch.equal(snap.get(name), t)
        live = t * 2
        pieces = [(a, b.clone()) for a, b in snap.pairs(name, live)]  # a stored piece lives until the next
        if t.numel():
            assert len(pieces) == -(-t.numel() * t.element_size() // 64)
            assert torch.equal(torch.cat([p[0] for p in pieces]), live.reshape(-1).float())
            assert torch.equal(torch.cat([p[1] for p in pieces]), t.reshape(-1).float())
    snap.close()
    assert not (tmp_path / "s.bin").exists()
