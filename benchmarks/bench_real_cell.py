"""Time one real-model cell end to end: CPT, merge, SFT and each evaluation, with tokens/s.

    python benchmarks/bench_real_cell.py --config experiments/smollm2/cell.yaml \
        --result benchmarks/results/real_cell.json

Runs ``layerprobe train`` on the config into a fresh folder, then evaluates the base and CPT models once more
through the evaluation cache (as the next cell of a sweep sharing this CPT would) to show what the cache saves.
Prints the breakdown and writes it, with the run's summary metrics, to ``--result``.
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
    ap.add_argument("--out", default=None, help="run folder (default runs/bench-cell-<time>; must not exist)")
    ap.add_argument("--result", default=None, help="JSON file to write the breakdown to")
    args = ap.parse_args(argv)

    t_start = time.time()
    import torch

    from layerprobe.core import rundir
    from layerprobe.core.config import resolve
    from layerprobe.core.config_values import load_yaml
    from layerprobe.evaluation.evalservice import Evaluation
    from layerprobe.train.pipeline import load_data, run_pipeline

    t_import = time.time() - t_start
    load = os.getloadavg()[0]
    cfg = resolve(load_yaml(args.config))
    out = Path(args.out or f"runs/bench-cell-{time.strftime('%Y%m%d-%H%M%S')}")
    if out.exists():
        raise SystemExit(f"--out {out} exists; the benchmark times a fresh run, give a new folder")
    t0 = time.time()
    summary = run_pipeline(cfg, out, log=print)
    threads = torch.get_num_threads()  # as the pipeline chose them (free cores, or OMP_NUM_THREADS)
    wall = time.time() - t0
    stages = {s: rundir.read_done(out, s) or summary["stages"][s] for s in ("cpt", "merge", "sft", "eval")}
    ev = stages["eval"]

    evaluation = Evaluation.of(load_data(cfg).eval_set, cfg.eval, cfg.cpt.max_length, cfg.data.mc)
    base = summary["base_model"]
    again = {}
    for phase in ("base", "cpt"):
        model_dir, adapter = rundir.phase_model(out, phase, base)
        t = time.time()

        def must_hit(phase=phase):
            raise RuntimeError(f"the {phase} evaluation was not in the cache")

        evaluation.of_folders([model_dir] + ([adapter] if adapter else []), must_hit)
        again[phase] = round(time.time() - t, 2)

    def rate(tokens, seconds):
        return round(tokens / seconds, 1) if tokens and seconds else None

    result = {
        "config": args.config,
        "run": str(out),
        "torch_threads": threads,
        "load_average_at_start": load,
        "wall_seconds": round(wall, 1),
        "import_seconds": round(t_import, 1),
        "stages": {s: stages[s].get("seconds") for s in ("cpt", "merge", "sft", "eval")},
        "eval_seconds": ev.get("phase_seconds"),
        "eval_cached": ev.get("cached"),
        "train_tokens_per_s": {p: rate(stages[p].get("tokens"), stages[p].get("seconds")) for p in ("cpt", "sft")},
        "train_tokens": {p: stages[p].get("tokens") for p in ("cpt", "sft")},
        "precision": {p: stages[p].get("precision") for p in ("cpt", "sft")},
        "generation_tokens_per_s": {
            p: rate(g.get("generated_tokens"), g.get("generate_seconds"))
            for p, g in (ev.get("generation") or {}).items()
        },
        "generation": ev.get("generation"),
        "second_evaluation_seconds": again,
        "metrics": {p: summary.get(p) for p in ("base", "cpt", "sft") if p in summary},
    }
    print(json.dumps(result, indent=2, ensure_ascii=False))
    if args.result:
        Path(args.result).parent.mkdir(parents=True, exist_ok=True)
        Path(args.result).write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    main()
