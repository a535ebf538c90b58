"""The performance suite: settings, the sections it runs, same-process ratios, the JSON record."""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator

from mmvae_bench import flows
from mmvae_bench.config import Precision
from mmvae_bench.errors import BenchError
from mmvae_bench.eval.protocol import PROTOCOLS, Protocol
from mmvae_bench.hmc import HMCSettings
from mmvae_bench.io import atomic_write_json
from mmvae_bench.perf import reference as same_process
from mmvae_bench.perf.archs import ARCHS, get_arch
from mmvae_bench.perf.evaluation import protocol_time, random_classifiers
from mmvae_bench.perf.inference import hmc_throughput, unimodal_throughput
from mmvae_bench.perf.timing import peak_memory_mib
from mmvae_bench.perf.training import stage_throughput
from mmvae_bench.plugins import Registry
from mmvae_bench.results import cpu_name, environment, now

__all__ = ["PRESETS", "REFERENCE", "SECTIONS", "BenchSettings", "run_bench"]

log = logging.getLogger(__name__)
Progress = Callable[[str], None]
SCHEMA = 1
SECTIONS = ("training", "hmc", "evaluation", "reference")
DEFAULT_SECTIONS = SECTIONS[:3]  # "reference" runs with --preset paper, or when named
PRESETS = ("paper",)

# Context only, no ratio is computed from these: the reference JNF code measured in another
# run (issue 7: PolyMNIST architecture, batch 128, 2 torch threads, a quiet 2-core machine, the
# reference model larger than ours at the suite's sizes). Ratios against the reference come
# from the same-process comparison (the ``reference`` section, ``--preset paper``).
REFERENCE: dict[str, Any] = {
    "conditions": "context only: reference JNF code, another run, 2 threads, quiet (issue 7)",
    "stage_joint_samples_per_s": [360.0, 375.0],
    "stage_unimodal_samples_per_s": [263.0, 271.0],
    "unimodal_encode_s_per_128": 0.53,
    "hmc_s_per_128": {"2": 39.0, "4": 80.0},
    "full_protocol_s": 86_400.0,  # "about a CPU-day"
}


@dataclass(frozen=True, kw_only=True)
class BenchSettings:
    """What the suite measures and how long it takes.

    Attributes:
        device: ``cpu`` or ``cuda`` (resolved).
        quick: tiny nets and settings: every code path in about a minute (a smoke run).
        threads: torch intra-op threads.
        models: registry names to time in training; None: every registered model.
        archs: architectures for training (``polymnist``, ``mhd``, ``mnist-svhn``).
        sections: which of ``training``, ``hmc``, ``evaluation``, ``reference`` to run.
        preset: ``paper``: also run ``reference``, our JNF and MultiVae's side by side in this
            process at the preset's (equal) sizes (:mod:`mmvae_bench.perf.reference`).
        compile: also time the ``hmc_model``'s training, HMC and evaluation compiled
            (:func:`~mmvae_bench.train.compile_submodules`,
            :func:`~mmvae_bench.flows.compile_kernels`).
        precision: training autocast through accelerate (``no``, ``bf16``, ``fp16``).
        hmc_model: the model whose subset posteriors are sampled with HMC (JNF's interface).
        seed: seeds model init and data.
    """

    device: str = "cpu"
    quick: bool = False
    threads: int = 1
    models: tuple[str, ...] | None = None
    archs: tuple[str, ...] = tuple(ARCHS)
    sections: tuple[str, ...] = DEFAULT_SECTIONS
    compile: bool = False
    precision: Precision = "no"
    hmc_model: str = "jnf"
    seed: int = 0
    preset: str | None = None

    def __post_init__(self) -> None:
        if self.preset is not None and self.preset not in PRESETS:
            raise BenchError(f"unknown bench preset {self.preset!r}; available: paper")
        if self.threads < 1:
            raise BenchError(f"threads must be >= 1, got {self.threads}")
        unknown = [s for s in self.sections if s not in SECTIONS]
        if unknown:
            raise BenchError(f"unknown bench sections {unknown}; available: {', '.join(SECTIONS)}")
        for a in self.archs:
            get_arch(a)

    # Sizes per mode: full = the settings, quick = a smoke run.
    @property
    def repeats(self) -> int:
        return 2 if self.quick else 3

    @property
    def epoch_s(self) -> float:  # target wall time of one timed training epoch
        return 0.1 if self.quick else 2.0

    @property
    def hmc(self) -> HMCSettings:
        return HMCSettings(steps=5, n_leapfrog=5) if self.quick else HMCSettings()

    @property
    def chains(self) -> int:
        return 16 if self.quick else 128

    @property
    def runs_reference(self) -> bool:
        return self.preset == "paper" or "reference" in self.sections

    @property
    def reference(self) -> same_process.CompareSettings:
        """The same-process comparison's sizes: the paper preset's, or a smoke run's."""
        if self.quick:
            return same_process.CompareSettings(
                latent_dim=8, batch_size=8, train_steps=2, chains=4, hmc_steps=2, repeats=2
            )
        return same_process.CompareSettings(seed=self.seed)


