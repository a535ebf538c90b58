"""The rules every published dataset shares: web-page sniffing, torch errors without torch's
unsafe advice, and the sample-count rule (a problem for check, a warning and a record for load)."""

from __future__ import annotations

import fractions
import logging
from pathlib import Path

import pytest
import torch

from mmvae_bench.data import published
from mmvae_bench.errors import BenchError
from tests.data.fixtures import idx_bytes, write_html_page


@pytest.mark.parametrize(
    "content",
    [
        b"<!DOCTYPE html><html></html>",
        b"<!doctype HTML>",
        b"\n\n   \t<html lang='en'>",
        b"\xef\xbb\xbf<!DOCTYPE html>",  # a UTF-8 byte-order mark first
        b"\r\n<HTML><HEAD>",
    ],
)
def test_web_pages_are_recognised(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "mhd_train.pt"
    path.write_bytes(content)
    assert published.is_html_page(path)


@pytest.mark.parametrize(
    "content",
    [
        b"",
        b"not a torch file",
        b"<?xml version='1.0'?><svg/>",
        b"MATLAB 5.0 MAT-file, Platform: posix",
        b"\x89PNG\r\n\x1a\n",
        b"\x1f\x8b\x08\x00",  # gzip
        b"PK\x03\x04",  # zip, as torch.save writes
    ],
)
def test_data_files_are_not_web_pages(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "f"
    path.write_bytes(content)
    assert not published.is_html_page(path)
    assert not published.is_html_page(tmp_path / "absent")


def test_real_data_formats_are_not_web_pages(tmp_path: Path) -> None:
    (tmp_path / "idx").write_bytes(idx_bytes(torch.zeros(2, 28, 28, dtype=torch.uint8).numpy()))
    torch.save((torch.zeros(1),), tmp_path / "t.pt")
    assert not published.is_html_page(tmp_path / "idx")
    assert not published.is_html_page(tmp_path / "t.pt")


def test_reject_html_page_message(tmp_path: Path) -> None:
    path = write_html_page(tmp_path / "train_32x32.mat")
    with pytest.raises(BenchError) as err:
        published.reject_html_page(path, "a MATLAB .mat file", "run `mmvae-bench data fetch x`")
    assert str(err.value) == (
        f"{path} is an HTML page, not a MATLAB .mat file: the download probably failed; "
        "run `mmvae-bench data fetch x`"
    )
    assert published.html_page_message(path, "a zip archive", "").endswith("probably failed")


def test_torch_load_error_drops_the_weights_only_false_advice(tmp_path: Path) -> None:
    (tmp_path / "garbage.pt").write_bytes(b"not a torch file")
    torch.save({"x": fractions.Fraction(1, 3)}, tmp_path / "other.pt")
    for name in ("garbage.pt", "other.pt"):
        with pytest.raises(Exception) as err:
            torch.load(tmp_path / name, weights_only=True)
        assert "weights_only" in str(err.value)  # torch's advice, which we must not pass on
        text = published.torch_load_error(err.value)
        assert "weights_only" not in text and "Re-running" not in text
        assert text.startswith("UnpicklingError: ") and len(text) < 200
    assert "fractions" in text


def test_count_problems_report_each_difference() -> None:
    problems = published.count_problems(
        {"train": 30, "test": 10_000, "extra": 11},
        {"train": 50_000, "test": 10_000, "extra": 10},
        "DIR",
        "run `x`",
    )
    assert problems == [
        "DIR: 30 train samples, the published data has 50000 (fewer); run `x`",
        "DIR: 11 extra samples, the published data has 10 (more); run `x`",
    ]


def test_record_counts_warns_and_records(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="mmvae_bench.data.published"):
        info = published.record_counts("mhd", {"train": 30, "test": 10}, {"train": 50, "test": 10})
    assert info == {
        "sample_counts": {
            "train": {"found": 30, "published": 50},
            "test": {"found": 10, "published": 10},
        },
        "published_counts_match": False,
    }
    assert [r.getMessage()[:50] for r in caplog.records] == [
        "mhd train: 30 samples, the published data has 50; "
    ]
    assert published.record_counts("x", {"a": 1}, {"a": 1})["published_counts_match"] is True
