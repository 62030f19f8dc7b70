"""bf16 autocast against fp32 for the CPT phase of a config: seconds per optimizer step, alternating runs.

    python benchmarks/bench_precision.py --config experiments/smollm2/cell.yaml --result benchmarks/results/precision_smollm2.json
    python benchmarks/bench_precision.py --result benchmarks/results/precision_toy.json      # the default toy run

Each variant trains ``--steps`` CPT steps from the same start ``--repeats`` times, alternating fp32 / bf16; the
median time per step counts. Also reports the loss after the steps, so a reader sees the numbers hold.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default=None, help="pipeline YAML (default: the built-in toy run)")
    ap.add_argument("--steps", type=int, default=8, help="CPT steps per timed run")
    ap.add_argument("--repeats", type=int, default=3, help="timed runs per precision (alternating)")
    ap.add_argument("--result", default=None, help="JSON file to write")
    args = ap.parse_args(argv)

    import torch

    from layerprobe.core.config import resolve
    from layerprobe.core.config_values import load_yaml
    from layerprobe.train.models import load_model, load_tokenizer, make_trainable, model_folder
    from layerprobe.train.pipeline import load_data, quiet_libraries
    from layerprobe.train.stages import cpt_trainer

    cfg = resolve(load_yaml(args.config) if args.config else {})
    base = model_folder(cfg.model, cfg)
    tok = load_tokenizer(base)
    docs = load_data(cfg).cpt_docs
    phase = cfg.cpt
    phase.max_steps = args.steps
    times: dict[str, list[float]] = {"fp32": [], "bf16": []}
    losses: dict[str, float] = {}
    with quiet_libraries():
        for _ in range(args.repeats):
            for name in ("fp32", "bf16"):
                model = make_trainable(load_model(base), phase, cfg.phase_seed(phase))[0]
                trainer, _ = cpt_trainer(cfg, model, tok, docs, Path("/tmp/lp-bench-precision"), bf16=name == "bf16")
                t = time.perf_counter()
                out = trainer.train()
                times[name].append((time.perf_counter() - t) / args.steps)
                losses[name] = out.training_loss
    med = {k: statistics.median(v) for k, v in times.items()}
    result = {
        "model": cfg.model,
        "config": args.config or "(default toy run)",
        "threads": torch.get_num_threads(),
        "tokens_per_step": phase.batch_size * phase.max_length,
        "steps": args.steps,
        "seconds_per_step_median": med,
        "seconds_per_step_all": times,
        "bf16_over_fp32": med["bf16"] / med["fp32"],
        "training_loss_after_steps": losses,
    }
    print(json.dumps(result, indent=2))
    if args.result:
        Path(args.result).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
