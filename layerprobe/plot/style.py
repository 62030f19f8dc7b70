"""The figure style of layerprobe, in one place: theme, what each quantity is called and in which unit, colour
maps (diverging and centred at 0 for signed quantities), captions, output formats and the layout check.

Every figure the package draws is written by :func:`save_figure`. This module never imports torch.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import textwrap
import warnings
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import seaborn as sns

BLOCK_ORDER = ("embed", "attn", "mlp", "norm", "head", "other")  # the order of blocks in every figure
PHASE_TITLES = {"cpt": "CPT", "sft": "SFT", "diff": "diff"}
SEQUENTIAL = "viridis"
DIVERGING = "vlag"  # blue < 0 < red, white at 0
MISSING = "#d9d9d9"  # masked cells: frozen, untouched, undefined
FORMATS_ENV = "LAYERPROBE_FIGURE_FORMATS"  # e.g. "png,svg": every figure is also written in these formats
CHECK_ENV = "LAYERPROBE_CHECK_FIGURES"  # "raise" (tests) or "warn": check text overlaps and empty axes
KNOWN_FORMATS = ("png", "svg", "pdf")
PHASE_NAMES = {"base": "base model", "cpt": "after CPT", "sft": "after SFT"}


@dataclass(frozen=True)
class Display:
    """How a recorded quantity or an outcome is shown: its name for a reader, its unit, and its kind."""

    label: str
    unit: str = ""  # "" = a dimensionless ratio
    signed: bool = False  # diverging colour map centred at 0
    log: bool = False  # log colour scale when the values span more than 50x
    better: str = ""  # "higher" / "lower" for outcomes: which side of a difference is better
    short: str = ""  # a name short enough for a colour bar (default: the key with spaces)


RATIO = "ratio"
SHARE = "share"
NATS = "nats/token"
QUANTITIES = {
    "grad_norm": Display("gradient norm ||g|| before clipping", "L2", log=True),
    "grad_norm_total": Display("global gradient norm before clipping", "L2", log=True),
    "update_ratio": Display("update ratio ||W(t+1) - W(t)|| / ||W(t)||", RATIO, log=True),
    "drift_ratio": Display("drift ||W(t) - W(start)|| / ||W(start)||", RATIO, log=True),
    "weight_norm": Display("weight norm ||W||", "L2"),
    "delta_norm": Display("change ||B - A||", "L2", log=True),
    "rel_change": Display("relative change ||B - A|| / ||A||", RATIO, log=True),
    "rel_change_bc": Display("relative change ||C - B|| / ||B||", RATIO, log=True),
    "rel_change_ac": Display("relative change ||C - A|| / ||A||", RATIO, log=True),
    "cosine": Display("cos(A, B)", "cosine"),
    "undo_frac": Display("share of the CPT change undone by SFT", SHARE, signed=True, short="undone share"),
    "cos_cpt_sft": Display("cos(dCPT, dSFT)", "cosine", signed=True, short="cos(dCPT, dSFT)"),
    "rho": Display("Spearman rho", "rank correlation", signed=True),
    "cloze_acc": Display("cloze accuracy on the CPT facts", SHARE, better="higher"),
    "qa_acc": Display("QA accuracy on the CPT facts", SHARE, better="higher"),
    "mc_acc": Display("multiple-choice accuracy", SHARE, better="higher"),
    "cpt_text_loss": Display("loss on the CPT text", NATS, better="lower"),
    "general_loss": Display("loss on held-out general text", NATS, better="lower"),
    "gozaru_rate": Display("gozaru-style rate (held-out instructions)", SHARE, better="higher"),
    "eos_rate": Display("EOS rate", SHARE, better="higher"),
    "gozaru_first": Display("gozaru style at the first sentence end", SHARE, better="higher"),
    "style_logodds": Display("log p(gozaru answer) - log p(plain answer)", "nats", signed=True, better="higher"),
    "probe_logprob": Display(
        "log p(gold answer | prompt), probed during training", "nats", better="higher", short="log p(gold)"
    ),
    "probe_top1": Display(
        "every gold token the top choice, probed during training", SHARE, better="higher", short="top-1"
    ),
    "cut_rate": Display("answers cut by the token budget", SHARE, better="lower"),
    "retention_drop": Display("retention drop: cloze after CPT - after SFT", SHARE, signed=True, better="lower"),
    "seconds": Display("wall time", "s", better="lower"),
}
_SUFFIX_UNITS = (("_loss", NATS), ("_acc", SHARE), ("_rate", SHARE), ("_ratio", RATIO), ("seconds", "s"))


def quantity(name: str) -> Display:
    """The :class:`Display` of a name: known names, else a guess from the suffix (``*_loss`` is in nats/token,
    ``*_acc`` / ``*_rate`` are shares), else the name itself without a unit."""
    if name in QUANTITIES:
        return QUANTITIES[name]
    unit = next((u for s, u in _SUFFIX_UNITS if name.endswith(s)), "")
    better = "lower" if unit == NATS else "higher" if unit == SHARE else ""
    return Display(name.replace("_", " "), unit, better=better)


def split_metric(metric: str) -> tuple[str, str]:
    """``sft.cloze_acc`` -> (``sft``, ``cloze_acc``); ``stages.sft.seconds`` -> (``sft``, ``seconds``)."""
    parts = metric.split(".")
    if parts[0] == "stages" and len(parts) == 3:
        return parts[1], parts[2]
    if len(parts) == 2 and parts[0] in PHASE_NAMES:
        return parts[0], parts[1]
    return "", metric


def label(name: str, unit: bool = True, short: bool = False) -> str:
    """An axis or colour-bar label: what the quantity is, which model (``sft.`` -> "after SFT"), its unit;
    ``short``: the short name (colour bars, whose figure title says the rest)."""
    phase, key = split_metric(name)
    q = quantity(key)
    text = (q.short or key.replace("_", " ")) if short else q.label
    if phase and key == "seconds":
        text = f"{phase.upper()} {text}"
    elif phase:
        text = f"{text}, {PHASE_NAMES[phase]}"
    return f"{text} ({q.unit})" if unit and q.unit else text


def theme() -> None:
    """The seaborn theme of every figure."""
    sns.set_theme(style="whitegrid", context="paper", font_scale=1.0, rc={"axes.titlesize": 9, "figure.titlesize": 10})


def colour_scale(name: str, values, center: float | None = None) -> dict:
    """Keyword arguments for ``sns.heatmap`` (cmap, norm or vmin/vmax, center) for a quantity and its values.

    Signed quantities (or ``center`` given) get the diverging map, symmetric about the centre; quantities with a
    log scale get ``LogNorm`` when the positive values span more than 50x; the rest the sequential map. Pass the
    values of every panel that is compared so that they share one scale."""
    from matplotlib.colors import LogNorm

    cmap = plt.get_cmap(DIVERGING if (center is not None or quantity(name).signed) else SEQUENTIAL)
    cmap = cmap.with_extremes(bad=MISSING)
    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v)]
    if center is not None or quantity(name).signed:
        c = 0.0 if center is None else center
        span = float(np.max(np.abs(v - c))) if v.size else 1.0
        return {"cmap": cmap, "center": c, "vmin": c - (span or 1.0), "vmax": c + (span or 1.0)}
    pos = v[v > 0]
    if quantity(name).log and pos.size and pos.max() / pos.min() > 50:
        return {"cmap": cmap, "norm": LogNorm(vmin=pos.min(), vmax=pos.max())}
    if not v.size:
        return {"cmap": cmap}
    return {"cmap": cmap, "vmin": float(v.min()), "vmax": float(v.max())}


def suptitle(fig, text: str, size: float = 10) -> None:
    """A figure title wrapped to the figure's width."""
    chars = max(20, int(fig.get_size_inches()[0] * 72 / (size * 0.58)))
    fig.suptitle("\n".join(textwrap.wrap(text, chars)), fontsize=size)


