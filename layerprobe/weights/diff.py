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
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from layerprobe.core.names import parse_name
from layerprobe.record.records import COLUMNS
from layerprobe.weights.diff_quantities import (
    lora_spectrum,
    null_quantities,
    null_variance,
    quantities_from_gram,
    spectrum,
)
from layerprobe.weights.diff_stream import GramEngine

STEP = -1
PHASE = "diff"
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

    from layerprobe.weights.checkpoints import open_source

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
    engine = GramEngine(threads, cfg.chunk_elems)
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
            rows += _diff_tensor(name, sources, plan.mode, cfg, engine, grams, nulls)
    finally:
        torch.set_num_threads(intra)
        engine.close()
        for s in sources:
            s.close()
    df = _as_records(rows + _aggregate(grams, plan.mode, nulls), run)
    df.attrs.update({"skipped": plan.skipped, "tied": plan.tied, "mode": plan.mode})
    return df


def _as_records(rows: list[tuple], run: str) -> pd.DataFrame:
    """``(layer, block, module, param, quantity, value)`` rows as the records table (phase ``diff``, step -1)."""
    df = pd.DataFrame(rows, columns=["layer", "block", "module", "param", "quantity", "value"])
    df = df.assign(run=run, phase=PHASE, step=STEP)
    return df[list(COLUMNS)].astype({"step": "int64", "layer": "int64", "value": "float64"})


def _diff_tensor(
    name: str,
    sources: list,
    mode: str,
    cfg: DiffConfig,
    engine: GramEngine,
    grams: dict[tuple[int, str, str], np.ndarray],
    nulls: dict[tuple[int, str, str], float],
) -> list[tuple]:
    """One tensor's rows; adds its Gram (and null variance) to its (layer, block, module) sums in ``grams``
    (``nulls``)."""
    from layerprobe.weights.checkpoints import LoraDelta

    ops = [s.operand(name) if name in s.names() else None for s in sources]  # None: a tensor an adapter leaves
    shape = tuple(sources[0].shape(name))
    dense = [
        cfg.svd > 0 and len(shape) == 2 and k > 0 and op is not None and not isinstance(op, LoraDelta)
        for k, op in enumerate(ops)
    ]
    g, full = engine.gram(ops, shape, dense)
    p = parse_name(name)
    key = (p.layer, p.block, p.module)
    grams[key] = grams.get(key, 0) + g
    q = quantities_from_gram(g, mode)
    if mode == "three":
        var = null_variance(g, math.prod(shape))
        nulls[key] = nulls.get(key, 0.0) + var
        q.update(null_quantities(g, var))
    rows = [(p.layer, p.block, p.module, name, k, v) for k, v in q.items()]
    if cfg.svd > 0 and len(shape) == 2:
        rows += _svd_rows(ops, full, shape, mode, cfg, p, name)
    return rows


def _svd_rows(ops, full, shape, mode, cfg, p, name) -> list[tuple]:
    from layerprobe.weights.checkpoints import LoraDelta

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


def _short(path) -> str:
    p = Path(path)
    return p.stem if p.suffix in (".safetensors", ".bin", ".pt", ".pth") else p.name
