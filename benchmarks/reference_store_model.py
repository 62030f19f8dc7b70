"""The reference stores' cost model from a bench_reference_store.py result: the fitted line per store and the
projected overhead at 1 B and 7 B parameters (full fine-tuning, fp32 weights) for update/drift every 5 and 25 steps.

    python benchmarks/reference_store_model.py benchmarks/results/reference_store_cpu.json \
        --out benchmarks/results/reference_store_projection.csv

A recorded step costs a + b * bytes (bytes: one copy of the trainable weights; fit over the measured sizes).
The training step it is compared with is assumed to scale with the parameters from one measured step:
``--step-s`` seconds at ``--step-params`` parameters (default: SmolLM2-135M's full fine-tuning step on this 2-core
CPU, 6.41 s, batch 8 x 64, bf16 autocast, from benchmarks/results/full_ft_step_smollm2.txt). Overhead = the
recorded step's seconds / (every * step seconds): update ratio and drift due together every ``every`` steps.
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("result")
    ap.add_argument("--out", required=True)
    ap.add_argument("--step-s", type=float, default=6.41)
    ap.add_argument("--step-params", type=float, default=134.5e6)
    args = ap.parse_args()
    result = json.loads(Path(args.result).read_text())
    rows = []
    for size, v in result["sizes"].items():
        for store, s in v["stores"].items():
            rows.append(
                {
                    "kind": "measured",
                    "size": size,
                    "params": v["params"],
                    "store": store,
                    "recorded_step_s": round(s["median_s"], 4),
                    "ratio_to_disk": round(s.get("ratio_to_disk", float("nan")), 3),
                    "start_s": round(s["start_median_s"], 3),
                    "every": "",
                    "assumed_step_s": "",
                    "overhead_pct": "",
                }
            )
    for params in (1e9, 7e9):
        step = args.step_s * params / args.step_params
        for store, f in result["fit"].items():
            recorded = f["a_s"] + f["b_s_per_byte"] * 4 * params
            for every in (5, 25):
                rows.append(
                    {
                        "kind": "projected",
                        "size": f"{params / 1e9:g}b",
                        "params": int(params),
                        "store": store,
                        "recorded_step_s": round(recorded, 2),
                        "ratio_to_disk": "",
                        "start_s": "",
                        "every": every,
                        "assumed_step_s": round(step, 1),
                        "overhead_pct": round(100 * recorded / (every * step), 2),
                    }
                )
    with open(args.out, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    for store, f in result["fit"].items():
        print(f"{store}: {f['a_s']:.3f} s + {f['s_per_gb']:.3f} s/GB")
    print(Path(args.out).read_text())


if __name__ == "__main__":
    main()
