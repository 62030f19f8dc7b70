"""The evaluation cache's key: each thing an evaluation reads (the context length, every part of the evaluation
set, every setting that changes what is scored) must change it, so a changed input is never served an old score.

Each case changes one thing against the same model files; a key that left it out would hit instead of miss.
"""

from __future__ import annotations

import dataclasses

import pytest

from layerprobe.core.config_data import EvalConfig
from layerprobe.evaluation import evalcache
from layerprobe.evaluation.evaluate import EvalSet

DATA = EvalSet(
    probes=[{"kind": "cloze", "prompt": "a", "answer": "b"}, {"kind": "cloze", "prompt": "a2", "answer": "b2"}],
    instructions=[{"prompt": "c"}, {"prompt": "c2"}],
    cpt_docs=["d", "d2"],
    general_docs=["g" * 10, "h" * 10],
    mc_rows=[{"question": "q", "choices": ["x", "y"], "label": 0}, {"question": "q2", "choices": ["x"], "label": 0}],
)
CFG = EvalConfig(loss_docs=0, max_mc=0, general_chars=0)  # everything in DATA is read
MAX_LENGTH = 128


@pytest.fixture
def model_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("LAYERPROBE_CACHE", str(tmp_path / "cache"))
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "model.safetensors").write_bytes(bytes(range(256)) * 8)
    (folder / "config.json").write_text('{"hidden_size": 4}')
    return folder


def _hit(folder, data=DATA, cfg=CFG, max_length=MAX_LENGTH) -> bool:
    def run():
        return {"cloze_acc": 0.5}, [{"kind": "cloze", "output": "b"}]

    return evalcache.cached_evaluation([str(folder)], data, cfg, max_length, run)[2]


def _changed(field: str, value) -> EvalSet:
    return dataclasses.replace(DATA, **{field: value})


DATA_CHANGES = {
    "probes": _changed("probes", [DATA.probes[0], {"kind": "cloze", "prompt": "a2", "answer": "other"}]),
    "instructions": _changed("instructions", [{"prompt": "c"}, {"prompt": "other"}]),
    "cpt_docs": _changed("cpt_docs", ["d", "other"]),
    "general_docs": _changed("general_docs", ["g" * 10, "h" * 9]),
    "mc_rows": _changed("mc_rows", [DATA.mc_rows[0], {**DATA.mc_rows[1], "label": 1}]),
}
CONFIG_CHANGES = {
    "style_pattern": dataclasses.replace(CFG, style_pattern="ゴザル"),
    "max_new_tokens": dataclasses.replace(CFG, max_new_tokens=CFG.max_new_tokens + 1),
    "max_prompt_tokens": dataclasses.replace(CFG, max_prompt_tokens=CFG.max_prompt_tokens + 1),
    "max_probes": dataclasses.replace(CFG, max_probes=1),
    "max_instructions": dataclasses.replace(CFG, max_instructions=1),
    "loss_docs": dataclasses.replace(CFG, loss_docs=1),
    "max_mc": dataclasses.replace(CFG, max_mc=1),
    "general_chars": dataclasses.replace(CFG, general_chars=15),
}


def test_the_same_inputs_hit(model_dir):
    assert _hit(model_dir) is False
    assert _hit(model_dir) is True
    assert _hit(model_dir, data=dataclasses.replace(DATA), cfg=dataclasses.replace(CFG)) is True


def test_the_cases_cover_every_field_of_the_evaluation_set():
    assert set(DATA_CHANGES) == {f.name for f in dataclasses.fields(EvalSet)}


@pytest.mark.parametrize("field", DATA_CHANGES)
def test_each_part_of_the_evaluation_set_is_in_the_key(model_dir, field):
    assert _hit(model_dir) is False
    assert _hit(model_dir, data=DATA_CHANGES[field]) is False, f"a changed {field} was served the old evaluation"
    assert _hit(model_dir, data=DATA_CHANGES[field]) is True


@pytest.mark.parametrize("field", CONFIG_CHANGES)
def test_each_setting_that_changes_the_scores_is_in_the_key(model_dir, field):
    assert _hit(model_dir) is False
    assert _hit(model_dir, cfg=CONFIG_CHANGES[field]) is False, f"a changed eval.{field} was served the old evaluation"


def test_the_context_length_is_in_the_key(model_dir):
    assert _hit(model_dir) is False
    assert _hit(model_dir, max_length=MAX_LENGTH * 2) is False
    assert _hit(model_dir, max_length=MAX_LENGTH * 2) is True
