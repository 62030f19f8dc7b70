"""Small exact checks of layerprobe.record.quantities (mutation testing, issue 24): each quantity's rows against
the same norm written out in torch on tiny tensors, with shares, a loss scale, LoRA pairs and a fixed reference."""

from __future__ import annotations

import math
import os

import pytest
import torch

from layerprobe.record.quantities import QUANTITIES, DriftRatio, GradNorm, Partial, UpdateRatio, WeightNorm
from layerprobe.record.snapshot import DiskSnapshot
from layerprobe.record.tracking import Dense, LoraPair, Units


def _param(*shape: int, seed: int) -> torch.nn.Parameter:
    g = torch.Generator().manual_seed(seed)
    return torch.nn.Parameter(torch.randn(*shape, generator=g, dtype=torch.float32))


def _dense(name: str, param: torch.nn.Parameter, layer: int, share: float = 1.0) -> Dense:
    return Dense(name, layer, "attn", name.rsplit(".", 1)[-1], param, share)


def _pair(name: str, layer: int, seed: int, scale: float, transposed: bool = False) -> LoraPair:
    base = _param(3, 4, seed=seed).detach() if transposed else _param(4, 3, seed=seed).detach()
    a, b = _param(2, 3, seed=seed + 1), _param(4, 2, seed=seed + 2)
    norm_sq = float(torch.linalg.vector_norm(base).double() ** 2)
    return LoraPair(name, layer, "mlp", f"m{layer}", a, b, scale, base, transposed, norm_sq)


