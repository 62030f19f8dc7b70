"""The streaming engine of :mod:`layerprobe.weights.diff`: one tensor of each model read in row chunks into float32
buffers (whatever its stored dtype) and reduced in one pass, over a pool of threads, to the Gram matrix of
``[A, B - A(, C - B)]``; the whole delta is kept only where singular values are asked for."""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import torch


class GramEngine:
    """Reduces one tensor of each model, chunk by chunk, to the Gram matrix of its rows ``[x0, d1, d2, ...]``."""

    def __init__(self, threads: int, chunk_elems: int):
        self.threads, self.chunk_elems = threads, chunk_elems
        self.pool = ThreadPoolExecutor(threads) if threads > 1 else None
        self.bufs: dict[int, torch.Tensor] = {}

    def close(self) -> None:
        if self.pool:
            self.pool.shutdown()

    def gram(self, ops: list, shape: tuple[int, ...], keep: list[bool]) -> tuple[np.ndarray, list]:
        """``ops[k]`` is model k's operand (``kind`` value/delta) or None for an unchanged tensor; ``keep[k]``
        asks for the whole float32 delta of model k (for singular values)."""
        import torch

        rows = shape[0] if shape else 1
        rowlen = math.prod(shape[1:]) if len(shape) > 1 else 1
        step = max(1, self.chunk_elems // rowlen)
        ranges = [(r, min(r + step, rows)) for r in range(0, rows, step)]
        full: list = [torch.empty(rows * rowlen) if k else None for k in keep]
        m = len(ops)
        pairs = [(i, j) for i in range(m) for j in range(i, m) if ops[i] is not None and ops[j] is not None]
        later_value = [any(o is not None and o.kind == "value" for o in ops[k + 1 :]) for k in range(m)]
        groups = min(self.threads, len(ranges))
        split = [ranges[len(ranges) * w // groups : len(ranges) * (w + 1) // groups] for w in range(groups)]

        def work(w: int):
            cap = step * rowlen
            buf = self.bufs.get(w)
            if buf is None or buf.shape[0] < 2 * m or buf.shape[1] < cap:
                buf = self.bufs[w] = torch.empty(2 * m, max(cap, self.chunk_elems))
            out = torch.zeros(len(split[w]), len(pairs))
            for c, (r0, r1) in enumerate(split[w]):
                n = (r1 - r0) * rowlen
                row: list = [None] * m
                prev: Any = None
                for k, op in enumerate(ops):
                    if op is None:
                        continue
                    x, d = buf[2 * k, :n], buf[2 * k + 1, :n]
                    if op.kind == "value":
                        op.fill(r0, r1, x)
                        if prev is None:  # model 0: its row is the weight itself
                            row[k] = prev = x
                            continue
                        torch.sub(x, prev, out=d)
                        prev = x
                    else:
                        op.fill(r0, r1, d)
                        if later_value[k]:
                            torch.add(prev, d, out=x)
                            prev = x
                    row[k] = d
                    if keep[k]:
                        full[k][r0 * rowlen : r1 * rowlen].copy_(d)
                for p, (i, j) in enumerate(pairs):
                    torch.dot(row[i], row[j], out=out[c, p])
            return out.double().sum(0)

        if self.pool is None or groups == 1:
            sums = [work(0)] if groups else []
        else:
            sums = list(self.pool.map(work, range(groups)))
        g = np.zeros((m, m))
        if sums:
            total = sum(sums).numpy()
            for p, (i, j) in enumerate(pairs):
                g[i, j] = g[j, i] = total[p]
        return g, [f.view(shape) if f is not None else None for f in full]
