"""Each command's bad input: exit status 2 and one line on stderr that names the command, what was expected and
what was given, compared whole. A test that checks only the status passes for any ValueError anywhere (a typo, a
wrong branch); these fail when the message, or the check that raises it, changes."""

from __future__ import annotations

import pytest

from layerprobe.cli import main

CHECKPOINT = (
    "expected a folder with model.safetensors (or shards and model.safetensors.index.json), a .safetensors file or "
    "a peft adapter folder"
)
CASES = {
    "report of no folder": (
        ["report", "{tmp}/missing"],
        "layerprobe report: error: no folder at {tmp}/missing: expected a run folder (with config.yaml or "
        "summary.json) or a sweep folder (with results.csv)",
    ),
    "report of a folder that is neither": (
        ["report", "{tmp}/empty"],
        "layerprobe report: error: {tmp}/empty is neither a run folder (no config.yaml or summary.json) nor a sweep "
        "(no results.csv); give the folder `layerprobe train --out` or `layerprobe sweep` wrote",
    ),
    "diff of four checkpoints": (
        ["diff", "a", "b", "c", "d"],
        "layerprobe diff: error: expected 1 to 3 checkpoints (A B [C]), got 4: ['a', 'b', 'c', 'd']",
    ),
    "diff to a table that is neither parquet nor csv (refused before the checkpoints are read)": (
        ["diff", "{tmp}/missing", "{tmp}/empty", "--out", "{tmp}/d.txt"],
        "layerprobe diff: error: expected an output path ending in .parquet or .csv, got '{tmp}/d.txt'; "
        "e.g. {tmp}/d.parquet",
    ),
    "diff of no checkpoint": (
        ["diff", "{tmp}/missing", "{tmp}/empty"],
        f"layerprobe diff: error: no checkpoint at {{tmp}}/missing: {CHECKPOINT}",
    ),
    "sweep --set without =": (
        ["sweep", "{tmp}/missing.yaml", "--set", "model"],
        "layerprobe sweep: error: --set expects KEY=VALUE such as model=smollm2-135m, got 'model'",
    ),
    "sweep --set without a key": (
        ["sweep", "{tmp}/missing.yaml", "--set", " =1"],
        "layerprobe sweep: error: --set expects KEY=VALUE such as model=smollm2-135m, got ' =1'",
    ),
    "sweep of no config file": (
        ["sweep", "{tmp}/missing.yaml"],
        "layerprobe sweep: error: config file '{tmp}/missing.yaml' not found; pass a YAML file such as "
        "experiments/study_a/config.yaml",
    ),
    "relate of nothing": (
        ["relate"],
        "layerprobe relate: error: expected sweep folders or one feature table (--features FILE.parquet), got 0 "
        "folder(s) and 0 table(s)",
    ),
    "relate of no folder": (
        ["relate", "{tmp}/missing"],
        "layerprobe relate: error: no sweep folder at {tmp}/missing: expected a run folder (with summary.json and "
        "records/) or a folder of run folders",
    ),
    "attribute without --tuned": (
        ["attribute", "--base", "somewhere"],
        "layerprobe attribute: error: expected --run RUN_DIR, or --base CPT_MODEL and --tuned SFT_MODEL; got "
        "base='somewhere', tuned=None",
    ),
    "predict --window above 1": (
        ["predict", "{tmp}/missing", "--window", "1.5"],
        "layerprobe predict: error: --window must be a share of the steps in (0, 1), got 1.5",
    ),
    "predict --window 0": (
        ["predict", "{tmp}/missing", "--window", "0"],
        "layerprobe predict: error: --window must be a share of the steps in (0, 1), got 0.0",
    ),
    "plot of no folder": (
        ["plot", "{tmp}/missing"],
        "layerprobe plot: error: nothing to draw in {tmp}/missing: expected records/ (train with --record), "
        "diff/*.parquet (layerprobe diff ... --out {tmp}/missing/diff/diff.parquet) or attribute/attribute.parquet "
        "(layerprobe attribute --run {tmp}/missing)",
    ),
    "eval of no config file": (
        ["eval", "--config", "{tmp}/missing.yaml"],
        "layerprobe eval: error: config file '{tmp}/missing.yaml' not found; pass a YAML file such as "
        "experiments/study_a/config.yaml",
    ),
    "sft in a folder with no stages": (
        ["sft", "--out", "{tmp}/empty"],
        "layerprobe sft: error: {tmp}/empty is not a run folder with finished stages; run `layerprobe train --out "
        "{tmp}/empty` or the stages before sft first",
    ),
}


@pytest.mark.parametrize("case", CASES)
def test_bad_input_is_one_line_naming_what_was_expected_and_given(case, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    argv, message = CASES[case]
    assert main([a.format(tmp=tmp_path) for a in argv]) == 2
    captured = capsys.readouterr()
    assert captured.err == message.format(tmp=tmp_path) + "\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty"]  # nothing written
    assert not any((tmp_path / "empty").iterdir())
