"""E1 of the JNF paper on circles-squares: 2-d latent maps of the joint and unimodal posteriors.

    .venv/bin/python benchmarks/e1_latent_maps.py [--epochs-joint 30 --epochs-unimodal 20]
        [--flow-depth 2] [--seed 0] [--points 400 --samples 10]
        [--out benchmarks/figures/e1_latent_maps.png]

Trains JNF with ``latent_dim = 2`` on circles-squares (stage ``joint``, then ``unimodal`` with K
MADE blocks per posterior; one torch thread by default), then trains a second set of unimodal
posteriors on the same frozen joint encoder and decoders with no flow (K = 0: a diagonal
Gaussian q_j(z|x_j) from its encoder, what a unimodal encoder alone gives). One figure, rows
the modalities (circle, square), columns:

1. q(z | x_circle, x_square), the joint posterior: what each q_j is fitted to (same in both rows);
2. q_j(z | x_j) Gaussian, trained alone (K = 0);
3. the Gaussian base of the flow posterior (its encoder's output before the flow);
4. q_j(z | x_j) with its flow (K blocks).

Each panel holds ``--samples`` draws for each of ``--points`` test points, coloured by class
(filled or ring, the one thing the modalities share). Beside the PNG, a JSON file holds the
settings and, per modality and variant, the test mean of -log q_j(z | x_j) at z ~ q(z | X)
(the stage-2 loss on the test split, nats; lower fits the joint posterior better).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import torch
from accelerate import Accelerator
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from anywhere

from mmvae_bench.api import FlowPosterior, MultimodalDataset, reparameterize  # noqa: E402
from mmvae_bench.io import atomic_write_json  # noqa: E402
from mmvae_bench.model import MultimodalVAE  # noqa: E402
from mmvae_bench.plots import latent_maps  # noqa: E402
from mmvae_bench.plugins import load_registry  # noqa: E402
from mmvae_bench.runner import load_dataset, resolve_model_config  # noqa: E402
from mmvae_bench.train import TrainSettings, train  # noqa: E402

DEFAULT_OUT = Path("benchmarks/figures/e1_latent_maps.png")
CLASS_NAMES = ("ring", "filled")  # circles-squares: label 1 = both shapes filled


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--epochs-joint", type=int, default=30, help="stage 1 epochs (JNF's default)")
    p.add_argument("--epochs-unimodal", type=int, default=20, help="stage 2 epochs, both variants")
    p.add_argument("--flow-depth", type=int, default=2, help="K MADE blocks per q_j")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--points", type=int, default=400, help="test points drawn in each panel")
    p.add_argument("--samples", type=int, default=10, help="draws per test point")
    p.add_argument("--train-limit", type=int, default=None, help="first N training samples only")
    p.add_argument("--threads", type=int, default=1, help="torch threads")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="PNG; the JSON goes beside it")
    return p.parse_args(argv)


def gaussian_twin(model: MultimodalVAE, dataset: MultimodalDataset) -> MultimodalVAE:
    """A JNF with ``model``'s joint part (copied) and fresh unimodal Gaussian posteriors (K = 0)."""
    twin = type(model)(dataset, model.config)
    for name in model.stages[0].modules:  # stage ``joint``: encoders, merge, decoders
        getattr(twin, name).load_state_dict(getattr(model, name).state_dict())
    twin.posteriors = nn.ModuleDict(
        {
            m: FlowPosterior(q.base.linear.in_features, model.latent_dim, depth=0)
            for m, q in model.posteriors.items()
        }
    )
    return twin


@torch.no_grad()
def test_nll(model: MultimodalVAE, dataset: MultimodalDataset, n_batch: int = 500) -> dict:
    """Test mean of -log q_j(z | x_j), z ~ q(z | X), per modality (the stage-2 loss)."""
    totals = {m: 0.0 for m in model.specs}
    n = len(dataset.test.y)
    for start in range(0, n, n_batch):
        batch = dataset.test.batch(slice(start, min(start + n_batch, n)))
        z = reparameterize(*model.joint_posterior(batch))
        for m in model.specs:
            totals[m] -= float(model.unimodal_posterior(batch, m).log_prob(z).sum())
    return {m: round(t / n, 4) for m, t in totals.items()}


@torch.no_grad()
def draws(model: MultimodalVAE, dataset: MultimodalDataset, points: int, samples: int) -> dict:
    """(samples, points, 2) draws of the joint posterior and, per modality, of q_j and its base."""
    batch = dataset.test.batch(slice(0, points))
    out = {
        "joint": reparameterize(*(t.expand(samples, -1, -1) for t in model.joint_posterior(batch)))
    }
    for m in model.specs:
        q = model.unimodal_posterior(batch, m)
        out[m] = q.rsample((samples,))
        base = getattr(q, "base", q)  # a flow's Gaussian base; K = 0 is the Gaussian itself
        out[f"{m}_base"] = base.rsample((samples,))
    return out


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    registry = load_registry()
    dataset = load_dataset(registry, "circles-squares")
    if args.train_limit:
        dataset = dataclasses.replace(
            dataset, train=dataset.train.subset(torch.arange(args.train_limit))
        )
    entry = registry.model("jnf")
    config = resolve_model_config(
        entry,
        dataset,
        {
            "latent_dim": 2,
            "flow_depth": args.flow_depth,
            "epochs_joint": args.epochs_joint,
            "epochs_unimodal": args.epochs_unimodal,
        },
    )
    acc = Accelerator(cpu=True)
    t0 = time.perf_counter()
    model = entry.cls(dataset, config)
    train(model, dataset, acc, TrainSettings(progress=False, seed=args.seed))
    t_flow = time.perf_counter() - t0
    twin = gaussian_twin(model, dataset)
    train(twin, dataset, acc, TrainSettings(epochs={"joint": 0}, progress=False, seed=args.seed))
    wall = time.perf_counter() - t0
    model.eval()
    twin.eval()

    points = min(args.points, len(dataset.test.y))
    flow, gauss = (
        draws(model, dataset, points, args.samples),
        draws(twin, dataset, points, args.samples),
    )
    k = args.flow_depth
    panels = [
        [
            ("q(z | circle, square)", flow["joint"]),
            (f"q(z | {m}) Gaussian (K = 0)", gauss[m]),
            (f"q(z | {m}) flow's Gaussian base", flow[f"{m}_base"]),
            (f"q(z | {m}) with flow (K = {k})", flow[m]),
        ]
        for m in dataset.specs
    ]
    path = latent_maps(
        panels,
        dataset.test.y[:points],
        args.out,
        class_names=CLASS_NAMES,
        row_names=list(dataset.specs),
        title=f"E1: JNF latent maps on circles-squares (latent 2, {points} test points x "
        f"{args.samples} draws, seed {args.seed})",
    )
    summary = {
        "figure": str(path),
        "settings": {
            **{k: v for k, v in vars(args).items() if k != "out"},
            "latent_dim": 2,
            "train_samples": len(dataset.train.y),
        },
        "test_nll_q_j": {
            "gaussian_k0": test_nll(twin, dataset),
            f"flow_k{k}": test_nll(model, dataset),
        },
        "wall_s": {"flow_model": round(t_flow, 1), "total": round(wall, 1)},
    }
    atomic_write_json(Path(path).with_suffix(".json"), summary)
    return summary


if __name__ == "__main__":
    print(json.dumps(main(), indent=2))
