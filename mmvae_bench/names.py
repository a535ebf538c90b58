"""Names that become paths: run ids, model and dataset names (README, "What the suite trusts")."""

from __future__ import annotations

import re
from typing import Any

from mmvae_bench.errors import BenchError

__all__ = ["check_name"]

# One path component: no separators, no leading dot, bounded length.
_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+=-]{0,127}$")


def check_name(value: Any, what: str) -> str:
    """``value`` if it is a single safe path component, else a :class:`BenchError`.

    Run ids, model and dataset names become folder and file names (``runs/<run-id>/``,
    ``leaderboards/<dataset>.json``): letters, digits and ``. _ + = -``, starting with a letter
    or digit, at most 128 characters, no ``..``, so no name can climb out of its folder or hide
    as a dotfile.
    """
    if not isinstance(value, str) or not _SAFE_NAME.fullmatch(value) or ".." in value:
        raise BenchError(
            f"{what} {value!r} is not a safe name: use letters, digits and . _ + = - "
            "(starting with a letter or digit, at most 128 characters, no '..')"
        )
    return value
