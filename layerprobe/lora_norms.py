"""Norms of LoRA's effective change dW = s * B @ A from r x r Gram matrices; no d x d product is ever formed.

For X (p x k) and Y (k x q): ||X @ Y||_F^2 = sum((X^T X) * (Y Y^T)). Differences of two products are written
as sums of small terms, B1 A1 - B0 A0 = (B1 - B0) A1 + B0 (A1 - A0), so nothing large cancels, and the Gram
matrices are accumulated in float64.
"""

from __future__ import annotations

import torch


def _gram_norm_sq(x: torch.Tensor, y: torch.Tensor) -> float:
    """||x @ y||_F^2 for x (p x k), y (k x q), via k x k Gram matrices in float64."""
    x = x.detach().to(torch.float64)
    y = y.detach().to(torch.float64)
    return float(((x.T @ x) * (y @ y.T)).sum().clamp_min(0.0))


def product_norm(b: torch.Tensor, a: torch.Tensor, scale: float) -> float:
    """||scale * B @ A||_F."""
    return abs(scale) * _gram_norm_sq(b, a) ** 0.5


def product_diff_norm(b1: torch.Tensor, a1: torch.Tensor, b0: torch.Tensor, a0: torch.Tensor, scale: float) -> float:
    """||scale * (B1 @ A1 - B0 @ A0)||_F."""
    x = torch.cat([b1.detach().double() - b0.detach().double(), b0.detach().double()], dim=1)
    y = torch.cat([a1.detach().double(), a1.detach().double() - a0.detach().double()], dim=0)
    return abs(scale) * _gram_norm_sq(x, y) ** 0.5


def effective_weight_norm(w0: torch.Tensor, b: torch.Tensor, a: torch.Tensor, scale: float,
                          transposed: bool = False, w0_norm_sq: float | None = None) -> float:
    """||W0 + scale * dW||_F with dW = B @ A (or its transpose when the base stores W transposed).

    <W0, B A> = sum((B^T W0) * A): an r x q product, never p x q beyond W0 itself.
    """
    w = w0.detach()
    bd, ad = b.detach().to(w.dtype), a.detach().to(w.dtype)
    left = bd.T @ (w.T if transposed else w)  # r x q
    inner = float((left.double() * ad.double()).sum())
    if w0_norm_sq is None:
        w0_norm_sq = float(torch.linalg.vector_norm(w, dtype=torch.float32).double() ** 2)
    total = w0_norm_sq + 2.0 * scale * inner + scale * scale * _gram_norm_sq(b, a)
    return max(total, 0.0) ** 0.5
