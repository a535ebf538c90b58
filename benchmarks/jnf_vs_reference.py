"""Our JNF beside MultiVae's JNF trained on identical data (issue 12, item 6).

    .venv/bin/python benchmarks/jnf_vs_reference.py run --seeds 0 1 \\
        --epochs-joint 20 --epochs-unimodal 20 --out runs/jnf-vs-ref
    .venv/bin/python benchmarks/jnf_vs_reference.py table --out runs/jnf-vs-ref
    .venv/bin/python benchmarks/jnf_vs_reference.py train-reference --seed 0 \\
        --epochs-joint 20 --epochs-unimodal 20 --out runs/jnf-vs-ref/multivae/seed-0

Both sides train on polymnist-lite (5 modalities of (3, 28, 28), 10,000 train tuples, Gaussian
likelihood with scale 0.15, latent 32) at the same architecture, with the same budget (epochs
per stage, Adam, learning rate, batch size, seed, 1 CPU thread), and are evaluated by the
suite with the same protocol and the same cached classifiers (quick protocol, GMM latent
sampler, no FID).

- **The reference** (``train-reference``): MultiVae 1.0.3's ``JNF`` built from its PolyMNIST
  nets (``EncoderConvMMNIST_adapted``, ``DecoderConvMMNIST``), its default
  ``MultipleHeadJointEncoder`` (2 hidden layers of 512) and its default MAF flows (2 MADE
  blocks x 3 hidden layers x 128), ``decoders_dist`` normal with scale 0.15, no likelihood
  rescaling, ``warmup`` = the joint epochs. It is trained by MultiVae's own trainer
  (``MultistageTrainer``: JNF resets the optimizer after its warmup, which ``BaseTrainer``
  refuses) on the suite's training tuples, converted to float32 as the suite's batches
  (``Split.batch``: ``float32(uint8) / 255``), with ``drop_last`` as our trainer; no eval
  set, no wandb. Without an eval set MultiVae keeps, per stage, the epoch of lowest training
  loss (``keep_best_on_train``); that model is what its trainer saves as final and what is
  saved here with ``model.save(DIR)``. Per-stage wall time and samples/s (epoch begin to
  epoch end, as MultiVae runs it) go to ``DIR.json``.
- **Import**: ``mmvae-bench import multivae DIR`` converts the weights onto the built-in JNF
  (``nets=multivae``, ``joint_heads``, ``flow_affine=multivae``); the converter checks every
  tensor's shape, so the imported model has the reference's architecture exactly. The
  importer records seed 0 (a MultiVae folder does not say its seed); the record's seed is set
  here to the reference's training seed, so ``evaluate`` seeds its sampling as it does for our
  run of that seed.
- **Ours**: ``mmvae-bench run jnf --dataset polymnist-lite`` with ``--set`` giving the same
  architecture (:data:`ARCHITECTURE`) and the same budget.

Folders under ``--out``: ``multivae/seed-S/`` (the MultiVae folder), ``multivae/seed-S.json``
(its training times), ``runs/reference-sS/`` and ``runs/ours-sS/`` (run records),
``logs/`` (each subprocess's output). ``run`` skips a step whose output is complete, so an
interrupted ``run`` continues where it stopped. ``table`` prints a markdown table and writes
it to ``--out``/table.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from importlib.metadata import version
from pathlib import Path
from typing import Any

DATASET = "polymnist-lite"
CACHE_DIR = Path(".cache/mmvae-bench")
THREADS = 1
# The reference's architecture in the built-in JNF's config fields (plugins/jnf.py,
# PAPER_POLYMNIST, at polymnist-lite's latent 32). The converter derives the same values from
# a MultiVae folder (interop/multivae.py, config_values); `table` checks both records agree.
ARCHITECTURE: dict[str, str] = {
    "latent_dim": "32",
    "nets": "multivae",
    "joint_heads": "true",
    "joint_hidden": "512",
    "joint_layers": "2",
    "flow_depth": "2",
    "flow_hidden": "128",
    "flow_layers": "3",
    "flow_affine": "multivae",
    "rescale": "false",
    "beta": "1.0",
}
# The evaluation both sides get (`mmvae-bench run` and `mmvae-bench evaluate`).
PROTOCOL = ["--quick", "--sampler", "gmm", "--no-fid", "--device", "cpu"]
STAGES = ("joint", "unimodal")
SIZES = ("1", "2", "3", "4")
BIN = Path(sys.executable).parent


# -- train-reference -------------------------------------------------------------------------
def train_reference(
    *, seed: int, epochs_joint: int, epochs_unimodal: int, lr: float, batch: int, out: Path
) -> dict[str, Any]:
    """Train MultiVae's JNF on polymnist-lite, save it to ``out``, its times to ``out.json``.

    Returns the timing record written to ``out.json``.
    """
    import torch

    torch.set_num_threads(THREADS)
    from multivae.data.datasets.base import MultimodalBaseDataset
    from multivae.models import JNF, JNFConfig
    from multivae.models.nn.mmnist import DecoderConvMMNIST, EncoderConvMMNIST_adapted
    from multivae.trainers import MultistageTrainer, MultistageTrainerConfig
    from multivae.trainers.base.callbacks import TrainingCallback
    from pythae.models.base.base_config import BaseAEConfig

    from mmvae_bench.errors import BenchError
    from mmvae_bench.plugins import load_registry
    from mmvae_bench.runner import load_dataset

    if out.exists():
        raise BenchError(f"--out {out} exists; remove it or choose another --out")
    data = load_dataset(load_registry(), DATASET, cache_dir=CACHE_DIR)
    train = data.train.batch()  # float32(uint8) / 255, as every batch the suite gives
    dataset = MultimodalBaseDataset(data=train, labels=data.train.y)
    latent = data.latent_dim
    dims = {m: tuple(s.shape) for m, s in data.specs.items()}
    config = JNFConfig(
        n_modalities=len(dims),
        latent_dim=latent,
        input_dims=dims,
        decoders_dist={m: "normal" for m in dims},
        decoder_dist_params={m: {"scale": data.specs[m].scale} for m in dims},
        uses_likelihood_rescaling=False,
        warmup=epochs_joint,
        beta=1.0,
    )
    nets = {m: BaseAEConfig(latent_dim=latent, style_dim=0, input_dim=d) for m, d in dims.items()}
    torch.manual_seed(seed)
    model = JNF(
        config,
        encoders={m: EncoderConvMMNIST_adapted(nets[m]) for m in dims},
        decoders={m: DecoderConvMMNIST(nets[m]) for m in dims},
    )
    clock = _epoch_clock(TrainingCallback)
    with tempfile.TemporaryDirectory(prefix="multivae-trainer-") as scratch:
        trainer_config = MultistageTrainerConfig(
            output_dir=scratch,  # the trainer's own checkpoints; the model is saved to `out`
            per_device_train_batch_size=batch,
            num_epochs=epochs_joint + epochs_unimodal,
            learning_rate=lr,
            seed=seed,
            no_cuda=True,
            drop_last=True,
        )
        t0 = time.perf_counter()
        trainer = MultistageTrainer(
            model, train_dataset=dataset, training_config=trainer_config, callbacks=[clock]
        )
        setup_s = time.perf_counter() - t0
        load_before = os.getloadavg()
        t0 = time.perf_counter()
        trainer.train()
        train_s = time.perf_counter() - t0
        load_after = os.getloadavg()
        trained = trainer._best_model  # what MultiVae saves as its final model
    trained.save(str(out))
    per_epoch = (len(dataset) // batch) * batch
    stages = {}
    plan = (list(range(1, epochs_joint + 1)), clock.after(epochs_joint))
    for name, epochs in zip(STAGES, plan, strict=True):
        walls = [clock.wall[e] for e in epochs]
        samples = per_epoch * len(walls)
        wall = sum(walls)
        stages[name] = {
            "epochs": len(walls),
            "samples": samples,
            "wall_s": wall,
            "samples_per_s": samples / wall if wall else 0.0,
            "epoch_loss": [clock.loss.get(e) for e in epochs],
        }
    record = {
        "what": "MultiVae JNF trained on polymnist-lite by benchmarks/jnf_vs_reference.py",
        "folder": str(out.resolve()),
        "seed": seed,
        "epochs_joint": epochs_joint,
        "epochs_unimodal": epochs_unimodal,
        "lr": lr,
        "batch_size": batch,
        "drop_last": True,
        "train_tuples": len(dataset),
        "threads": torch.get_num_threads(),
        "parameters": _parameters(trained),
        "stages": stages,
        "setup_s": setup_s,
        "train_s": train_s,
        "load_average": {"before": load_before, "after": load_after},
        "cpu": _cpu(),
        "versions": {"multivae": version("multivae"), "torch": torch.__version__},
        "platform": platform.platform(),
    }
    _json_path(out).write_text(json.dumps(record, indent=2) + "\n")
    return record


def _epoch_clock(base: type) -> Any:
    """A MultiVae training callback (``base``: its ``TrainingCallback``, imported lazily)
    recording each epoch's wall time (epoch begin to epoch end) and training loss."""

    class EpochClock(base):  # type: ignore[misc,valid-type]
        def __init__(self) -> None:
            self.wall: dict[int, float] = {}
            self.loss: dict[int, float] = {}
            self._epoch, self._t0 = 0, 0.0

        def on_epoch_begin(self, training_config: Any, **kwargs: Any) -> None:
            self._epoch, self._t0 = int(kwargs["epoch"]), time.perf_counter()

        def on_epoch_end(self, training_config: Any, **kwargs: Any) -> None:
            self.wall[self._epoch] = time.perf_counter() - self._t0

        def on_log(self, training_config: Any, logs: dict, **kwargs: Any) -> None:
            self.loss[int(kwargs["global_step"])] = float(logs["train_epoch_loss"])

        def after(self, epoch: int) -> list[int]:
            return sorted(e for e in self.wall if e > epoch)

    return EpochClock()


