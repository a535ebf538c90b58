#!/usr/bin/env bash
# benchmarks/leaderboard.sh on one GPU machine, every (model, seed) run at once, for a machine
# where mmvae-bench is not installed (the lent device machines: torch, accelerate, typer, rich,
# pluggy are there; zuko and torch-fidelity come as wheels in .whl/, BENCHMARKS.md says how).
#   BUDGET_S=420 bash benchmarks/leaderboard_gpu.sh polymnist-lite     # extra options go to run
# A copied tree has no .git: name its commit (MMVAE_BENCH_GIT_REVISION=<sha> ...) so the
# records say which code produced them.
# Writes runs/leaderboard-gpu/ and, when $OUT is set, $OUT/leaderboard-gpu.tgz with every
# record and log (what finished within BUDGET_S seconds; the rest is killed and its log kept).
# The runs share the GPU, so their per-stage times are contended: quote them as such.
set -uo pipefail
dataset=${1:?usage: leaderboard_gpu.sh DATASET [run options...]}
shift
runs=${RUNS:-runs/leaderboard-gpu}
models=${MODELS:-"jnf jnf-shared mvae mmvae mopoe"}
device=${DEVICE:-cuda}  # DEVICE=cpu: a dry run of this script anywhere
export PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
mkdir -p "$runs"
site=/tmp/site
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
  --target "$site" .whl/*.whl || exit 1
# The package itself, so the built-in plugins come through their entry points as installed.
python3 -m pip install -q --no-index --no-deps --no-build-isolation --no-compile --upgrade \
  --target "$site" . || exit 1
export PYTHONPATH="$site" PATH="$site/bin:$PATH"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
# MPS lets the concurrent runs' small kernels overlap instead of time-slicing the GPU.
if [ "$device" = cuda ] && nvidia-cuda-mps-control -d 2>/dev/null; then
  if timeout 60 python3 -c "import torch; torch.ones(1, device='cuda').sum().item()"; then
    echo "MPS on"
  else
    echo quit | nvidia-cuda-mps-control; echo "MPS off (a client failed)"
  fi
fi
# Dataset and classifiers once, before the runs race to create them.
python3 - "$dataset" "$device" <<'EOF' || exit 1
import sys, time
from mmvae_bench.config import DEFAULT_CACHE_DIR
from mmvae_bench.eval.classifiers import dataset_fingerprint, get_classifiers
from mmvae_bench.plugins import load_registry
from mmvae_bench.runner import load_dataset
t = time.perf_counter()
ds = load_dataset(load_registry(), sys.argv[1])
clf = get_classifiers(ds, DEFAULT_CACHE_DIR, device=sys.argv[2])
print(ds.name, "fingerprint", dataset_fingerprint(ds), "classifiers", {m: round(c.accuracy, 3) for m, c in clf.items()},
      f"ready in {time.perf_counter() - t:.0f} s")
EOF
t0=$(date +%s)
pids=()
for seed in ${SEEDS:-0 1 2}; do
  for model in $models; do
    MODELS=$model SEEDS=$seed RUNS=$runs MMVAE_BENCH="$site/bin/mmvae-bench" \
      RUN_OPTS="--threads 1 --device $device" \
      setsid bash benchmarks/leaderboard.sh "$dataset" "$@" >"$runs/$model-s$seed.log" 2>&1 &
    pids+=($!)  # its own session: killed as a group at the budget, nothing else is
  done
done
while [ -n "$(jobs -r)" ] && [ $(($(date +%s) - t0)) -lt "${BUDGET_S:-420}" ]; do sleep 5; done
echo "runs ended or budget reached after $(($(date +%s) - t0)) s; still running: $(jobs -r | wc -l)"
for pid in "${pids[@]}"; do kill -- "-$pid" 2>/dev/null; done
sleep 2
grep -l '"conditional_coherence"' "$runs"/*/results.json | wc -l | xargs echo "evaluated runs:"
if [ -n "${OUT:-}" ]; then
  tar czf "$OUT/leaderboard-gpu.tgz" "$runs"/*.log "$runs"/*/results.json "$runs"/*/*.png \
    2>/dev/null
fi
tail -n 3 "$runs"/*.log
