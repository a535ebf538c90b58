"""HMC samplers for JNF's subset posteriors: quality against gradient evaluations (issue 14).

    .venv/bin/python benchmarks/hmc_samplers.py run RUN_DIR --sizes 2 --out A.json
        [--points 32 --chains 8 --subsets 1]
    .venv/bin/python benchmarks/hmc_samplers.py report A.json B.json ... \
        --figure benchmarks/hmc_samplers.png --out benchmarks/hmc_samplers.json

``run`` measures (one JSON per call, so subset sizes can be measured by separate processes);
``report`` merges them, draws the figure and prints the Markdown table of BENCHMARKS.md.

On a trained JNF run (``mmvae-bench run jnf ...``), for |S| = 2, 3, 4 (``--subsets`` subsets of
each size, the first in sorted order) and ``--points`` test points with ``--chains`` chains
each, every sampler configuration below is run at several budgets and measured by:

- gradient evaluations per sample (``HMCSettings.gradient_evaluations``; the adaptive start
  costs one flow inversion per expert and datapoint, not counted) and seconds per call;
- conditional coherence: the modalities outside S decoded from every chain's final z and
  classified by the run's coherence classifiers (class-balanced accuracy, as the protocol);
- energy distance to a reference sample: per test point, between the configuration's chains
  and the chains of a long run (``REFERENCE``: the paper's sampler for 300 x 10 leapfrog
  steps from the experts' samples), averaged over points and subsets. The estimator is
  unbiased (0 in expectation for equal distributions, negative values are noise);
- start spread (mixing): the same distance between the chains started from expert 0's
  samples and those started from expert 1's, for the samplers that start from experts (chain
  c starts from expert c mod |S|): how much the final positions remember where they began.

One torch thread; the figures are contended on a shared 2-core machine.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch
from torch import Tensor

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mmvae_bench.eval.classifiers import balanced_accuracy, get_classifiers  # noqa: E402
from mmvae_bench.flows import ProductOfFlows  # noqa: E402
from mmvae_bench.hmc import HMCSettings, hmc_sample  # noqa: E402
from mmvae_bench.io import atomic_write_json  # noqa: E402
from mmvae_bench.model import all_subsets  # noqa: E402
from mmvae_bench.plugins import load_registry  # noqa: E402
from mmvae_bench.runner import DEFAULT_CACHE_DIR, load_run  # noqa: E402


def _paper(steps: int) -> HMCSettings:
    return HMCSettings(steps=steps, n_leapfrog=10, step_size=0.01)


def _adaptive(
    warmup: int, steps: int, n_leapfrog: int, adapt: str, precondition: bool = True
) -> HMCSettings:
    return HMCSettings(
        kind="adaptive",
        warmup=warmup,
        steps=steps,
        n_leapfrog=n_leapfrog,
        # preconditioned: about half a deviation; unscaled: the scale of trained posteriors
        step_size=0.5 if precondition else 0.05,
        target_accept=0.8,
        adapt=adapt,  # type: ignore[arg-type]
    )


# (name, start, settings at increasing budgets). start: "experts" = the paper's (chain c starts
# from a sample of expert c mod |S|, no preconditioner); "product" = the Gaussian product of the
# experts' moments, its deviations as the preconditioner; "product, unscaled" = that start
# without the preconditioner.
BUDGETS = [(10, 5, 5), (20, 10, 5), (40, 20, 5)]  # 76, 151, 301 gradient evaluations
CONFIGS: list[tuple[str, str, list[HMCSettings]]] = [
    ("paper", "experts", [_paper(s) for s in (3, 10, 30, 100)]),
    ("adaptive-pooled", "product", [_adaptive(*b, "pooled") for b in BUDGETS]),
    (
        "adaptive-pooled, unscaled",
        "product, unscaled",
        [_adaptive(*b, "pooled", precondition=False) for b in (*BUDGETS, (60, 60, 5))],
    ),
    (
        "adaptive-chain, unscaled",
        "product, unscaled",
        [_adaptive(*BUDGETS[1], "chain", precondition=False)],
    ),
]
# The reference: the paper's dynamics (exact HMC with small steps: no approximation in its
# start or a preconditioner) for 300 iterations, from the experts' samples.
REFERENCE = _paper(300)
REFERENCE_START = "experts"


def _energy_distance(a: Tensor, b: Tensor) -> Tensor:
    """Per point: energy distance between chain sets a (n, P, D) and b (m, P, D) -> (P,).

    2 E|X - Y| - E|X - X'| - E|Y - Y'| with the within-set means over distinct pairs (unbiased).
    """
    a, b = a.transpose(0, 1), b.transpose(0, 1)  # (P, n, D)
    n, m = a.shape[1], b.shape[1]
    xy = torch.cdist(a, b).mean((1, 2))
    xx = torch.cdist(a, a).sum((1, 2)) / (n * (n - 1))
    yy = torch.cdist(b, b).sum((1, 2)) / (m * (m - 1))
    return 2 * xy - xx - yy


def _run(
    target: ProductOfFlows, start: str, settings: HMCSettings, chains: int, seed: int
) -> tuple[Tensor, float, float, float]:
    """Final z (chains, P, D), acceptance, mean step size, seconds (the start included)."""
    torch.manual_seed(seed)
    t0 = time.perf_counter()
    scale = None
    if start == "experts":
        n_e = len(target.experts)
        z0 = torch.cat([target.sample_experts(1, expert=c % n_e) for c in range(chains)])
        if settings.kind == "adaptive":
            scale = target.gaussian_product()[1]
    else:
        mean, std = target.gaussian_product()
        z0 = mean + std * torch.randn((chains, *mean.shape))
        scale = None if start == "product, unscaled" else std
    out = hmc_sample(target, z0, settings, scale=scale)
    return out.z, out.acceptance, float(out.step_size or 0.0), time.perf_counter() - t0


def _start_spread(z: Tensor, n_experts: int) -> float:
    """Energy distance between the final chains started from expert 0 and from expert 1."""
    c = torch.arange(z.shape[0]) % n_experts
    return float(_energy_distance(z[c == 0], z[c == 1]).mean())


def measure(args: argparse.Namespace) -> None:
    torch.set_num_threads(1)
    registry = load_registry()
    model, dataset, record = load_run(args.run_dir, registry)
    classifiers = get_classifiers(
        dataset, Path(record.run.get("cache_dir") or DEFAULT_CACHE_DIR), train_if_missing=False
    )
    gen = torch.Generator().manual_seed(args.seed)
    idx = torch.randperm(len(dataset.test), generator=gen)[: args.points].sort().values
    test = dataset.test.subset(idx)
    x = test.batch()
    labels = test.y.repeat(args.chains)

    rows: list[dict] = []
    checks: list[dict] = []
    for k in args.sizes:
        subsets = [s for s in all_subsets(model.modalities, proper=True) if len(s) == k]
        for subset in subsets[: args.subsets]:
            with torch.no_grad():
                experts = [model.unimodal_posterior(x, m) for m in subset]
            target = ProductOfFlows(experts, prior_power=len(experts) - 1)
            targets = [m for m in model.modalities if m not in subset]
            ref, _, _, ref_s = _run(
                target, REFERENCE_START, REFERENCE, args.chains, args.seed + 100
            )
            check = {"subset": "+".join(subset), "size": k, "reference_s": ref_s}
            check["start_spread"] = _start_spread(ref, len(subset))
            checks.append(check)
            print(json.dumps(check), flush=True)
            for name, start, ladder in CONFIGS:
                for settings in ladder:
                    z, acc, step, wall = _run(target, start, settings, args.chains, args.seed)
                    with torch.no_grad():
                        decoded = model.decode(z.reshape(-1, z.shape[-1]))
                    coh = [
                        balanced_accuracy(
                            classifiers[m].net(decoded[m]).argmax(-1), labels, dataset.n_classes
                        )
                        for m in targets
                    ]
                    row = {
                        "sampler": name,
                        "start": start,
                        "subset": "+".join(subset),
                        "size": k,
                        "settings": dataclasses.asdict(settings),
                        "gradient_evaluations": settings.gradient_evaluations,
                        "seconds": wall,
                        "acceptance": acc,
                        "step_size": step,
                        "coherence": sum(coh) / len(coh),
                        "energy_distance": float(_energy_distance(z, ref).mean()),
                    }
                    if start == "experts":
                        row["start_spread"] = _start_spread(z, len(subset))
                    rows.append(row)
                    print(json.dumps(row), flush=True)
    lscpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines()
    cpu = next((ln.split(":", 1)[1].strip() for ln in lscpu if "Model name" in ln), "?")
    result = {
        "run": str(args.run_dir),
        "run_id": record.run_id,
        "epochs": record.epochs,
        "points": args.points,
        "chains": args.chains,
        "subsets_per_size": args.subsets,
        "reference": dataclasses.asdict(REFERENCE),
        "reference_checks": checks,
        "rows": rows,
        "cpu": cpu or platform.processor(),
        "threads": 1,
        "command": "python " + " ".join(sys.argv),
    }
    atomic_write_json(args.out, result)


def _mean(rs: list[dict], key: str) -> float:
    return sum(r[key] for r in rs) / len(rs)


def report(args: argparse.Namespace) -> None:
    parts = [json.loads(Path(p).read_text()) for p in args.parts]
    merged = {**parts[0], "rows": [], "reference_checks": [], "commands": []}
    for p in parts:
        merged["rows"] += p["rows"]
        merged["reference_checks"] += p["reference_checks"]
        merged["commands"].append(p["command"])
    del merged["command"]
    atomic_write_json(args.out, merged)
    sizes = sorted({r["size"] for r in merged["rows"]})
    print(
        "| sampler | grad. evals | "
        + " | ".join(f"\\|S\\|={k}: coherence / ED / s" for k in sizes)
        + " |"
    )
    print("|---|---:|" + "---:|" * len(sizes))
    for name, *_ in CONFIGS:
        evals = sorted({r["gradient_evaluations"] for r in merged["rows"] if r["sampler"] == name})
        for g in evals:
            cells = []
            for k in sizes:
                rs = [
                    r
                    for r in merged["rows"]
                    if r["sampler"] == name and r["size"] == k and r["gradient_evaluations"] == g
                ]
                spread = (
                    f", spread {_mean(rs, 'start_spread'):.3f}" if "start_spread" in rs[0] else ""
                )
                cells.append(
                    f"{_mean(rs, 'coherence'):.3f} / {_mean(rs, 'energy_distance'):.3f} / "
                    f"{_mean(rs, 'seconds'):.1f} (acc. {_mean(rs, 'acceptance'):.2f}{spread})"
                )
            print(f"| {name} | {g} | " + " | ".join(cells) + " |")
    for c in merged["reference_checks"]:
        print(f"- reference {c['subset']}: start spread {c['start_spread']:.4f}")
    _figure(merged, args.figure)


def _figure(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = sorted({r["size"] for r in result["rows"]})
    fig, axes = plt.subplots(2, len(sizes), figsize=(4.3 * len(sizes), 7), squeeze=False)
    for col, k in enumerate(sizes):
        for name, *_ in CONFIGS:
            pts: dict[int, list[dict]] = {}
            for r in result["rows"]:
                if r["sampler"] == name and r["size"] == k:
                    pts.setdefault(r["gradient_evaluations"], []).append(r)
            xs = sorted(pts)
            axes[0, col].plot(xs, [_mean(pts[g], "coherence") for g in xs], marker="o", label=name)
            axes[1, col].plot(
                xs, [_mean(pts[g], "energy_distance") for g in xs], marker="o", label=name
            )
        axes[0, col].set_title(f"|S| = {k}")
        for row in (0, 1):
            axes[row, col].set_xscale("log")
            axes[row, col].set_xlabel("gradient evaluations per sample")
        axes[1, col].set_yscale("symlog", linthresh=0.01)
    axes[0, 0].set_ylabel("conditional coherence")
    axes[1, 0].set_ylabel("energy distance to the long run")
    axes[0, 0].legend(fontsize=7)
    fig.suptitle(f"JNF on polymnist-lite ({result['run_id']}): HMC samplers, 1 CPU thread")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)


def drift(args: argparse.Namespace) -> None:
    """Whether the target is proper: chains of the adaptive sampler run on and on (|S| = 2)."""
    torch.set_num_threads(1)
    model, dataset, _ = load_run(args.run_dir, load_registry())
    x = dataset.test.subset(torch.arange(args.points)).batch()
    subset = tuple(model.modalities[:2])
    with torch.no_grad():
        target = ProductOfFlows([model.unimodal_posterior(x, m) for m in subset], prior_power=1)
    mean, std = target.gaussian_product()
    torch.manual_seed(args.seed)
    z = mean + std * torch.randn(4, *mean.shape)
    print(f"start: mean |z| {z.norm(dim=-1).mean():.2f}, mean log pi {target(z).mean():.1f}")
    settings = _adaptive(60, 60, 5, "pooled", precondition=False)
    for i in range(4):
        z = hmc_sample(target, z, settings).z
        norm = z.norm(dim=-1)
        print(
            f"after {(i + 1) * settings.gradient_evaluations} evaluations: mean |z| "
            f"{norm.mean():.2f} (max {norm.max():.2f}), mean log pi {target(z).mean():.1f}"
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="command", required=True)
    m = sub.add_parser("run", help="measure on a trained JNF run")
    m.add_argument("run_dir", type=Path)
    m.add_argument("--points", type=int, default=32)
    m.add_argument("--chains", type=int, default=8)
    m.add_argument("--subsets", type=int, default=1, help="subsets of each size")
    m.add_argument("--sizes", type=int, nargs="+", default=[2, 3, 4], help="subset sizes")
    m.add_argument("--seed", type=int, default=0)
    m.add_argument("--out", type=Path, required=True)
    r = sub.add_parser("report", help="merge measurements: JSON, figure, Markdown table")
    r.add_argument("parts", type=Path, nargs="+")
    r.add_argument("--out", type=Path, default=Path("benchmarks/hmc_samplers.json"))
    r.add_argument("--figure", type=Path, default=Path("benchmarks/hmc_samplers.png"))
    d = sub.add_parser("drift", help="run adaptive chains on |S| = 2 and print |z|, log pi")
    d.add_argument("run_dir", type=Path)
    d.add_argument("--points", type=int, default=8)
    d.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    {"run": measure, "report": report, "drift": drift}[args.command](args)


if __name__ == "__main__":
    main()
