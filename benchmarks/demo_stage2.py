"""How fast JNF's unimodal stage reaches the demo's one-input coherence, per stage-2 setting
(issue 14 item 4: a shorter demo that keeps its coherence).

    .venv/bin/python benchmarks/demo_stage2.py RUN_DIR NAME [--set KEY=VALUE ...]
        [--init random|joint|joint-frozen] [--epochs 10] [--every 2] [--threads 2] [--out FILE.json]

Takes the joint stage of a finished JNF run (``RUN_DIR``, e.g. the demo's) as it is, builds the
unimodal stage afresh from the run's config plus ``--set`` overrides (``lr_unimodal=0.004``,
``batch_size=128``: stage 1 is not retrained, so ``batch_size`` is stage 2's), trains it alone,
and every ``--every`` epochs scores the one-input coherence (|S| = 1, no HMC) on the quick
protocol's 500 test points with the run's coherence classifiers. ``--init joint`` starts the
unimodal encoders as copies of the trained joint encoders (a warm start: each already maps x_j
to features of its digit) instead of random nets, ``--init joint-frozen`` also keeps them
frozen (only the flows train); the flows start random either way. Stage 1
is held fixed, so the rows compare stage-2 settings only, at a fraction of a demo's cost. One
line per score, the rows as JSON with ``--out``; the CPU's name is printed with the figures.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

import torch
from accelerate import Accelerator

from mmvae_bench.config import parse_assignments
from mmvae_bench.data.spec import iter_batches
from mmvae_bench.eval.classifiers import balanced_accuracy, get_classifiers
from mmvae_bench.eval.coherence import test_subsample
from mmvae_bench.eval.protocol import get_protocol
from mmvae_bench.plugins import load_registry
from mmvae_bench.results import cpu_name
from mmvae_bench.runner import DEFAULT_CACHE_DIR, load_run
from mmvae_bench.train import TrainSettings, train


@torch.no_grad()
def one_input_coherence(model, dataset, classifiers, test) -> float:
    """Mean over modalities j and targets m != j of the class-balanced accuracy of m from j."""
    model.eval()
    mods = model.modalities
    preds: dict[tuple[str, str], list[torch.Tensor]] = {(j, m): [] for j in mods for m in mods}
    for batch, _ in iter_batches(test, 250, shuffle=False):
        samples = model.encode_subsets(batch, [(j,) for j in mods], 1)
        for j, sample in zip(mods, samples, strict=True):
            out = model.decode(sample.z[0])
            for m in mods:
                if m != j:
                    preds[j, m].append(classifiers[m].net(out[m]).argmax(-1))
    accs = [balanced_accuracy(torch.cat(p), test.y, dataset.n_classes) for p in preds.values() if p]
    return sum(accs) / len(accs)


def prepare(run_dir: Path, overrides: dict, init: str = "random"):
    """``run_dir``'s model with its trained joint stage and a fresh unimodal stage.

    Returns ``(model, dataset, record, finished stage names)``; the unimodal encoders are
    random (seed 0) or, with ``init="joint"`` or ``"joint-frozen"`` (not trained), copies of
    the joint encoders.
    """
    registry = load_registry()
    trained, ds, record = load_run(run_dir, registry)
    entry = registry.model(record.model)
    config = dataclasses.replace(trained.config, **overrides)
    torch.manual_seed(0)
    model = entry.cls(ds, config)
    joint = [s for s in model.stages if s.name != "unimodal"]
    frozen = {m for s in joint for m in s.modules}
    state = {k: v for k, v in trained.state_dict().items() if k.split(".")[0] in frozen}
    model.load_state_dict(state, strict=False)
    if init in ("joint", "joint-frozen"):
        model.unimodal_encoders.load_state_dict(model.joint_encoders.state_dict())
    if init == "joint-frozen":
        _train_flows_only(model)
    return model, ds, record, [s.name for s in joint]


def _train_flows_only(model) -> None:
    """Make ``model``'s unimodal stage train its flow posteriors only (encoders frozen)."""
    base = type(model)

    class FlowsOnly(base):
        @property
        def stages(self):
            return [
                dataclasses.replace(s, modules=("posteriors",)) if s.name == "unimodal" else s
                for s in base.stages.fget(self)
            ]

    model.__class__ = FlowsOnly


def run(
    run_dir: Path, name: str, overrides: dict, epochs: int, every: int, init: str = "random"
) -> list[dict]:
    """Retrain ``run_dir``'s unimodal stage with ``overrides``; score every ``every`` epochs."""
    model, ds, record, done = prepare(run_dir, overrides, init)
    cache = Path(record.run.get("cache_dir") or DEFAULT_CACHE_DIR)
    classifiers = get_classifiers(ds, cache)
    test = test_subsample(ds.test, get_protocol("quick"))
    rows: list[dict] = []
    t0 = time.perf_counter()

    def on_epoch(stage: str, epoch: int, metrics: dict[str, float]) -> None:
        if (epoch + 1) % every and epoch + 1 != epochs:
            return
        train_s = time.perf_counter() - t0 - sum(r["score_s"] for r in rows)
        t_score = time.perf_counter()
        coherence = one_input_coherence(model, ds, classifiers, test)
        model.train()
        row = {
            "name": name,
            "epoch": epoch + 1,
            "coherence_1": coherence,
            "loss": round(metrics.get("loss", float("nan")), 2),
            "train_s": train_s,
            "score_s": time.perf_counter() - t_score,
        }
        rows.append(row)
        print(
            f"{name} epoch {epoch + 1:3d}: |S|=1 coherence {coherence:.3f}, "
            f"loss {row['loss']:.1f}, {train_s:.0f} s trained",
            flush=True,
        )

    settings = TrainSettings(epochs={"unimodal": epochs}, progress=False)
    train(model, ds, Accelerator(cpu=True), settings, on_epoch=on_epoch, done=done)
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("run_dir", type=Path, help="a finished JNF run (its joint stage is reused)")
    p.add_argument("name", help="a label for this setting's rows")
    p.add_argument("--set", dest="set_", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--init", default="random", choices=["random", "joint", "joint-frozen"])
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--every", type=int, default=2)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", type=Path)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    entry = load_registry().model("jnf")
    overrides = parse_assignments(args.set_, entry.config)
    print(
        f"{cpu_name()}, {args.threads} thread(s), JNF stage 2 of {args.run_dir}, "
        f"init {args.init}, {overrides}"
    )
    rows = run(args.run_dir, args.name, overrides, args.epochs, args.every, args.init)
    if args.out:
        record = {
            "cpu": cpu_name(),
            "threads": args.threads,
            "run": str(args.run_dir),
            "overrides": overrides,
            "init": args.init,
            "rows": rows,
        }
        args.out.write_text(json.dumps(record, indent=1) + "\n")


if __name__ == "__main__":
    main()
