#!/usr/bin/env bash
# Mitigations of forgetting (replay, L2-SP, drift cap, separate learning rates, freezing the bottom layers):
#   experiments/mitigations/run.sh                        # the built-in toy world, 9 conditions x 5 seeds
#   experiments/mitigations/run.sh --model smollm2-135m   # SmolLM2-135M on real data, 3 conditions x 3 seeds
# Further arguments go to `layerprobe sweep` (--dry-run, --only GLOB, --set KEY=VALUE). Resumable: rerun to continue.
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PYTHON:-python}
if [[ "${1:-}" == "--model" ]]; then
  [[ "$2" == "smollm2-135m" ]] || { echo "run.sh: only --model smollm2-135m has a mitigations sweep" \
    "(sweep_smollm2.yaml); for another model copy it and set model:" >&2; exit 2; }
  shift 2
  exec "$PY" -m layerprobe sweep experiments/mitigations/sweep_smollm2.yaml "$@"
fi
exec "$PY" -m layerprobe sweep experiments/mitigations/sweep.yaml "$@"
