"""benchmarks/jnf_vs_reference.py's table (issue 12 item 6), on records built from a fixture.

Training either side is left to the benchmark itself (minutes per epoch on the CPU); this
checks what ``table`` reads and refuses: the run records through ``RunRecord``, the
reference's timing JSON, and two sides that do not share an architecture or budget.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import ModuleType

import pytest

from mmvae_bench.errors import BenchError
from mmvae_bench.results import RunRecord, StageRecord
from tests.benchmark_scripts import load_script

ROOT = Path(__file__).resolve().parents[1]
FIXTURE = ROOT / "tests" / "fixtures" / "records_v1" / "runs" / "jnf-s1"


def _write_run(jvr: ModuleType, out: Path, side: str, seed: int, coh: list[float], **config):
    record = RunRecord.load(FIXTURE)
    record.run_id, record.seed, record.status = f"{side}-s{seed}", seed, "ok"
    record.config |= {k: json.loads(v) if v[0].isdigit() or v in ("true", "false") else v
                      for k, v in jvr.ARCHITECTURE.items()} | config  # fmt: skip
    record.metrics["conditional_coherence_by_size"] = {
        str(k): {"mean": c, "std": 0.0, "n": 500} for k, c in enumerate(coh, start=1)
    }
    record.metrics["joint_coherence"] = coh[-1] / 2
    if side == "ours":
        record.stages = {s: StageRecord(s, 2, 10, 640, 4.0, 160.0, {}) for s in jvr.STAGES}
    else:
        record.stages = {s: StageRecord(s, 0, 0, 0, 0.0, 0.0, {}) for s in jvr.STAGES}
        timing = {s: {"epochs": 2, "samples": 640, "wall_s": 8.0, "samples_per_s": 80.0}
                  for s in jvr.STAGES}  # fmt: skip
        path = out / "multivae" / f"seed-{seed}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"stages": timing, "parameters": {"total": 3_880_335}}))
    run_dir = out / "runs" / record.run_id
    run_dir.mkdir(parents=True)
    record.save(run_dir)


def test_table_sets_both_sides_per_seed_with_mean_and_std(tmp_path: Path) -> None:
    jvr = load_script("jnf_vs_reference")
    _write_run(jvr, tmp_path, "ours", 0, [0.5, 0.6, 0.7, 0.8])
    _write_run(jvr, tmp_path, "ours", 1, [0.7, 0.8, 0.9, 1.0])
    _write_run(jvr, tmp_path, "reference", 0, [0.4, 0.5, 0.6, 0.7])
    text = jvr.table(tmp_path)
    assert (tmp_path / "table.md").read_text() == text
    lines = text.splitlines()
    assert "| ours | 0 | 0.500 | 0.600 | 0.700 | 0.800 | 0.400 | 4 (160) | 4 (160) | 1 |" in lines
    assert "| **ours** | mean ± std | 0.600 ± 0.141 | 0.700 ± 0.141 | 0.800 ± 0.141 | " in text
    ref = "| MultiVae 1.0.3 | 0 | 0.400 | 0.500 | 0.600 | 0.700 | 0.350 | 8 (80) | 8 (80) |"
    assert any(line.startswith(ref) for line in lines)
    assert "**MultiVae 1.0.3** | mean" not in text  # one seed: no spread to show
    assert "reference parameters 3,880,335" in text


def test_table_refuses_sides_of_different_architecture(tmp_path: Path) -> None:
    jvr = load_script("jnf_vs_reference")
    _write_run(jvr, tmp_path, "ours", 0, [0.5, 0.6, 0.7, 0.8], flow_hidden=64)
    _write_run(jvr, tmp_path, "reference", 0, [0.4, 0.5, 0.6, 0.7])
    with pytest.raises(BenchError, match="flow_hidden = 128, but ours-s0 has 64"):
        jvr.table(tmp_path)


def test_table_without_runs_says_what_to_do(tmp_path: Path) -> None:
    assert "no evaluated runs" in load_script("jnf_vs_reference").table(tmp_path)
