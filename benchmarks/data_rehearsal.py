"""The full-size data rehearsal (issue 13, items 5 and 6): published sizes, random content.

Writes MHD, PolyMNIST and MNIST-SVHN files at the published sample counts in the published
formats (the test suite's writers, ``tests/data/fixtures.py``: MHD's ``torch.save`` 6-tuples,
PolyMNIST's PNG folders, MNIST idx and SVHN ``.mat`` files) with random content, then measures
each dataset in fresh processes: load time with no decoded cache ("cold": the suite decodes the
published files; the OS page cache is not dropped, which would need root and disturb others)
and with it ("warm"), time to the first training batch, peak RSS, RSS and PSS after loading,
the bytes the dataset's tensors hold, the time of one training epoch per JNF stage
(extrapolated from ``--steps`` steps: said so in the output) and of the quick protocol (the
perf suite's slice extrapolation with untrained classifiers). ``trials`` starts N processes
that load the same dataset at once, as the trials of a sweep on one node do, and sums their
PSS (``/proc/PID/smaps_rollup``: shared pages counted once over all processes) and RSS.

Usage (from the repository root; timings on a loaded machine are contended)::

    python benchmarks/data_rehearsal.py write --root /tmp/rehearsal
    python benchmarks/data_rehearsal.py measure --root /tmp/rehearsal --dataset polymnist
    python benchmarks/data_rehearsal.py trials --root /tmp/rehearsal --dataset polymnist -n 1 4 8
    python benchmarks/data_rehearsal.py all --root /tmp/rehearsal --out rehearsal.json

``--preset paper`` builds JNF at the published runs' configuration for the epoch and protocol
rows (PolyMNIST and MNIST-SVHN); ``--epoch-samples N`` extrapolates the epoch to N training
samples, so that files written at a ``--scale`` below 1 still give a full epoch's time.

``--scale`` shrinks every count (``--scale 0.001``: tens of samples) for the test that runs in
``make test`` (tests/test_data_rehearsal.py), which checks bytes per sample, not wall time.
Running against another checkout of the suite (the "before" of BENCHMARKS.md): put it first on
``PYTHONPATH``; the writers come from this checkout.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]

#: Published sample counts per dataset and part.
PUBLISHED: dict[str, dict[str, int]] = {
    "mhd": {"train": 50_000, "test": 10_000},
    "polymnist": {"train": 60_000, "test": 10_000},
    "mnist-svhn": {
        "mnist train": 60_000,
        "mnist test": 10_000,
        "svhn train": 73_257,
        "svhn test": 26_032,
    },
}
DATASETS = tuple(PUBLISHED)


def counts(dataset: str, scale: float) -> dict[str, int]:
    """Sample counts at ``scale``: at least 10; multiples of 10 for MHD and PolyMNIST, whose
    writers take a count per label (MNIST and SVHN files take any label list)."""
    if dataset == "mnist-svhn":
        return {k: max(10, round(n * scale)) for k, n in PUBLISHED[dataset].items()}
    return {k: max(10, 10 * round(n * scale / 10)) for k, n in PUBLISHED[dataset].items()}


# -- writing ----------------------------------------------------------------------------------
def write(root: Path, scale: float, datasets: tuple[str, ...] = DATASETS) -> dict[str, Any]:
    """Write the datasets under ``root/<name>`` (skipped where already written at ``scale``)."""
    fixtures = _fixtures()
    out = {}
    for name in datasets:
        folder = root / name
        marker = folder / ".written.json"
        want = {"scale": scale, "counts": counts(name, scale)}
        if marker.is_file() and json.loads(marker.read_text()) == want:
            out[name] = {"written_s": None, "skipped": True}
            continue
        t0 = time.perf_counter()
        c = want["counts"]
        folder.mkdir(parents=True, exist_ok=True)
        if name == "mhd":
            import torch

            for i, split in enumerate(("train", "test")):  # write_mhd's format, per-split sizes
                t = fixtures.mhd_tuple(c[split] // 10, seed=i)
                torch.save(t, folder / f"mhd_{split}.pt")
        elif name == "polymnist":
            for i, split in enumerate(("train", "test")):
                fixtures.write_polymnist(
                    folder, n_per_class=c[split] // 10, splits=(split,), seed=i
                )
        else:
            import numpy as np

            rng = np.random.default_rng(0)
            for split in ("train", "test"):
                for src, writer in (("mnist", fixtures.write_mnist), ("svhn", fixtures.write_svhn)):
                    n = c[f"{src} {split}"]
                    writer(folder, split, rng.permutation(np.arange(n) % 10))
        marker.write_text(json.dumps(want))
        out[name] = {"written_s": time.perf_counter() - t0, "skipped": False}
    return out


def _fixtures() -> Any:
    """``tests/data/fixtures.py`` of this checkout (the suite's format writers), by file path:
    the suite under measurement may come from another checkout on ``PYTHONPATH``."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "rehearsal_fixtures", REPO / "tests" / "data" / "fixtures.py"
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def caches(root: Path, dataset: str) -> list[Path]:
    """The decoded-data caches the suite keeps for ``dataset`` (deleted for a cold load)."""
    folder = root / dataset
    found = list((folder / "MMNIST").glob(".mmvae_bench_*")) if dataset == "polymnist" else []
    found += list(folder.glob(".mmvae_bench_*"))
    cache_dir = root / "cache"
    if cache_dir.is_dir():
        found += [p for p in cache_dir.rglob("*") if p.is_file() and dataset in p.name]
    return found


# -- measuring one process --------------------------------------------------------------------
def smaps_rollup(pid: int | str = "self") -> dict[str, int]:
    """Rss, Pss and their anonymous/file parts of a process, in bytes (Linux)."""
    out = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]:
        key, _, rest = line.partition(":")
        parts = rest.split()
        if parts and parts[-1] == "kB":
            out[key.strip()] = int(parts[0]) * 1024
    return out


def peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # kB on Linux


def tensor_bytes(dataset: Any) -> dict[str, int]:
    """Bytes held by the dataset's tensors (each storage once), per split."""
    out = {}
    for split_name in ("train", "test"):
        split = getattr(dataset, split_name)
        tensors = [*split.x.values(), split.y, *getattr(split, "index", {}).values()]
        seen: dict[int, int] = {}
        for t in tensors:
            s = t.untyped_storage()
            seen[s.data_ptr()] = s.nbytes()
        out[split_name] = sum(seen.values())
    return out


def first_batch(dataset: Any, batch_size: int) -> dict[str, Any]:
    """The first training batch as float32, through whatever batch API the suite has."""
    split = dataset.train
    if hasattr(split, "batch"):
        return split.batch(slice(0, batch_size))
    return {m: t[:batch_size].float() for m, t in split.x.items()}


def measure_process(
    root: Path,
    dataset: str,
    *,
    steps: int,
    protocol: bool,
    threads: int,
    preset: str | None = None,
    epoch_samples: int | None = None,
) -> dict[str, Any]:
    """Load ``dataset`` in this process and measure it (see the module docstring)."""
    import torch

    torch.set_num_threads(threads)
    from mmvae_bench.plugins import load_registry
    from mmvae_bench.runner import load_dataset

    registry = load_registry()
    base = smaps_rollup()
    t0, c0 = time.perf_counter(), time.process_time()
    ds = load_dataset(registry, dataset, data_dir=root / dataset, cache_dir=root / "cache")
    load_s = time.perf_counter() - t0
    batch = first_batch(ds, 128)
    first_batch_s = time.perf_counter() - t0
    # CPU seconds of this process: what the wall time would be on an idle core (the wall
    # times of a loaded machine are contended)
    first_batch_cpu_s = time.process_time() - c0
    after = smaps_rollup()
    held = tensor_bytes(ds)
    n = {"train": len(ds.train), "test": len(ds.test)}
    rec: dict[str, Any] = {
        "dataset": dataset,
        "samples": n,
        "load_s": load_s,
        "first_batch_s": first_batch_s,
        "first_batch_cpu_s": first_batch_cpu_s,
        "batch_dtypes": sorted({str(v.dtype) for v in batch.values()}),
        "data_bytes": held,
        "data_bytes_per_sample": sum(held.values()) / sum(n.values()),
        "rss_bytes": after["Rss"],
        "pss_bytes": after["Pss"],
        "rss_data_bytes": after["Rss"] - base["Rss"],
        "pss_data_bytes": after["Pss"] - base["Pss"],
        "peak_rss_bytes": peak_rss_bytes(),
        "baseline_rss_bytes": base["Rss"],
    }
    del batch
    if preset:
        rec["preset"] = preset
    if steps:
        rec["epoch"] = _epoch_time(registry, ds, steps, preset, epoch_samples)
    if protocol:
        rec["quick_protocol"] = _quick_protocol(registry, ds, preset)
    rec["peak_rss_bytes"] = peak_rss_bytes()
    return rec


def _jnf(registry: Any, ds: Any, preset: str | None = None) -> Any:
    import torch

    from mmvae_bench.runner import resolve_model_config

    entry = registry.model("jnf")
    torch.manual_seed(0)
    if preset is None:  # the call older checkouts (the "before" builds) understand
        return entry.cls(ds, resolve_model_config(entry, ds, {}))
    from mmvae_bench.presets import preset_values

    values = preset_values(entry, ds.name, preset, registry.models)
    return entry.cls(ds, resolve_model_config(entry, ds, {}, values))


