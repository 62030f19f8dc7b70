"""Choose the checkpoint: with probes during SFT, the trade-off between style gained and facts kept is a curve.

:func:`best_step` names, from one run's probe rows, the **earliest probe step whose style log-odds has reached
``share`` (default 90 %) of its final gain** over step 0 (the rule: most of the style, as early as possible, since
the facts fall as SFT goes on), and reports what stopping there would buy: the knowledge probes' log-probability
change at that step and at the end (``kept`` = their difference: positive when stopping early keeps more) and the
style given up (``style_lost``: final minus chosen style log-odds)::

    best_step(load_records("runs/a"))   # {'step': 20, 'style_share': 0.93, 'kept.cloze_heldout': 0.41, ...}
"""

from __future__ import annotations

import pandas as pd

SHARE = 0.9
STYLE = ("style_logodds", "instruction")
KNOWLEDGE = ("cloze", "cloze_heldout", "qa")


def best_step(records: pd.DataFrame, phase: str = "sft", share: float = SHARE) -> dict:
    """The rule above on one run's records (probe means, ``param`` "")."""
    if not 0 < share <= 1:
        raise ValueError(f"share must be in (0, 1], got {share}")
    d = records[(records["phase"] == phase) & (records["block"] == "probe") & (records["param"] == "")]
    style = d[(d["quantity"] == STYLE[0]) & (d["module"] == STYLE[1])].set_index("step")["value"].sort_index()
    if len(style) < 2:
        raise ValueError(
            f"expected style_logodds probe rows at 2 or more steps of {phase!r} (train with "
            f"--{phase}.probe_every N and held-out instructions with a plain twin), found {len(style)}"
        )
    gain = style - style.iloc[0]
    final = gain.iloc[-1]
    reached = gain[gain >= share * final] if final > 0 else gain.iloc[-1:]
    step = int(reached.index[0])
    out = {
        "step": step,
        "last_step": int(style.index[-1]),
        "style_share": float(gain[step] / final) if final else 1.0,
        "style_lost": float(style.iloc[-1] - style[step]),
    }
    logp = d[d["quantity"] == "probe_logprob"].pivot_table(index="step", columns="module", values="value")
    for kind in [k for k in KNOWLEDGE if k in logp]:
        change = logp[kind] - logp[kind].iloc[0]
        out[f"at_step.{kind}"] = float(change[step])
        out[f"final.{kind}"] = float(change.iloc[-1])
        out[f"kept.{kind}"] = float(change[step] - change.iloc[-1])
    return out
