#!/usr/bin/env bash
# Every GPU check in one run (about 10 minutes on one GPU): the device tests, host-sync counts,
# layer benchmarks at B = 64 (1000² and 2000²), inference latency, a training step and a 5-minute
# training run. Writes OUT/device_check.json and OUT/device_check.md (OUT: --out, default
# device_check/).
#   bash scripts/device_check.sh                          # on a machine with a GPU
#   bash scripts/device_check.sh --device cpu --dry-run   # toy sizes on any machine (the tests run it)
# Python: $PYTHON if set; else a .venv-cuda made here with the CUDA build of torch 2.13.0 when the
# package index is reachable; else the machine's python3 if its torch sees a GPU (offline GPU
# machines ship one), with wheels carried in .whl/ installed beside it.
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" WANDB_MODE=disabled PYTHONUNBUFFERED=1
INDEX=${TORCH_INDEX:-https://download.pytorch.org/whl/cu128}  # the CUDA builds of torch
dry=0; for a in "$@"; do [ "$a" = "--dry-run" ] && dry=1; done

has_cuda() { "$1" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; }

if [ -n "${PYTHON:-}" ]; then
  py=$PYTHON
elif [ "$dry" = 1 ] && [ -x .venv/bin/python ]; then
  py=.venv/bin/python  # the dry run needs no GPU: the set-up's environment
elif [ -x .venv-cuda/bin/python ] && has_cuda .venv-cuda/bin/python; then
  py=.venv-cuda/bin/python
elif python3 -c "import urllib.request as u; u.urlopen('$INDEX/torch/', timeout=5)" 2>/dev/null; then
  python3 -m venv .venv-cuda
  .venv-cuda/bin/python -m pip install -q "torch==2.13.0" --index-url "$INDEX"
  .venv-cuda/bin/python -m pip install -q -e ".[test]"
  py=.venv-cuda/bin/python
else
  py=python3
  if [ -d .whl ]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/bpnp-site .whl/*.whl
    export PYTHONPATH="$PYTHONPATH:/tmp/bpnp-site"
  fi
fi
echo "[device_check] python: $py ($("$py" -c 'import torch; print("torch", torch.__version__)'))"
exec "$py" scripts/device_check.py "$@"
