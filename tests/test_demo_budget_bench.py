"""``benchmarks/demo_budget.py``: the linear probe of the joint latent, per training budget."""

from __future__ import annotations

from pathlib import Path

from tests.benchmark_scripts import load_script

TINY = {"latent_dim": 4, "width": 4, "features": 16, "flow_hidden": 16}


def test_probe_rows_follow_the_epochs_asked_for(tmp_path: Path) -> None:
    script = load_script("demo_budget")
    rows = script.run(
        "tiny", TINY, epochs=3, every=2, dataset_name="circles-squares", cache_dir=str(tmp_path)
    )
    assert [r["epoch"] for r in rows] == [2, 3]  # every 2 epochs, and after the last
    assert all(0.0 <= r["probe_accuracy"] <= 1.0 for r in rows)
    assert all(set(r["nll"]) == {"circle", "square"} for r in rows)
    assert 0 < rows[0]["train_s"] < rows[1]["train_s"]