def _effective(p: LoraPair, b: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    d = p.scale * (b.detach().double() @ a.detach().double())
    return p.base.double() + (d.T if p.transposed else d)


def _with_factors(pairs: list[LoraPair], dense: list[Dense] | None = None) -> Units:
    """Units as find_units makes them for LoRA: the factors are also dense units (so the store holds them)."""
    units = list(dense or [])
    for p in pairs:
        units += [Dense(p.name + ".lora_A", p.layer, p.block, p.module, p.a), Dense(p.name + ".lora_B", 0, "", "", p.b)]
    return Units(units, pairs)


def test_grad_norm_rows_are_share_weighted_gradient_norms_with_the_loss_scale_divided_out():
    p1, p2, p3 = _param(3, 2, seed=1), _param(5, seed=2), _param(2, 2, seed=3)
    p1.grad = torch.tensor([[3.0, 0.0], [0.0, 4.0], [0.0, 0.0]])
    p3.grad = torch.tensor([[1.0, 2.0], [2.0, 4.0]])
    units = Units([_dense("l0.q", p1, 0), _dense("l1.k", p2, 1), _dense("l2.v", p3, 2, share=0.1)], [])
    part = GradNorm(lambda s: True).partial(units, 7)
    assert isinstance(part, Partial) and (part.quantity, part.step, part.sums) == ("grad_norm", 7, [])
    assert part.tensors[0].dtype == torch.float64
    assert part.tensors[0].tolist() == [25.0, 0.0, 25.0 * 0.1]  # the shares in float64: 0.1 exactly as a float
    assert part.finish(part.tensors) == [
        ("l0.q", 0, "attn", "q", pytest.approx(5.0), None),
        ("l1.k", 1, "attn", "k", 0.0, None),
        ("l2.v", 2, "attn", "v", pytest.approx(math.sqrt(2.5)), None),
    ]
    scaled = GradNorm(lambda s: True).partial(units, 7, scale=4.0)
    assert [r[4] for r in scaled.finish(scaled.tensors)] == pytest.approx([5.0 / 4, 0.0, math.sqrt(2.5) / 4])
    scaled = GradNorm(lambda s: True).partial(units, 7, scale=2.0)
    assert [r[4] for r in scaled.finish(scaled.tensors)] == pytest.approx([5.0 / 2, 0.0, math.sqrt(2.5) / 2])


def test_grad_norm_of_bf16_gradients_is_accumulated_in_float32():
    p = torch.nn.Parameter(torch.zeros(3, dtype=torch.bfloat16))
    p.grad = torch.tensor([1.0, 1.0, 1.0], dtype=torch.bfloat16)  # sqrt(3) is not a bf16 number
    part = GradNorm(lambda s: True).partial(Units([_dense("l0.q", p, 0)], []), 1)
    expected = float(torch.linalg.vector_norm(p.grad.float()))
    assert part.finish(part.tensors)[0][4] == pytest.approx(expected, rel=1e-6)


def test_grad_norm_with_no_gradient_at_all_is_zero_on_the_cpu():
    units = Units([_dense("l0.q", _param(2, seed=1), 0), _dense("l0.k", _param(2, seed=2), 0)], [])
    part = GradNorm(lambda s: True).partial(units, 1)
    assert part.tensors[0].device.type == "cpu"
    assert [r[4] for r in part.finish(part.tensors)] == [0.0, 0.0]


@pytest.mark.parametrize("transposed", [False, True])
def test_weight_norm_of_dense_weights_and_of_lora_effective_weights(transposed):
    w = _param(3, 3, seed=5)
    pairs = [_pair("l0.up", 0, 10, 0.5, transposed), _pair("l1.up", 1, 20, -2.0, transposed)]
    units = Units([_dense("l0.q", w, 0, share=0.5)], pairs)
    part = WeightNorm(lambda s: True).partial(units, 3)
    assert (part.quantity, part.step, len(part.tensors)) == ("weight_norm", 3, 1 + 4 * len(pairs))
    rows = part.finish(part.tensors)
    assert rows[0] == (
        "l0.q",
        0,
        "attn",
        "q",
        pytest.approx(math.sqrt(0.5) * float(torch.linalg.norm(w.detach()))),
        None,
    )
    for row, p in zip(rows[1:], pairs):
        expected = float(torch.linalg.norm(_effective(p, p.b, p.a)))
        assert row == (p.name, p.layer, "mlp", p.module, pytest.approx(expected, rel=1e-6), None)


def test_weight_norm_pieces_of_a_pair_carry_its_share():
    p = _pair("l0.up", 0, 10, 0.5)
    p.share = 0.0
    part = WeightNorm(lambda s: True).partial(Units([], [p]), 1)
    w0_sq, left, gram_b, a = part.tensors[1:]
    assert (float(w0_sq.abs().sum()), float(left.abs().sum()), float(gram_b.abs().sum())) == (0.0, 0.0, 0.0)
    assert torch.equal(a, p.a.detach().double())


def _change_rows(q, units, step):
    part = q.partial(units, step)
    return part, part.finish(part.tensors)


def test_drift_ratio_against_the_phase_start_for_dense_and_lora_with_the_reference_norms_computed_once(tmp_path):
    w = _param(4, 3, seed=7)
    pairs = [_pair("l0.up", 0, 30, 0.5), _pair("l1.up", 1, 40, 3.0, transposed=True)]
    units = _with_factors(pairs, [_dense("l0.q", w, 0, share=0.25)])
    q = DriftRatio(lambda s: True, str(tmp_path / "ref.bin"))
    assert isinstance(q.store, DiskSnapshot) and q.fixed_reference
    q.start(units)
    ref_w = w.detach().clone()
    ref = [(p.b.detach().clone(), p.a.detach().clone()) for p in pairs]
    with torch.no_grad():
        w.add_(0.1)
        for i, p in enumerate(pairs):
            p.a.mul_(1.5 + i)
            p.b.add_(0.2)
    first, rows = _change_rows(q, units, 5)
    assert (first.quantity, first.step) == ("drift_ratio", 5)
    assert len(first.tensors) == 1 + 7 * len(pairs)
    assert first.tensors[0].shape == (len(units.dense), 2) and first.tensors[0].dtype == torch.float64
    assert rows[0] == (
        "l0.q",
        0,
        "attn",
        "q",
        pytest.approx(0.5 * float(torch.linalg.norm(w.detach() - ref_w)), rel=1e-6),
        pytest.approx(0.5 * float(torch.linalg.norm(ref_w)), rel=1e-6),
    )
    lora_rows = [r for r in rows if r[0] in ("l0.up", "l1.up")]
    for row, p, (b0, a0) in zip(lora_rows, pairs, ref):
        diff = float(torch.linalg.norm(_effective(p, p.b, p.a) - _effective(p, b0, a0)))
        ref_norm = float(torch.linalg.norm(_effective(p, b0, a0)))
        assert row == (p.name, p.layer, "mlp", p.module, pytest.approx(diff, rel=1e-5), pytest.approx(ref_norm))
    # the reference does not move: later steps send only the difference pieces and reuse the reference norms
    with torch.no_grad():
        pairs[1].a.mul_(2.0)
    second, rows2 = _change_rows(q, units, 6)
    assert len(second.tensors) == 1 + 3 * len(pairs)
    lora_rows2 = [r for r in rows2 if r[0] in ("l0.up", "l1.up")]
    p, (b0, a0) = pairs[1], ref[1]
    diff = float(torch.linalg.norm(_effective(p, p.b, p.a) - _effective(p, b0, a0)))
    assert lora_rows2[1][4] == pytest.approx(diff, rel=1e-5)
    assert [r[5] for r in lora_rows2] == [r[5] for r in lora_rows]
    # a new reference sends its pieces again
    q.write(units)
    third, rows3 = _change_rows(q, units, 7)
    assert len(third.tensors) == 1 + 7 * len(pairs)
    assert [r[4] for r in rows3] == pytest.approx([0.0] * len(rows3), abs=1e-6)
    q.close()
    assert not (tmp_path / "ref.bin").exists()


def test_drift_ratio_resumes_from_the_reference_the_first_attempt_wrote(tmp_path):
    w = _param(3, 2, seed=8)
    units = Units([_dense("l0.q", w, 0)], [])
    DriftRatio(lambda s: True, tmp_path / "ref.bin").start(units)
    ref = w.detach().clone()
    with torch.no_grad():
        w.mul_(2.0)
    again = DriftRatio(lambda s: True, tmp_path / "ref.bin")
    assert again.resume(units) is True
    _, rows = _change_rows(again, units, 2)
    norm = float(torch.linalg.norm(ref))
    assert rows == [("l0.q", 0, "attn", "q", pytest.approx(norm), pytest.approx(norm))]
    assert DriftRatio(lambda s: True, tmp_path / "other.bin").resume(units) is False


def test_update_ratio_compares_with_the_snapshot_before_the_step_and_sends_the_lora_reference_each_time(tmp_path):
    pairs = [_pair("l0.up", 0, 50, 2.0)]
    units = _with_factors(pairs)
    q = UpdateRatio(lambda s: True, DiskSnapshot(tmp_path / "upd.bin"))
    assert (q.name, q.fixed_reference, q.snapshot_step) == ("update_ratio", False, None)
    q.snapshot(units, 4)
    assert (q.snapshot_step, q.ready(4), q.ready(5)) == (4, True, False)
    b0, a0 = pairs[0].b.detach().clone(), pairs[0].a.detach().clone()
    with torch.no_grad():
        pairs[0].b.mul_(-1.0)
    for step in (4, 5):
        part, rows = _change_rows(q, units, step)
        assert len(part.tensors) == 1 + 7
        p = pairs[0]
        diff = float(torch.linalg.norm(_effective(p, p.b, p.a) - _effective(p, b0, a0)))
        assert rows[-1][4:] == (
            pytest.approx(diff, rel=1e-5),
            pytest.approx(float(torch.linalg.norm(_effective(p, b0, a0)))),
        )
    q.snapshot(units, 6)
    _, rows = _change_rows(q, units, 6)
    assert rows[-1][4] == pytest.approx(0.0, abs=1e-6)


def test_a_lora_pair_whose_factors_are_not_stored_compares_with_itself(tmp_path):
    p = _pair("l0.up", 0, 60, 1.0)
    q = DriftRatio(lambda s: True, tmp_path / "ref.bin")
    units = Units([], [p])
    q.start(units)
    part, rows = _change_rows(q, units, 1)
    assert rows == [(p.name, 0, "mlp", p.module, 0.0, pytest.approx(float(torch.linalg.norm(_effective(p, p.b, p.a)))))]


def test_due_follows_the_schedule_as_a_bool_and_the_names_are_the_recorded_ones():
    q = GradNorm(lambda s: s % 3 if s > 0 else None)
    assert [q.due(s) for s in (0, 1, 3)] == [False, True, False]
    assert all(type(q.due(s)) is bool for s in (0, 1, 3))
    assert QUANTITIES == ("grad_norm", "weight_norm", "update_ratio", "drift_ratio")
    assert (GradNorm.name, WeightNorm.name, UpdateRatio.name, DriftRatio.name) == QUANTITIES


def test_change_sums_every_4_mb_piece_of_a_large_tensor(tmp_path):
    w = _param(1100, 1000, seed=11)  # 4.4 MB of float32: two pieces
    units = Units([_dense("l0.q", w, 0)], [])
    q = DriftRatio(lambda s: True, tmp_path / "ref.bin")
    q.start(units)
    ref = w.detach().clone()
    with torch.no_grad():
        w[:10].mul_(3.0)
        w[-10:].add_(1.0)
    _, rows = _change_rows(q, units, 1)
    diff, norm = float(torch.linalg.norm(w.detach().double() - ref.double())), float(torch.linalg.norm(ref.double()))
    assert rows == [("l0.q", 0, "attn", "q", pytest.approx(diff, rel=1e-5), pytest.approx(norm, rel=1e-5))]


def test_lora_shares_scale_the_pieces_of_the_difference_and_of_a(tmp_path):
    p = _pair("l0.up", 0, 70, 0.5)
    p.share, p.a_share = 0.25, 0.5
    units = _with_factors([p])
    q = DriftRatio(lambda s: True, tmp_path / "ref.bin")
    q.start(units)
    b0, a0 = p.b.detach().clone(), p.a.detach().clone()
    with torch.no_grad():
        p.a.add_(0.3)
    part = q.partial(units, 1)
    gram, a1w, a0w = part.tensors[1:4]
    x = torch.cat([p.b.detach().double() - b0.double(), b0.double()], dim=1)
    assert torch.allclose(gram, 0.25 * (x.T @ x), rtol=1e-6)
    assert torch.allclose(a1w, 0.5 * p.a.detach().double()) and torch.allclose(a0w, 0.5 * a0.double())
    ref_a = part.tensors[7]
    assert torch.allclose(ref_a, 0.5 * a0.double())
    w = WeightNorm(lambda s: True).partial(Units([], [p]), 1)
    assert torch.allclose(w.tensors[4], 0.5 * p.a.detach().double())
    assert float(w.tensors[1][0]) == pytest.approx(0.25 * p.base_norm_sq)


def test_a_resumed_drift_sends_the_lora_reference_pieces_at_its_first_step(tmp_path):
    p = _pair("l0.up", 0, 80, 1.5)
    units = _with_factors([p])
    DriftRatio(lambda s: True, tmp_path / "ref.bin").start(units)
    b0, a0 = p.b.detach().clone(), p.a.detach().clone()
    with torch.no_grad():
        p.b.mul_(0.5)
    again = DriftRatio(lambda s: True, tmp_path / "ref.bin")
    assert again.resume(units)
    part, rows = _change_rows(again, units, 3)
    assert len(part.tensors) == 1 + 7
    diff = float(torch.linalg.norm(_effective(p, p.b, p.a) - _effective(p, b0, a0)))
    ref_norm = float(torch.linalg.norm(_effective(p, b0, a0)))
    assert rows[-1][4:] == (pytest.approx(diff, rel=1e-5), pytest.approx(ref_norm))


def test_the_update_snapshot_is_rewritten_in_place_and_the_drift_reference_replaced(tmp_path):
    units = Units([_dense("l0.q", _param(4, 4, seed=12), 0)], [])
    upd = UpdateRatio(lambda s: True, tmp_path / "upd.bin")
    upd.snapshot(units, 1)
    inode = (tmp_path / "upd.bin").stat().st_ino
    upd.snapshot(units, 2)
    assert (tmp_path / "upd.bin").stat().st_ino == inode  # same file: its cached pages are kept
    drift = DriftRatio(lambda s: True, tmp_path / "ref.bin")
    drift.start(units)
    first = tmp_path / "first.bin"
    os.link(tmp_path / "ref.bin", first)  # holds the old file, so its inode is not reused
    drift.start(units)
    assert (tmp_path / "ref.bin").stat().st_ino != first.stat().st_ino  # a new file replaced it: never half-written