def _validation_fraction(dataset: str, preset: str | None) -> float:
    if preset is None:
        return 0.0
    from mmvae_bench.presets import TRAINING

    return TRAINING[preset][dataset].validation


def _epoch_time(
    registry: Any,
    ds: Any,
    steps: int,
    preset: str | None = None,
    epoch_samples: int | None = None,
) -> dict[str, Any]:
    """Seconds per JNF stage, extrapolated to one epoch from ``steps`` steps.

    Each stage trains two epochs of ``steps`` batches through the real trainer; the second
    epoch (from the end of the first to its own end, so without set-up or warm-up) is timed.
    One epoch is ``epoch_samples`` training samples (default: ``ds.train``'s), less the
    preset's validation fraction; the validation pass itself is not timed.
    """
    import torch
    from accelerate import Accelerator

    from mmvae_bench.train import TrainSettings, train

    model = _jnf(registry, ds, preset)
    stages = [s.name for s in model.stages]
    bs = model.config.batch_size
    sub = ds.train.subset(torch.arange(min(len(ds.train), steps * bs)))
    small = type(ds)(**{**{f: getattr(ds, f) for f in ds.__dataclass_fields__}, "train": sub})
    n = (epoch_samples or len(ds.train)) * (1.0 - _validation_fraction(ds.name, preset))
    out: dict[str, Any] = {
        "batch_size": bs,
        "steps": steps,
        "extrapolated": True,
        "epoch_samples": n,
        "parameters": sum(p.numel() for p in model.parameters()),
    }
    batches = math.ceil(n / bs)
    for stage in stages:
        ends: list[float] = []
        epochs = {s: 0 for s in stages} | {stage: 2}
        train(
            model,
            small,
            Accelerator(cpu=True),
            TrainSettings(epochs=epochs, progress=False),
            on_epoch=lambda s, e, m, ends=ends: ends.append(time.perf_counter()),
        )
        took = ends[-1] - ends[-2]
        out[stage] = {"s_per_step": took / steps, "epoch_s": took / steps * batches}
    out["epoch_s"] = sum(out[s]["epoch_s"] for s in stages)
    return out


def _quick_protocol(registry: Any, ds: Any, preset: str | None = None) -> dict[str, Any]:
    import torch

    from mmvae_bench.eval.protocol import PROTOCOLS
    from mmvae_bench.perf.evaluation import protocol_time, random_classifiers

    model = _jnf(registry, ds, preset).eval()
    device = torch.device("cpu")
    t = protocol_time(
        model, ds, random_classifiers(ds, device), PROTOCOLS["quick"], len(ds.test), device
    )
    return {"total_s": t.get("total_s"), "extrapolated": True, "detail": t}


# -- concurrent trials ------------------------------------------------------------------------
_TRIAL = """
import json, sys, time
from pathlib import Path
sys.path.insert(0, {bench!r})
import data_rehearsal as r
import torch
torch.set_num_threads(1)
from mmvae_bench.plugins import load_registry
from mmvae_bench.runner import load_dataset
reg = load_registry()
base = r.smaps_rollup()
t0 = time.perf_counter()
ds = load_dataset(reg, {dataset!r}, data_dir=Path({data!r}), cache_dir=Path({cache!r}))
b = r.first_batch(ds, 128)
# a trial touches every training sample in its first epoch: read them all once
for name in ds.train.x:
    t = ds.train.x[name]
    for i in range(0, len(t), 4096):
        t[i : i + 4096].sum()
took = time.perf_counter() - t0
Path({ready!r}).touch()
while len(list(Path({sync!r}).glob("ready-*"))) < {n}:
    time.sleep(0.05)
m = r.smaps_rollup()
print(json.dumps({{"pid": __import__("os").getpid(), "load_s": took, "rss": m["Rss"],
    "pss": m["Pss"], "base_rss": base["Rss"], "base_pss": base["Pss"],
    "data_bytes": sum(r.tensor_bytes(ds).values())}}))
time.sleep(1.0)  # stay alive while the others read their numbers
"""


