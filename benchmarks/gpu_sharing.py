"""One device shared by N concurrent sweep trials: aggregate training samples/s (issue 14 item 5).

    .venv/bin/python benchmarks/gpu_sharing.py --device cuda --trials 1 2 4 8 --out DIR
    .venv/bin/python benchmarks/gpu_sharing.py --device cpu --trials 1 2 --epochs 1 --out DIR

For each N, one real ``mmvae-bench sweep jnf --seeds N`` on a local Ray with every trial
admitted at once (``--max-concurrent N``) and, on a GPU, ``--gpus-per-trial 1/N`` (Ray's
fractional GPUs: all N trials on the one device); on the CPU each trial gets one core. Trials
only train (``--no-evaluate``). Per N it reports, from the trials' run records, each stage's
aggregate samples/s (the trials' own rates added up: they ran side by side) and the sweep's
wall time, so that 1, 2, 4 and 8 trials compare in one run. The CPU name, the device and the
command go in the JSON written to ``DIR/gpu-sharing.json``. Arguments the script does not know
go to ``sweep`` (``--plugin plugins/jnf.py`` where the suite is not installed).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from mmvae_bench.results import cpu_name, scan


def sweep_command(
    n: int, device: str, epochs: int, dataset: str, cpus: int, storage: Path, runs: Path
) -> list[str]:
    """The ``mmvae-bench sweep`` command line of ``n`` concurrent trials."""
    per_trial = max(1, cpus // n) if device == "cpu" else 1
    cmd = [
        sys.executable,
        "-c",
        "from mmvae_bench.cli import main; main()",  # installed or on PYTHONPATH alike
        "sweep",
        "jnf",
        "--dataset",
        dataset,
        "--seeds",
        str(n),
        "--max-concurrent",
        str(n),
        "--cpus",
        str(max(cpus, n * per_trial)),
        "--cpus-per-trial",
        str(per_trial),
        "--threads",
        "1",
        "--epochs",
        str(epochs),
        "--no-evaluate",
        "--device",
        device,
        "--storage",
        str(storage),
        "--name",
        f"share-{n}",
        "--out",
        str(runs),
    ]
    if device == "cuda":
        cmd += ["--gpus-per-trial", f"{1 / n:.6f}"]
    return cmd


def aggregate(runs: Path) -> dict[str, object]:
    """Per stage: the trials' samples/s added up, and each trial's, from the run records."""
    result = scan(runs)
    stages: dict[str, list[float]] = {}
    for _, record in result.records:
        for name, stage in record.stages.items():
            stages.setdefault(name, []).append(stage.samples_per_s)
    return {
        "trials": len(result.records),
        "skipped": [s.path for s in result.skipped],
        "stages": {
            name: {"aggregate_samples_per_s": sum(rates), "per_trial": rates}
            for name, rates in stages.items()
        },
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--trials", type=int, nargs="+", default=[1, 2, 4, 8])
    p.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    p.add_argument("--dataset", default="polymnist-lite")
    p.add_argument("--epochs", type=int, default=2, help="epochs per stage")
    p.add_argument("--cpus", type=int, default=os.cpu_count() or 2)
    p.add_argument("--out", type=Path, required=True)
    args, extra = p.parse_known_args()  # the rest goes to `sweep` (e.g. --plugin FILE)
    args.out.mkdir(parents=True, exist_ok=True)
    record: dict[str, object] = {
        "command": " ".join(sys.argv),
        "cpu": cpu_name(),
        "device": args.device,
        "rows": [],
    }
    if args.device == "cuda":
        import torch

        record["gpu"] = torch.cuda.get_device_name(0)
    for n in args.trials:
        runs = args.out / f"runs-{n}"
        cmd = (
            sweep_command(
                n, args.device, args.epochs, args.dataset, args.cpus, args.out / "ray", runs
            )
            + extra
        )
        t0 = time.perf_counter()
        done = subprocess.run(cmd, capture_output=True, text=True)
        wall = time.perf_counter() - t0
        row = {"n": n, "exit": done.returncode, "wall_s": wall, **aggregate(runs)}
        if done.returncode != 0:
            row["error"] = (done.stderr or done.stdout).strip().splitlines()[-5:]
        record["rows"].append(row)
        (args.out / "gpu-sharing.json").write_text(json.dumps(record, indent=1) + "\n")
        rates = ", ".join(
            f"{name} {s['aggregate_samples_per_s']:.0f}" for name, s in row["stages"].items()
        )
        print(
            f"{n} trial(s): {row['trials']} records, aggregate samples/s: {rates}; "
            f"sweep wall {wall:.0f} s (exit {done.returncode})",
            flush=True,
        )
    print(f"CPU: {record['cpu']}; device: {record.get('gpu', args.device)}")


if __name__ == "__main__":
    main()
