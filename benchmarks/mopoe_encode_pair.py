"""MoPoE's conditional generation before and after issue 12's fix, on one trained checkpoint.

    .venv/bin/python benchmarks/mopoe_encode_pair.py RUN_DIR [--out FILE.json]

``RUN_DIR`` is a finished MoPoE run (``mmvae-bench run mopoe ...``). The checkpoint is loaded
once and conditional coherence is computed twice under the run's protocol, seeded like
``mmvae-bench evaluate`` (the run's seed): with ``encode(S)`` as it is now (the product of S's
experts) and with the pre-fix ``encode(S)`` put back (a uniform mixture of the products of every
non-empty subset of S). The pair differs only in ``encode``. Joint coherence is recomputed with
a GMM refitted on the current ``encode(all)``; the record's own figures are printed beside (a
run trained and evaluated before the fix holds the mixture's). Classifiers come from the run's
cache folder. Results in CROSSCHECKS.md.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from mmvae_bench.api import LatentSample, reparameterize
from mmvae_bench.config import DEFAULT_CACHE_DIR
from mmvae_bench.eval.classifiers import get_classifiers
from mmvae_bench.eval.coherence import conditional_coherence, joint_coherence, test_subsample
from mmvae_bench.eval.protocol import COND_COHERENCE_BY_SIZE, JOINT_COHERENCE, get_protocol
from mmvae_bench.io import atomic_write_json
from mmvae_bench.plugins import load_registry
from mmvae_bench.runner import load_run
from mmvae_bench.samplers import fit_sampler


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--out", type=Path, help="also write the figures to this JSON file")
    args = parser.parse_args()
    torch.set_num_threads(1)

    model, dataset, record = load_run(args.run_dir, load_registry(()))
    if record.model != "mopoe":
        parser.error(f"{args.run_dir} is a {record.model} run, not mopoe")
    protocol = get_protocol(record.protocol.get("name", "full"))
    cache = Path(record.run.get("cache_dir") or DEFAULT_CACHE_DIR)
    classifiers = get_classifiers(dataset, cache, device=torch.device("cpu"))
    test = test_subsample(dataset.test, protocol)

    def coherence_by_size() -> dict:
        torch.manual_seed(record.seed)
        out = conditional_coherence(model, test, classifiers, protocol, dataset.n_classes)
        return out[COND_COHERENCE_BY_SIZE]

    def mixture_encode(batch, subset, n=1, *, hmc=None) -> LatentSample:  # before the fix
        subset = model.check_subset(subset)
        _, mus, logvars = model.subset_posteriors(batch, subset)
        return LatentSample(reparameterize(*model._pick(mus, logvars, n)))

    product = coherence_by_size()
    model.encode = mixture_encode
    mixture = coherence_by_size()
    del model.encode  # back to the class's encode
    sampler = fit_sampler("gmm", model, dataset.train, device="cpu", seed=record.seed)
    torch.manual_seed(record.seed)
    joint = joint_coherence(
        model,
        classifiers,
        protocol.joint_samples,
        dataset.n_classes,
        latent_sampler=sampler.sample,
    )[JOINT_COHERENCE]
    metrics = record.metrics or {}
    result = {
        "run": str(args.run_dir),
        "seed": record.seed,
        "protocol": protocol.name,
        "product": product,
        "mixture": mixture,
        "joint_gmm_product": joint,
        "record_by_size": metrics.get(COND_COHERENCE_BY_SIZE),
        "record_joint": metrics.get(JOINT_COHERENCE),
    }
    print(json.dumps(result, indent=1))
    if args.out:
        atomic_write_json(args.out, result)


if __name__ == "__main__":
    main()
