"""The run folder (layerprobe.core.rundir) against plain references: each test fails for a mutant that survived
tests/test_rundir.py and tests/test_resume.py (benchmarks/results/mutation_survivors.md)."""

from __future__ import annotations

import fcntl
import hashlib
import json
import math
import os
import shutil
from pathlib import Path

import pytest

from layerprobe.core import rundir


def test_every_path_of_the_layout_lies_where_the_module_docstring_says(tmp_path):
    run = tmp_path / "run"
    given = str(run)  # callers pass strings as often as paths
    folders = [run / "cpt", run / "merged", run / "sft", run / "eval"]
    assert [rundir.stage_dir(given, s) for s in rundir.STAGES] == folders
    assert rundir.checkpoint_dir(str(run / "sft")) == run / "sft" / "trainer"
    assert rundir.kept_dir(given) == run / "sft" / "kept"
    assert rundir.kept_state(given, 42) == run / "sft" / "kept" / "step-000042.safetensors"
    assert rundir.best_dir(given) == run / "sft" / "kept" / "best"
    assert rundir.records_dir(given) == run / "records"
    assert rundir.figures_dir(given) == run / "figures"
    assert rundir.diff_dir(given) == run / "diff"
    assert rundir.attribute_dir(given) == run / "attribute"
    assert rundir.attribute_records(str(tmp_path / "out")) == tmp_path / "out" / "attribute.parquet"
    assert rundir.config_path(given) == run / "config.yaml"
    assert rundir.summary_path(given) == run / "summary.json"
    assert rundir.answers_path(given, "sft_best") == run / "eval" / "sft_best-answers.jsonl"
    assert not rundir.is_run(given)
    rundir.write_text(run / "config.yaml", "seed: 1\n")
    assert rundir.is_run(given)


def test_kept_steps_reads_the_step_number_of_each_kept_state(tmp_path):
    assert rundir.kept_steps(tmp_path) == []  # no kept/ folder
    for step in (123456, 20, 987654):  # leading and trailing digits that are not zeros
        path = rundir.kept_state(tmp_path, step)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"")
    for name in ("step-best.safetensors", "step-x12.safetensors", "step-12x.safetensors"):  # not step numbers
        (rundir.kept_dir(tmp_path) / name).write_bytes(b"")
    (rundir.kept_dir(tmp_path) / "step-000007.json").write_bytes(b"")  # not a state
    assert rundir.kept_steps(tmp_path) == [20, 123456, 987654]


def test_phase_model_names_the_model_and_adapter_folder_of_each_phase(tmp_path):
    run = tmp_path / "run"
    merged, sft, best = str(run / "merged"), run / "sft", run / "sft" / "kept" / "best"
    assert rundir.phase_model(run, "base", "hf/base") == ("hf/base", None)
    assert rundir.phase_model(run, "cpt", "hf/base") == (merged, None)
    # full fine-tuning: the stage folder holds the whole model
    assert rundir.phase_model(run, "sft", "hf/base") == (str(sft), None)
    assert rundir.phase_model(run, "sft_best", "hf/base") == (str(best), None)
    # LoRA: the adapter on top of the merged CPT model
    for folder in (sft, best):
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "adapter_config.json").write_text("{}")
    assert rundir.phase_model(run, "sft", "hf/base") == (merged, str(sft))
    assert rundir.phase_model(run, "sft_best", "hf/base") == (merged, str(best))
    with pytest.raises(ValueError) as e:
        rundir.phase_model(run, "final", "hf/base")
    assert str(e.value) == "unknown model 'final'; expected one of base, cpt, sft, sft_best"


