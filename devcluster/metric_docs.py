"""The metric names the docs mention, against the names Prometheus stores.

Prometheus stores a counter family `x` as `x_total`, a histogram as `x_bucket`, `x_sum`
and `x_count`, a gauge as `x` (and prometheus_client adds `x_created` beside counters
and histograms). A doc names a series as stored, or a histogram by its family name.
"""

from __future__ import annotations

import re
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from devcluster.cluster import REPO

DOCS = tuple(
    REPO / p
    for p in (
        "docs/observability.md",
        "docs/architecture.md",
        "docs/security.md",
        "docs/analysis.md",
        "README.md",
        "charts/hotswap/README.md",
    )
)
TABLE = DOCS[0]  # lists every series
PACKAGES = {"hotswap_contract", "hotswap_operator", "hotswap_runtime"}


def families(text: str, prefix: str = "hotswap_") -> dict[str, str]:
    """An exposition's metric families (name -> type), without the `_created` gauges."""
    found = {f.name: f.type for f in text_string_to_metric_families(text)}
    return {
        name: kind
        for name, kind in found.items()
        if name.startswith(prefix) and not (name.endswith("_created") and name[:-8] in found)
    }


def stored(name: str, kind: str) -> set[str]:
    """The names Prometheus stores for a family of this type."""
    if kind == "counter":
        return {f"{name}_total"}
    if kind == "histogram":
        return {f"{name}_bucket", f"{name}_sum", f"{name}_count"}
    return {name}


def documented(doc: Path) -> set[str]:
    """Every `hotswap_...` name in backquotes in `doc`, package names aside."""
    return set(re.findall(r"`(hotswap_[a-z0-9_]+)", doc.read_text())) - PACKAGES


def misnamed(exposed: dict[str, str]) -> dict[str, list[str]]:
    """Per doc, the names it mentions that Prometheus would not store from `exposed`."""
    names = {n for name, kind in exposed.items() for n in stored(name, kind)}
    histograms = {n for n, kind in exposed.items() if kind == "histogram"}
    out = {str(d.relative_to(REPO)): sorted(documented(d) - names - histograms) for d in DOCS}
    return {doc: wrong for doc, wrong in out.items() if wrong}


def unlisted(exposed: dict[str, str]) -> list[str]:
    """The families docs/observability.md does not list by a stored name."""
    table = documented(TABLE)
    return sorted(n for n, kind in exposed.items() if not stored(n, kind) & table)