def trials(root: Path, dataset: str, n: int) -> dict[str, Any]:
    """Start ``n`` processes loading ``dataset`` at once; sum their memory while all live."""
    import tempfile

    with tempfile.TemporaryDirectory(prefix="trials-") as sync:
        procs = []
        for i in range(n):
            code = _TRIAL.format(
                bench=str(Path(__file__).parent),
                dataset=dataset,
                data=str(root / dataset),
                cache=str(root / "cache"),
                ready=f"{sync}/ready-{i}",
                sync=sync,
                n=n,
            )
            # cwd: `python -c` puts the working directory first on sys.path, which would
            # shadow a checkout given on PYTHONPATH
            procs.append(
                subprocess.Popen(
                    [sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, cwd=sync
                )
            )
        rows = []
        for p in procs:
            out, _ = p.communicate()
            if p.returncode != 0:
                raise SystemExit(f"a trial process failed (exit {p.returncode})")
            rows.append(json.loads(out.strip().splitlines()[-1]))
    pss_data = [r["pss"] - r["base_pss"] for r in rows]
    rss_data = [r["rss"] - r["base_rss"] for r in rows]
    return {
        "trials": n,
        "sum_pss_bytes": sum(r["pss"] for r in rows),
        "sum_rss_bytes": sum(r["rss"] for r in rows),
        "sum_pss_data_bytes": sum(pss_data),
        "sum_rss_data_bytes": sum(rss_data),
        "max_load_s": max(r["load_s"] for r in rows),
        "data_bytes_per_trial": rows[0]["data_bytes"],
        "per_trial": rows,
    }


# -- driver ------------------------------------------------------------------------------------
def _subprocess_measure(args: argparse.Namespace, dataset: str, **extra: Any) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "measure", "--root", str(args.root), "--dataset", dataset]
    cmd += ["--steps", str(extra.get("steps", 0)), "--threads", str(args.threads)]
    if extra.get("protocol"):
        cmd.append("--protocol")
    if args.preset:
        cmd += ["--preset", args.preset]
    if args.epoch_samples:
        cmd += ["--epoch-samples", str(args.epoch_samples)]
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0:
        tail = (res.stderr or res.stdout).strip().splitlines()[-3:]
        return {"dataset": dataset, "failed": True, "exit": res.returncode, "error": tail}
    return json.loads(res.stdout.strip().splitlines()[-1])


def run_all(args: argparse.Namespace) -> dict[str, Any]:
    record: dict[str, Any] = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "scale": args.scale,
        "cpu": _cpu_name(),
        "load_average_start": list(os.getloadavg()),
        "written": write(args.root, args.scale, tuple(args.datasets)),
        "datasets": {},
    }
    for name in args.datasets:
        for p in caches(args.root, name):
            p.unlink()
        cold = _subprocess_measure(args, name)
        warm = _subprocess_measure(args, name, steps=args.steps, protocol=args.protocol)
        record["datasets"][name] = {"cold": cold, "warm": warm}
        _save(args.out, record)
    if args.trials:
        record["trials"] = {str(n): trials(args.root, args.trials_dataset, n) for n in args.trials}
    record["load_average_end"] = list(os.getloadavg())
    _save(args.out, record)
    return record


def _save(out: Path | None, record: dict[str, Any]) -> None:
    if out is not None:
        tmp = out.with_name(f".{out.name}.tmp")
        tmp.write_text(json.dumps(record, indent=2) + "\n")
        os.replace(tmp, out)


def _cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "unknown"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    for name in ("write", "measure", "trials", "all"):
        s = sub.add_parser(name)
        s.add_argument("--root", type=Path, required=True, help="where the files are written")
        s.add_argument("--scale", type=float, default=1.0, help="fraction of published counts")
        s.add_argument("--threads", type=int, default=1)
        if name in ("measure", "trials"):
            s.add_argument("--dataset", choices=DATASETS, required=True)
        if name in ("measure", "all"):
            s.add_argument("--steps", type=int, default=0, help="training steps per stage")
            s.add_argument("--protocol", action="store_true", help="time the quick protocol")
            s.add_argument("--preset", default=None, help="model config preset (paper)")
            s.add_argument(
                "--epoch-samples",
                type=int,
                default=None,
                help="training samples the epoch is extrapolated to (default: the loaded split)",
            )
        if name == "trials":
            s.add_argument("-n", type=int, nargs="+", default=[1, 4, 8])
        if name == "all":
            s.add_argument("--datasets", nargs="+", choices=DATASETS, default=list(DATASETS))
            s.add_argument("--trials", type=int, nargs="*", default=[])
            s.add_argument("--trials-dataset", choices=DATASETS, default="polymnist")
            s.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    if args.cmd == "write":
        print(json.dumps(write(args.root, args.scale)))
    elif args.cmd == "measure":
        print(
            json.dumps(
                measure_process(
                    args.root,
                    args.dataset,
                    steps=args.steps,
                    protocol=args.protocol,
                    threads=args.threads,
                    preset=args.preset,
                    epoch_samples=args.epoch_samples,
                )
            )
        )
    elif args.cmd == "trials":
        print(json.dumps({str(n): trials(args.root, args.dataset, n) for n in args.n}))
    else:
        print(json.dumps(run_all(args), indent=2))


if __name__ == "__main__":
    main()
