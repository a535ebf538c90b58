#!/usr/bin/env bash
# The performance suite on a GPU machine where mmvae-bench is not installed (the lent device
# machines: their image has torch, accelerate, typer, rich, pluggy, but not zuko). Run from the
# repository root; wheels of missing packages in .whl/ (BENCHMARKS.md says how to fetch them).
# Writes $OUT/full-cuda.json (or ./full-cuda.json) and prints the tables. Extra arguments go to
# `mmvae-bench bench` (e.g. --sections hmc,evaluation --compile).
set -euo pipefail
out="${OUT:-.}"
if compgen -G ".whl/*.whl" > /dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl
  export PYTHONPATH="/tmp/site:${PYTHONPATH:-}"
fi
export PYTHONPATH="$PWD:${PYTHONPATH:-}" PYTHONUNBUFFERED=1
# Without an install there are no entry points: load the built-in plugins from their files.
plugins=()
for p in jnf jnf_shared mvae mmvae mopoe; do plugins+=(--plugin "plugins/$p.py"); done
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader || true
python3 -c "from mmvae_bench.cli import main; main()" bench --device cuda --archs polymnist \
  "${plugins[@]}" --out "$out/full-cuda.json" "$@"
