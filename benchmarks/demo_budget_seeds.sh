#!/usr/bin/env bash
# JNF's one-input coherence on polymnist-lite for two stage-1 budgets over seeds, each followed
# by the same stage 2 (benchmarks/demo_stage2.py: batch 64, 20 epochs, lr 2e-3):
#   demo: stage 1 at batch 64 for 20 epochs (the demo's);
#   b32:  stage 1 at batch 32 for 10 epochs (as many steps, half the samples).
#   bash benchmarks/demo_budget_seeds.sh OUT_DIR [SEED ...]      # default seeds: 1 2
# Stage 1 runs through `mmvae-bench run ... --epochs unimodal=0 --no-evaluate`; every score
# lands in OUT_DIR/<arm>-s<seed>.json. 1 torch thread each (results do not depend on it here).
set -euo pipefail
out=${1:?usage: demo_budget_seeds.sh OUT_DIR [SEED ...]}
shift
seeds=${*:-1 2}
bin=${MMVAE_BENCH:-.venv/bin/mmvae-bench}
py=${PYTHON:-.venv/bin/python}
mkdir -p "$out"
for seed in $seeds; do
  for arm in demo b32; do
    case $arm in
      demo) stage1=(--epochs joint=20) ;;
      b32) stage1=(--set batch_size=32 --epochs joint=10) ;;
    esac
    id="$arm-s$seed"
    [ -f "$out/$id.json" ] && { echo "skip $id"; continue; }
    "$bin" run jnf --dataset polymnist-lite --seed "$seed" "${stage1[@]}" --epochs unimodal=0 \
      --no-evaluate --threads 1 --quick --sampler gmm --out "$out/runs" --run-id "$id" >/dev/null
    "$py" benchmarks/demo_stage2.py "$out/runs/$id" "$id" --set batch_size=64 --epochs 20 \
      --every 20 --threads 1 --out "$out/$id.json" | tail -1
  done
done
