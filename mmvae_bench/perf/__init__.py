"""Performance suite (``mmvae-bench bench``, BENCHMARKS.md): training samples/s per stage, subset
posterior sampling (HMC) per subset size, evaluation-protocol time and peak memory, with the
naive baselines of what was sped up measured side by side in the same process.

One module per part: :mod:`~mmvae_bench.perf.archs` (the published architectures on synthetic
tensors), :mod:`~mmvae_bench.perf.timing`, :mod:`~mmvae_bench.perf.training`,
:mod:`~mmvae_bench.perf.inference`, :mod:`~mmvae_bench.perf.evaluation`,
:mod:`~mmvae_bench.perf.reference` (our JNF and MultiVae's in one process, equal sizes),
:mod:`~mmvae_bench.perf.suite` (settings, ratios, the record) and
:mod:`~mmvae_bench.perf.report` (tables). Recorded results live in ``benchmarks/perf/``.
"""

from mmvae_bench.perf.report import tables
from mmvae_bench.perf.suite import REFERENCE, SECTIONS, BenchSettings, run_bench

__all__ = ["REFERENCE", "SECTIONS", "BenchSettings", "run_bench", "tables"]
