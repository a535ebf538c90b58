"""Rules every published dataset's loader and ``check`` share: web pages saved in place of data
files, unreadable torch files, and sample counts against the published ones.

**Counts.** A split whose sample count differs from the published one is a *problem* for
``mmvae-bench data check`` (exit 2: the folder does not hold the published data), while loading
goes on with it: each differing count is logged as a warning and every count is recorded in
``dataset.info["sample_counts"]`` (so in the run record's ``dataset_info``), next to
``dataset.info["published_counts_match"]``. Loading must accept small files (tests and quick
trials use them); ``check`` is where a user asks whether the data is the published data. A split
with no samples at all is an error for both.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path

from mmvae_bench.errors import BenchError
from mmvae_bench.io import torch_load_error

__all__ = [
    "count_problems",
    "html_page_message",
    "is_html_page",
    "record_counts",
    "reject_html_page",
    "torch_load_error",
]

logger = logging.getLogger(__name__)

# Hosts such as Google Drive answer with a confirmation or quota page; saved under the data
# file's name it is the likeliest "corrupt" file. Sniffed in the first bytes after whitespace
# (and a UTF-8 byte-order mark); no data format here starts with "<".
_HTML_STARTS = (b"<!doctype html", b"<html")
_SNIFF_BYTES = 512


def is_html_page(path: Path) -> bool:
    """Whether ``path`` starts (after whitespace) with ``<!DOCTYPE html`` or ``<html``."""
    try:
        with open(path, "rb") as f:
            head = f.read(_SNIFF_BYTES)
    except OSError:
        return False
    head = head.lstrip(b" \t\r\n\x0b\x0c")
    head = head.removeprefix(b"\xef\xbb\xbf").lstrip(b" \t\r\n\x0b\x0c").lower()
    return head.startswith(_HTML_STARTS)


def html_page_message(path: Path, fmt: str, fix: str) -> str:
    """The sentence for a web page saved as ``path``; ``fix`` is the remedy clause (may be "")."""
    hint = f"; {fix}" if fix else ""
    return f"{path} is an HTML page, not {fmt}: the download probably failed{hint}"


def reject_html_page(path: Path, fmt: str, fix: str) -> None:
    """Raise :func:`html_page_message` as a ``BenchError`` when ``path`` is a web page.

    Args:
        path: the data file.
        fmt: what the file should be (``"an MNIST idx file"``).
        fix: the remedy clause, usually ``"run `mmvae-bench data fetch ...`"`` (may be "").
    """
    if is_html_page(path):
        raise BenchError(html_page_message(path, fmt, fix))


def count_problems(
    found: Mapping[str, int], published: Mapping[str, int], where: str, fix: str
) -> list[str]:
    """``check``'s side of the count rule: one problem per count that differs from the published.

    Args:
        found: sample count per part (``{"train": 30, "test": 30}``, or ``"mnist train"``...).
        published: the published count per part (same keys).
        where: what holds them, to start each sentence (a folder or a file).
        fix: the remedy clause.
    """
    problems = []
    for part, n in found.items():
        expected = published[part]
        if n != expected:
            problems.append(
                f"{where}: {n} {part} samples, the published data has {expected} "
                f"({'fewer' if n < expected else 'more'}); {fix}"
            )
    return problems


def record_counts(
    dataset: str, found: Mapping[str, int], published: Mapping[str, int]
) -> dict[str, object]:
    """Loading's side of the count rule: warn about each differing count, return the info entries.

    Returns:
        ``{"sample_counts": {part: {"found": n, "published": N}}, "published_counts_match":
        bool}``, to merge into ``dataset.info``.
    """
    counts = {
        part: {"found": int(n), "published": int(published[part])} for part, n in found.items()
    }
    for part, c in counts.items():
        if c["found"] != c["published"]:
            logger.warning(
                "%s %s: %d samples, the published data has %d; loading them anyway (recorded in "
                "dataset_info.sample_counts; `mmvae-bench data check %s` reports it)",
                dataset,
                part,
                c["found"],
                c["published"],
                dataset,
            )
    match = all(c["found"] == c["published"] for c in counts.values())
    return {"sample_counts": counts, "published_counts_match": match}
