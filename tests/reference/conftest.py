"""Cross-checks against MultiVae (the ``reference`` extra, installed by ``make install``).

Every test here is marked ``reference`` (deselect with ``-m "not reference"``). Each module
starts with ``pytest.importorskip("multivae", reason=...)``, so without the extra the
modules are skipped with that reason shown (``-ra``), never silently. After the run, the
maximum relative differences measured are printed as a table.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

HERE = Path(__file__).parent


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if HERE in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.reference)


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:
    shared = sys.modules.get("tests.reference.shared")  # imported only if a cross-check ran
    if shared is None or not shared.MEASURED:
        return
    terminalreporter.section("cross-checks against MultiVae: max relative difference")
    for model, quantities in sorted(shared.MEASURED.items()):
        for quantity, value in quantities.items():
            terminalreporter.write_line(f"{model:8s} {quantity:52s} {value:.1e}")
