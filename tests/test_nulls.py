"""The random-update null of cos_cpt_sft / undo_frac (layerprobe.nulls) against a Monte-Carlo simulation."""

import math

import numpy as np
import pytest

from layerprobe.diff import diff_checkpoints
from layerprobe.nulls import group_value, random_update_null
from test_diff import FAST, perturb, save, toy_weights


def _simulated_sd(x: list[np.ndarray], e_norms: list[float], draws: int = 4000) -> float:
    """sd of cos(X, R) over R = each tensor's change replaced by a random direction of the same norm."""
    rng = np.random.default_rng(0)
    xn = math.sqrt(sum(float((xi ** 2).sum()) for xi in x))
    en = math.sqrt(sum(n ** 2 for n in e_norms))
    cos = []
    for _ in range(draws):
        dot = 0.0
        for xi, n in zip(x, e_norms):
            u = rng.standard_normal(xi.shape)
            dot += n * float((xi * u).sum()) / float(np.linalg.norm(u))
        cos.append(dot / (xn * en))
    return float(np.std(cos))


def test_random_update_null_matches_simulation(tmp_path):
    w = toy_weights(0)
    cpt = perturb(w, 1, 0.05)
    sft = perturb(cpt, 2, 0.02)
    for name in ("model.layers.1.mlp.up_proj.weight", "model.norm.weight"):  # SFT left these alone
        sft[name] = cpt[name].clone()
    a, b, c = (save(x, tmp_path / n) for x, n in ((w, "base"), (cpt, "cpt"), (sft, "sft")))
    df = diff_checkpoints(tmp_path / "base", tmp_path / "cpt", tmp_path / "sft", **FAST)
    null = random_update_null(df, {k: v.size for k, v in a.items()})
    for layer, block in ((0, "mlp"), (1, "mlp"), (-1, "")):
        names = [k for k in a if (layer == -1 or f"layers.{layer}.mlp" in k)]
        x = [b[k] - a[k] for k in names]
        e = [float(np.linalg.norm(c[k] - b[k])) for k in names]
        row = null[(null["layer"] == layer) & (null["block"] == block)].iloc[0]
        assert row["sd_cos"] == pytest.approx(_simulated_sd(x, e), rel=0.06)
        xn, en = math.sqrt(sum(float((xi ** 2).sum()) for xi in x)), math.sqrt(sum(v ** 2 for v in e))
        assert row["sd_undo_frac"] == pytest.approx(row["sd_cos"] * en / xn)
        assert row["n_tensors"] == len(names)
    # the measured cos of two unrelated noise updates lies inside the null's band
    cos = group_value(df, "cos_cpt_sft")
    assert abs(cos) < 4 * null[null["layer"] == -1]["sd_cos"].iloc[0]


def test_random_update_null_refuses_what_it_cannot_use(tmp_path):
    w = toy_weights(0)
    save(w, tmp_path / "base")
    save(perturb(w, 1, 0.05), tmp_path / "cpt")
    two = diff_checkpoints(tmp_path / "base", tmp_path / "cpt", **FAST)
    with pytest.raises(ValueError, match="three-way diff"):
        random_update_null(two[two["quantity"] == "norm_a"], {})
    save(perturb(w, 2, 0.05), tmp_path / "sft")
    three = diff_checkpoints(tmp_path / "base", tmp_path / "cpt", tmp_path / "sft", **FAST)
    with pytest.raises(ValueError, match="numel has no entry"):
        random_update_null(three, {})
    with pytest.raises(ValueError, match="expected one undo_frac row"):
        group_value(three, "undo_frac", layer=7)
