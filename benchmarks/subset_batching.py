"""Conditional coherence with subsets sampled one by one vs all subsets of a size at once.

The evaluation asks the model for every subset of a size in one ``encode_subsets`` call; JNF
answers with one HMC call (one target whose rows are (subset, datapoint) pairs) and runs each
unimodal encoder once. The per-subset path is the base class's default ``encode_subsets`` (one
``encode`` per subset: encoders and HMC once per subset), the way the evaluation sampled
before. Both run in this process, alternated, on one trained run, with the protocol's
settings; the coherence of the two differs only by Monte Carlo noise.

    python benchmarks/subset_batching.py RUN_DIR [--protocol quick] [--repeats 2] [--threads 1]
    python benchmarks/subset_batching.py RUN_DIR --repeats 0 --profile   # where a call's time goes
"""

from __future__ import annotations

import argparse
import json
import time
import types
from pathlib import Path

import torch

from mmvae_bench.data.spec import Split, iter_batches
from mmvae_bench.eval.classifiers import get_classifiers
from mmvae_bench.eval.coherence import conditional_coherence, test_subsample
from mmvae_bench.eval.protocol import COND_COHERENCE_BY_SIZE, Protocol, get_protocol
from mmvae_bench.model import MultimodalVAE, all_subsets
from mmvae_bench.plugins import load_registry
from mmvae_bench.results import cpu_name
from mmvae_bench.runner import load_run


def profile_call(model: MultimodalVAE, test: Split, protocol: Protocol) -> None:
    """Wall time and the operators' self CPU time of one batched call: every |S| = 2 subset of
    one protocol batch of test points."""
    from torch.profiler import ProfilerActivity, profile

    batch, _ = next(iter(iter_batches(test, protocol.batch_size, shuffle=False)))
    group = [s for s in all_subsets(model.modalities, proper=True) if len(s) == 2]
    with torch.no_grad():
        t0 = time.perf_counter()
        model.encode_subsets(batch, group, 1, hmc=protocol.hmc)
        print(f"one call, |S|=2 ({len(group)} subsets): {time.perf_counter() - t0:.1f} s")
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            model.encode_subsets(batch, group, 1, hmc=protocol.hmc)
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=8))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run_dir", type=Path)
    ap.add_argument("--protocol", default="quick")
    ap.add_argument("--hmc", default=None, help="paper or adaptive (default: the protocol's)")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, default=None, help="write the figures as JSON here")
    ap.add_argument(
        "--profile", action="store_true", help="profile one batched call (|S|=2, one test batch)"
    )
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model, dataset, record = load_run(args.run_dir, load_registry())
    protocol = get_protocol(args.protocol, args.hmc)
    cache = Path(record.run.get("cache_dir") or ".cache/mmvae-bench")
    classifiers = get_classifiers(dataset, cache, train_if_missing=False)
    test = test_subsample(dataset.test, protocol)
    per_subset = types.MethodType(MultimodalVAE.encode_subsets, model)
    batched = model.encode_subsets
    rows: dict[str, list[dict]] = {"per-subset": [], "batched": []}
    for rep in range(args.repeats):
        for name, fn in (("per-subset", per_subset), ("batched", batched)):
            model.encode_subsets = fn  # type: ignore[method-assign]
            torch.manual_seed(rep)
            t0 = time.perf_counter()
            out = conditional_coherence(model, test, classifiers, protocol, dataset.n_classes)
            wall = time.perf_counter() - t0
            by_size = {k: round(v["mean"], 4) for k, v in out[COND_COHERENCE_BY_SIZE].items()}
            rows[name].append({"wall_s": round(wall, 2), "coherence_by_size": by_size})
            print(f"{name:>10} repeat {rep}: {wall:6.1f} s  coherence by |S| {by_size}", flush=True)
    if args.profile:
        profile_call(model, test, protocol)
    if not args.repeats:
        return
    best = {k: min(r["wall_s"] for r in v) for k, v in rows.items()}
    print(
        f"speed-up {best['per-subset'] / best['batched']:.2f}x (best of {args.repeats}); "
        f"{record.model} on {record.dataset}, protocol {protocol.name} ({protocol.hmc.label}), "
        f"{len(test)} test points, {args.threads} thread(s), CPU {cpu_name()}"
    )
    if args.out:
        args.out.write_text(
            json.dumps(
                {
                    "run": str(args.run_dir),
                    "model": record.model,
                    "dataset": record.dataset,
                    "protocol": protocol.name,
                    "hmc": protocol.hmc.label,
                    "threads": args.threads,
                    "cpu": cpu_name(),
                    "runs": rows,
                },
                indent=1,
            )
        )


if __name__ == "__main__":
    main()
