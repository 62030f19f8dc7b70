"""Streaming weight diff of two or three checkpoints, as records (phase ``diff``).

Each tensor is read in row chunks into float32 buffers (whatever its stored dtype) and reduced in one pass to
the Gram matrix of ``[A, B - A(, C - B)]``: every quantity below is a function of those sums, for one tensor or
for the summed Grams of a group, so aggregates are ratios of summed squares, never means of ratios.

Quantities (per tensor, ``param`` = canonical name; per ``(layer, block, module)`` with ``param=""``; per
``(layer, block)`` with ``module=""``; for the whole model with ``layer=-1, block="", module=""``):

- two-way ``A B``: ``norm_a``, ``norm_b``, ``delta_norm`` = ||B - A||, ``rel_change`` = ||B - A|| / ||A||,
  ``cosine`` = cos(A, B);
- three-way ``A B C`` adds ``norm_c``, ``delta_norm_bc``, ``rel_change_bc`` (= ||C - B|| / ||B||), ``cosine_bc``,
  ``delta_norm_ac``, ``rel_change_ac``, ``cosine_ac``, ``cos_cpt_sft`` = cos(B - A, C - B) and
  ``undo_frac`` = -<C - B, B - A> / ||B - A||^2 (the share of the first change that the second pushed back),
  and their null for an unrelated second change, ``null_sd_cos`` and ``null_sd_undo_frac``: the standard
  deviations (mean 0) when each tensor's C - B is replaced by a random direction of the same norm
  (:func:`null_quantities`), so a value within about 2 of them is what an unrelated update gives;
- one adapter alone: ``delta_norm`` = ||dW||;
- with ``svd=K``, per 2-D tensor only: ``sv_1..sv_K`` (top singular values of B - A) and ``rank90`` (the fewest
  singular directions holding 90 % of ||B - A||^2); ``sv_i_bc``/``rank90_bc`` for C - B.

Rows have ``phase="diff"`` and ``step=-1``. A ratio with a zero denominator is NaN.
"""

from __future__ import annotations

import math
import os
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

if TYPE_CHECKING:
    import torch

from layerprobe.names import parse_name
from layerprobe.records import COLUMNS

STEP = -1
PHASE = "diff"
RANK_SHARE = 0.9
_SHOW = 10


@dataclass
class DiffConfig:
    svd: int = field(default=0, metadata={"help": "top singular values (and rank90) of each 2-D delta; 0 = off"})
    allow_missing: bool = field(
        default=False,
        metadata={"help": "diff the tensors the checkpoints share and report the rest, instead of failing"},
    )
    allow_pickle: bool = field(
        default=False,
        metadata={"help": "load .bin/.pt checkpoints with torch.load(weights_only=True); refused by default"},
    )
    run: str | None = field(default=None, metadata={"help": "run name in the records (default: B_vs_A)"})
    threads: int | None = field(
        default=None, metadata={"help": "worker threads over each tensor's chunks (default: torch.get_num_threads())"}
    )
    chunk_elems: int = field(
        default=1 << 18,
        metadata={"help": "elements per chunk and buffer row (1 MiB of float32: sized for the CPU cache)"},
    )
    svd_exact_max: int = field(
        default=1024,
        metadata={"help": "exact singular values up to this short side; randomized (torch.svd_lowrank) above it"},
    )
    progress: bool = field(default=False, metadata={"help": "show a progress bar on stderr"})

    def __post_init__(self):
        if not isinstance(self.svd, int) or self.svd < 0:
            raise ValueError(f"svd must be a number of singular values >= 0 (0 = off), got {self.svd!r}")
        if self.threads is not None and (not isinstance(self.threads, int) or self.threads < 1):
            raise ValueError(f"threads must be >= 1 or None (use torch's thread count), got {self.threads!r}")
        if not isinstance(self.chunk_elems, int) or self.chunk_elems < 1024:
            raise ValueError(f"chunk_elems must be an int >= 1024, got {self.chunk_elems!r}")
        if self.svd_exact_max < 1:
            raise ValueError(f"svd_exact_max must be >= 1, got {self.svd_exact_max!r}")


# ------------------------------------------------------------------------------------------ per-tensor math


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


# ------------------------------------------------------------------------------------------ streaming engine


class _Engine:
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


# ------------------------------------------------------------------------------------------ alignment


@dataclass
class _Plan:
    mode: str  # delta | two | three
    names: list[str]  # canonical names to diff, in reading order
    skipped: list[str]  # problems reported (with allow_missing)
    tied: list[str]  # aliases made for tied embeddings