def _parameters(model: Any) -> dict[str, int]:
    count = {
        name: sum(p.numel() for p in getattr(model, name).parameters())
        for name in ("joint_encoder", "decoders", "encoders", "flows")
    }
    return {"total": sum(p.numel() for p in model.parameters()), **count}


def _json_path(folder: Path) -> Path:
    return folder.with_name(folder.name + ".json")


def _cpu() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return f"{line.split(':', 1)[1].strip()}, {os.cpu_count()} cores"
    except OSError:
        pass
    return f"{platform.processor() or 'unknown'}, {os.cpu_count()} cores"


# -- run -------------------------------------------------------------------------------------
def paths(out: Path, seed: int) -> dict[str, Path]:
    """Where ``run`` puts seed ``seed``'s folders under ``out``."""
    return {
        "multivae": out / "multivae" / f"seed-{seed}",
        "runs": out / "runs",
        "reference": out / "runs" / f"reference-s{seed}",
        "ours": out / "runs" / f"ours-s{seed}",
        "logs": out / "logs",
    }


def ours_command(seed: int, epochs_joint: int, epochs_unimodal: int, lr: float, batch: int,
                 runs: Path) -> list[str]:  # fmt: skip
    """``mmvae-bench run jnf`` at the reference's architecture and the given budget."""
    sets = {**ARCHITECTURE, "lr": repr(lr), "batch_size": str(batch)}
    return [
        str(BIN / "mmvae-bench"), "run", "jnf", "--dataset", DATASET, "--seed", str(seed),
        "--epochs", f"joint={epochs_joint}", "--epochs", f"unimodal={epochs_unimodal}",
        *(a for k, v in sets.items() for a in ("--set", f"{k}={v}")),
        *PROTOCOL, "--threads", str(THREADS), "--cache-dir", str(CACHE_DIR),
        "--out", str(runs), "--run-id", f"ours-s{seed}",
    ]  # fmt: skip


