"""Does passive OpenMP waiting remove the 2-thread cliff when another process keeps one of two cores busy?

    python benchmarks/bench_wait_policy.py --out benchmarks/results/wait_policy.json

Each variant runs in a fresh process (the OpenMP settings are read when torch loads): one thread; two threads;
two threads with ``OMP_WAIT_POLICY=PASSIVE`` (and ``GOMP_SPINCOUNT=0``, the same switch for GNU OpenMP). The
process times toy CPT steps: the cached toy base model with the default CPT's LoRA (r 32, alpha 128, q..down +
embed_tokens + lm_head), batch 8 x 128 random tokens, bf16 autocast, AdamW. Variants alternate, the order rotating
each round; per variant the median of every timed step over all rounds and the ratio to one thread are reported.
Before each process the cores busy over 0.3 s (``/proc/stat``, the pipeline's own measure) are recorded: the
condition the numbers hold for.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

VARIANTS = {
    "1 thread": {"OMP_NUM_THREADS": "1"},
    "2 threads": {"OMP_NUM_THREADS": "2"},
    "2 threads, passive": {"OMP_NUM_THREADS": "2", "OMP_WAIT_POLICY": "PASSIVE", "GOMP_SPINCOUNT": "0"},
}


def child(steps: int, warmup: int) -> None:
    import torch
    from peft import LoraConfig, get_peft_model

    from layerprobe.core.config_data import ToyWorldConfig
    from layerprobe.sources.toyworld.base import ensure_base
    from layerprobe.train.models import load_model

    torch.manual_seed(0)
    model = load_model(str(ensure_base(ToyWorldConfig())))
    targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj", "embed_tokens", "lm_head"]
    model = get_peft_model(model, LoraConfig(r=32, lora_alpha=128, target_modules=targets))
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4)
    x = torch.randint(0, model.config.vocab_size, (8, 128))
    times = []
    for _ in range(warmup + steps):
        t = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = model(input_ids=x, labels=x).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
        times.append(time.perf_counter() - t)
    print(json.dumps({"threads": torch.get_num_threads(), "times": times[warmup:]}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--out")
    ap.add_argument("--note", default="")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child(args.steps, args.warmup)
    from layerprobe.train.threads import busy_cores

    names = list(VARIANTS)
    runs = []
    for r in range(args.rounds):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            busy = busy_cores()
            env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
            env.update(VARIANTS[name])
            cmd = [sys.executable, __file__, "--child", "--steps", str(args.steps), "--warmup", str(args.warmup)]
            out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True).stdout
            got = json.loads(out.strip().splitlines()[-1])
            runs.append({"variant": name, "round": r, "busy_cores_before": busy, **got})
            print(f"round {r} {name:20s} busy {busy:.2f}  " + " ".join(f"{t:.3f}" for t in got["times"]), flush=True)
    medians = {n: statistics.median(t for run in runs if run["variant"] == n for t in run["times"]) for n in names}
    result = {
        "command": " ".join(sys.argv),
        "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "cores": os.cpu_count(),
        "note": args.note,
        "median_step_s": medians,
        "ratio_to_1_thread": {n: medians[n] / medians["1 thread"] for n in names},
        "runs": runs,
    }
    print(json.dumps({k: result[k] for k in ("median_step_s", "ratio_to_1_thread")}, indent=1))
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
