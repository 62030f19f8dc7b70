"""The evaluation cache: a hit for the same model files, evaluation set and settings; a miss when any changes."""

from __future__ import annotations

import pytest

from layerprobe import evalcache
from layerprobe.config import EvalConfig
from layerprobe.evaluate import EvalSet

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


def _evaluate(folders, data=DATA, cfg=None):
    calls = []

    def run():
        calls.append(1)
        return {"cloze_acc": 0.5, "n": len(calls)}, [{"kind": "cloze", "output": "b"}]

    metrics, rows, hit = evalcache.cached_evaluation(folders, data, cfg or EvalConfig(), 128, run)
    return metrics, rows, hit, len(calls)


def test_same_files_and_settings_hit_without_evaluating(model_dir):
    first = _evaluate([str(model_dir)])
    assert first[2:] == (False, 1)
    again = _evaluate([str(model_dir)])
    assert again[2:] == (True, 0) and again[:2] == first[:2]
    (model_dir / "DONE").write_text('{"seconds": 2}')  # the pipeline's marker is not part of the model
    assert _evaluate([str(model_dir)])[2] is True


def test_one_changed_byte_of_a_weight_file_misses(model_dir):
    _evaluate([str(model_dir)])
    weights = model_dir / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[1000] ^= 1
    weights.write_bytes(bytes(data))
    assert _evaluate([str(model_dir)])[2:] == (False, 1)


@pytest.mark.parametrize("change", [
    {"cfg": EvalConfig(max_new_tokens=25)},
    {"cfg": EvalConfig(style_pattern="ゴザル")},
    {"data": EvalSet([{"kind": "cloze", "prompt": "a", "answer": "x"}], [{"prompt": "c"}], ["d"])},
])
def test_one_changed_setting_or_probe_misses(model_dir, change):
    _evaluate([str(model_dir)])
    assert _evaluate([str(model_dir)], **change)[2:] == (False, 1)


def test_a_new_evaluation_code_version_misses(model_dir, monkeypatch):
    """An evaluation cached by older code lacks the metrics added since: it must not be served."""
    _evaluate([str(model_dir)])
    monkeypatch.setattr(evalcache, "EVAL_VERSION", evalcache.EVAL_VERSION + 1)
    assert _evaluate([str(model_dir)])[2:] == (False, 1)
    assert _evaluate([str(model_dir)])[2:] == (True, 0)


def test_an_adapter_is_part_of_the_key(model_dir, tmp_path):
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_model.safetensors").write_bytes(b"\1" * 100)
    _evaluate([str(model_dir)])
    assert _evaluate([str(model_dir), str(adapter)])[2] is False
    assert _evaluate([str(model_dir), str(adapter)])[2] is True


def test_switched_off_always_evaluates(model_dir, monkeypatch):
    monkeypatch.setenv("LAYERPROBE_EVAL_CACHE", "0")
    assert _evaluate([str(model_dir)])[2:] == (False, 1)
    assert _evaluate([str(model_dir)])[2:] == (False, 1)
