"""Shared test set-up: one torch thread, a seeded RNG per test, tiny datasets, --device."""

from __future__ import annotations

import os

import pytest
import torch

# One thread: on this 2-core machine two threads per process slowed ~100x while another
# process (pytest-xdist, Ray workers, a second test run) held a core.
torch.set_num_threads(1)
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--device", default="cpu", help="torch device for model tests")


@pytest.fixture
def device(request: pytest.FixtureRequest) -> torch.device:
    return torch.device(request.config.getoption("--device"))


@pytest.fixture(autouse=True)
def _seeded():
    # Each test gets the same seed and leaves the global RNG as it found it.
    with torch.random.fork_rng():
        torch.manual_seed(0)
        yield
