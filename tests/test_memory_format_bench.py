"""``benchmarks/memory_format_ab.py``: both formats timed on the same model, in one process."""

from __future__ import annotations

import json
from pathlib import Path

from tests.benchmark_scripts import load_script


def test_times_each_stage_in_both_formats_and_records_the_cpu(tmp_path: Path) -> None:
    out = tmp_path / "ab.json"
    script = load_script("memory_format_ab")
    args = ["--archs", "mhd", "--threads", "1", "--rounds", "2", "--steps", "1"]
    rows = script.main([*args, "--out", str(out)])
    assert [r["stage"] for r in rows] == ["joint", "unimodal"]
    for r in rows:
        rates = r["samples_per_s"]
        assert set(rates) == {"contiguous", "channels-last"} and min(rates.values()) > 0
        ratio = rates["channels-last"] / rates["contiguous"]
        assert abs(r["channels_last_over_contiguous"] - ratio) < 0.01
        assert r["has_convolutions"]  # MHD's image and sound nets
    written = json.loads(out.read_text())
    assert written["rows"] == rows and written["cpu"]