def _plan(sources: list, allow_missing: bool) -> _Plan:
    first = sources[0]
    if first.kind == "adapter" and len(sources) > 1:
        raise ValueError(
            f"the first checkpoint must hold full weights, got the adapter {first.label}: an adapter's "
            "update is relative to its base; pass the base first (layerprobe diff BASE ADAPTER)"
        )
    if len(sources) == 1:
        if first.kind != "adapter":
            raise ValueError(
                f"one checkpoint given ({first.label}): pass two or three checkpoints to compare, "
                "or one peft adapter folder to measure its update dW"
            )
        names = sorted(first.names(), key=_layer_order)
        return _Plan("delta", [n for n in names if first.is_lora(n)], [], [])
    tied = _tie_embeddings(sources)
    base_names = first.names()
    problems: list[str] = []
    drop: set[str] = set()
    for src in sources[1:]:
        names = src.names()
        for n in sorted(base_names - names) if src.kind == "weights" else []:
            problems.append(f"{n}: in {first.label}, not in {src.label}")
            drop.add(n)
        for n in sorted(names - base_names):
            problems.append(f"{n}: in {src.label}, not in {first.label}")
        for n in sorted(names & base_names):
            if src.kind == "adapter":
                src.fit_shape(n, first.shape(n))
            if tuple(src.shape(n)) != tuple(first.shape(n)):
                problems.append(
                    f"{n}: shape {list(first.shape(n))} in {first.label}, {list(src.shape(n))} in {src.label}"
                )
                drop.add(n)
    if problems and not allow_missing:
        raise ValueError(
            f"the checkpoints do not line up: {len(problems)} missing, extra or mismatched tensors; "
            f"first {min(len(problems), _SHOW)}: {'; '.join(problems[:_SHOW])}; pass --allow-missing "
            "(allow_missing=True) to diff the tensors they share"
        )
    weights = [s for s in sources if s.kind == "weights"]
    names = sorted(base_names - drop, key=lambda n: tuple(s.sort_key(n) for s in weights))
    return _Plan("two" if len(sources) == 2 else "three", names, problems, tied)


def _layer_order(name: str):
    p = parse_name(name)
    return p.layer, name


def _tie_embeddings(sources: list) -> list[str]:
    """Alias a missing head (``lm_head.weight``) to the embedding in a checkpoint whose config ties them, or
    whose tying shows in another checkpoint holding both with equal data."""
    notes = []
    everywhere = set().union(*(s.names() for s in sources))
    heads = sorted(n for n in everywhere if parse_name(n).block == "head")
    for x in (s for s in sources if s.kind == "weights"):
        for head in heads:
            if head in x.names():
                continue
            owner = next(s for s in sources if head in s.names())
            embeds = [n for n in x.names() if parse_name(n).block == "embed" and x.shape(n) == owner.shape(head)]
            if len(embeds) != 1:
                continue
            if x.ties_word_embeddings() or (
                owner.kind == "weights" and embeds[0] in owner.names() and _same_data(owner, head, embeds[0])
            ):
                x.alias(head, embeds[0])
                notes.append(f"{x.label}: {head} tied to {embeds[0]}")
    return notes


def _same_data(src, a: str, b: str) -> bool:
    import torch

    fa, fb = src.operand(a).flat, src.operand(b).flat
    step = 1 << 22
    return fa.dtype == fb.dtype and all(
        torch.equal(fa[i : i + step], fb[i : i + step]) for i in range(0, len(fa), step)
    )


# ------------------------------------------------------------------------------------------ library call