def _call(cmd: list[str], log: Path) -> None:
    """Run ``cmd`` (1 thread), its output to ``log``; a failure raises ``BenchError`` naming
    the log."""
    from mmvae_bench.errors import BenchError

    log.parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": str(THREADS), "MKL_NUM_THREADS": str(THREADS)}
    print(f"$ {' '.join(cmd)}\n  (log: {log})", flush=True)
    t0 = time.perf_counter()
    with log.open("w") as f:
        code = subprocess.call(cmd, stdout=f, stderr=subprocess.STDOUT, env=env)
    print(f"  {'done' if code == 0 else f'FAILED (exit {code})'} in "
          f"{time.perf_counter() - t0:.0f} s", flush=True)  # fmt: skip
    if code != 0:
        raise BenchError(f"{' '.join(cmd[:3])} ... failed (exit {code}); its output: {log}")


def _evaluated(run_dir: Path) -> bool:
    from mmvae_bench.errors import BenchError
    from mmvae_bench.results import RunRecord

    try:
        return RunRecord.load(run_dir).status == "ok"
    except BenchError:
        return False


def run(*, seeds: Sequence[int], epochs_joint: int, epochs_unimodal: int, lr: float, batch: int,
        out: Path) -> None:  # fmt: skip
    """Train, import and evaluate the reference, then train and evaluate ours, per seed.

    A step whose output is complete is skipped whatever budget it ran with; ``table`` refuses
    sides whose epochs differ, so give a new ``--out`` for a new budget.
    """
    from mmvae_bench.errors import BenchError
    from mmvae_bench.results import RunRecord

    script = str(Path(__file__).resolve())
    for seed in seeds:
        p = paths(out, seed)
        logs = p["logs"]
        budget = ["--epochs-joint", str(epochs_joint), "--epochs-unimodal", str(epochs_unimodal),
                  "--lr", repr(lr), "--batch", str(batch)]  # fmt: skip
        if not _json_path(p["multivae"]).is_file():
            if p["multivae"].exists():
                raise BenchError(f"{p['multivae']} exists without its timing JSON (an "
                                 "interrupted training): remove it and rerun")  # fmt: skip
            cmd = [sys.executable, script, "train-reference", "--seed", str(seed), *budget,
                   "--out", str(p["multivae"])]  # fmt: skip
            _call(cmd, logs / f"reference-s{seed}-train.log")
        if not p["reference"].exists():
            cmd = [str(BIN / "mmvae-bench"), "import", "multivae", str(p["multivae"]),
                   "--dataset", DATASET, "--cache-dir", str(CACHE_DIR), "--out", str(p["runs"]),
                   "--run-id", p["reference"].name]  # fmt: skip
            _call(cmd, logs / f"reference-s{seed}-import.log")
            record = RunRecord.load(p["reference"])
            record.seed = seed  # the reference's training seed; evaluate seeds sampling by it
            record.save(p["reference"])
        if not _evaluated(p["reference"]):
            cmd = [str(BIN / "mmvae-bench"), "evaluate", str(p["reference"]), *PROTOCOL,
                   "--threads", str(THREADS)]  # fmt: skip
            _call(cmd, logs / f"reference-s{seed}-evaluate.log")
        if not _evaluated(p["ours"]):
            cmd = ours_command(seed, epochs_joint, epochs_unimodal, lr, batch, p["runs"])
            _call([*cmd, "--overwrite"], logs / f"ours-s{seed}.log")
    print(table(out))


