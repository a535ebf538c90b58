"""Training steps in the contiguous and the channels_last format, A/B in one process.

    .venv/bin/python benchmarks/memory_format_ab.py [--archs lite,polymnist,mhd,mnist-svhn]
        [--model jnf] [--threads 1 2] [--rounds 12] [--steps 5] [--out FILE.json]

For each architecture, stage and thread count: two copies of the model (same seed), one with
its nets in channels_last (``--memory-format channels-last``), each with its own fused Adam,
train on the same batch; ``--rounds`` rounds of ``--steps`` real steps (forward, backward,
optimizer step) alternate between them (ABBA order), so the machine's drift hits both alike,
after 3 warm-up steps each. Architectures: ``lite`` is the demo's (polymnist-lite, its real
data, the plugin's defaults for it, batch 64); the others are the published sizes on synthetic
tensors (:mod:`mmvae_bench.perf.archs`; PolyMNIST with ``--preset paper``'s config, the others
with the perf suite's sizes). The CPU's name is recorded: the answer depends on it.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import torch

from mmvae_bench.config import DEFAULT_CACHE_DIR
from mmvae_bench.io import atomic_write_json
from mmvae_bench.memory_format import set_memory_format, supports
from mmvae_bench.plugins import load_registry
from mmvae_bench.presets import preset_values
from mmvae_bench.results import cpu_name
from mmvae_bench.runner import load_dataset, resolve_model_config
from mmvae_bench.train import freeze_for_stage, make_adam

FORMATS = ("contiguous", "channels-last")


def setup(model_name: str, arch: str, cache: Path) -> tuple[Any, Any, Any]:
    """(entry, dataset, config) of ``model_name`` at ``arch``."""
    registry = load_registry()
    entry = registry.model(model_name)
    if arch == "lite":
        ds = load_dataset(registry, "polymnist-lite", cache_dir=cache)
        return entry, ds, resolve_model_config(entry, ds, {}, None)
    from mmvae_bench.perf.archs import get_arch

    a = get_arch(arch)
    presets = entry.presets.get("paper", {})
    if a.name in presets:
        config = resolve_model_config(
            entry, a.dataset(1), {}, preset_values(entry, a.name, "paper", registry.models)
        )
    else:
        config = a.config(entry, quick=False)
    return entry, a.dataset(max(2 * config.batch_size, 64)), config


def measure(
    entry: Any, ds: Any, config: Any, stage_index: int, rounds: int, steps: int
) -> dict[str, Any]:
    """Samples/s of one stage's steps in each format, alternated in this process."""
    batch_size = config.batch_size
    runs = {}
    for fmt in FORMATS:
        torch.manual_seed(0)
        model = entry.cls(ds, config)
        stage = model.stages[stage_index]
        batch = ds.train.batch(torch.arange(batch_size))
        params = freeze_for_stage(model, stage)
        with torch.no_grad():
            cached = model.precompute(batch, stage.name)
        set_memory_format(model, fmt)
        opt = make_adam(params, 1e-4)

        def step(model=model, stage=stage, batch=batch, cached=cached, opt=opt) -> None:
            out = model.loss(batch, stage.name, cached)
            opt.zero_grad(set_to_none=True)
            out["loss"].backward()
            opt.step()

        for _ in range(3):
            step()
        runs[fmt] = (step, stage.name, supports(model))
    total = dict.fromkeys(FORMATS, 0.0)
    for r in range(rounds):
        for fmt in FORMATS if r % 2 == 0 else FORMATS[::-1]:
            t = time.perf_counter()
            for _ in range(steps):
                runs[fmt][0]()
            total[fmt] += time.perf_counter() - t
    samples = rounds * steps * batch_size
    rate = {f: samples / t for f, t in total.items()}
    return {
        "stage": runs["contiguous"][1],
        "batch_size": batch_size,
        "has_convolutions": runs["contiguous"][2],
        "samples_per_s": {f: round(v, 1) for f, v in rate.items()},
        "channels_last_over_contiguous": round(rate["channels-last"] / rate["contiguous"], 3),
    }


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--archs", default="lite,polymnist,mhd,mnist-svhn")
    p.add_argument("--model", default="jnf")
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    p.add_argument("--rounds", type=int, default=12)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE_DIR)
    p.add_argument("--out", type=Path, default=None)
    a = p.parse_args(argv)
    rows = []
    for arch in a.archs.split(","):
        entry, ds, config = setup(a.model, arch, a.cache_dir)
        n_stages = len(entry.cls(ds, config).stages)
        for threads in a.threads:
            torch.set_num_threads(threads)
            for i in range(n_stages):
                row = {"arch": arch, "model": a.model, "threads": threads}
                row |= measure(entry, ds, config, i, a.rounds, a.steps)
                print(json.dumps(row), flush=True)
                rows.append(row)
    if a.out is not None:
        atomic_write_json(
            a.out,
            {
                "cpu": cpu_name(),
                "torch": torch.__version__,
                "command": "benchmarks/memory_format_ab.py",
                "settings": {"rounds": a.rounds, "steps": a.steps, "model": a.model},
                "rows": rows,
            },
        )
    return rows


if __name__ == "__main__":
    main()
