#!/usr/bin/env bash
# Study B: which weights must full fine-tuning train to learn the ござる style, and what does it forget?
#   experiments/study_b/run.sh                        # the built-in toy world (the committed results)
#   experiments/study_b/run.sh --model smollm2-135m   # SmolLM2-135M on the real-model cell, 5 % / 10 % budgets, 3 seeds
# Further arguments go to `layerprobe sweep` (--dry-run, --only GLOB, --set KEY=VALUE). Resumable: rerun to continue.
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PYTHON:-python}
if [[ "${1:-}" == "--model" ]]; then
  [[ "$2" == "smollm2-135m" ]] || { echo "run.sh: only --model smollm2-135m has a study B sweep" \
    "(sweep_smollm2.yaml); for another model copy it and set model:" >&2; exit 2; }
  shift 2
  "$PY" -m layerprobe sweep experiments/study_b/sweep_smollm2.yaml "$@"   # reuses study A's alpha-128 CPTs
  exec "$PY" experiments/study_b/analyze.py
fi
exec "$PY" -m layerprobe sweep experiments/study_b/sweep.yaml "$@"