# -- table -----------------------------------------------------------------------------------
def _side_rows(out: Path) -> dict[str, dict[int, dict[str, Any]]]:
    """Per side (``ours``, ``reference``) and seed: coherence by |S|, joint coherence, times."""
    from mmvae_bench.errors import BenchError
    from mmvae_bench.eval.protocol import COND_COHERENCE_BY_SIZE, JOINT_COHERENCE
    from mmvae_bench.results import RunRecord

    runs = out / "runs"
    rows: dict[str, dict[int, dict[str, Any]]] = {"ours": {}, "reference": {}}
    arch: dict[str, dict[str, Any]] = {}
    for run_dir in sorted(runs.glob("*-s*")) if runs.is_dir() else []:
        side, _, seed_s = run_dir.name.rpartition("-s")
        if side not in rows or not seed_s.isdigit():
            continue
        record = RunRecord.load(run_dir)
        if record.status != "ok":
            continue
        seed = int(seed_s)
        by_size = record.metrics.get(COND_COHERENCE_BY_SIZE, {})
        row: dict[str, Any] = {
            "coherence": {k: by_size[k]["mean"] for k in SIZES if k in by_size},
            "joint": record.metrics.get(JOINT_COHERENCE),
            "protocol": record.protocol.get("version"),
            "sampler": record.sampler_kind,
            "eval_s": record.timings.get("eval_s"),
            "threads": record.environment.get("threads"),
        }
        if side == "ours":
            row["stages"] = {
                s: {"wall_s": r.wall_s, "samples_per_s": r.samples_per_s, "epochs": r.epochs}
                for s, r in record.stages.items()
            }
        else:
            timing = _json_path(out / "multivae" / f"seed-{seed}")
            if timing.is_file():
                t = json.loads(timing.read_text())
                row["stages"] = t["stages"]
                row["parameters"] = t["parameters"]["total"]
        rows[side][seed] = row
        fields = {k: record.config.get(k) for k in ARCHITECTURE}
        fields |= {"epochs_" + s: (row.get("stages") or {}).get(s, {}).get("epochs")
                   for s in STAGES}  # fmt: skip
        for key, value in fields.items():
            first = arch.setdefault(key, {"value": value, "run": run_dir.name})
            if first["value"] != value:
                raise BenchError(
                    f"{run_dir}/results.json: {key} = {value!r}, but {first['run']} has "
                    f"{first['value']!r}: the two sides are not at the same architecture/budget"
                )
    return rows


def _fmt_time(stage: dict[str, Any] | None) -> str:
    if not stage:
        return "—"
    return f"{stage['wall_s']:,.0f} ({stage['samples_per_s']:,.0f})"