def run_bench(
    settings: BenchSettings,
    registry: Registry,
    *,
    out: Path | None = None,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Run the suite; write the record to ``out`` (atomically, as it grows) and return it."""
    say = progress or (lambda msg: None)
    torch.set_num_threads(settings.threads)
    device = torch.device(settings.device)
    names = list(settings.models) if settings.models is not None else list(registry.models)
    entries = [registry.model(n) for n in names]
    t_start = time.perf_counter()
    record: dict[str, Any] = {
        "schema": SCHEMA,
        "created": now(),
        "mode": "quick" if settings.quick else "full",
        "settings": {k: v for k, v in dataclasses.asdict(settings).items()},
        "environment": {**environment(device, settings.threads), "cpu": cpu_name()},
        "load_average": {"start": list(os.getloadavg())},
        # The process before any measurement (torch alone maps ~0.7 GiB here): RSS rows are
        # process peaks, so read them against this.
        "baseline_memory": peak_memory_mib(device),
        "reference_context": REFERENCE,
    }

    def save() -> None:
        if out is not None:
            atomic_write_json(out, record)

    if "training" in settings.sections:
        record["training"] = _training(settings, entries, device, say)
        save()
    if "hmc" in settings.sections:
        record["hmc"] = _hmc(settings, registry, device, say)
        save()
    if "evaluation" in settings.sections:
        record["evaluation"] = _evaluation(settings, registry, device, say)
        save()
    if settings.runs_reference:
        if same_process.available():
            record["reference"] = same_process.compare(settings.reference, registry, device, say)
        else:
            record["reference"] = {"skipped": same_process.MISSING}
            say(f"reference comparison skipped: {same_process.MISSING}")
        save()
    record["ratios"] = ratios(record)
    record["load_average"]["end"] = list(os.getloadavg())
    record["peak_memory"] = peak_memory_mib(device)
    record["wall_s"] = time.perf_counter() - t_start
    save()
    return record


# -- sections ------------------------------------------------------------------------------------
def _training(
    settings: BenchSettings, entries: list, device: torch.device, say: Progress
) -> list[dict[str, Any]]:
    accelerator = Accelerator(cpu=device.type == "cpu", mixed_precision=settings.precision)
    rows = []
    common = {"quick": settings.quick, "repeats": settings.repeats, "target_s": settings.epoch_s}
    for arch_name in settings.archs:
        arch = get_arch(arch_name)
        for entry in entries:
            config = arch.config(entry, quick=settings.quick)
            stages = entry.cls(arch.dataset(1), config).stages
            for stage in stages:
                say(f"training {entry.name} @ {arch.name}, stage {stage.name}")
                rows.append(stage_throughput(entry, arch, stage.name, accelerator, **common))
                # Compiled training at the published architecture only (compiling takes minutes).
                compiled = settings.compile and arch_name == "polymnist"
                if compiled and entry.name == settings.hmc_model:
                    say(f"training {entry.name} @ {arch.name}, stage {stage.name} (compiled)")
                    rows.append(
                        stage_throughput(
                            entry, arch, stage.name, accelerator, compiled=True, **common
                        )
                    )
            # The naive baseline of the stage we claim to have sped up: the last stage of a
            # staged model (JNF's unimodal flows), at the published architecture.
            if len(stages) > 1 and arch_name == "polymnist":
                last = stages[-1].name
                say(f"training {entry.name} @ {arch.name}, stage {last} (naive baseline)")
                rows.append(stage_throughput(entry, arch, last, accelerator, naive=True, **common))
    return rows


def _jnf_at_polymnist(
    settings: BenchSettings, registry: Registry, device: torch.device, n_test: int
) -> tuple[Any, Any]:
    entry = registry.model(settings.hmc_model)
    arch = get_arch("polymnist")
    dataset = arch.dataset(1, seed=settings.seed, n_test=n_test)
    torch.manual_seed(settings.seed)
    model = entry.cls(dataset, arch.config(entry, quick=settings.quick)).to(device)
    model.eval().requires_grad_(False)
    if not hasattr(model, "unimodal_posterior"):
        raise BenchError(
            f"--hmc-model {settings.hmc_model}: needs JNF's unimodal_posterior(batch, m) interface"
        )
    return model, dataset


def _hmc(
    settings: BenchSettings, registry: Registry, device: torch.device, say: Progress
) -> list[dict[str, Any]]:
    model, dataset = _jnf_at_polymnist(settings, registry, device, settings.chains)
    batch = dataset.test.batch(device=device)
    mods = model.modalities
    rows = []
    reps = settings.repeats
    say("HMC: one-modality encode (flow inverse), ours and zuko's")
    rows.append(unimodal_throughput(model, batch, mods[0], device, repeats=reps))
    rows.append(unimodal_throughput(model, batch, mods[0], device, repeats=reps, zuko_inverse=True))
    for k in (2, 3, 4):
        subset = tuple(mods[:k])
        say(f"HMC |S|={k}: ours ({settings.hmc.steps} x {settings.hmc.n_leapfrog})")
        row = hmc_throughput(model, batch, subset, settings.hmc, "ours", device, repeats=reps)
        rows.append(row)
        if settings.compile:
            say(f"HMC |S|={k}: ours, compiled kernels")
            rows.append(
                hmc_throughput(
                    model, batch, subset, settings.hmc, "ours", device, repeats=reps, compiled=True
                )
            )
    # The slow variants take a minute per call at full settings: one timed run after a
    # warm-up call at one iteration.
    subset = tuple(mods[:2])
    for variant in ("encode-once", "naive"):
        say(f"HMC |S|=2: {variant}")
        warm = HMCSettings(steps=1, n_leapfrog=settings.hmc.n_leapfrog)
        hmc_throughput(model, batch, subset, warm, variant, device, repeats=1, warmup=1)
        rows.append(
            hmc_throughput(model, batch, subset, settings.hmc, variant, device, repeats=1, warmup=0)
        )
    return rows


def _evaluation(
    settings: BenchSettings, registry: Registry, device: torch.device, say: Progress
) -> list[dict[str, Any]]:
    n_test = 10_000  # PolyMNIST's test set
    protocols: list[Protocol] = [PROTOCOLS["full"], PROTOCOLS["quick"]]
    real_quick = not settings.quick
    if settings.quick:  # the same code paths at a smoke run's size
        protocols = [
            dataclasses.replace(p, hmc=settings.hmc, joint_samples=100, batch_size=32)
            for p in protocols
        ]
    held = max(p.batch_size for p in protocols)
    if real_quick:
        held = max(held, PROTOCOLS["quick"].test_samples or 0)
    model, dataset = _jnf_at_polymnist(settings, registry, device, held)
    classifiers = random_classifiers(dataset, device)
    rows = []
    for compiled in (False, True) if settings.compile else (False,):
        flows.compile_kernels(compiled)
        try:
            for p in protocols:
                real = real_quick and p.name == "quick"
                say(f"evaluation: {p.name} protocol" + (", compiled kernels" if compiled else ""))
                row = protocol_time(model, dataset, classifiers, p, n_test, device, real=real)
                rows.append({**row, "compiled": compiled})
        finally:
            flows.compile_kernels(False)
    return rows


# -- ratios and targets --------------------------------------------------------------------------
def _find(rows: list[dict[str, Any]], **match: Any) -> dict[str, Any] | None:
    for r in rows:
        if all(r.get(k) == v for k, v in match.items()):
            return r
    return None


def ratios(record: dict[str, Any]) -> list[dict[str, Any]]:
    """Ours vs the slower variants measured in the same process (speed-ups, > 1 is faster)."""
    out = []
    for r in record.get("training", []):
        if r["variant"] != "naive":
            continue
        ours = _find(
            record["training"], model=r["model"], arch=r["arch"], stage=r["stage"], variant="ours"
        )
        if ours:
            out.append(
                {
                    "what": f"training {r['model']} @ {r['arch']}, stage {r['stage']}",
                    "vs": "naive (earlier stages' losses each step, no precompute)",
                    "speedup": ours["samples_per_s"]["median"] / r["samples_per_s"]["median"],
                }
            )
    hmc = record.get("hmc", [])
    for k in (1, 2, 3, 4):
        ours = _find(hmc, subset_size=k, variant="ours")
        for other in ("encode-once", "naive", "ours (compiled)"):
            slow = _find(hmc, subset_size=k, variant=other)
            if ours and slow:
                fast, base = (slow, ours) if other == "ours (compiled)" else (ours, slow)
                out.append(
                    {
                        "what": f"|S|={k} posterior sampling",
                        "vs": f"{base['variant']} -> {fast['variant']}",
                        "speedup": base["s_per_128_samples"] / fast["s_per_128_samples"],
                    }
                )
    return out
