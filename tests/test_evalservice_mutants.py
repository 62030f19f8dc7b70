"""The evaluation service around its key: the switch, the store's round trip, and what :meth:`Evaluation.run`
passes to the scorers (mutation testing found these unchecked: spellings of "off", rows read back, the harness
called with the model's context and its time recorded)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from pathlib import Path

import pytest

from layerprobe.core.config import EvalConfig
from layerprobe.evaluation import evalservice
from layerprobe.evaluation.evalservice import Evaluation
from layerprobe.evaluation.evaluate import EvalSet

DATA = EvalSet([{"kind": "cloze", "prompt": "a", "answer": "b"}], [{"prompt": "c"}], ["d"])


@pytest.mark.parametrize("value", ["0", "false", "no", "off", " OFF ", "False"])
def test_each_spelling_of_off_switches_the_cache_off(value, monkeypatch):
    monkeypatch.setenv("LAYERPROBE_EVAL_CACHE", value)
    assert evalservice.enabled() is False


@pytest.mark.parametrize("value", ["1", "yes", "on", ""])
def test_anything_else_leaves_it_on(value, monkeypatch):
    monkeypatch.setenv("LAYERPROBE_EVAL_CACHE", value)
    assert evalservice.enabled() is True
    monkeypatch.delenv("LAYERPROBE_EVAL_CACHE")
    assert evalservice.enabled() is True


def test_the_store_gives_back_what_was_stored(tmp_path, monkeypatch):
    monkeypatch.setenv("LAYERPROBE_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("LAYERPROBE_EVAL_CACHE", raising=False)
    metrics = {"cloze_acc": 0.25, "style": 1.5}
    rows = [{"kind": "cloze", "output": "拙者でござる"}, {"kind": "qa", "output": 'a "quoted"\nline'}]
    calls = []

    def run():
        calls.append(1)
        return metrics, rows

    assert evalservice.cached("k1", run) == (metrics, rows, False)
    assert evalservice.cached("k1", run) == (metrics, rows, True)
    assert len(calls) == 1
    entry = tmp_path / "cache" / "evals" / "k1"
    assert evalservice.cache_dir() == tmp_path / "cache" / "evals"
    assert sorted(p.name for p in entry.parent.iterdir()) == ["k1"]  # no temporary folder left
    assert sorted(p.name for p in entry.iterdir()) == ["answers.jsonl", "metrics.json"]
    lines = (entry / "answers.jsonl").read_text(encoding="utf-8").splitlines()
    assert [json.loads(line) for line in lines] == rows and "拙者でござる" in lines[0]  # one row a line, readable
    assert json.loads((entry / "metrics.json").read_text()) == metrics
    assert evalservice.cached("k2", lambda: ({}, []))[2] is False  # another key: another entry


def test_switched_off_the_store_is_neither_read_nor_written(tmp_path, monkeypatch):
    monkeypatch.setenv("LAYERPROBE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("LAYERPROBE_EVAL_CACHE", "off")
    assert evalservice.cached("k", lambda: ({"a": 1}, [{"r": 2}])) == ({"a": 1}, [{"r": 2}], False)
    assert not (tmp_path / "cache").exists()


class Scorers:
    def __init__(self, monkeypatch):
        self.calls = []
        monkeypatch.setattr(evalservice, "evaluate_model", self.evaluate_model)
        monkeypatch.setattr(evalservice, "run_tasks", self.run_tasks)

    def evaluate_model(self, model, tok, data, cfg, max_length, progress, timing):
        self.calls.append(("evaluate_model", model, tok, data, cfg, max_length, progress, timing))
        return {"cloze_acc": 0.5}, [{"kind": "cloze"}]

    def run_tasks(self, model, tok, cfg, mc_path, batch_size):
        self.calls.append(("run_tasks", model, tok, cfg, mc_path, batch_size))
        return {"mc_acc": 0.75}


def test_run_scores_the_probes_then_the_harness_tasks_on_the_same_model(monkeypatch):
    scorers = Scorers(monkeypatch)
    cfg = EvalConfig(max_probes=1, lm_eval_tasks=["layerprobe_mc"], batch_size=3)
    evaluation = Evaluation.of(DATA, cfg, 64, "mc.json")
    timing = {}
    metrics, rows = evaluation.run("M", "T", progress=True, timing=timing)
    assert metrics == {"cloze_acc": 0.5, "mc_acc": 0.75} and rows == [{"kind": "cloze"}]
    assert scorers.calls == [
        ("evaluate_model", "M", "T", evaluation.data, cfg, 64, True, timing),
        ("run_tasks", "M", "T", cfg, "mc.json", 3),
    ]
    assert set(timing) == {"lm_eval_seconds"} and timing["lm_eval_seconds"] >= 0
    assert evaluation.run("M", "T")[0] == metrics  # without a timing dict


def test_run_without_harness_tasks_scores_only_the_probes(monkeypatch):
    scorers = Scorers(monkeypatch)
    evaluation = Evaluation.of(DATA, EvalConfig())
    timing = {}
    assert evaluation.run("M", "T", timing=timing) == ({"cloze_acc": 0.5}, [{"kind": "cloze"}])
    assert [c[0] for c in scorers.calls] == ["evaluate_model"] and timing == {}
    assert scorers.calls[0][5:7] == (512, False)  # the default context length and no progress bar


def test_an_empty_mc_path_is_no_mc_file():
    assert Evaluation.of(DATA, EvalConfig(), 64, "").mc_path is None
    assert Evaluation.of(DATA, EvalConfig(), 64, "").key() == Evaluation.of(DATA, EvalConfig(), 64).key()


def sha(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, ensure_ascii=False, default=str).encode()).hexdigest()[:16]


def test_the_keys_are_the_plain_sha256_of_their_named_parts(monkeypatch):
    """A renamed part would silently orphan every stored evaluation (hours of scoring run again)."""
    monkeypatch.setattr(evalservice, "code_version", lambda: {"layerprobe": "v", "scorers": "s"})
    cfg = EvalConfig(max_probes=3)
    evaluation = Evaluation.of(DATA, cfg, 77)
    data = sha(dataclasses.asdict(evaluation.data))
    parts = {
        "eval": dataclasses.asdict(cfg),
        "max_length": 77,
        "data": data,
        "harness": {},
        "code": {"layerprobe": "v", "scorers": "s"},
    }
    assert evaluation.key() == sha(parts)
    assert evalservice.cache_key(["h1", "h2"], "e") == sha({"model": ["h1", "h2"], "evaluation": "e"})


def test_of_folders_scores_the_loaded_model_with_the_callers_progress_and_timing(tmp_path, monkeypatch):
    monkeypatch.setenv("LAYERPROBE_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("LAYERPROBE_EVAL_CACHE", raising=False)
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "model.safetensors").write_bytes(b"\0" * 64)
    seen = []
    evaluation = Evaluation.of(DATA, EvalConfig())
    evaluation.run = lambda model, tok, progress=False, timing=None: (
        seen.append((model, tok, progress, timing))
        or (
            {"a": 1},
            [],
        )
    )
    timing = {}
    assert evaluation.of_folders([str(folder)], lambda: ("M", "T"), True, timing) == ({"a": 1}, [], False)
    assert seen == [("M", "T", True, timing)] and seen[0][3] is timing
    evaluation.of_folders([str(folder)], lambda: ("M", "T"))
    assert len(seen) == 1  # a hit: nothing loaded or scored
    (folder / "model.safetensors").write_bytes(b"\1" * 64)
    evaluation.of_folders([str(folder)], lambda: ("M2", "T2"))
    assert seen[1] == ("M2", "T2", False, None)


def test_an_entry_is_written_beside_its_final_place_under_a_hidden_name(tmp_path, monkeypatch):
    """Renamed into place from the same folder (a rename across file systems fails, and the entry would never be
    stored); a hidden temporary name, so a half-written entry is never read as one."""
    monkeypatch.setenv("LAYERPROBE_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("LAYERPROBE_EVAL_CACHE", raising=False)
    renames = []
    real = os.rename

    def rename(src, dst):
        renames.append((Path(src), Path(dst)))
        real(src, dst)

    monkeypatch.setattr(evalservice.os, "rename", rename)
    evalservice.cached("key1", lambda: ({"a": 1}, [{"r": 1}]))
    [(src, dst)] = renames
    assert dst == evalservice.cache_dir() / "key1" and src.parent == dst.parent and src.name.startswith(".key1-")
    assert not src.exists()


def test_a_store_that_lost_the_race_leaves_no_temporary_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("LAYERPROBE_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("LAYERPROBE_EVAL_CACHE", raising=False)
    entry = evalservice.cache_dir() / "key1"

    def run():  # another process stores the same entry while this one scores
        entry.mkdir(parents=True)
        (entry / "answers.jsonl").write_text('{"r": "theirs"}\n')
        (entry / "metrics.json").write_text('{"a": 0}')
        return {"a": 1}, [{"r": "mine"}]

    assert evalservice.cached("key1", run) == ({"a": 1}, [{"r": "mine"}], False)
    assert sorted(p.name for p in entry.parent.iterdir()) == ["key1"]  # the losing copy is removed
    assert evalservice.cached("key1", run) == ({"a": 0}, [{"r": "theirs"}], True)


def test_the_harness_time_is_recorded_in_seconds_to_the_hundredth(monkeypatch):
    Scorers(monkeypatch)
    clock = iter([100.0, 101.23456])
    monkeypatch.setattr(evalservice.time, "perf_counter", lambda: next(clock))
    timing = {}
    Evaluation.of(DATA, EvalConfig(lm_eval_tasks=["layerprobe_mc"])).run("M", "T", timing=timing)
    assert timing == {"lm_eval_seconds": 1.23} and isinstance(timing["lm_eval_seconds"], float)
