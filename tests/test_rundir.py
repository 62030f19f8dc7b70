"""The run folder's owner (layout, markers, metrics table, lock, checkpoints, hashes) and stage fingerprints."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest

from layerprobe.core import run_results, rundir
from layerprobe.core.config import resolve
from layerprobe.record.records import RecordWriter, drop_rows_after, load_records
from layerprobe.train.fingerprint import chain, changed_inputs, stage_inputs

ROOT = Path(__file__).resolve().parents[1]
DATA = SimpleNamespace(
    cpt_docs=["doc one", "doc two"],
    sft_rows=[{"prompt": "p", "completion": "c"}],
    eval_set={"probes": [{"kind": "cloze", "prompt": "a", "answer": "b"}]},
)


def _fps(over: dict | None = None, data=DATA, base="base-hash") -> dict[str, str]:
    return chain(stage_inputs(resolve(over or {}), data, base))


@pytest.mark.parametrize(
    "over, rerun",
    [
        ({"eval": {"max_probes": 10}}, ["eval"]),
        ({"sft": {"learning_rate": 1e-3}}, ["sft", "eval"]),
        ({"sft": {"select": "mlp"}}, ["sft", "eval"]),
        ({"cpt": {"lora_alpha": 16}}, ["cpt", "merge", "sft", "eval"]),
        ({"seed": 1}, ["cpt", "merge", "sft", "eval"]),
        ({"sft": {"seed": 7}}, ["sft", "eval"]),  # another SFT seed on the same CPT: the seed-to-seed null
        ({"record": True}, ["cpt", "merge", "sft", "eval"]),  # records are a training stage's output
        ({"checkpoint": {"minutes": 1}}, []),  # how often to checkpoint changes no result
        ({"data": {"probes": "p.jsonl"}}, []),  # data settings count through the data's content, not their names
    ],
)
def test_a_change_reruns_exactly_the_stages_downstream_of_it(over, rerun):
    a, b = _fps(), _fps(over)
    assert [s for s in rundir.STAGES if a[s] != b[s]] == rerun


def test_data_and_base_model_count_by_content():
    a = _fps()
    sft = SimpleNamespace(**{**vars(DATA), "sft_rows": [{"prompt": "p", "completion": "other"}]})
    assert [s for s in rundir.STAGES if a[s] != _fps(data=sft)[s]] == ["sft", "eval"]
    cpt = SimpleNamespace(**{**vars(DATA), "cpt_docs": ["doc one"]})
    assert [s for s in rundir.STAGES if a[s] != _fps(data=cpt)[s]] == ["cpt", "merge", "sft", "eval"]
    ev = SimpleNamespace(**{**vars(DATA), "eval_set": {"probes": []}})
    assert [s for s in rundir.STAGES if a[s] != _fps(data=ev)[s]] == ["eval"]
    assert [s for s in rundir.STAGES if a[s] != _fps(base="other")[s]] == ["cpt", "merge", "sft", "eval"]
    # replay mixes CPT documents into SFT: then their content is an SFT input too
    replay = resolve({"sft": {"replay": 0.2}})
    assert "replay_docs" not in stage_inputs(resolve({}), DATA, "b")["sft"]
    assert stage_inputs(replay, DATA, "b")["sft"]["replay_docs"] != stage_inputs(replay, cpt, "b")["sft"]["replay_docs"]


def test_changed_inputs_name_the_config_entries_and_content():
    old = stage_inputs(resolve({}), DATA, "b")["sft"]
    new = stage_inputs(resolve({"sft": {"r": 8}}), SimpleNamespace(**{**vars(DATA), "sft_rows": []}), "b")["sft"]
    assert changed_inputs(old, new) == ["sft.r: 32 -> 8", "sft_rows: content changed"]


def test_layout_markers_and_the_metrics_table(tmp_path):
    run = tmp_path / "run"
    assert rundir.stage_dir(run, "merge") == run / "merged" and rundir.checkpoint_dir(run / "cpt").name == "trainer"
    with pytest.raises(ValueError, match="unknown stage 'train'; expected one of cpt, merge, sft, eval"):
        rundir.stage_dir(run, "train")
    folder = rundir.mark_started(run, "cpt", "fp1")
    (rundir.checkpoint_dir(folder) / "checkpoint-3").mkdir(parents=True)
    assert rundir.started_fingerprint(run, "cpt") == "fp1" and rundir.read_done(run, "cpt") is None
    rundir.mark_done(run, "cpt", {"out": str(folder), "loss": math.nan})
    assert rundir.read_done(run, "cpt") == {"out": str(folder), "loss": None}  # strict JSON
    assert not (folder / rundir.STARTED).exists() and not rundir.checkpoint_dir(folder).exists()
    assert rundir.done_stages(run) == {"cpt"}

    metrics = {"cpt": {"cloze_acc": 0.25, "general_loss": math.nan}, "sft": {"cloze_acc": 1 / 3}}
    run_results.write_metrics(run, metrics)
    back = run_results.read_metrics(run)
    assert back["sft"]["cloze_acc"] == 1 / 3 and back["cpt"]["cloze_acc"] == 0.25  # exact round trip
    assert math.isnan(back["cpt"]["general_loss"])
    table = pd.read_csv(rundir.stage_dir(run, "eval") / rundir.METRICS)
    assert list(table.columns) == ["model", "metric", "value"] and len(table) == 3
    assert run_results.read_metrics(tmp_path / "none") == {}


def test_the_last_complete_checkpoint_is_chosen_and_half_written_ones_removed(tmp_path):
    root = rundir.checkpoint_dir(tmp_path)
    for step, complete in ((4, True), (8, True), (12, False)):
        d = root / f"checkpoint-{step}"
        d.mkdir(parents=True)
        (d / "adapter_model.safetensors").write_bytes(b"x")
        if complete:
            (d / "trainer_state.json").write_text(json.dumps({"global_step": step}))
    (root / "checkpoint-16").mkdir()
    (root / "checkpoint-16" / "trainer_state.json").write_text('{"global_st')  # killed while writing it
    assert rundir.last_checkpoint(tmp_path) == root / "checkpoint-8"
    assert sorted(p.name for p in root.iterdir()) == ["checkpoint-4", "checkpoint-8"]
    assert rundir.last_checkpoint(tmp_path / "nothing") is None


def test_content_hash_follows_bytes_not_place_or_time(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    for d in (a, b):
        (d / "sub").mkdir(parents=True)
        (d / "model.safetensors").write_bytes(b"\x00" * 1000)
        (d / "sub" / "tokenizer.json").write_text("{}")
    (b / "DONE").write_text("{}")  # markers are not the model
    assert rundir.content_hash(a) == rundir.content_hash(b)
    os.utime(b / "model.safetensors", (1, 1))
    assert rundir.content_hash(a) == rundir.content_hash(b)
    (b / "model.safetensors").write_bytes(b"\x00" * 999 + b"\x01")
    assert rundir.content_hash(a) != rundir.content_hash(b)


def test_a_second_process_gets_one_line_naming_the_holder(tmp_path):
    code = (
        "import sys; from layerprobe.core import rundir\n"
        "try:\n    with rundir.locked(sys.argv[1]): print('got it')\n"
        "except OSError as e: print(e); sys.exit(3)\n"
    )
    with rundir.locked(tmp_path / "run"):
        assert (tmp_path / "run" / rundir.LOCK).read_text() == str(os.getpid())
        p = subprocess.run(
            [sys.executable, "-c", code, str(tmp_path / "run")],
            capture_output=True,
            text=True,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )
        assert p.returncode == 3 and p.stdout.strip().splitlines() == [
            f"{tmp_path / 'run'} is in use by process {os.getpid()} (it holds {tmp_path / 'run' / rundir.LOCK}); "
            "wait for it to finish, stop it, or choose another --out"
        ]
    p = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path / "run")],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert p.returncode == 0 and p.stdout.strip() == "got it"  # released when the holder is done


def _write_rows(run: Path, phase: str, steps_per_part: list[list[int]]) -> None:
    for steps in steps_per_part:
        w = RecordWriter(run, run="x", phase=phase)
        for s in steps:
            w.add(s, 0, "attn", "q_proj", "", "grad_norm", float(s))
        w.flush()


def test_a_resumed_phase_drops_the_rows_written_after_its_checkpoint(tmp_path):
    run = tmp_path / "run"
    _write_rows(run, "cpt", [[0, 1, 2], [3, 4], [5, 6, 7], [8]])
    _write_rows(run, "sft", [[1, 2, 3, 4, 5, 6]])
    assert drop_rows_after(run, "cpt", 0, 4) == 4
    _write_rows(run, "cpt", [[5, 6]])  # the resumed attempt's rows: a new part after the kept ones
    rec = load_records(run / "records")
    cpt = rec[rec["phase"] == "cpt"]
    assert sorted(cpt["step"]) == [0, 1, 2, 3, 4, 5, 6] and len(rec[rec["phase"] == "sft"]) == 6
    assert sorted(p.name for p in (run / "records").glob("cpt-*")) == [
        "cpt-r0-000000.parquet",
        "cpt-r0-000001.parquet",
        "cpt-r0-000002.parquet",
    ]


def test_records_of_a_run_folder_carry_its_name(tmp_path):
    donor, run = tmp_path / "donor", tmp_path / "cell"
    for d in (donor, run):
        d.mkdir()
        (d / rundir.CONFIG).write_text("seed: 1\n")
    _write_rows(donor, "cpt", [[1, 2]])
    rundir.mark_done(donor, "cpt", {"out": str(donor / "cpt"), "fingerprint": "f"})
    info = rundir.adopt_stage(donor, run, "cpt")  # records linked, not rewritten
    assert info["reused_from"] == str(donor / "cpt") and rundir.read_done(run, "cpt")["out"] == str(run / "cpt")
    part = run / "records" / "cpt-r0-000000.parquet"
    assert part.stat().st_ino == (donor / "records" / part.name).stat().st_ino
    assert set(load_records(run)["run"]) == {"cell"} and set(load_records(donor)["run"]) == {"donor"}
    assert rundir.find_done([tmp_path], {"cpt": "f"}, exclude=donor) == run
    assert rundir.find_done([tmp_path], {"cpt": "g"}) is None


def test_check_free_refuses_a_held_folder_and_creates_nothing(tmp_path):
    from layerprobe.core.rundir import RunFolderBusy, check_free, locked

    check_free(tmp_path / "new")  # no folder, no lock file: free, and nothing is created
    assert not (tmp_path / "new").exists()
    run = tmp_path / "run"
    # a second open file description conflicts like another process would
    with locked(run), pytest.raises(RunFolderBusy, match=rf"is in use by process {os.getpid()} "):
        check_free(run)
    check_free(run)  # released
