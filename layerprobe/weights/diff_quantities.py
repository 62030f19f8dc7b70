"""The per-tensor math of :mod:`layerprobe.weights.diff`, pure functions with no I/O: every diff quantity from the Gram
matrix of ``[A, B - A(, C - B)]`` (for one tensor or the summed Grams of a group), the random-update null of the
three-way quantities, and the singular values (with rank90) of a dense or a LoRA delta."""

from __future__ import annotations

import math

import numpy as np

RANK_SHARE = 0.9  # rank90: the fewest singular directions holding this share of ||delta||^2


def _ratio(num: float, den: float) -> float:
    return num / den if den > 0 else math.nan


def _cos_shift(xx: float, ee: float, xe: float) -> float:
    """cos(x, x + e) from ||x||^2, ||e||^2 and <x, e>; stable when e is tiny, where <x, x + e> / (|x| |x + e|)
    loses every digit: 1 - cos^2 = (|x|^2 |e|^2 - <x, e>^2) / (|x|^2 |x + e|^2)."""
    yy = xx + 2 * xe + ee
    if xx <= 0 or yy <= 0:
        return math.nan
    sin2 = min(1.0, max(0.0, (xx * ee - xe * xe) / (xx * yy)))
    return math.copysign(math.sqrt(1.0 - sin2), xx + xe)


def quantities_from_gram(g: np.ndarray, mode: str) -> dict[str, float]:
    """Every diff quantity from the Gram matrix of ``[A, B - A(, C - B)]`` (``mode`` two/three) or ``[dW]`` (delta)."""
    if mode == "delta":
        return {"delta_norm": math.sqrt(g[0, 0])}
    aa, ad, dd = g[0, 0], g[0, 1], g[1, 1]
    bb = aa + 2 * ad + dd
    q = {
        "norm_a": math.sqrt(aa),
        "norm_b": math.sqrt(max(bb, 0.0)),
        "delta_norm": math.sqrt(dd),
        "rel_change": math.sqrt(_ratio(dd, aa)),
        "cosine": _cos_shift(aa, dd, ad),
    }
    if mode == "two":
        return q
    ae, de, ee = g[0, 2], g[1, 2], g[2, 2]
    be = ae + de
    cc = bb + 2 * be + ee
    ff, af = dd + 2 * de + ee, ad + ae  # f = C - A = (B - A) + (C - B)
    q.update(
        {
            "norm_c": math.sqrt(max(cc, 0.0)),
            "delta_norm_bc": math.sqrt(ee),
            "rel_change_bc": math.sqrt(_ratio(ee, bb)),
            "cosine_bc": _cos_shift(bb, ee, be),
            "delta_norm_ac": math.sqrt(max(ff, 0.0)),
            "rel_change_ac": math.sqrt(_ratio(max(ff, 0.0), aa)),
            "cosine_ac": _cos_shift(aa, ff, af),
            "cos_cpt_sft": _ratio(de, math.sqrt(dd * ee)),
            "undo_frac": _ratio(-de, dd),
        }
    )
    return q


def spectrum(delta, k: int, exact_max: int = 1024) -> tuple[np.ndarray, int]:
    """Top-``k`` singular values of a 2-D float32 delta and rank90 (randomized above ``exact_max`` on the short
    side, widening the sketch until it holds 90 % of ||delta||^2, exact when the sketch would be too wide)."""
    import torch

    total = float(torch.linalg.vector_norm(delta, dtype=torch.float64) ** 2)
    short = min(delta.shape)
    q = max(2 * k, 64)
    while short > exact_max and q <= short // 4:
        s = torch.svd_lowrank(delta, q=q, niter=4)[1].double()
        if float((s**2).sum()) >= RANK_SHARE * total:
            return s[:k].numpy(), _rank_share(s, total)
        q *= 4
    s = torch.linalg.svdvals(delta).double()
    return s[:k].numpy(), _rank_share(s, total)


def lora_spectrum(left, right, k: int) -> tuple[np.ndarray, int]:
    """Exact singular values of ``left @ right`` (out x r times r x in) through two thin QRs: only r x r work."""
    import torch

    rl = torch.linalg.qr(left.double())[1]
    rr = torch.linalg.qr(right.double().T)[1]
    s = torch.linalg.svdvals(rl @ rr.T)
    return s[:k].numpy(), _rank_share(s, float((s**2).sum()))


def _rank_share(s, total: float) -> int:
    if total <= 0:
        return 0
    cum = np.cumsum(s.numpy() ** 2)
    return int(min(np.searchsorted(cum, RANK_SHARE * total * (1 - 1e-12)) + 1, len(cum)))


def null_variance(g: np.ndarray, numel: int) -> float:
    """One tensor's term of the random-update null: |x|^2 |e|^2 / d (x = B - A, e = C - B, d entries)."""
    return float(g[1, 1] * g[2, 2]) / numel


def null_quantities(g: np.ndarray, variance: float) -> dict[str, float]:
    """The random-update null of ``cos_cpt_sft`` and ``undo_frac`` from a (summed) three-way Gram and the summed
    :func:`null_variance` terms: each tensor's SFT change e_i replaced by a direction drawn uniformly on the sphere
    of R^{d_i} with the same norm. For a fixed x and u uniform on the unit sphere of R^d, <x, u> / |x| has mean 0 and
    variance 1/d, so over a group sd(cos) = sqrt(sum_i |x_i|^2 |e_i|^2 / d_i) / (|X| |E|) and
    sd(undo_frac) = sqrt(sum_i |x_i|^2 |e_i|^2 / d_i) / |X|^2; both nulls have mean 0."""
    xx, ee = g[1, 1], g[2, 2]
    root = math.sqrt(variance)
    return {"null_sd_cos": _ratio(root, math.sqrt(xx * ee)), "null_sd_undo_frac": _ratio(root, xx)}