# -- output ----------------------------------------------------------------------------------------------------


def formats() -> tuple[str, ...]:
    """The formats every figure is written in: PNG, plus those named in $LAYERPROBE_FIGURE_FORMATS."""
    extra = [f.strip().lower().lstrip(".") for f in os.environ.get(FORMATS_ENV, "").split(",") if f.strip()]
    bad = [f for f in extra if f not in KNOWN_FORMATS]
    if bad:
        raise ValueError(
            f"{FORMATS_ENV} names {bad[0]!r}; expected a comma-separated list of "
            f"{', '.join(KNOWN_FORMATS)} (e.g. png,svg)"
        )
    return tuple(dict.fromkeys(["png", *extra]))


@contextlib.contextmanager
def figure_formats(spec: str | None):
    """Within the block, write every figure also as the formats of ``spec`` ("svg", "png,pdf"; None: unchanged)."""
    if not spec:
        yield
        return
    old = os.environ.get(FORMATS_ENV)
    os.environ[FORMATS_ENV] = spec
    try:
        formats()  # fail early on a wrong name
        yield
    finally:
        if old is None:
            os.environ.pop(FORMATS_ENV, None)
        else:
            os.environ[FORMATS_ENV] = old


def save_figure(fig, out_png, dpi: int = 110, caption: str = "") -> Path:
    """Lay out, write (creating the folder) and close a figure: every figure layerprobe draws goes through here.

    ``caption`` (what the marks and intervals are, n, the method) is set in small type under the axes. Written as
    ``out_png`` and, with the same stem, in each format of :func:`formats`. With $LAYERPROBE_CHECK_FIGURES set
    to ``raise`` (the tests) or ``warn``, overlapping texts and empty axes are reported (:func:`layout_problems`).
    """
    out = Path(out_png)
    out.parent.mkdir(parents=True, exist_ok=True)
    _layout(fig, caption)
    mode = os.environ.get(CHECK_ENV, "")
    if mode:
        problems = layout_problems(fig)
        if problems and mode == "raise":
            plt.close(fig)
            raise AssertionError(f"figure {out.name}: " + "; ".join(problems))
        for p in problems:
            warnings.warn(f"figure {out.name}: {p}", stacklevel=2)
    for fmt in formats():
        fig.savefig(out.with_suffix("." + fmt) if fmt != out.suffix.lstrip(".") else out, dpi=dpi)
    plt.close(fig)
    return out


