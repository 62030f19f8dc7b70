#!/usr/bin/env bash
# Study A: does SFT erase what CPT taught, per CPT lora_alpha x SFT lora_alpha x SFT target_modules?
#   experiments/study_a/run.sh                        # the built-in toy world (the committed results)
#   experiments/study_a/run.sh --model smollm2-135m   # SmolLM2-135M on the real-model cell, 3 seeds, + controls
# Further arguments go to `layerprobe sweep` (--dry-run, --only GLOB, --set KEY=VALUE). Resumable: rerun to continue.
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PYTHON:-python}
if [[ "${1:-}" == "--model" ]]; then
  [[ "$2" == "smollm2-135m" ]] || { echo "run.sh: only --model smollm2-135m has a study A sweep" \
    "(sweep_smollm2.yaml); for another model copy it and set model:" >&2; exit 2; }
  shift 2
  # the grid (24 cells), then the controls (12 cells, reusing the grid's CPTs), then the paired claims
  "$PY" -m layerprobe sweep experiments/study_a/sweep_smollm2.yaml "$@"
  "$PY" -m layerprobe sweep experiments/study_a/controls_smollm2.yaml "$@"
  exec "$PY" experiments/study_a/analyze.py
fi
exec "$PY" -m layerprobe sweep experiments/study_a/sweep.yaml "$@"
