#!/usr/bin/env bash
# The recorder's seconds per recorded step for each reference store on a GPU (device / pinned host / disk), at
# 135 M, 400 M and 1.1 B parameters, full fine-tuning in fp32: the GPU half of the cost model in README
# ("Reference store"). Needs one CUDA GPU with >= 24 GB; takes under 5 minutes (each size is cut off at its
# share). Not run yet: no GPU was available when it was written. Run from the repository root:
#
#     benchmarks/reference_store_gpu.sh [OUT.json]
#
# then commit OUT (default benchmarks/results/reference_store_gpu.json) and compare with reference_store_cpu.json.
set -euo pipefail
out=${1:-benchmarks/results/reference_store_gpu.json}
python=${PYTHON:-python}
"$python" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'no CUDA GPU: this script measures the GPU stores')"
export BENCH_TMP=${BENCH_TMP:-$(mktemp -d)}  # the disk store's files: a local disk, not a network one
timeout 280 "$python" benchmarks/bench_reference_store.py --device cuda --sizes 135m,400m,1b --rounds 3 \
    --steps 3 --out "$out" --note "GPU machine, nothing else running"
echo "wrote $out"
