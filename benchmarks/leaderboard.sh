#!/usr/bin/env bash
# Regenerate the committed leaderboards: every built-in model x 3 seeds on a built-in dataset,
# quick protocol, trained and evaluated by the suite's own commands on this machine.
#   bash benchmarks/leaderboard.sh circles-squares --epochs 5    # extra options go to `run`
#   EVAL_OPTS=--no-fid bash benchmarks/leaderboard.sh polymnist-lite --epochs 2
#   RUNS=runs/report SEEDS=0 MODELS="mvae mopoe" bash benchmarks/leaderboard.sh polymnist-lite
# Then: mmvae-bench leaderboard build --runs runs/leaderboard --out leaderboards
# A run whose record already holds metrics is skipped, so an interrupted script resumes.
set -euo pipefail
dataset=${1:?usage: leaderboard.sh DATASET [run options...]}
shift
bin=${MMVAE_BENCH:-.venv/bin/mmvae-bench}
models=${MODELS:-"jnf jnf-shared mvae mmvae mopoe"}
eval_opts=${EVAL_OPTS:-"--fid --fid-extractor classifier"}
runs=${RUNS:-runs/leaderboard}
# shellcheck disable=SC2206
run_opts=(${RUN_OPTS:---threads 1})
for seed in ${SEEDS:-0 1 2}; do
  for model in $models; do
    id="$model-$dataset-s$seed"
    record="$runs/$id/results.json"
    if [ -f "$record" ] && grep -q '"conditional_coherence"' "$record"; then
      echo "skip $id (evaluated)"
      continue
    fi
    "$bin" run "$model" --dataset "$dataset" --seed "$seed" --quick --no-evaluate \
      "${run_opts[@]}" --out "$runs" --run-id "$id" --sampler gmm "$@"
    # shellcheck disable=SC2086
    "$bin" evaluate "$runs/$id" --protocol quick $eval_opts "${run_opts[@]}"
  done
done
