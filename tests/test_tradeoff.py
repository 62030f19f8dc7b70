"""layerprobe.evaluation.tradeoff: the earliest probe step with 90 % of the style gain, and what stopping there
keeps."""

from __future__ import annotations

import pandas as pd
import pytest

from layerprobe.evaluation.tradeoff import best_step
from layerprobe.record.records import COLUMNS


def _records(style, cloze):
    rows = []
    for step, (s, c) in zip((0, 10, 20, 30, 40), zip(style, cloze)):
        rows.append(("r", "sft", step, -1, "probe", "instruction", "", "style_logodds", s))
        rows.append(("r", "sft", step, -1, "probe", "instruction", "i1", "style_logodds", 99.0))  # not a mean
        rows.append(("r", "sft", step, -1, "probe", "cloze_heldout", "", "probe_logprob", c))
    return pd.DataFrame(rows, columns=list(COLUMNS))


def test_best_step_by_hand():
    got = best_step(_records(style=[-2, 3, 6.6, 7.5, 8], cloze=[-1, -1.2, -1.5, -2.0, -2.6]))
    # gains 0, 5, 8.6, 9.5, 10: the first >= 9 is step 30
    assert got["step"] == 30 and got["style_share"] == pytest.approx(0.95)
    assert got["style_lost"] == pytest.approx(0.5)
    assert got["at_step.cloze_heldout"] == pytest.approx(-1.0)
    assert got["final.cloze_heldout"] == pytest.approx(-1.6)
    assert got["kept.cloze_heldout"] == pytest.approx(0.6)
    assert best_step(_records([-2, 3, 6.6, 7.5, 8], [-1] * 5), share=0.5)["step"] == 10


def test_best_step_errors_and_no_style_gain():
    flat = best_step(_records(style=[1, 0, 0, 0, 0], cloze=[0, -1, -2, -3, -4]))
    assert flat["step"] == 40  # no style gained: nothing to stop early for
    with pytest.raises(ValueError, match="share must be in"):
        best_step(_records([0] * 5, [0] * 5), share=0)
    with pytest.raises(ValueError, match="expected style_logodds probe rows"):
        best_step(_records([0] * 5, [0] * 5).query("quantity != 'style_logodds'"))