def diff_checkpoints(
    a: str | os.PathLike,
    b: str | os.PathLike | None = None,
    c: str | os.PathLike | None = None,
    config: DiffConfig | None = None,
    **options,
) -> pd.DataFrame:
    """Diff checkpoints tensor by tensor, streaming; returns the records table (see the module docstring).

    ``a``, ``b``, ``c``: checkpoint folders (``model.safetensors`` or shards with an index), ``.safetensors``
    files or peft LoRA adapter folders (an adapter is applied on the checkpoint before it, never merged).
    ``options`` are :class:`DiffConfig` fields. ``df.attrs`` holds ``skipped`` (with ``allow_missing``),
    ``tied`` and ``mode``.
    """
    import torch

    from layerprobe.checkpoints import LoraDelta, open_source

    if config is not None and options:
        raise ValueError(f"pass either config= or keyword options, not both; got config and {sorted(options)}")
    cfg = config or DiffConfig(**options)
    paths = [p for p in (a, b, c) if p is not None]
    if c is not None and b is None:
        raise ValueError("a third checkpoint needs a second one: layerprobe diff A B C")
    sources = [open_source(p, allow_pickle=cfg.allow_pickle) for p in paths]
    plan = _plan(sources, cfg.allow_missing)
    if not plan.names:
        raise ValueError(
            f"nothing to diff in {', '.join(map(str, paths))}: no tensors in common"
            f"{' (and an adapter alone is measured by its LoRA pairs only)' if plan.mode == 'delta' else ''}"
        )
    run = cfg.run or "_vs_".join(_short(p) for p in reversed(paths))
    threads = cfg.threads or torch.get_num_threads()
    engine = _Engine(threads, cfg.chunk_elems)
    intra = torch.get_num_threads()
    # parallel over chunks, never inside each chunk's op: OpenMP teams on 1 MiB ops spin more than they work,
    # and on a busy machine that costs 10x (measured)
    torch.set_num_threads(1)
    rows: list[tuple] = []
    grams: dict[tuple[int, str, str], np.ndarray] = {}
    nulls: dict[tuple[int, str, str], float] = {}
    try:
        names = plan.names
        if cfg.progress:
            from tqdm import tqdm

            names = tqdm(names, desc="diff", unit="tensor", file=sys.stderr)
        for name in names:
            ops = [s.operand(name) if s.kind == "weights" or name in s.names() else None for s in sources]
            shape = tuple(sources[0].shape(name))
            dense = [
                cfg.svd > 0 and len(shape) == 2 and k > 0 and op is not None and not isinstance(op, LoraDelta)
                for k, op in enumerate(ops)
            ]
            if plan.mode == "delta":
                dense = [False]
            g, full = engine.gram(ops, shape, dense)
            p = parse_name(name)
            key = (p.layer, p.block, p.module)
            grams[key] = grams.get(key, 0) + g
            q = quantities_from_gram(g, plan.mode)
            if plan.mode == "three":
                var = null_variance(g, math.prod(shape))
                nulls[key] = nulls.get(key, 0.0) + var
                q.update(null_quantities(g, var))
            rows += [(p.layer, p.block, p.module, name, k, v) for k, v in q.items()]
            if cfg.svd > 0 and len(shape) == 2:
                rows += _svd_rows(ops, full, shape, plan.mode, cfg, p, name)
            del ops, full
    finally:
        torch.set_num_threads(intra)
        engine.close()
        for s in sources:
            s.close()
    rows += _aggregate(grams, plan.mode, nulls)
    df = pd.DataFrame(rows, columns=["layer", "block", "module", "param", "quantity", "value"])
    df.insert(0, "step", STEP)
    df.insert(0, "phase", PHASE)
    df.insert(0, "run", run)
    df = df[list(COLUMNS)].astype({"step": "int64", "layer": "int64", "value": "float64"})
    df.attrs.update({"skipped": plan.skipped, "tied": plan.tied, "mode": plan.mode})
    return df


def _svd_rows(ops, full, shape, mode, cfg, p, name) -> list[tuple]:
    from layerprobe.checkpoints import LoraDelta

    out = []
    for k, op in enumerate(ops):
        if k == 0 and mode != "delta":
            continue
        if op is None:  # a tensor the adapter leaves alone: a zero delta
            s, r90 = np.zeros(min(cfg.svd, *shape)), 0
        elif isinstance(op, LoraDelta):
            s, r90 = lora_spectrum(*op.factors(), cfg.svd)
        else:
            s, r90 = spectrum(full[k], cfg.svd, cfg.svd_exact_max)
        suffix = "_bc" if k == 2 else ""
        out += [(p.layer, p.block, p.module, name, f"sv_{i + 1}{suffix}", float(v)) for i, v in enumerate(s)]
        out.append((p.layer, p.block, p.module, name, f"rank90{suffix}", float(r90)))
    return out


def _aggregate(grams: dict[tuple[int, str, str], np.ndarray], mode: str, nulls: dict) -> list[tuple]:
    """Sum the Grams (and null variances) per (layer, block, module), per (layer, block) (module "") and over the
    model (block "")."""
    levels: dict[tuple[int, str, str], np.ndarray] = {}
    null_levels: dict[tuple[int, str, str], float] = {}
    for (layer, block, module), g in grams.items():
        for key in ((layer, block, module), (layer, block, ""), (-1, "", "")):
            levels[key] = levels.get(key, 0) + g
            if mode == "three":
                null_levels[key] = null_levels.get(key, 0.0) + nulls[(layer, block, module)]
    rows = []
    for key, g in sorted(levels.items()):
        q = quantities_from_gram(g, mode)
        if mode == "three":
            q.update(null_quantities(g, null_levels[key]))
        rows += [(*key, "", name, v) for name, v in q.items()]
    return rows


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


def _short(path) -> str:
    p = Path(path)
    return p.stem if p.suffix in (".safetensors", ".bin", ".pt", ".pth") else p.name
