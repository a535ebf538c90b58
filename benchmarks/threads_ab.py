"""Torch threads for the demo's stage-1 step, quiet and beside one other job (issue 14 item 4).

    .venv/bin/python benchmarks/threads_ab.py [--steps 60 --rounds 2 --out FILE.json]

Each configuration runs in a fresh process (OpenMP reads its environment once, when torch
loads): JNF's stage-1 (``joint``) training on polymnist-lite at the demo's settings (batch 64,
default config), ``--steps`` batches, timed by the trainer after one warm-up epoch of 4 batches.
Configurations: 1 thread; 2 threads (OpenMP's default waiting: threads spin between parallel
regions); 2 threads with ``OMP_WAIT_POLICY=PASSIVE`` (threads sleep between regions); ``auto``
(``--threads auto``: the trainer's ThreadGovernor picks 1 or 2 by measuring, its probes
included in the time; their cost amortises over a longer run than ``--steps``). Each runs
quiet and beside one other job (a 1-thread matrix-product loop standing for another run), and the
rounds alternate the configurations so that the machine's drift hits all alike. The CPU name is
recorded: the answer depends on it.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from mmvae_bench.config import DEFAULT_CACHE_DIR
from mmvae_bench.results import cpu_name

CONFIGS = {
    "1 thread": (1, {}),
    "2 threads": (2, {}),
    "2 threads, passive": (2, {"OMP_WAIT_POLICY": "PASSIVE"}),
    "auto": ("auto", {}),
}


def worker(threads: str, steps: int, cache: str) -> None:
    """In the fresh process: stage-1 samples/s of ``steps`` batches after a 4-batch warm-up."""
    import dataclasses

    import torch
    from accelerate import Accelerator

    from mmvae_bench.plugins import load_registry
    from mmvae_bench.runner import load_dataset, resolve_model_config
    from mmvae_bench.train import TrainSettings, train

    auto = threads == "auto"
    torch.set_num_threads(1 if auto else int(threads))
    registry = load_registry()
    ds = load_dataset(registry, "polymnist-lite", cache_dir=cache)
    entry = registry.model("jnf")
    config = resolve_model_config(entry, ds, {}, None)

    def run(n: int):
        part = dataclasses.replace(ds, train=ds.train.subset(torch.arange(n * config.batch_size)))
        torch.manual_seed(0)
        settings = TrainSettings(
            epochs={"joint": 1, "unimodal": 0}, progress=False, adapt_threads=2 if auto else 0
        )
        return train(entry.cls(part, config), part, Accelerator(cpu=True), settings)[0]

    run(4)  # warm-up: allocator, kernels
    report = run(steps)
    row = {"samples_per_s": report.samples_per_s, "wall_s": report.wall_s}
    print(json.dumps({**row, "thread_steps": report.thread_steps}))


LOAD = r"""
import torch, time
torch.set_num_threads(1)
a = torch.randn(512, 512)
while True:
    a = torch.tanh(a @ a)
"""


def measure(name: str, steps: int, cache: str, loaded: bool) -> dict:
    threads, env = CONFIGS[name]
    other = None
    if loaded:
        other = subprocess.Popen([sys.executable, "-c", LOAD])
        time.sleep(2)
    try:
        out = subprocess.run(
            [sys.executable, __file__, "--worker", str(threads), str(steps), cache],
            env={**os.environ, **env},
            capture_output=True,
            text=True,
            check=True,
        )
    finally:
        if other is not None:
            other.kill()
            other.wait()
    row = json.loads(out.stdout.strip().splitlines()[-1])
    return {"config": name, "loaded": loaded, **row}


def main() -> None:
    if sys.argv[1:2] == ["--worker"]:
        threads, steps, cache = sys.argv[2:5]
        return worker(threads, int(steps), cache)
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--cache-dir", default=None, help="default: the suite's cache")
    p.add_argument("--out", type=Path)
    args = p.parse_args()
    cache = args.cache_dir or str(DEFAULT_CACHE_DIR)

    rows = []
    for r in range(args.rounds):
        for loaded in (False, True):
            for name in CONFIGS:
                row = {"round": r, **measure(name, args.steps, cache, loaded)}
                rows.append(row)
                print(json.dumps(row), flush=True)
    print(f"CPU: {cpu_name()}, {os.cpu_count()} cores; stage-1 samples/s, best of rounds")
    for loaded in (False, True):
        for name in CONFIGS:
            best = max(
                x["samples_per_s"] for x in rows if x["config"] == name and x["loaded"] == loaded
            )
            print(f"  {'one other job' if loaded else 'quiet':13s} {name:20s} {best:7.1f}")
    if args.out:
        record = {"command": " ".join(sys.argv), "cpu": cpu_name(), "rows": rows}
        args.out.write_text(json.dumps(record, indent=1) + "\n")


if __name__ == "__main__":
    main()
