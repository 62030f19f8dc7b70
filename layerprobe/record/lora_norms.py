"""Norms of LoRA's effective change dW = s * B @ A from r x r Gram matrices; no d x d product is ever formed.

For X (p x k) and Y (k x q): ||X @ Y||_F^2 = sum((X^T X) * (Y Y^T)). Differences of two products are written
as sums of small terms, B1 A1 - B0 A0 = (B1 - B0) A1 + B0 (A1 - A0), so nothing large cancels. The Gram matrices
of differences are float32 products (faster than float64 on a CPU) combined in float64; the norms
agree with materialised float64 products to 1e-6 (tests/test_lora_norms.py).

Under row sharding (FSDP2: B and W0 split on their output rows, the same rows on each rank) every norm splits into
pieces that add up over ranks: B^T B and B^T W0 are sums over row blocks, and A (r x n, small) is summed from
zero-padded row blocks (:func:`layerprobe.record.distributed.whole`). ``*_parts`` return one rank's pieces;
``*_from`` turn the pieces' sums into the norm. Unsharded, the pieces are the whole matrices. This module does
no communication.
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


def weight_parts(
    w0: torch.Tensor, b: torch.Tensor, a: torch.Tensor, transposed: bool, w0_norm_sq: float
) -> list[torch.Tensor]:
    """Pieces of ||W0 + s dW||^2 (dW = B @ A, or its transpose when the base stores W transposed):
    [||W0||^2, B^T W0 (r x q), B^T B (r x r), A]. ``w0`` and ``b`` are the same rows (this rank's), ``a`` is
    this rank's summand of A (see :func:`layerprobe.record.distributed.whole`)."""
    w = w0.detach()
    left = (b.detach().to(w.dtype).T @ (w.T if transposed else w)).double()  # r x q: never p x q beyond W0 itself
    b64 = b.detach().double()
    return [torch.tensor([w0_norm_sq], dtype=torch.float64, device=left.device), left, b64.T @ b64, a.double()]


def weight_norm_from(parts: list[torch.Tensor], scale: float) -> float:
    """||W0 + s dW|| = sqrt(||W0||^2 + 2 s <B^T W0, A> + s^2 sum((B^T B) * (A A^T)))."""
    w0_sq, left, gram_b, a = parts
    total = (
        float(w0_sq[0])
        + 2.0 * scale * float((left * a).sum())
        + scale * scale * float((gram_b * (a @ a.T)).sum().clamp_min(0.0))
    )
    return max(total, 0.0) ** 0.5


def _gram32(x: torch.Tensor, of_rows: bool = False) -> torch.Tensor:
    """x^T x (x x^T with ``of_rows``) as a float32 product, returned in float64."""
    x = x.float()
    return (x @ x.T if of_rows else x.T @ x).double()


def diff_parts(b1: torch.Tensor, a1: torch.Tensor, b0: torch.Tensor, a0: torch.Tensor) -> list[torch.Tensor]:
    """Pieces of ||B1 A1 - B0 A0||^2: [X^T X, A1, A0] with X = [B1 - B0, B0] (this rank's rows)."""
    b1f, b0f = b1.detach().float(), b0.detach().float()
    x = torch.cat([b1f - b0f, b0f], dim=1)
    return [_gram32(x), a1.detach().double(), a0.detach().double()]


def diff_norm_from(parts: list[torch.Tensor], scale: float) -> float:
    """||s (B1 A1 - B0 A0)|| = |s| sqrt(sum((X^T X) * (Y Y^T))), Y = [A1; A1 - A0]."""
    gram_x, a1, a0 = parts
    y = torch.cat([a1, a1 - a0], dim=0)
    return abs(scale) * float((gram_x * _gram32(y, of_rows=True)).sum().clamp_min(0.0)) ** 0.5