def _layout(fig, caption: str) -> None:
    """tight_layout that leaves room for the caption (bottom) and figure legends (right)."""
    width, height = fig.get_size_inches()
    bottom = 0.0
    if caption:
        size = 7
        chars = max(40, int(width * 72 / (size * 0.62)))  # DejaVu Sans averages ~0.6 em a character
        text = "\n".join(textwrap.wrap(caption, chars))
        lines = text.count("\n") + 1
        bottom = min(0.45, (lines * size * 1.35 / 72 + 0.08) / height)
        fig.text(0.01, 0.01, text, fontsize=size, ha="left", va="bottom", color="#333333")
    right = 1.0
    if fig.legends:
        fig.canvas.draw()
        r = fig.canvas.get_renderer()
        widest = max(lg.get_window_extent(r).width for lg in fig.legends)
        right = 1.0 - (widest + 8) / fig.bbox.width
        for lg in fig.legends:
            lg.set_bbox_to_anchor((1.0, 0.5), transform=fig.transFigure)
            lg.set_loc("center right")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # tight_layout's "not compatible" notes on colour bars
        fig.tight_layout(rect=(0, bottom, right, 1))


# -- the layout check ------------------------------------------------------------------------------------------


def _texts(fig, renderer):
    """(description, bbox) of every visible, non-empty text a reader has to read."""
    out, seen = [], set()

    def add(t, what):
        if t is not None and id(t) not in seen and t.get_visible() and t.get_text().strip():
            seen.add(id(t))
            out.append((f"{what} {t.get_text().strip()[:40]!r}", t.get_window_extent(renderer)))

    for name in ("_suptitle", "_supxlabel", "_supylabel"):
        add(getattr(fig, name, None), "figure title")
    for t in fig.texts:
        add(t, "figure text")
    for lg in fig.legends:
        for t in [lg.get_title(), *lg.get_texts()]:
            add(t, "legend")
    for ax in fig.axes:
        if not ax.get_visible():
            continue
        for t in (ax.title, ax._left_title, ax._right_title):
            add(t, "title")
        for axis, name in ((ax.xaxis, "x"), (ax.yaxis, "y")):
            if not axis.get_visible():
                continue
            add(axis.label, f"{name} label")
            lo, hi = sorted(axis.get_view_interval())
            eps = (hi - lo) * 1e-9
            for loc, t in zip(axis.get_majorticklocs(), axis.get_majorticklabels()):
                if lo - eps <= loc <= hi + eps:  # ticks outside the view are not drawn
                    add(t, f"{name} tick")
        for t in ax.texts:
            add(t, "text")
        if ax.get_legend() is not None:
            for t in [ax.get_legend().get_title(), *ax.get_legend().get_texts()]:
                add(t, "legend")
    return out


def _has_data(ax) -> bool:
    if ax.images or ax.collections or ax.patches or ax.tables:
        return True
    return any(len(np.atleast_1d(line.get_xdata())) for line in ax.lines)


def layout_problems(fig, tolerance: float = 1.0) -> list[str]:
    """What makes a figure unreadable, as sentences: texts that overlap (tick labels, titles, labels, legends,
    captions; bounding boxes as matplotlib draws them, shrunk by ``tolerance`` pixels), texts cut off at the
    figure's edge, and visible axes with nothing drawn in them."""
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    problems = [
        f"empty axes {ax.get_title() or ax.get_label() or i!r}"
        for i, ax in enumerate(fig.axes)
        if ax.get_visible() and not _has_data(ax)
    ]
    texts = _texts(fig, renderer)
    W, H = fig.bbox.width, fig.bbox.height
    for what, b in texts:
        if b.x0 < -tolerance or b.y0 < -tolerance or b.x1 > W + tolerance or b.y1 > H + tolerance:
            problems.append(f"{what} is cut off at the figure's edge")
    for (wa, a), (wb, b) in itertools.combinations(texts, 2):
        if (min(a.x1, b.x1) - max(a.x0, b.x0) > tolerance) and (min(a.y1, b.y1) - max(a.y0, b.y0) > tolerance):
            problems.append(f"{wa} overlaps {wb}")
    return problems
