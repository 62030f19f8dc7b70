"""layerprobe.analyse.predict: early-window features, leave-one-group-out ridge, baselines; checked by hand
computations."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import yaml

from layerprobe.analyse.predict import early_features, feature_table, final_targets, validate, window_step
from layerprobe.cli import main as cli_main
from layerprobe.record.records import RecordWriter, load_records

STEPS = (0, 10, 20, 30, 40, 50)


def _write_run(folder, seed, lr, arm, rng):
    """A run's records as the recorder and the probes write them: drift (every 5 steps), update ratios, gradient
    norms per attention / MLP module, probe means per kind every 10 steps. The final fall of the held-out cloze's
    log-probability is 5 x its fall at step 10 (plus noise): what the early window should carry."""
    folder.mkdir(parents=True)
    (folder / "config.yaml").write_text(yaml.safe_dump({"seed": seed, "toy": {"seed": 7}}))
    (folder / "summary.json").write_text(json.dumps({"cpt": {"cloze_acc": 0.9}, "sft": {"cloze_acc": 0.9 - lr}}))
    w = RecordWriter(folder, folder.name, "sft")
    for step in range(0, 51, 5):
        for block, module in (("attn", "q_proj"), ("attn", "v_proj"), ("mlp", "up_proj")):
            w.add(step, 0, block, module, "", "drift_ratio", lr * step / 50 * (1.5 if block == "mlp" else 1.0))
            w.add(step, 0, block, module, "", "update_ratio", lr / 10)
            w.add(step, 0, block, module, "", "grad_norm", 1.0 + lr)
    early = -lr * (1 + 0.1 * rng.normal())
    for step in STEPS:
        frac = step / 10 if step <= 10 else 1 + 4 * (step - 10) / 40
        w.add(step, -1, "probe", "cloze_heldout", "", "probe_logprob", -2.0 + early * frac + 0.01 * rng.normal())
        w.add(step, -1, "probe", "cloze_heldout", "p1", "probe_logprob", 99.0)  # a per-probe row: not a mean
        w.add(step, -1, "probe", "instruction", "", "style_logodds", 0.5 * step * lr)
    w.flush()


@pytest.fixture()
def sweep(tmp_path):
    rng = np.random.default_rng(3)
    rows = []
    for i, (arm, lr) in enumerate([(a, lr) for a in ("a", "b", "c", "d") for lr in (0.2, 0.5, 1.0)]):
        name = f"{arm}-{lr}"
        _write_run(tmp_path / name, seed=i, lr=lr, arm=arm, rng=rng)
        rows.append({"cell": name, "condition": name, "group": arm})
    pd.DataFrame(rows).to_csv(tmp_path / "results.csv", index=False)
    return tmp_path


def test_early_features_and_targets_by_hand(sweep):
    records = load_records(sweep / "b-0.5")
    step = window_step(records, 0.2)
    assert step == 10
    got = early_features(records, step)
    probes = records[(records["block"] == "probe") & (records["param"] == "")]
    held = probes[probes["module"] == "cloze_heldout"].set_index("step")["value"]
    assert got["probe.probe_logprob.cloze_heldout"] == pytest.approx(held[10] - held[0], rel=1e-12)
    assert got["drift.attn"] == pytest.approx(0.5 * 10 / 50, rel=1e-12)  # drift at step 10
    assert got["drift.mlp"] == pytest.approx(0.5 * 10 / 50 * 1.5, rel=1e-12)
    assert got["update.attn"] == pytest.approx(0.05, rel=1e-12)
    assert got["grad.mlp"] == pytest.approx(1.5, rel=1e-12)
    frozen = early_features(records[records["block"] != "mlp"], step)  # an MLP that did not train: no rows
    assert frozen["drift.mlp"] == 0.0 and frozen["update.mlp"] == 0.0 and frozen["grad.mlp"] == 0.0
    final = final_targets(records)
    assert final["final.probe.probe_logprob.cloze_heldout"] == pytest.approx(held[50] - held[0], rel=1e-12)
    assert final["final.probe.style_logodds.instruction"] == pytest.approx(0.5 * 50 * 0.5, rel=1e-12)
    with pytest.raises(ValueError, match="no probe step inside the first 5%"):
        window_step(records, 0.05)


def test_validate_is_leave_one_group_out_ridge(sweep):
    table = feature_table([sweep], outcomes=["retention_drop"])
    assert len(table) == 12 and set(table["group"]) == {"a", "b", "c", "d"}
    assert table.set_index("run").loc["c-1.0", "retention_drop"] == pytest.approx(1.0)
    target, features = "final.probe.probe_logprob.cloze_heldout", ["probe.probe_logprob.cloze_heldout", "drift.attn"]
    preds, summary = validate(table, target, "group", features=features, ridge=0.5)
    # fold "a" by hand: standardise with the training runs, solve the ridge normal equations, predict
    train, test = table[table["group"] != "a"], table[table["group"] == "a"]
    x, y = train[features].to_numpy(), train[target].to_numpy()
    mu, sd = x.mean(0), x.std(0)
    z = (x - mu) / sd
    beta = np.linalg.solve(z.T @ z + 0.5 * np.eye(2), z.T @ (y - y.mean()))
    expected = y.mean() + ((test[features].to_numpy() - mu) / sd) @ beta
    assert preds[preds["group"] == "a"]["model"].to_numpy() == pytest.approx(expected, rel=1e-9)
    assert (preds[preds["group"] == "a"]["mean"] == y.mean()).all()
    assert preds["carried"].to_numpy() == pytest.approx(
        table.set_index("run").loc[preds["run"], "probe.probe_logprob.cloze_heldout"].to_numpy()
    )
    mae = summary.set_index("method")["mae"]
    assert mae["model"] == pytest.approx((preds["model"] - preds["truth"]).abs().mean())
    assert mae["model"] < mae["mean"] and mae["model"] < mae["carried"]  # the planted x5 is learnable
    per_group = (
        ((preds["model"] - preds["truth"]).abs() - (preds["mean"] - preds["truth"]).abs())
        .groupby(preds["group"])
        .mean()
    )
    assert mae["model - mean"] == pytest.approx(per_group.mean())
    row = summary.set_index("method").loc["model - mean"]
    assert row["lo"] < row["mae"] < row["hi"] and row["n_groups"] == 4


def test_validate_and_cli_errors(sweep, tmp_path, capsys):
    table = feature_table([sweep])
    with pytest.raises(ValueError, match="unknown target 'nope'"):
        validate(table, "nope", "group")
    with pytest.raises(ValueError, match="at least 3 groups"):
        validate(table, "final.probe.style_logodds.instruction", "world")  # one world only
    out = tmp_path / "out"
    assert cli_main(["predict", str(sweep), "--groups", "group", "--out", str(out)]) == 0
    summary = pd.read_csv(out / "predict_summary.csv")
    assert set(summary["target"]) == {
        "final.probe.probe_logprob.cloze_heldout",
        "final.probe.style_logodds.instruction",
    }
    assert "model - carried" in set(summary["method"])
    within = pd.read_csv(out / "within.csv")
    assert set(within["block"]) == {"attn", "mlp"} and within["n_runs"].max() == 12
    tradeoff = pd.read_csv(out / "tradeoff.csv").set_index("run")
    assert tradeoff.loc["a-0.2", "step"] == 50  # style grows linearly: 90 % of the gain only at the end
    assert cli_main(["predict", str(sweep), "--window", "1.5"]) == 2
    assert "--window must be a share of the steps in (0, 1), got 1.5" in capsys.readouterr().err
