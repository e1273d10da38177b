"""Request figures of a Canary bake window, from the runtime pods' `/metrics` (pure).

Each runtime pod counts its requests by revision and HTTP code
(`hotswap_requests_total{revision,code}`) and times the successful ones by revision
(`hotswap_request_seconds`, a histogram). The operator reads every pod's counters at
the start and at the end of a bake window (scrape.py); the difference, added up over
pods by revision, is the window's traffic of that revision: requests, errors (HTTP 5xx)
and the latency buckets its p99 comes from (linear inside a bucket, as PromQL's
`histogram_quantile`). A pod whose counters went down restarted: its end figures are
the window's (Prometheus' counter-reset rule).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

REQUESTS = "hotswap_requests"  # counter family name (samples end in _total)
LATENCY = "hotswap_request_seconds"  # histogram family name


class MetricsError(ValueError):
    """A pod's /metrics text that is not Prometheus' text format."""


@dataclass(frozen=True)
class Traffic:
    """Requests of one revision: counts and cumulative latency buckets (le -> count)."""

    requests: float = 0.0
    errors: float = 0.0  # HTTP 5xx
    buckets: tuple[tuple[float, float], ...] = ()  # (upper bound, cumulative count), sorted

    def __add__(self, other: Traffic) -> Traffic:
        merged: dict[float, float] = dict(self.buckets)
        for le, count in other.buckets:
            merged[le] = merged.get(le, 0.0) + count
        return Traffic(self.requests + other.requests, self.errors + other.errors, _sorted(merged))

    def since(self, start: Traffic) -> Traffic:
        """What happened between `start` and this reading of the same pod."""
        if self.requests < start.requests or any(
            count < dict(start.buckets).get(le, 0.0) for le, count in self.buckets
        ):
            return self  # the pod restarted: its counters began again
        before = dict(start.buckets)
        return Traffic(
            self.requests - start.requests,
            self.errors - start.errors,
            tuple((le, count - before.get(le, 0.0)) for le, count in self.buckets),
        )

    @property
    def error_ratio(self) -> float:
        return self.errors / self.requests if self.requests else 0.0

    def quantile(self, q: float) -> float | None:
        """Seconds below which a share `q` of the timed requests fell (None: none timed)."""
        total = self.buckets[-1][1] if self.buckets else 0.0
        if total <= 0:
            return None
        rank, lower, below = q * total, 0.0, 0.0
        for le, count in self.buckets:
            if count >= rank:
                if math.isinf(le):
                    return lower  # beyond the last finite bound: that bound (as PromQL)
                inside = count - below
                return lower + (le - lower) * ((rank - below) / inside if inside else 1.0)
            lower, below = le, count
        return lower


def _sorted(buckets: Mapping[float, float]) -> tuple[tuple[float, float], ...]:
    return tuple(sorted(buckets.items()))


PodSample = dict[str, Traffic]  # one pod's reading: revision -> its traffic so far


def parse(text: str) -> PodSample:
    """One pod's /metrics text as traffic by revision; MetricsError if unreadable."""
    counts: dict[str, list[float]] = {}  # revision -> [requests, errors]
    buckets: dict[str, dict[float, float]] = {}
    try:
        for family in text_string_to_metric_families(text):
            if family.name == REQUESTS:
                _add_requests(counts, family.samples)
            elif family.name == LATENCY:
                _add_buckets(buckets, family.samples)
    except (ValueError, TypeError, KeyError) as exc:
        raise MetricsError(f"not Prometheus text: {exc}") from None
    return {
        rev: _traffic(counts.get(rev, [0.0, 0.0]), buckets.get(rev, {}))
        for rev in counts.keys() | buckets.keys()
    }


def _traffic(counts: list[float], buckets: Mapping[float, float]) -> Traffic:
    return Traffic(requests=counts[0], errors=counts[1], buckets=_sorted(buckets))


def _add_requests(counts: dict[str, list[float]], samples: Iterable[Sample]) -> None:
    for s in samples:
        name, labels, value = s.name, s.labels, s.value
        if name != REQUESTS + "_total":
            continue
        entry = counts.setdefault(labels.get("revision", ""), [0.0, 0.0])
        entry[0] += value
        if labels.get("code", "").startswith("5"):
            entry[1] += value


def _add_buckets(buckets: dict[str, dict[float, float]], samples: Iterable[Sample]) -> None:
    for s in samples:
        name, labels, value = s.name, s.labels, s.value
        if name == LATENCY + "_bucket":
            buckets.setdefault(labels.get("revision", ""), {})[float(labels["le"])] = value


@dataclass(frozen=True)
class Window:
    """The traffic of one bake window: the candidate's and the stable revision's, added
    up over the pods read at both ends, and the pods that could not be read."""

    revision: int  # the candidate
    step: int
    started_at: str  # status.canary.bakeStartedAt this window belongs to
    seconds: float  # from the first reading to the last
    canary: Traffic = Traffic()
    stable: Traffic = Traffic()
    unread: tuple[str, ...] = field(default=())  # "pod: why", for pods read at one end only


def window_traffic(
    start: Mapping[str, PodSample], end: Mapping[str, PodSample], revision: str
) -> Traffic:
    """`revision`'s traffic between two readings, added up over the pods read twice."""
    total = Traffic()
    for pod, sample in end.items():
        if pod in start and revision in sample:
            total = total + sample[revision].since(start[pod].get(revision, Traffic()))
    return total
