"""How fast JNF's joint stage learns the digit on polymnist-lite, per training budget (issue 14
item 4: a shorter demo that keeps its coherence).

    .venv/bin/python benchmarks/demo_budget.py NAME [--set KEY=VALUE ...] [--epochs 12]
        [--every 2] [--lr-schedule constant|cosine] [--out FILE.json]

Trains JNF's stage 1 (``joint``) on polymnist-lite with the plugin's defaults for the dataset
plus ``--set`` overrides (e.g. ``batch_size=32``, ``lr=0.004``), 1 torch thread, and every
``--every`` epochs fits a linear probe (multinomial logistic regression) from the joint
posterior means of the training set to the digit labels and scores it on the test set. The
probe's accuracy says how much of the digit the joint latent holds, the precondition of the
demo's conditional coherence, for a fraction of the cost of a full evaluation; the per-modality
reconstruction terms show when each decoder leaves its plateau (a constant image). One line per
probe, and the rows as JSON with ``--out``. The CPU's name is printed with the figures.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from accelerate import Accelerator

from mmvae_bench.config import parse_assignments
from mmvae_bench.data.spec import iter_batches
from mmvae_bench.plugins import load_registry
from mmvae_bench.results import cpu_name
from mmvae_bench.runner import load_dataset, resolve_model_config
from mmvae_bench.threads import native_threads
from mmvae_bench.train import TrainSettings, train


@torch.no_grad()
def joint_means(model, split, chunk: int = 1000) -> torch.Tensor:
    """The joint posterior means of every point of ``split``, ``(N, latent_dim)``."""
    batches = iter_batches(split, chunk, shuffle=False)
    return torch.cat([model.joint_posterior(batch)[0] for batch, _ in batches])


def probe_accuracy(model, dataset) -> float:
    """Test accuracy of a linear probe from the joint posterior means to the labels."""
    from sklearn.linear_model import LogisticRegression

    train_z, test_z = joint_means(model, dataset.train), joint_means(model, dataset.test)
    mean, std = train_z.mean(0), train_z.std(0) + 1e-6  # standardised: lbfgs converges
    with native_threads():
        clf = LogisticRegression(max_iter=1000).fit(
            ((train_z - mean) / std).numpy(), dataset.train.y.numpy()
        )
        return float(clf.score(((test_z - mean) / std).numpy(), dataset.test.y.numpy()))


def run(
    name: str,
    overrides: dict,
    epochs: int,
    every: int,
    lr_schedule: str = "constant",
    dataset_name: str = "polymnist-lite",
    cache_dir: str | None = None,
) -> list[dict]:
    """Train stage 1 for ``epochs`` and probe every ``every`` epochs (and after the last)."""
    registry = load_registry()
    kwargs = {"cache_dir": cache_dir} if cache_dir else {}
    ds = load_dataset(registry, dataset_name, **kwargs)
    entry = registry.model("jnf")
    torch.manual_seed(0)
    model = entry.cls(ds, resolve_model_config(entry, ds, overrides))
    rows: list[dict] = []
    t0 = time.perf_counter()

    def on_epoch(stage: str, epoch: int, metrics: dict[str, float]) -> None:
        if (epoch + 1) % every and epoch + 1 != epochs:
            return
        train_s = time.perf_counter() - t0 - sum(r["probe_s"] for r in rows)
        t_probe = time.perf_counter()
        acc = probe_accuracy(model, ds)
        nll = {k[4:]: round(v, 1) for k, v in metrics.items() if k.startswith("nll_")}
        row = {
            "name": name,
            "epoch": epoch + 1,
            "probe_accuracy": acc,
            "nll": nll,
            "train_s": train_s,
            "probe_s": time.perf_counter() - t_probe,
        }
        rows.append(row)
        print(
            f"{name} epoch {epoch + 1:3d}: probe {acc:.3f}, nll "
            + " ".join(f"{v:.0f}" for v in nll.values())
            + f", {train_s:.0f} s trained",
            flush=True,
        )

    settings = TrainSettings(
        epochs={"joint": epochs, "unimodal": 0}, progress=False, lr_schedule=lr_schedule
    )
    train(model, ds, Accelerator(cpu=True), settings, on_epoch=on_epoch)
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("name", help="a label for this budget's rows")
    p.add_argument("--set", dest="set_", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--epochs", type=int, default=12)
    p.add_argument("--every", type=int, default=2)
    p.add_argument("--lr-schedule", default="constant", choices=["constant", "cosine"])
    p.add_argument("--out", type=Path)
    args = p.parse_args()
    torch.set_num_threads(1)
    entry = load_registry().model("jnf")
    overrides = parse_assignments(args.set_, entry.config)
    print(f"{cpu_name()}, 1 thread, JNF stage 1 on polymnist-lite, overrides {overrides}")
    rows = run(args.name, overrides, args.epochs, args.every, args.lr_schedule)
    if args.out:
        record = {"cpu": cpu_name(), "overrides": overrides, "rows": rows}
        args.out.write_text(json.dumps(record, indent=1) + "\n")


if __name__ == "__main__":
    main()