def test_write_text_makes_the_parents_and_leaves_only_the_file(tmp_path):
    path = tmp_path / "a" / "b" / "notes.txt"
    assert rundir.write_text(str(path), "première ✓\n") == path
    assert rundir.write_text(path.with_name("more.txt"), "x") == path.with_name("more.txt")  # the folder exists now
    assert path.read_bytes() == "première ✓\n".encode()
    assert sorted(p.name for p in path.parent.iterdir()) == ["more.txt", "notes.txt"]  # no temporary file left
    rundir.write_text(path, "again")  # replaces
    assert path.read_text(encoding="utf-8") == "again"


def test_write_json_is_strict_indented_utf8_json_with_nan_as_null(tmp_path):
    obj = {"loss": math.nan, "acc": 0.5, "name": "café", "out": tmp_path, "steps": [1, math.nan, (2.0, math.nan)]}
    plain = {"loss": None, "acc": 0.5, "name": "café", "out": str(tmp_path), "steps": [1, None, [2.0, None]]}
    path = rundir.write_json(tmp_path / "info.json", obj)
    assert path.read_text(encoding="utf-8") == json.dumps(plain, indent=2, ensure_ascii=False)


def test_stage_markers_need_no_started_marker_or_checkpoints_to_mark_done(tmp_path):
    run = tmp_path / "run"
    assert rundir.read_done(run, "merge") is None and rundir.started_fingerprint(run, "merge") is None
    rundir.stage_dir(run, "merge").mkdir(parents=True)
    (rundir.stage_dir(run, "merge") / "model.safetensors").write_bytes(b"w")
    rundir.mark_done(run, "merge", {"fingerprint": "m1"})  # never marked started, no trainer/ folder
    assert rundir.read_done(run, "merge") == {"fingerprint": "m1"}
    assert sorted(p.name for p in rundir.stage_dir(run, "merge").iterdir()) == ["DONE", "model.safetensors"]
    assert rundir.done_stages(run) == {"merge"}
    folder = rundir.mark_started(run, "sft", "fp-a")
    assert rundir.mark_started(run, "sft", "fp-b\n") == folder == run / "sft"  # a second start, same folder
    assert rundir.started_fingerprint(run, "sft") == "fp-b"
    assert rundir.read_done(run, "sft") is None and rundir.done_stages(run) == {"merge"}


def test_clear_stage_removes_the_stage_and_only_its_own_records(tmp_path):
    run = tmp_path / "run"
    rec = rundir.records_dir(run)
    rec.mkdir(parents=True)
    names = {
        "cpt": ["cpt-r0-000000.parquet", "cpt-r1-000003.parquet", "meta-cpt.json", ".reference-cpt-0.safetensors"],
        "sft": ["sft-r0-000000.parquet", "meta-sft.json", ".reference-sft-0.safetensors"],
    }
    for name in names["cpt"] + names["sft"]:
        (rec / name).write_bytes(b"")
    for stage in ("cpt", "sft", "eval"):
        rundir.mark_started(run, stage, "fp")
    rundir.clear_stage(run, "cpt")
    assert not rundir.stage_dir(run, "cpt").exists() and rundir.stage_dir(run, "sft").is_dir()
    assert sorted(p.name for p in rec.iterdir()) == sorted(names["sft"])
    rundir.clear_stage(run, "eval")
    assert not rundir.stage_dir(run, "eval").exists() and sorted(p.name for p in rec.iterdir()) == sorted(names["sft"])
    rundir.clear_stage(run, "merge")  # never made: nothing to remove, no error
    rundir.clear_stage(run, "sft")
    assert sorted(p.name for p in run.iterdir()) == ["records"] and not any(rec.iterdir())
    rundir.clear_stage(tmp_path / "empty", "cpt")  # no run folder, no records folder


