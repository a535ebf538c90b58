"""Run-record provenance: the git revision of the code that produced a record."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from mmvae_bench.results import git_revision

ROOT = Path(__file__).resolve().parent.parent


def test_git_revision_of_this_checkout_is_its_head() -> None:
    head = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True
    ).stdout.strip()
    if not head:
        pytest.skip("not a git checkout")
    assert git_revision(ROOT).removesuffix("-dirty") == head


def test_a_copy_without_git_uses_the_declared_revision(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # tmp_path is outside any repository, like a tree synced to a GPU machine.
    monkeypatch.delenv("MMVAE_BENCH_GIT_REVISION", raising=False)
    assert git_revision(tmp_path) is None
    monkeypatch.setenv("MMVAE_BENCH_GIT_REVISION", "abc1234")
    assert git_revision(tmp_path) == "abc1234"
    # A real repository wins over the declaration.
    if git_revision(ROOT) is not None:
        assert git_revision(ROOT) != "abc1234"
