"""The evaluation service's cache: a hit for the same model bytes, evaluation and code; a miss when any field of the
key changes (each in turn)."""

from __future__ import annotations

import os

import pytest

from layerprobe.core.config_data import EvalConfig
from layerprobe.evaluation import evalservice
from layerprobe.evaluation.evalservice import Evaluation
from layerprobe.evaluation.evaluate import EvalSet

DATA = EvalSet([{"kind": "cloze", "prompt": "a", "answer": "b"}], [{"prompt": "c"}], ["d"])


@pytest.fixture
def model_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("LAYERPROBE_CACHE", str(tmp_path / "cache"))
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "model.safetensors").write_bytes(bytes(range(256)) * 64)
    (folder / "config.json").write_text('{"hidden_size": 4}')
    (folder / "DONE").write_text('{"seconds": 1}')
    return folder


def _evaluate(folders, data=DATA, cfg=None, max_length=128, mc_path=None):
    calls = []

    def load():
        calls.append(1)
        return "model", "tok"

    def run(model, tok, progress=False, timing=None):
        return {"cloze_acc": 0.5, "n": len(calls)}, [{"kind": "cloze", "output": "b"}]

    evaluation = Evaluation.of(data, cfg or EvalConfig(), max_length, mc_path)
    evaluation.run = run  # the scoring itself is tested elsewhere: here only whether it runs
    metrics, rows, hit = evaluation.of_folders([str(f) for f in folders], load)
    return metrics, rows, hit, len(calls)


def test_same_bytes_and_settings_hit_without_loading_the_model(model_dir):
    first = _evaluate([model_dir])
    assert first[2:] == (False, 1)
    again = _evaluate([model_dir])
    assert again[2:] == (True, 0) and again[:2] == first[:2]
    (model_dir / "DONE").write_text('{"seconds": 2}')  # the pipeline's marker is not part of the model
    os.utime(model_dir / "model.safetensors", (1, 1))  # nor are file times: the key reads bytes
    assert _evaluate([model_dir])[2] is True


def _flip_a_weight_byte(model_dir, tmp_path):
    data = bytearray((model_dir / "model.safetensors").read_bytes())
    data[1000] ^= 1
    (model_dir / "model.safetensors").write_bytes(bytes(data))


def _adapter(model_dir, tmp_path):
    (tmp_path / "adapter").mkdir()
    (tmp_path / "adapter" / "adapter_model.safetensors").write_bytes(b"\1" * 100)
    return {"folders": [model_dir, tmp_path / "adapter"]}


def _mc_file(tmp_path, text):
    (tmp_path / "mc.json").write_text(text)
    return str(tmp_path / "mc.json")


def _new_code(monkeypatch, field, value):
    version = dict(evalservice.code_version())
    version[field] = value
    monkeypatch.setattr(evalservice, "code_version", lambda: version)


HARNESS = EvalConfig(lm_eval_tasks=["layerprobe_mc"])
# each field of the key in turn: (name, what to change before the second evaluation -> _evaluate's arguments)
KEY_FIELDS = [
    ("model: one weight byte", lambda m, t, mp: _flip_a_weight_byte(m, t)),
    ("model: an adapter on it", lambda m, t, mp: _adapter(m, t)),
    ("eval config", lambda m, t, mp: {"cfg": EvalConfig(max_new_tokens=25)}),
    ("eval config: harness tasks", lambda m, t, mp: {"cfg": EvalConfig(lm_eval_tasks=["x"], lm_eval_limit=5)}),
    ("eval config: a limit", lambda m, t, mp: {"cfg": EvalConfig(max_probes=1)}),
    ("context length", lambda m, t, mp: {"max_length": 256}),
    (
        "data: one probe",
        lambda m, t, mp: {"data": EvalSet([{"kind": "cloze", "prompt": "a", "answer": "x"}], [{"prompt": "c"}], ["d"])},
    ),
    ("code: package version", lambda m, t, mp: _new_code(mp, "layerprobe", "9.9.9")),
    ("code: a scoring module's source", lambda m, t, mp: _new_code(mp, "scorers", "0" * 16)),
]


@pytest.mark.parametrize("name,change", KEY_FIELDS, ids=[n for n, _ in KEY_FIELDS])
def test_each_field_of_the_key_changed_alone_misses(model_dir, tmp_path, monkeypatch, name, change):
    _evaluate([model_dir])
    args = change(model_dir, tmp_path, monkeypatch) or {}
    folders = args.pop("folders", [model_dir])
    assert _evaluate(folders, **args)[2:] == (False, 1), name
    assert _evaluate(folders, **args)[2:] == (True, 0), name


def test_the_harness_data_is_part_of_the_key(model_dir, tmp_path):
    """data.mc's bytes for layerprobe_mc, the include folder's task files for a local task."""
    mc = _mc_file(tmp_path, '{"question": "q", "choice0": "a", "choice1": "b", "label": 0}\n')
    _evaluate([model_dir], cfg=HARNESS, mc_path=mc)
    assert _evaluate([model_dir], cfg=HARNESS, mc_path=mc)[2] is True
    _mc_file(tmp_path, '{"question": "q", "choice0": "a", "choice1": "b", "label": 1}\n')
    assert _evaluate([model_dir], cfg=HARNESS, mc_path=mc)[2] is False
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    (tasks / "t.yaml").write_text("task: t\n")
    local = EvalConfig(lm_eval_tasks=["t"], lm_eval_include=str(tasks))
    assert _evaluate([model_dir], cfg=local)[2] is False
    assert _evaluate([model_dir], cfg=local)[2] is True
    (tasks / "t.yaml").write_text("task: t\nnum_fewshot: 1\n")
    assert _evaluate([model_dir], cfg=local)[2] is False


def test_the_code_version_digests_the_scoring_sources():
    version = evalservice.code_version()
    from layerprobe import __version__

    assert version["layerprobe"] == __version__ and len(version["scorers"]) == 16
    assert {"evaluate.py", "generation.py", "forgetting.py", "harness.py"} <= set(evalservice.SCORING_SOURCES)


def test_the_probe_limit_is_applied_once(model_dir):
    probes = [{"kind": "cloze", "prompt": str(i), "answer": "b"} for i in range(5)]
    evaluation = Evaluation.of(EvalSet(probes, [], []), EvalConfig(max_probes=2))
    assert [p["prompt"] for p in evaluation.data.probes] == ["0", "1"]
    assert evaluation.data.limited(evaluation.cfg) is evaluation.data  # evaluate_model's own call: no second trim


def test_switched_off_always_loads(model_dir, monkeypatch):
    monkeypatch.setenv("LAYERPROBE_EVAL_CACHE", "0")
    assert _evaluate([model_dir])[2:] == (False, 1)
    assert _evaluate([model_dir])[2:] == (False, 1)


def test_the_old_evalcache_names_use_the_same_key(model_dir):
    from layerprobe.evaluation import evalcache

    _evaluate([model_dir])
    metrics, _, hit = evalcache.cached_evaluation([str(model_dir)], DATA, EvalConfig(), 128, lambda: ({}, []))
    assert hit and metrics["cloze_acc"] == 0.5