def test_last_checkpoint_leaves_what_is_not_a_numbered_checkpoint_folder_alone(tmp_path):
    root = rundir.checkpoint_dir(tmp_path)
    for name in ("checkpoint-3", "checkpoint-latest"):
        (root / name).mkdir(parents=True)
        (root / name / "trainer_state.json").write_text("{}")
    (root / "checkpoint-9").write_text("{}")  # a file, not a checkpoint folder
    assert rundir.last_checkpoint(str(tmp_path)) == root / "checkpoint-3"
    assert sorted(p.name for p in root.iterdir()) == ["checkpoint-3", "checkpoint-9", "checkpoint-latest"]
    shutil.rmtree(root / "checkpoint-3")
    (root / "checkpoint-5").mkdir()  # killed before its trainer_state.json was written
    assert rundir.last_checkpoint(tmp_path) is None and not (root / "checkpoint-5").exists()


def test_a_held_folder_whose_lock_names_no_pid_is_reported_as_held_by_an_unknown_process(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    with open(run / rundir.LOCK, "a+") as holder:  # held, with nothing written into it yet
        fcntl.flock(holder, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(rundir.RunFolderBusy) as e:
            rundir.check_free(str(run))
    assert str(e.value) == (
        f"{run} is in use by process unknown (it holds {run / '.lock'}); "
        "wait for it to finish, stop it, or choose another --out"
    )
    assert (run / rundir.LOCK).read_text() == ""  # check_free writes nothing
    rundir.check_free(run)  # free again


def _done_run(folder: Path, **fingerprints: str) -> Path:
    rundir.write_text(rundir.config_path(folder), "seed: 1\n")
    for stage, fp in fingerprints.items():
        rundir.mark_done(folder, stage, {"fingerprint": fp})
    return folder


def test_find_done_skips_the_excluded_run_and_runs_without_the_stage(tmp_path):
    runs = tmp_path / "sweep"
    a = _done_run(runs / "a", cpt="f", merge="m")
    b = _done_run(runs / "b", cpt="f", merge="m")
    _done_run(runs / "c")  # nothing done
    assert rundir.find_done([str(runs)], {"cpt": "f", "merge": "m"}) == a
    assert rundir.find_done([runs], {"cpt": "f", "merge": "m"}, exclude=str(a)) == b
    assert rundir.find_done([runs], {"cpt": "f", "merge": "m"}, exclude=b) == a
    assert rundir.find_done([runs], {"cpt": "f", "merge": "other"}) is None
    assert rundir.find_done([runs / "c", runs / "b"], {"cpt": "f"}) == b  # run folders, not only folders of them
    assert rundir.find_done([tmp_path / "nothing", runs], {"cpt": "f"}, exclude=a) == b
    assert rundir.find_done([a], {"cpt": "f"}, exclude=a) is None


def _inode(path: Path) -> int:
    return path.stat().st_ino


def test_adopt_stage_links_the_stage_and_its_records_and_drops_markers_and_checkpoints(tmp_path):
    donor, run = _done_run(tmp_path / "donor"), _done_run(tmp_path / "run")
    src = rundir.stage_dir(donor, "sft")
    (src / "sub").mkdir(parents=True)
    (src / "adapter.safetensors").write_bytes(b"weights")
    (src / "sub" / "tokenizer.json").write_text("{}")
    (rundir.checkpoint_dir(src) / "checkpoint-2").mkdir(parents=True)
    (src / rundir.STARTED).write_text("fp")
    rundir.write_json(src / rundir.DONE, {"fingerprint": "s", "loss": 0.5})
    rec = rundir.records_dir(donor)
    rec.mkdir()
    for name in ("sft-r0-000000.parquet", "sft-r0-000001.parquet", "meta-sft.json", "cpt-r0-000000.parquet"):
        (rec / name).write_text(name)
    old = rundir.stage_dir(run, "sft")
    old.mkdir()
    (old / "stale.bin").write_bytes(b"old")
    rundir.records_dir(run).mkdir()
    (rundir.records_dir(run) / "sft-r0-000000.parquet").write_text("stale")

    info = rundir.adopt_stage(str(donor), str(run), "sft")
    dst = rundir.stage_dir(run, "sft")
    assert info == {"fingerprint": "s", "loss": 0.5, "out": str(dst), "reused_from": str(src)}
    assert rundir.read_done(run, "sft") == info
    assert sorted(str(p.relative_to(dst)) for p in dst.rglob("*")) == [
        "DONE",
        "adapter.safetensors",
        "sub",
        "sub/tokenizer.json",
    ]
    assert _inode(dst / "adapter.safetensors") == _inode(src / "adapter.safetensors")  # a hard link
    assert sorted(p.name for p in rundir.records_dir(run).iterdir()) == [
        "meta-sft.json",
        "sft-r0-000000.parquet",
        "sft-r0-000001.parquet",
    ]
    for name in ("meta-sft.json", "sft-r0-000000.parquet", "sft-r0-000001.parquet"):
        assert _inode(rundir.records_dir(run) / name) == _inode(rec / name)


def test_adopt_stage_copies_where_it_cannot_link_and_moves_no_records_for_other_stages(tmp_path, monkeypatch):
    donor, run = _done_run(tmp_path / "donor", eval="e"), tmp_path / "run"
    (rundir.stage_dir(donor, "eval") / "metrics.csv").write_text("model,metric,value\n")
    rundir.records_dir(donor).mkdir()
    (rundir.records_dir(donor) / "meta-eval.json").write_text("{}")

    def no_links(src, dst):
        raise OSError("cross-device link")

    monkeypatch.setattr(os, "link", no_links)
    info = rundir.adopt_stage(donor, run, "eval")
    dst = rundir.stage_dir(run, "eval")
    assert info == {"fingerprint": "e", "out": str(dst), "reused_from": str(rundir.stage_dir(donor, "eval"))}
    assert (dst / "metrics.csv").read_text() == "model,metric,value\n"
    assert _inode(dst / "metrics.csv") != _inode(rundir.stage_dir(donor, "eval") / "metrics.csv")
    assert not rundir.records_dir(run).exists()


def _blake(entries: list[tuple[str, bytes]]) -> str:
    """The hash content_hash documents, by hand: each file's relative name, a NUL, its bytes, in sorted order."""
    h = hashlib.blake2b(digest_size=16)
    for name, data in entries:
        h.update(name.encode() + b"\0" + data)
    return h.hexdigest()


def test_content_hash_is_the_documented_hash_of_names_and_bytes_without_markers_checkpoints_and_kept(tmp_path):
    model = tmp_path / "sft"
    (model / "sub").mkdir(parents=True)
    (model / "a.bin").write_bytes(b"\x01" * 10)
    (model / "sub" / "b.json").write_text("{}")
    assert rundir.content_hash(str(model)) == _blake([("a.bin", b"\x01" * 10), ("sub/b.json", b"{}")])
    (model / ".hidden").write_text("x")
    (model / rundir.STARTED).write_text("fp")
    (rundir.checkpoint_dir(model) / "checkpoint-1").mkdir(parents=True)
    (rundir.checkpoint_dir(model) / "checkpoint-1" / "w.bin").write_bytes(b"w")
    (model / rundir.KEPT).mkdir()
    (model / rundir.KEPT / "step-000001.safetensors").write_bytes(b"k")
    assert rundir.content_hash(model) == _blake([("a.bin", b"\x01" * 10), ("sub/b.json", b"{}")])
    one = model / "a.bin"
    assert rundir.content_hash(one) == _blake([("a.bin", b"\x01" * 10)])  # one file: its own name


def test_content_hash_sees_a_renamed_file_of_the_same_size_and_time(tmp_path):
    model = tmp_path / "m"
    model.mkdir()
    (model / "x.bin").write_bytes(b"abc")
    assert rundir.content_hash(model) == _blake([("x.bin", b"abc")])
    (model / "x.bin").rename(model / "y.bin")  # a rename keeps size and modification time
    assert rundir.content_hash(model) == _blake([("y.bin", b"abc")])
