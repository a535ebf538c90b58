"""Published reference figures beside our leaderboard rows: loading, matching, comparing.

``leaderboards/reference/published.json`` holds figures from papers and the reference library,
each with its citation (authors, title, venue), the URL and the place in the source it was read
(table, row, column), the metric's definition and protocol notes. They are shown, labelled as
published, never averaged with our runs and never rerun here.

**Match.** An entry is shown in a leaderboard when its ``dataset`` is the leaderboard's and its
``protocols`` names the protocol (``full``, ``quick``) of a table there: the protocol it is
comparable with. The published papers evaluate on the whole test set, so the entries name
``full``; a ``quick`` table shows none.

**Flag.** Our row of the same model in a matched table is compared, metric by metric, with the
entry: Δ = our mean - the published mean. When the source publishes a spread (``std`` over its
seeds), our cell is flagged if |Δ| > 2 x that std (outside the published mean ± two published
standard deviations, about a 95% band for seed-to-seed variation); without a published spread
the comparison is shown but never flags.

The file is checked on load: a wrong field is a ``BenchError`` naming the file and the field.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from mmvae_bench.errors import BenchError
from mmvae_bench.names import check_name

__all__ = [
    "FLAG_SIGMAS",
    "REFERENCE_FILE",
    "REFERENCE_VERSION",
    "PublishedValue",
    "ReferenceEntry",
    "ReferenceSource",
    "compare",
    "load_references",
    "matching",
    "metric_title",
]

REFERENCE_VERSION = 1
# Where ``leaderboard build`` looks for the references, relative to its --out folder.
REFERENCE_FILE = Path("reference") / "published.json"
# Our mean is flagged outside the published mean ± FLAG_SIGMAS x the published std.
FLAG_SIGMAS = 2.0

# The metric keys a reference may give: those of the leaderboard rows, plus the coherence from
# one modality to another (``cross_coherence/<source>/<target>``), added to our rows of a
# dataset whose references ask for it.
_METRIC_KEY = re.compile(
    r"^(coherence/[1-9][0-9]*|joint_coherence|cross_coherence/[A-Za-z0-9_-]+/[A-Za-z0-9_-]+)$"
)
_ENTRY_FIELDS = (
    "id",
    "label",
    "model",
    "dataset",
    "protocols",
    "seeds",
    "values",
    "source",
    "metric_definition",
    "protocol_notes",
)
_SOURCE_FIELDS = ("citation", "url", "where", "read")


@dataclass(frozen=True)
class PublishedValue:
    """One published number: its mean and the spread the source gives (None: none given)."""

    mean: float
    std: float | None


@dataclass(frozen=True)
class ReferenceSource:
    """Where a figure comes from: citation, URL, the place in the source, and what was read."""

    citation: str
    url: str
    where: str
    read: str


@dataclass(frozen=True)
class ReferenceEntry:
    """Published figures of one model on one dataset from one source."""

    id: str
    label: str
    model: str
    dataset: str
    protocols: tuple[str, ...]
    seeds: int | None
    values: dict[str, PublishedValue]
    source: ReferenceSource
    metric_definition: str
    protocol_notes: str

    def as_record(self) -> dict[str, Any]:
        """The entry as JSON-able data (what a leaderboard JSON keeps of it)."""
        out = asdict(self)
        out["protocols"] = list(self.protocols)
        return out


def metric_title(key: str) -> str:
    """A column title for a reference metric key (``cross_coherence/a/b`` -> ``coh a→b``)."""
    if key.startswith("cross_coherence/"):
        _, source, target = key.split("/")
        return f"coh {source}→{target}"
    if key.startswith("coherence/"):
        return f"coh |S|={key.split('/')[1]}"
    return "joint coh"


# -- loading ----------------------------------------------------------------------------------
def _fail(path: Path, field: str, problem: str) -> BenchError:
    return BenchError(f"reference file {path}: {field} {problem}; fix the file")


def _text(path: Path, obj: Mapping[str, Any], key: str, where: str) -> str:
    value = obj.get(key)
    if not isinstance(value, str) or not value.strip():
        raise _fail(path, f"{where}.{key}", f"is {value!r}, not a non-empty string")
    return value


def _number(path: Path, value: Any, field: str, *, allow_none: bool = False) -> float | None:
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise _fail(path, field, f"is {value!r}, not a finite number")
    return float(value)


def _keys(path: Path, obj: Any, allowed: Iterable[str], where: str) -> Mapping[str, Any]:
    allowed = tuple(allowed)
    if not isinstance(obj, dict):
        raise _fail(path, where, f"is {type(obj).__name__}, not an object")
    missing = [k for k in allowed if k not in obj]
    unknown = sorted(set(obj) - set(allowed))
    if missing:
        raise _fail(path, where, f"lacks {', '.join(missing)} (fields: {', '.join(allowed)})")
    if unknown:
        raise _fail(path, where, f"has unknown {', '.join(unknown)} (fields: {', '.join(allowed)})")
    return obj


def _entry(path: Path, raw: Any, where: str) -> ReferenceEntry:
    raw = _keys(path, raw, _ENTRY_FIELDS, where)
    for key in ("model", "dataset"):
        try:
            check_name(_text(path, raw, key, where), key)
        except BenchError as e:
            raise _fail(path, f"{where}.{key}", f"is not a name ({e})") from None
    protocols = raw["protocols"]
    if (
        not isinstance(protocols, list)
        or not protocols
        or not all(isinstance(p, str) and p for p in protocols)
    ):
        raise _fail(path, f"{where}.protocols", f"is {protocols!r}, not a list of protocol names")
    seeds = raw["seeds"]
    if seeds is not None and (isinstance(seeds, bool) or not isinstance(seeds, int) or seeds < 1):
        raise _fail(path, f"{where}.seeds", f"is {seeds!r}, not a positive integer or null")
    values = raw["values"]
    if not isinstance(values, dict) or not values:
        raise _fail(path, f"{where}.values", "is not a non-empty object")
    published: dict[str, PublishedValue] = {}
    for key, v in values.items():
        field = f"{where}.values.{key}"
        if not _METRIC_KEY.match(key):
            raise _fail(
                path,
                field,
                "is not a metric key (coherence/<|S|>, joint_coherence or "
                "cross_coherence/<modality>/<modality>)",
            )
        v = _keys(path, v, ("mean", "std"), field)
        mean = _number(path, v["mean"], f"{field}.mean")
        std = _number(path, v["std"], f"{field}.std", allow_none=True)
        if std is not None and std < 0:
            raise _fail(path, f"{field}.std", f"is {std}, negative")
        published[key] = PublishedValue(mean=mean, std=std)  # type: ignore[arg-type]
    source = _keys(path, raw["source"], _SOURCE_FIELDS, f"{where}.source")
    src = ReferenceSource(**{k: _text(path, source, k, f"{where}.source") for k in _SOURCE_FIELDS})
    return ReferenceEntry(
        id=check_name(_text(path, raw, "id", where), f"{where}.id"),
        label=_text(path, raw, "label", where),
        model=raw["model"],
        dataset=raw["dataset"],
        protocols=tuple(protocols),
        seeds=seeds,
        values=published,
        source=src,
        metric_definition=_text(path, raw, "metric_definition", where),
        protocol_notes=_text(path, raw, "protocol_notes", where),
    )


def load_references(path: Path) -> list[ReferenceEntry]:
    """Read and check a reference file; any problem is a ``BenchError`` naming the field."""
    path = Path(path)
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError:
        raise BenchError(f"no reference file {path}; give an existing --references") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise BenchError(f"reference file {path} is not readable JSON ({e}); fix it") from None
    raw = _keys(path, raw, ("reference_version", "about", "entries"), "the top level")
    if raw["reference_version"] != REFERENCE_VERSION:
        raise _fail(
            path,
            "reference_version",
            f"is {raw['reference_version']!r}; this mmvae-bench reads {REFERENCE_VERSION}",
        )
    if not isinstance(raw["entries"], list):
        raise _fail(path, "entries", "is not a list")
    entries = [_entry(path, e, f"entries[{i}]") for i, e in enumerate(raw["entries"])]
    seen: set[str] = set()
    for i, e in enumerate(entries):
        if e.id in seen:
            raise _fail(path, f"entries[{i}].id", f"{e.id!r} is used twice")
        seen.add(e.id)
    return entries


# -- matching and comparing -------------------------------------------------------------------
def matching(
    entries: Iterable[ReferenceEntry], dataset: str, protocols: Mapping[str, Mapping[str, Any]]
) -> list[tuple[ReferenceEntry, list[str]]]:
    """The entries shown on ``dataset``'s leaderboard, each with the protocol versions (tables)
    whose protocol name it lists; entries of other datasets or protocols are left out."""
    out = []
    for e in entries:
        versions = sorted(v for v, p in protocols.items() if p.get("name") in e.protocols)
        if e.dataset == dataset and versions:
            out.append((e, versions))
    return out


def compare(
    entry: ReferenceEntry, versions: Iterable[str], rows: Iterable[Mapping[str, Any]]
) -> list[dict[str, Any]]:
    """Our rows of the entry's model in its matched tables against each published value.

    Returns one item per (row, metric): ``row``, ``protocol``, ``metric``, ``ours`` (our mean,
    None if the row lacks the metric), ``published``, ``delta`` (ours - published), ``band``
    (FLAG_SIGMAS x the published std, None without one) and ``deviates`` (True/False, None when
    it cannot be judged: no published spread or no value of ours).
    """
    versions = set(versions)
    out = []
    for row in rows:
        if row["model"] != entry.model or row["protocol"] not in versions:
            continue
        for key, pub in sorted(entry.values.items()):
            stat = row["metrics"].get(key)
            ours = None if stat is None else stat["mean"]
            band = None if pub.std is None else FLAG_SIGMAS * pub.std
            delta = None if ours is None else ours - pub.mean
            deviates = None if band is None or delta is None else abs(delta) > band
            out.append(
                {
                    "row": row["id"],
                    "protocol": row["protocol"],
                    "metric": key,
                    "ours": ours,
                    "published": pub.mean,
                    "delta": delta,
                    "band": band,
                    "deviates": deviates,
                }
            )
    return out
