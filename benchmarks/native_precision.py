"""Data at native precision (issue 13 items 1-2): resident bytes and a training A/B.

    .venv/bin/python benchmarks/native_precision.py bytes [--samples 2000]
    .venv/bin/python benchmarks/native_precision.py ab [--dataset polymnist mnist-svhn]
        [--steps 40 --rounds 3 --device cpu --out FILE.json]

``bytes``: per dataset, the data bytes both splits hold at the published sizes, as the loaders
held them (every modality float32, MNIST-SVHN's pairs gathered) and as they hold them now
(``Split.nbytes``: stored dtypes, index pairs), computed from shapes and dtypes; then checked by
loading generated files of ``--samples`` samples per split in the published formats (the test
suite's writers) through the real loaders and scaling their bytes per sample up.

``ab``: stage-1 (``joint``) and stage-2 (``unimodal``) training throughput of JNF in one
process, the same samples stored the former way (float32; MNIST-SVHN's pairs gathered) and the
native way (uint8; MNIST-SVHN as index pairs into its unique images), interleaved over
``--rounds`` so that load on a shared machine hits both alike. The batches are bit-identical
(tests/data/test_native_precision.py), so only the time differs.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests.data.fixtures

from mmvae_bench.data import mhd, mnist_svhn, polymnist  # noqa: E402
from mmvae_bench.data.memory import format_bytes  # noqa: E402
from mmvae_bench.data.spec import (  # noqa: E402
    DataOptions,
    MultimodalDataset,
    Split,
    iter_batches,
)
from mmvae_bench.model import ModelConfig, ModelEntry  # noqa: E402
from mmvae_bench.plugins import load_registry  # noqa: E402
from mmvae_bench.results import cpu_name  # noqa: E402
from mmvae_bench.runner import resolve_model_config  # noqa: E402
from mmvae_bench.train import TrainSettings, train  # noqa: E402
from tests.data.fixtures import write_mhd, write_mnist, write_polymnist, write_svhn  # noqa: E402

# Published sizes (samples per split; MNIST-SVHN: unique images per source and pairs at dm=20
# from the published label counts: min(#MNIST, #SVHN, 10,000) per label summed, times dm).
PUBLISHED = {
    "polymnist": {"train": 60_000, "test": 10_000},
    "mhd": {"train": 50_000, "test": 10_000},
    "mnist": {"train": 60_000, "test": 10_000},
    "svhn": {"train": 73_257, "test": 26_032},
}
DM = 20


def _published_pairs() -> dict[str, int]:
    # per-label counts of the published files (MNIST: torchvision; SVHN: label 10 is digit 0)
    mnist = {
        "train": [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949],
        "test": [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009],
    }
    svhn = {
        "train": [4948, 13861, 10585, 8497, 7458, 6882, 5727, 5595, 5045, 4659],
        "test": [1744, 5099, 4149, 2882, 2523, 2384, 1977, 2019, 1660, 1595],
    }
    return {
        s: DM * sum(min(a, b, 10_000) for a, b in zip(mnist[s], svhn[s], strict=True))
        for s in ("train", "test")
    }


def computed_bytes() -> dict[str, dict[str, int]]:
    """Before/after bytes at the published sizes, from shapes and dtypes alone."""
    poly = 5 * 3 * 28 * 28
    n_poly = sum(PUBLISHED["polymnist"].values())
    n_mhd = sum(PUBLISHED["mhd"].values())
    mhd_values = 28 * 28 + 200 + 32 * 128
    pairs = _published_pairs()
    n_pairs = sum(pairs.values())
    unique = sum(PUBLISHED["mnist"].values()) * 784 + sum(PUBLISHED["svhn"].values()) * 3072
    return {
        "polymnist": {"before": n_poly * (poly * 4 + 8), "after": n_poly * (poly + 8)},
        # after: float32 where nothing narrower is exact (random content; images as k/255 would
        # store 784 bytes instead of 3,136 a sample)
        "mhd": {"before": n_mhd * (mhd_values * 4 + 8), "after": n_mhd * (mhd_values * 4 + 8)},
        "mnist-svhn": {
            "before": n_pairs * ((784 + 3072) * 4 + 8),
            "after": unique + n_pairs * 3 * 8,
        },
    }


def measured_bytes(samples: int, root: Path) -> dict[str, dict[str, float]]:
    """Bytes per sample of generated files through the real loaders, scaled to published."""
    per_class = max(1, samples // 10)
    out: dict[str, dict[str, float]] = {}
    d = root / "polymnist"
    write_polymnist(d, n_per_class=per_class)
    ds = polymnist.load(DataOptions(data_dir=d, cache_dir=root / "cache"))
    out["polymnist"] = _scaled(ds, sum(PUBLISHED["polymnist"].values()))
    d = root / "mhd"
    write_mhd(d, n_per_class=per_class)
    ds = mhd.load(DataOptions(data_dir=d))
    out["mhd"] = _scaled(ds, sum(PUBLISHED["mhd"].values()))
    d = root / "mnist-svhn"
    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        write_mnist(d, split, rng.integers(0, 10, samples).tolist())
        write_svhn(d, split, rng.integers(0, 10, samples).tolist())
    ds = mnist_svhn.load(DataOptions(data_dir=d), dm=DM)
    n_unique = 2 * samples
    images = sum(s.x[m].numel() for s in (ds.train, ds.test) for m in s.x)
    per_pair = (ds.nbytes - images) / (len(ds.train) + len(ds.test))
    pairs = sum(_published_pairs().values())
    unique = sum(PUBLISHED["mnist"].values()) * 784 + sum(PUBLISHED["svhn"].values()) * 3072
    out["mnist-svhn"] = {
        "generated_samples": n_unique,
        "generated_bytes": ds.nbytes,
        "bytes_per_pair_index": per_pair,
        "scaled_bytes": unique * images / (2 * samples * (784 + 3072)) + pairs * per_pair,
    }
    return out


def _scaled(ds: MultimodalDataset, published: int) -> dict[str, float]:
    n = len(ds.train) + len(ds.test)
    return {
        "generated_samples": n,
        "generated_bytes": ds.nbytes,
        "stored": {m: str(t.dtype) for m, t in ds.train.x.items()},
        "scaled_bytes": ds.nbytes / n * published,
    }


def _ab_splits(dataset: str, n: int) -> tuple[dict, Split, Split, int]:
    """(specs, former float32 split, native split, latent dim) of ``n`` random samples."""
    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, 10, (n,), generator=g)
    if dataset == "polymnist":
        stored = {
            f"m{k}": torch.randint(0, 256, (n, 3, 28, 28), generator=g, dtype=torch.uint8)
            for k in range(5)
        }
        native = Split(stored, y, divisor=dict.fromkeys(stored, 255.0))
        floats = Split({m: t.to(torch.float32).div_(255.0) for m, t in stored.items()}, y)
        return dict(polymnist.SPECS), floats, native, 512
    # MNIST-SVHN: unique images, each in DM pairs (as the loader pairs them); formerly the
    # pairs were gathered into float32 tensors, now they are index pairs into uint8 images
    unique = max(1, n // DM)
    stored = {
        "mnist": torch.randint(0, 256, (unique, 1, 28, 28), generator=g, dtype=torch.uint8),
        "svhn": torch.randint(0, 256, (unique, 3, 32, 32), generator=g, dtype=torch.uint8),
    }
    index = {m: torch.randint(0, unique, (n,), generator=g) for m in stored}
    native = Split(stored, y, divisor=dict.fromkeys(stored, 255.0), index=index)
    floats = Split({m: t[index[m]].to(torch.float32).div_(255.0) for m, t in stored.items()}, y)
    return dict(mnist_svhn.SPECS), floats, native, 20


def ab(
    dataset: str, steps: int, rounds: int, device: str, batch_size: int
) -> list[dict[str, float]]:
    """Stage-1 and stage-2 samples/s of JNF, the former float32 storage vs the native one.

    The same random samples stored both ways, interleaved over ``rounds`` in one process so
    that load on a shared machine hits both alike; each round trains a fresh model (same seed)
    one epoch of ``steps`` batches per stage.
    """
    torch.set_num_threads(1)
    registry = load_registry()
    entry = registry.model("jnf")
    specs, floats, native, latent = _ab_splits(dataset, steps * batch_size)
    accelerator = Accelerator(cpu=device == "cpu")
    sides = {
        name: MultimodalDataset(
            name=dataset, specs=dict(specs), train=split, test=split, n_classes=10,
            latent_dim=latent,
        )
        for name, split in (("float32", floats), ("native", native))
    }  # fmt: skip
    rows = []
    for r in range(rounds):
        for name, ds in sides.items():
            split = ds.train
            # the batcher alone: one shuffled epoch of float32 batches (gather + conversion)
            t0 = time.perf_counter()
            for _ in iter_batches(
                split, batch_size, shuffle=True, generator=torch.Generator().manual_seed(r)
            ):
                pass
            batches_s = time.perf_counter() - t0
            torch.manual_seed(0)
            model = entry.cls(ds, _config(entry, ds, batch_size)).to(accelerator.device)
            settings = TrainSettings(epochs={"joint": 1, "unimodal": 1}, progress=False)
            reports = train(model, ds, accelerator, settings)
            row = {
                "dataset": dataset,
                "round": r,
                "storage": name,
                "data_bytes": split.nbytes,
                "batch_ms": 1000 * batches_s / steps,
            }
            for report in reports:
                row[f"{report.name}_samples_per_s"] = report.samples_per_s
                row[f"{report.name}_wall_s"] = report.wall_s
            rows.append(row)
            print(json.dumps(rows[-1]), flush=True)
    return rows


def _median(rows: list[dict], storage: str, key: str) -> float:
    return statistics.median_high(r[key] for r in rows if r["storage"] == storage)


def ab_summary(rows: list[dict]) -> list[dict]:
    """Per dataset and stage: the median samples/s of each storage and their ratio."""
    out = []
    for dataset in dict.fromkeys(r["dataset"] for r in rows):
        mine = [r for r in rows if r["dataset"] == dataset]
        for stage in ("joint", "unimodal"):
            med = {s: _median(mine, s, f"{stage}_samples_per_s") for s in ("float32", "native")}
            out.append(
                {
                    "dataset": dataset,
                    "stage": stage,
                    "float32_median": med["float32"],
                    "native_median": med["native"],
                    "native_over_float32": med["native"] / med["float32"],
                    "batch_ms_float32": _median(mine, "float32", "batch_ms"),
                    "batch_ms_native": _median(mine, "native", "batch_ms"),
                }
            )
    return out


def epoch(data_dir: Path, samples: int, dm: int) -> dict[str, float]:
    """JNF on MNIST-SVHN loaded at full size (``dm``): both stages for one epoch over the first
    ``samples`` pairs, timed; the full epoch is extrapolated in proportion (said so)."""
    torch.set_num_threads(1)
    registry = load_registry()
    entry = registry.model("jnf")
    t0 = time.perf_counter()
    ds = mnist_svhn.load(DataOptions(data_dir=data_dir), dm=dm)
    load_s = time.perf_counter() - t0
    n_full = len(ds.train)
    # a shuffled sample of the pairs, sharing the stored images (Split.subset copies nothing)
    pick = torch.randperm(n_full, generator=torch.Generator().manual_seed(0))[:samples]
    part = dataclasses.replace(ds, train=ds.train.subset(pick))
    torch.manual_seed(0)
    model = entry.cls(part, resolve_model_config(entry, part, {}, None))
    settings = TrainSettings(epochs={"*": 1}, progress=False)
    reports = train(model, part, Accelerator(cpu=True), settings)
    out = {
        "load_s": load_s,
        "resident_data_bytes": ds.nbytes,
        "pairs_train": n_full,
        "pairs_timed": samples,
        "extrapolated": True,
    }
    for r in reports:
        out[f"{r.name}_samples_per_s"] = r.samples_per_s
        out[f"{r.name}_epoch_s_extrapolated"] = r.wall_s * n_full / samples
    print(json.dumps(out), flush=True)
    return out


def _config(entry: ModelEntry, ds: MultimodalDataset, batch_size: int) -> ModelConfig:
    return resolve_model_config(entry, ds, {"batch_size": batch_size}, None)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("bytes")
    b.add_argument("--samples", type=int, default=2000)
    a = sub.add_parser("ab")
    a.add_argument("--dataset", nargs="+", default=["polymnist", "mnist-svhn"])
    a.add_argument("--steps", type=int, default=40)
    a.add_argument("--rounds", type=int, default=3)
    a.add_argument("--batch-size", type=int, default=64)
    a.add_argument("--device", default="cpu")
    a.add_argument("--out", type=Path, help="write the rows and medians as JSON here")
    e = sub.add_parser("epoch")
    e.add_argument("--data-dir", type=Path, required=True)
    e.add_argument("--samples", type=int, default=4096)
    e.add_argument("--dm", type=int, default=DM)
    args = p.parse_args()
    if args.cmd == "bytes":
        computed = computed_bytes()
        with tempfile.TemporaryDirectory(prefix="native-precision-") as tmp:
            measured = measured_bytes(args.samples, Path(tmp))
        for name, c in computed.items():
            m = measured[name]
            print(
                f"{name:11s} before {format_bytes(c['before']):>10s}  after "
                f"{format_bytes(c['after']):>10s}  measured-scaled "
                f"{format_bytes(m['scaled_bytes']):>10s}  ({json.dumps(m)})"
            )
    elif args.cmd == "epoch":
        epoch(args.data_dir, args.samples, args.dm)
    else:
        rows = []
        for dataset in args.dataset:
            rows += ab(dataset, args.steps, args.rounds, args.device, args.batch_size)
        summary = ab_summary(rows)
        for m in summary:
            print(
                f"{m['dataset']:11s} {m['stage']:9s} float32 {m['float32_median']:7.1f}  "
                f"native {m['native_median']:7.1f} samples/s  "
                f"native/float32 {m['native_over_float32']:.3f}  batch "
                f"{m['batch_ms_float32']:.2f} / {m['batch_ms_native']:.2f} ms"
            )
        if args.out:
            record = {
                "command": " ".join(sys.argv),
                "cpu": cpu_name(),
                "threads": 1,
                "torch": torch.__version__,
                "rows": rows,
                "summary": summary,
            }
            args.out.write_text(json.dumps(record, indent=1) + "\n")


if __name__ == "__main__":
    main()
