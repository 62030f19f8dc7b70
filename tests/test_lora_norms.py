"""LoRA norms from Gram matrices against the materialised float64 products."""

import pytest
import torch

from layerprobe.record import lora_norms


@pytest.mark.parametrize("step", [1e-1, 1e-4])  # a large change, and one of a single small update
def test_diff_and_weight_norms_match_materialised_products(step):
    g = torch.Generator().manual_seed(0)
    p, q, r, s = 300, 200, 16, 2.0
    w0 = torch.randn(p, q, generator=g) * 0.05
    b0, a0 = torch.randn(p, r, generator=g) * 0.02, torch.randn(r, q, generator=g) * 0.05
    b1 = b0 + step * torch.randn(p, r, generator=g) * 0.02
    a1 = a0 + step * torch.randn(r, q, generator=g) * 0.05
    d = lambda t: t.double()
    ref_diff = float((s * (d(b1) @ d(a1) - d(b0) @ d(a0))).norm())
    got_diff = lora_norms.diff_norm_from(lora_norms.diff_parts(b1, a1, b0, a0), s)
    assert got_diff == pytest.approx(ref_diff, rel=1e-6)
    for transposed in (False, True):
        base = w0.T.contiguous() if transposed else w0
        ref_w = float((d(w0) + s * d(b1) @ d(a1)).norm())
        parts = lora_norms.weight_parts(base, b1, a1, transposed, float(d(w0).norm() ** 2))
        assert lora_norms.weight_norm_from(parts, s) == pytest.approx(ref_w, rel=1e-9)
