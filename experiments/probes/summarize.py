"""The small outputs of a run made with ``--sft.probe_every N`` (and ``--sft.keep_best``), for committing.

    python experiments/probes/summarize.py runs/probes-smollm2 --out figures/probes/smollm2-135m

Writes into ``--out``:

- ``summary.json`` and ``sft_probes_over_steps.png`` of the run, and its SFT records (``sft_records.parquet``:
  the recorder's rows and the probe rows, the table ``layerprobe.record.records.load_records`` reads);
- ``probe_cost.json``: the probes' own time against the SFT's, the probe steps and the subset scored;
- ``probe_vs_eval.csv``: per probe of the subset, the last probe point against the full evaluation of the SFT
  model (clozes: log-probability and the likelihood verdict; instructions: style log-odds; the evaluation judges
  QA by generation, so QA has nothing to compare), and the same for the
  chosen step's probe point against the evaluation of ``sft_best``; ``probe_vs_eval_summary.csv`` sums it up;
- ``keep_best.csv`` (with ``sft.keep_best``): every metric of the evaluation after SFT and at the kept step, and
  their difference.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import pandas as pd

from layerprobe.core import run_results, rundir
from layerprobe.record.records import load_records

METRICS = (
    "cloze_acc",
    "cloze_margin",
    "cloze_heldout_acc",
    "cloze_heldout_margin",
    "qa_acc",
    "cpt_text_loss",
    "general_loss",
    "style_logodds",
    "gozaru_rate",
    "gozaru_first",
    "eos_rate",
)


def agreement(run: Path, probes: pd.DataFrame, step: int, model: str) -> pd.DataFrame:
    """Per probe scored at ``step``: the probe row against the evaluation's answer row of ``model``."""
    at = probes[(probes["step"] == step) & (probes["param"] != "")]
    got = at.set_index(["module", "param", "quantity"])["value"]
    rows = []
    for a in map(json.loads, rundir.answers_path(run, model).read_text(encoding="utf-8").splitlines()):
        kind, prompt = a.get("kind"), a.get("prompt")
        # clozes: the evaluation scores them by likelihood (eval.cloze_scoring likelihood), as the probes do; its QA
        # is judged on a generated answer, with no log-probability to compare
        if kind in ("cloze", "cloze_heldout") and (kind, prompt, "probe_logprob") in got.index:
            rows.append(
                {
                    "kind": kind,
                    "prompt": prompt,
                    "probe": got[(kind, prompt, "probe_logprob")],
                    "eval": a["logprob"],
                    "probe_top1": got[(kind, prompt, "probe_top1")],
                    "eval_top1": float(a["greedy"]),
                }
            )
        if "style_logodds" in a and ("instruction", prompt, "style_logodds") in got.index:
            rows.append(
                {
                    "kind": "instruction",
                    "prompt": prompt,
                    "probe": got[("instruction", prompt, "style_logodds")],
                    "eval": a["style_logodds"],
                }
            )
    out = pd.DataFrame(rows).assign(model=model, step=step)
    out["abs_diff"] = (out["probe"] - out["eval"]).abs()
    return out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run", type=Path)
    ap.add_argument("--out", type=Path, default=Path("figures/probes/smollm2-135m"))
    args = ap.parse_args(argv)
    run, out = args.run, args.out
    out.mkdir(parents=True, exist_ok=True)
    summary = run_results.read_summary(run)
    if summary is None:
        raise SystemExit(f"{run} has no summary.json: the run has not finished")
    shutil.copy2(rundir.summary_path(run), out / "summary.json")
    shutil.copy2(rundir.figures_dir(run) / "sft_probes_over_steps.png", out / "sft_probes_over_steps.png")
    records = load_records(run)
    sft = records[records["phase"] == "sft"]
    sft.to_parquet(out / "sft_records.parquet", index=False)

    probes = sft[sft["block"] == "probe"]
    steps = sorted(int(s) for s in probes["step"].unique())
    stage = summary["stages"]["sft"]
    cost = {
        "sft_seconds": stage["seconds"],
        "probe_seconds": stage["probe_seconds"],
        "probe_share_of_sft": round(stage["probe_seconds"] / stage["seconds"], 4),
        "keep_seconds": stage.get("keep_seconds"),
        "record_seconds": stage.get("record_seconds"),
        "steps": stage["steps"],
        "probe_steps": steps,
        "probes_per_step": {
            kind: int(((probes["step"] == 0) & (probes["module"] == kind) & (probes["param"] != "")).sum())
            // (1 if kind == "instruction" else 2)
            for kind in sorted(probes["module"].unique())
        },
        "machine": summary.get("machine"),
    }
    (out / "probe_cost.json").write_text(json.dumps(cost, indent=1) + "\n")

    tables = [agreement(run, probes, steps[-1], "sft")]
    kept = summary.get("keep_best")
    if kept:
        tables.append(agreement(run, probes, kept["step"], "sft_best"))
        rows = [
            {
                "metric": m,
                "sft": summary["sft"].get(m),
                "sft_best": summary["sft_best"].get(m),
                "sft_best - sft": summary["sft_best"].get(m) - summary["sft"].get(m),
                "cpt": summary.get("cpt", {}).get(m),
            }
            for m in METRICS
            if m in summary["sft"] and m in summary["sft_best"]
        ]
        pd.DataFrame(rows).to_csv(out / "keep_best.csv", index=False, float_format="%.6g")
    table = pd.concat(tables, ignore_index=True)
    table.to_csv(out / "probe_vs_eval.csv", index=False, float_format="%.9g")
    table["top1_agree"] = table["probe_top1"] == table["eval_top1"]
    short = (
        table.groupby(["model", "step", "kind"])
        .agg(
            n=("abs_diff", "size"),
            max_abs_diff=("abs_diff", "max"),
            top1_agree=("top1_agree", lambda s: int(s[table.loc[s.index, "probe_top1"].notna()].sum())),
            top1_n=("probe_top1", lambda s: int(s.notna().sum())),
        )
        .reset_index()
    )
    short.to_csv(out / "probe_vs_eval_summary.csv", index=False, float_format="%.3g")
    print(json.dumps(cost, indent=1))
    print(short.to_string())
    if kept:
        print(pd.read_csv(out / "keep_best.csv").to_string())


if __name__ == "__main__":
    main()
