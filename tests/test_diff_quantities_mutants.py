"""Small exact checks of layerprobe.weights.diff_quantities (mutation testing, issue 24): the cosine's sign and its
undefined cases, rank90 at exactly 90 %, and the sketch sizes the randomized spectrum asks torch for."""

from __future__ import annotations

import math

import pytest
import torch

from layerprobe.weights import diff_quantities as dq


def test_cosine_of_x_and_x_plus_e_is_negative_when_e_turns_x_past_a_right_angle():
    x = torch.tensor([1.0, 0.0], dtype=torch.float64)
    e = torch.tensor([-1.5, 1.0], dtype=torch.float64)
    y = x + e
    expected = float(x @ y / (x.norm() * y.norm()))
    assert expected < 0
    assert dq._cos_shift(float(x @ x), float(e @ e), float(x @ e)) == pytest.approx(expected)


@pytest.mark.parametrize(
    ("xx", "ee", "xe"),
    [(0.0, 1.0, 0.0), (1.0, 1.0, -1.0), (0.0, 0.0, 0.0)],
    ids=["x-is-zero", "x-plus-e-is-zero", "both-zero"],
)
def test_cosine_with_a_zero_vector_is_nan(xx, ee, xe):
    assert math.isnan(dq._cos_shift(xx, ee, xe))


def test_rank90_counts_a_direction_that_holds_exactly_90_percent():
    s = torch.tensor([3.0, 1.0], dtype=torch.float64)  # squares 9 and 1: the first holds 9 / 10 exactly
    assert dq._rank_share(s, 10.0) == 1
    assert dq._rank_share(torch.tensor([2.0, 1.0, 1.0], dtype=torch.float64), 6.0) == 3
    assert dq._rank_share(s, 0.0) == 0


def _record_sketches(monkeypatch, held: float):
    """Replace torch's SVDs with fakes that record the sketch widths asked for; each sketch holds ``held`` of the
    total (0: never enough, so the loop widens it until it is too wide)."""
    calls: list[tuple] = []

    def lowrank(delta, *args, **kwargs):
        calls.append(("lowrank", args, kwargs))
        total = float(torch.linalg.vector_norm(delta, dtype=torch.float64) ** 2)
        s = torch.zeros(8, dtype=torch.float32)
        s[0] = math.sqrt(held * total)
        return None, s, None

    def svdvals(delta):
        calls.append(("exact",))
        return torch.ones(4, dtype=torch.float32)

    monkeypatch.setattr(torch, "svd_lowrank", lowrank)
    monkeypatch.setattr(torch.linalg, "svdvals", svdvals)
    return calls


def test_the_sketch_starts_at_64_or_twice_k_and_widens_fourfold_until_a_quarter_of_the_short_side(monkeypatch):
    calls = _record_sketches(monkeypatch, 0.0)
    dq.spectrum(torch.ones(1100, 1200), 4, exact_max=16)
    assert calls == [("lowrank", (), {"q": 64, "niter": 4}), ("lowrank", (), {"q": 256, "niter": 4}), ("exact",)]
    calls.clear()
    dq.spectrum(torch.ones(1100, 1200), 40, exact_max=16)
    assert calls == [("lowrank", (), {"q": 80, "niter": 4}), ("exact",)]


@pytest.mark.parametrize(
    ("short", "exact_max", "randomized"),
    [(256, 256, False), (256, 255, True), (1025, 1024, True), (1024, 1024, False)],
)
def test_the_sketch_is_used_only_above_exact_max_and_when_a_quarter_of_the_short_side_holds_it(
    monkeypatch, short, exact_max, randomized
):
    calls = _record_sketches(monkeypatch, 0.95)
    if exact_max == 1024:
        dq.spectrum(torch.ones(short, short + 1), 4)  # the default exact_max
    else:
        dq.spectrum(torch.ones(short, short + 1), 4, exact_max=exact_max)
    assert calls == ([("lowrank", (), {"q": 64, "niter": 4})] if randomized else [("exact",)])
