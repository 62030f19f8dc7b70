"""The harness's JCommonsenseQA (the shipped task layerprobe_mc) on the SmolLM2 cell's base, CPT and SFT models.

    LAYERPROBE_SHARED_DATA=../shared/data python benchmarks/bench_harness.py \
        --result benchmarks/results/harness_smollm2.json

Runs ``layerprobe train`` on ``experiments/smollm2/cell.yaml``, shortened so it fits beside other work on a
2-core machine (the overrides are written into the result), with ``data.mc`` = JCommonsenseQA's valid split,
``eval.lm_eval_tasks layerprobe_mc``, ``eval.lm_eval_limit N`` and ``eval.max_mc N``: both scorers read the same
first N questions. Then it evaluates every model a second time through the evaluation service, with a loader that
fails if called, to time a cache hit. Writes per model: the harness's metrics, the hand-written scorer's mc_acc
on the same rows, the harness's own seconds, the whole evaluation's seconds and the second evaluation's seconds.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="experiments/smollm2/cell.yaml", help="pipeline YAML of the cell")
    ap.add_argument("--limit", type=int, default=50, help="JCommonsenseQA questions per model (both scorers)")
    ap.add_argument("--out", default=None, help="run folder (default runs/bench-harness-<time>; must not exist)")
    ap.add_argument("--result", default=None, help="JSON file to write the numbers to")
    args = ap.parse_args(argv)

    from layerprobe.core import rundir
    from layerprobe.core.config import resolve
    from layerprobe.core.config_values import load_yaml
    from layerprobe.evaluation import harness
    from layerprobe.evaluation.evalservice import Evaluation
    from layerprobe.sources.realdata import default_data_dir
    from layerprobe.train.pipeline import load_data, run_pipeline

    overrides = {
        "record": False,
        "data": {"mc": str(default_data_dir() / "jcommonsenseqa")},
        "cpt": {"max_steps": 24},
        "sft": {"max_steps": 10},  # the cell's 240 and 50, cut for a shared machine
        "eval": {
            "lm_eval_tasks": ["layerprobe_mc"],
            "lm_eval_limit": args.limit,
            "max_mc": args.limit,
            "max_probes": 8,
            "max_instructions": 4,
            "loss_docs": 8,
        },
    }
    data = load_yaml(args.config)
    for section, values in overrides.items():
        if isinstance(values, dict):
            data.setdefault(section, {}).update(values)
        else:
            data[section] = values
    cfg = resolve(data)
    out = Path(args.out or f"runs/bench-harness-{time.strftime('%Y%m%d-%H%M%S')}")
    if out.exists():
        raise SystemExit(f"--out {out} exists; the benchmark times a fresh run, give a new folder")
    load = os.getloadavg()[0]
    t0 = time.time()
    summary = run_pipeline(cfg, out, log=print)
    wall = time.time() - t0
    ev = rundir.read_done(out, "eval")

    import torch

    evaluation = Evaluation.of(load_data(cfg).eval_set, cfg.eval, cfg.cpt.max_length, cfg.data.mc)
    again = {}
    for phase in ("base", "cpt", "sft"):
        model_dir, adapter = rundir.phase_model(out, phase, summary["base_model"])

        def must_hit(phase=phase):
            raise RuntimeError(f"the {phase} evaluation was not in the cache")

        t = time.time()
        _, _, hit = evaluation.of_folders([model_dir] + ([adapter] if adapter else []), must_hit)
        again[phase] = {"seconds": round(time.time() - t, 3), "hit": hit}

    key = "lm_eval/layerprobe_mc"
    models = {}
    for phase in ("base", "cpt", "sft"):
        m = summary[phase]
        models[phase] = {
            "harness": {k.split("/", 2)[2]: v for k, v in m.items() if k.startswith(key + "/")},
            "mc_acc": m.get("mc_acc"),
            "harness_acc_equals_mc_acc": m.get(f"{key}/acc") == m.get("mc_acc"),
            "harness_seconds": (ev.get("generation") or {}).get(phase, {}).get("lm_eval_seconds"),
            "evaluation_seconds": ev["phase_seconds"].get(phase),
            "second_evaluation": again[phase],
        }
    result = {
        "what": "the harness's JCommonsenseQA (layerprobe_mc) on the SmolLM2 cell's base, CPT and SFT models",
        "config": args.config,
        "overrides": overrides,
        "run": str(out),
        "questions": args.limit,
        "lm_eval": harness.version(),
        "torch_threads": torch.get_num_threads(),
        "cores": os.cpu_count(),
        "load_average_at_start": round(load, 2),
        "wall_seconds": round(wall, 1),
        "stage_seconds": {s: (rundir.read_done(out, s) or {}).get("seconds") for s in ("cpt", "merge", "sft", "eval")},
        "models": models,
    }
    print(json.dumps(result, indent=2, ensure_ascii=False))
    if args.result:
        Path(args.result).parent.mkdir(parents=True, exist_ok=True)
        Path(args.result).write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
