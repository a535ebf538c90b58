"""The storage A/B of ``benchmarks/native_precision.py`` compares like with like (issue 13).

Its throughput table is only meaningful if the two storages it trains on (the former float32
tensors, MNIST-SVHN's pairs gathered; the native uint8 ones, MNIST-SVHN as index pairs) give
the trainer the same batches: checked here batch by batch, bit for bit, with the shuffled
order the trainer draws. The summary's medians and ratios are checked on fixture rows.
"""

from __future__ import annotations

import pytest
import torch

from mmvae_bench.data.spec import iter_batches
from tests.benchmark_scripts import load_script


@pytest.fixture(scope="module")
def script():
    return load_script("native_precision")


@pytest.mark.parametrize("dataset", ["polymnist", "mnist-svhn"])
def test_both_storages_give_identical_batches(script, dataset: str) -> None:
    specs, floats, native, _ = script._ab_splits(dataset, 96)
    assert set(specs) == set(floats.x) == set(native.x)
    assert native.nbytes < floats.nbytes
    assert all(t.dtype == torch.uint8 for t in native.x.values())
    if dataset == "mnist-svhn":  # unique images, pairs as indices
        assert set(native.index) == {"mnist", "svhn"}
    pairs = zip(
        iter_batches(floats, 32, shuffle=True, generator=torch.Generator().manual_seed(3)),
        iter_batches(native, 32, shuffle=True, generator=torch.Generator().manual_seed(3)),
        strict=True,
    )
    for (a, _), (b, _) in pairs:
        for m in a:
            assert b[m].dtype == torch.float32
            assert torch.equal(a[m], b[m])


def test_summary_medians_and_ratio(script) -> None:
    rows = [
        {
            "dataset": "polymnist",
            "storage": storage,
            "batch_ms": ms,
            "joint_samples_per_s": joint,
            "unimodal_samples_per_s": uni,
        }
        for storage, ms, joint, uni in [
            ("float32", 1.0, 100.0, 200.0),
            ("native", 1.5, 90.0, 210.0),
            ("float32", 3.0, 120.0, 220.0),
            ("native", 2.5, 95.0, 230.0),
            ("float32", 2.0, 110.0, 180.0),
            ("native", 2.0, 130.0, 220.0),
        ]
    ]
    joint, unimodal = script.ab_summary(rows)
    assert (joint["stage"], joint["float32_median"], joint["native_median"]) == ("joint", 110, 95)
    assert joint["native_over_float32"] == pytest.approx(95 / 110)
    assert (unimodal["float32_median"], unimodal["native_median"]) == (200, 220)
    assert (joint["batch_ms_float32"], joint["batch_ms_native"]) == (2.0, 2.0)
