"""The disk snapshot behind drift and update ratios gives back exactly what was written, piece by piece."""

import torch

from layerprobe.record import snapshot
from layerprobe.record.snapshot import DiskSnapshot


def test_roundtrip_in_pieces(tmp_path, monkeypatch):
    monkeypatch.setattr(snapshot, "CHUNK_BYTES", 64)  # many pieces, one tensor spanning several
    g = torch.Generator().manual_seed(0)
    tensors = {
        "w": torch.randn(7, 9, generator=g),
        "b16": torch.randn(33, generator=g).bfloat16(),
        "scalar": torch.tensor(2.5),
        "empty": torch.zeros(0, 4),
    }
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


def test_overwrite_reuses_the_file_only_when_the_size_matches(tmp_path):
    path = tmp_path / "s.bin"
    snap = DiskSnapshot(path)
    snap.write({"a": torch.zeros(5), "b": torch.ones(3)})
    inode = path.stat().st_ino
    snap.write({"a": torch.arange(5.0), "b": torch.full((3,), 2.0)}, overwrite=True)
    assert path.stat().st_ino == inode  # written in place
    assert torch.equal(snap.get("a"), torch.arange(5.0)) and torch.equal(snap.get("b"), torch.full((3,), 2.0))
    snap.write({"a": torch.arange(6.0)}, overwrite=True)  # another size: a new file replaces the old one
    assert path.stat().st_size == 24 and torch.equal(snap.get("a"), torch.arange(6.0))
    snap.write({"a": torch.arange(6.0) + 1})  # the default: never in place
    assert torch.equal(snap.get("a"), torch.arange(6.0) + 1)
    assert not path.with_suffix(".tmp").exists()
    snap.close()


def test_reads_between_pieces_share_one_handle(tmp_path, monkeypatch):
    monkeypatch.setattr(snapshot, "CHUNK_BYTES", 16)  # 4 float32 per piece
    x, y = torch.arange(10.0), torch.arange(10.0) + 100
    snap = DiskSnapshot(tmp_path / "s.bin")
    snap.write({"x": x, "y": y})
    got = []
    for _, piece in snap.pairs("x", x):
        got.append(piece.clone())
        assert torch.equal(snap.get("y"), y)  # a whole read between two pieces moves the shared handle
    assert torch.equal(torch.cat(got), x) and len(got) == 3
    snap.close()