def _mean_std(values: list[float]) -> str:
    if not values:
        return "—"
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}"


def table(out: Path) -> str:
    """The side-by-side as markdown (also written to ``out``/table.md)."""
    rows = _side_rows(out)
    head = (
        "| JNF | seed | coh \\|S\\|=1 | 2 | 3 | 4 | joint coh | "
        "joint stage s (samples/s) | unimodal stage s (samples/s) | eval s |\n"
        "|---|---|---:|---:|---:|---:|---:|---|---|---:|"
    )
    lines = [head]
    for side in ("ours", "reference"):
        label = "ours" if side == "ours" else "MultiVae 1.0.3"
        seeds = sorted(rows[side])
        for seed in seeds:
            r = rows[side][seed]
            coh = [f"{r['coherence'][k]:.3f}" if k in r["coherence"] else "—" for k in SIZES]
            joint = f"{r['joint']:.3f}" if r["joint"] is not None else "—"
            stages = r.get("stages") or {}
            eval_s = f"{r['eval_s']:.0f}" if r.get("eval_s") is not None else "—"
            lines.append(f"| {label} | {seed} | {' | '.join(coh)} | {joint} | "
                         f"{_fmt_time(stages.get('joint'))} | "
                         f"{_fmt_time(stages.get('unimodal'))} | {eval_s} |")  # fmt: skip
        if len(seeds) > 1:
            cells = [_mean_std([rows[side][s]["coherence"][k] for s in seeds
                                if k in rows[side][s]["coherence"]]) for k in SIZES]  # fmt: skip
            joint = _mean_std([rows[side][s]["joint"] for s in seeds
                               if rows[side][s]["joint"] is not None])  # fmt: skip
            lines.append(f"| **{label}** | mean ± std | {' | '.join(cells)} | {joint} | | | |")
    every = [r for side in rows.values() for r in side.values()]
    if not every:
        return f"no evaluated runs under {out / 'runs'} (run `... run --out {out}` first)"
    notes = sorted({f"protocol {r['protocol']}, sampler {r['sampler']}, {r['threads']} thread(s)"
                    for r in every})  # fmt: skip
    params = sorted({r["parameters"] for r in every if "parameters" in r})
    text = "\n".join(lines) + "\n\n" + "; ".join(notes)
    if params:
        text += f"; reference parameters {', '.join(f'{p:,}' for p in params)}"
    text += (
        ". Stage times: ours from its run record (the trainer's stage wall time); MultiVae's "
        "from its trainer's epochs (epoch begin to end, its keep-best copies included).\n"
    )
    (out / "table.md").write_text(text)
    return text


# -- command line ----------------------------------------------------------------------------
def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    def budget(p: argparse.ArgumentParser) -> None:
        p.add_argument("--epochs-joint", type=int, required=True, help="stage 1 (warmup) epochs")
        p.add_argument("--epochs-unimodal", type=int, required=True, help="stage 2 epochs")
        p.add_argument("--lr", type=float, default=2e-3, help="Adam lr (polymnist-lite's)")
        p.add_argument("--batch", type=int, default=64, help="batch size (polymnist-lite's)")

    p = sub.add_parser("train-reference", help="train MultiVae's JNF, save it to --out")
    p.add_argument("--seed", type=int, required=True)
    budget(p)
    p.add_argument("--out", type=Path, required=True, help="MultiVae folder to create")
    p = sub.add_parser("run", help="both sides, every seed: train, import, evaluate")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    budget(p)
    p.add_argument("--out", type=Path, default=Path("runs/jnf-vs-ref"))
    p = sub.add_parser("table", help="the side-by-side from --out's records")
    p.add_argument("--out", type=Path, default=Path("runs/jnf-vs-ref"))
    args = parser.parse_args(argv)
    from mmvae_bench.errors import BenchError

    try:
        _dispatch(parser, args)
    except BenchError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


def _dispatch(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if args.command == "table":
        print(table(args.out))
        return
    if min(args.epochs_joint, args.epochs_unimodal) < 1:
        parser.error("--epochs-joint and --epochs-unimodal must be >= 1")
    budget = {k: getattr(args, k) for k in ("epochs_joint", "epochs_unimodal", "lr", "batch")}
    if args.command == "train-reference":
        record = train_reference(seed=args.seed, out=args.out, **budget)
        print(json.dumps({k: record[k] for k in ("parameters", "stages", "train_s")}, indent=2))
    else:
        run(seeds=args.seeds, out=args.out, **budget)


if __name__ == "__main__":
    main()
