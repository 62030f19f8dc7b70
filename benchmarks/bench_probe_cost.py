"""What probing during SFT costs on the SmolLM2 cell, per probe subset size and schedule.

    OMP_NUM_THREADS=1 python benchmarks/bench_probe_cost.py \
        --run "runs/dose_response/lora-all-low,toy.seed=11,seed=1" --result benchmarks/results/probe_cost_smollm2.json

Reads a finished SmolLM2 cell (its ``config.yaml`` and ``merged/`` CPT model; nothing in it is written), trains
``--steps`` SFT steps of that config on the merged model with the recorder on (as the cell trains), and times
each step; then scores the probe subset that ``sft.probe_max N`` gives (``ProbeCallback.probe``, the code the
pipeline runs) ``--repeats`` times for each N of ``--probe-max``, on the model as SFT left it. The projected
share of a whole SFT of ``sft.max_steps`` steps probed every ``E`` steps (step 0, every E-th step, the last) is
``points * probe / (steps * step + points * probe)``: probes' share of the SFT's time with them, as
``summary.json`` reports a run's ``probe_seconds`` against its ``seconds``. With ``--sft-seconds`` (a whole run's
SFT time without its probes) no step is timed and ``steps * step`` is that time; with ``--cpu-time`` a probe
point's time is the CPU time this (one-thread) process spent on it, not the wall time.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", required=True, help="a finished SmolLM2 run folder (read only: config.yaml, merged/)")
    ap.add_argument("--lr", type=float, default=None, help="sft.learning_rate (default: the run's)")
    ap.add_argument("--steps", type=int, default=6, help="SFT steps timed (after one warm-up step)")
    ap.add_argument("--probe-max", default="4,6,8,16", help="probe subset sizes (per kind) to time")
    ap.add_argument("--every", default="5,10", help="schedules to project the share for")
    ap.add_argument("--repeats", type=int, default=3, help="timings of each subset size (the median is used)")
    ap.add_argument(
        "--sft-seconds",
        type=float,
        default=None,
        help="the time of the cell's whole SFT without its probes (a run's summary.json: stages.sft.seconds - "
        "probe_seconds); given, no SFT step is timed here and the probes are timed on the merged model",
    )
    ap.add_argument(
        "--cpu-time",
        action="store_true",
        help="project from each probe point's CPU time (one thread: its cost without the waits of a machine "
        "other processes share) instead of its wall time",
    )
    ap.add_argument("--result", default=None, help="JSON file to write")
    args = ap.parse_args(argv)

    import torch
    from transformers import TrainerCallback

    from layerprobe.core import run_results, rundir
    from layerprobe.core.config import resolve
    from layerprobe.record.recorder_callback import RecorderCallback
    from layerprobe.train.models import load_model, load_tokenizer, make_trainable
    from layerprobe.train.pipeline import load_data, quiet_libraries
    from layerprobe.train.probes import ProbeCallback
    from layerprobe.train.stages import sft_trainer

    run = Path(args.run)
    data = run_results.read_config_dict(run)
    if args.lr is not None:
        data["sft"]["learning_rate"] = args.lr
    cfg = resolve(data)
    merged = str(rundir.stage_dir(run, "merge"))
    pipeline_data = load_data(cfg)
    shown = pipeline_data.eval_set.limited(cfg.eval)

    class StepTimes(TrainerCallback):
        def __init__(self):
            self.times: list[float] = []

        def on_step_begin(self, args, state, control, **kwargs):
            self.t = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            self.times.append(time.perf_counter() - self.t)

    with quiet_libraries(), tempfile.TemporaryDirectory() as tmp:
        tok = load_tokenizer(merged)
        model, _ = make_trainable(load_model(merged), cfg.sft, cfg.phase_seed(cfg.sft))
        r = cfg.recorder
        recorder = RecorderCallback(
            tmp, phase="sft", grad_every=r.grad_every, update_every=r.update_every, drift_every=r.drift_every
        )
        timer = StepTimes()
        full_steps = cfg.sft.max_steps
        if args.sft_seconds is None:
            cfg.sft.max_steps = args.steps + 1
            trainer = sft_trainer(cfg, model, tok, pipeline_data.sft_rows, Path(tmp) / "sft", [recorder, timer])
            trainer.train()
            step_s = statistics.median(timer.times[1:])
        else:  # the SFT's own time as measured in a whole run
            step_s = args.sft_seconds / full_steps
        probes = {}
        for n in [int(x) for x in args.probe_max.split(",")]:
            cb = ProbeCallback(
                tmp,
                shown.probes,
                shown.instructions,
                phase="bench",
                tokenizer=tok,
                max_per_kind=n,
                batch_size=cfg.eval.batch_size,
                max_prompt_tokens=cfg.eval.max_prompt_tokens,
            )
            times, cpu = [], []
            for _ in range(args.repeats):
                t, c = time.perf_counter(), time.process_time()
                cb.probe(model, tok, 0)
                times.append(time.perf_counter() - t)
                cpu.append(time.process_time() - c)
            seqs = len(cb.probes) + 2 * len(cb.instructions)
            probes[n] = {
                "sequences": seqs,
                "seconds": [round(t, 3) for t in times],
                "cpu_seconds": [round(c, 3) for c in cpu],  # this process's own CPU time: what one thread costs
                "median": statistics.median(cpu if args.cpu_time else times),
            }
    share = {}
    for n, p in probes.items():
        for every in [int(x) for x in args.every.split(",")]:
            points = len(set(range(0, full_steps + 1, every)) | {full_steps})
            total = points * p["median"]
            share[f"probe_max={n},every={every}"] = {
                "points": points,
                "probe_seconds": round(total, 1),
                "share_of_sft": round(total / (full_steps * step_s + total), 4),
            }
    result = {
        "command": "OMP_NUM_THREADS=1 python benchmarks/bench_probe_cost.py " + " ".join(argv or sys.argv[1:]),
        "run": str(run),
        "threads": torch.get_num_threads(),
        "sft_steps_in_cell": full_steps,
        "sft": {
            "seconds_given": args.sft_seconds,
            "steps_timed": max(len(timer.times) - 1, 0),
            "median_step_seconds": round(step_s, 3),
            "step_seconds": [round(t, 3) for t in timer.times],
        },
        "probes": probes,
        "projected": share,
    }
    text = json.dumps(result, indent=1)
    print(text)
    if args.result:
        Path(args.result).write_text(text + "\n")


if __name__ == "__main__":
    main()
