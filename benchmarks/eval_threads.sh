#!/usr/bin/env bash
# The quick protocol's evaluation of one finished run at --threads 1, 2 and auto, on a quiet
# machine and beside one other job (a 1-thread matrix-product loop), one at a time:
#   bash benchmarks/eval_threads.sh RUN_DIR [OUT.jsonl]
# Each configuration evaluates a fresh copy of RUN_DIR (`evaluate --protocol quick --no-fid`)
# and prints one JSON line: wall seconds, the conditional-coherence phase, HMC iterations per
# thread count (auto), coherence for |S| = 1 and 4, the CPU.
set -euo pipefail
run=${1:?usage: eval_threads.sh RUN_DIR [OUT.jsonl]}
out=${2:-/dev/null}
bin=${MMVAE_BENCH:-.venv/bin/mmvae-bench}
py=${PYTHON:-.venv/bin/python}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"; [ -n "${load:-}" ] && kill "$load" 2>/dev/null || true' EXIT
for loaded in 0 1; do
  for threads in ${THREADS_LIST:-1 2 auto}; do
    rm -rf "$tmp/r" && cp -r "$run" "$tmp/r"
    load=
    if [ "$loaded" = 1 ]; then
      "$py" -c "
import torch
torch.set_num_threads(1)
a = torch.randn(512, 512)
while True:
    a = torch.tanh(a @ a)
" &
      load=$!
      sleep 2
    fi
    start=$("$py" -c 'import time; print(time.perf_counter())')
    "$bin" evaluate "$tmp/r" --protocol quick --no-fid --threads "$threads" >"$tmp/log" 2>&1
    end=$("$py" -c 'import time; print(time.perf_counter())')
    if [ -n "$load" ]; then kill "$load" && wait "$load" 2>/dev/null || true; load=; fi
    "$py" - "$tmp/r" "$loaded" "$threads" "$start" "$end" <<'PY' | tee -a "$out"
import json, sys
from pathlib import Path
from mmvae_bench.results import RunRecord, cpu_name
path, loaded, threads, start, end = sys.argv[1:]
m = RunRecord.load(Path(path)).metrics
by = m["conditional_coherence_by_size"]
print(json.dumps({
    "cpu": cpu_name(), "loaded": loaded == "1", "threads": threads,
    "wall_s": round(float(end) - float(start), 1),
    "conditional_coherence_s": round(m["eval_timings"]["conditional_coherence_s"], 1),
    "hmc_thread_steps": m["eval_timings"].get("hmc_thread_steps"),
    "coherence_1": round(by["1"]["mean"], 4), "coherence_4": round(by["4"]["mean"], 4),
}))
PY
  done
done
