"""Reading the runtime pods' `/metrics` for a Canary bake window (the one network call
the operator makes to a pod).

Bounded: one plain HTTP GET to the pod IP from the operator's pod cache (no DNS, no
redirect followed: http.client never follows one, and anything but 200 is refused), a
timeout per pod, a body limit, and a time budget for all pods of one reading; a pod
that cannot be read is named with the reason, never guessed (its checks are then
inconclusive). No new RBAC: pod IPs come from the watch the operator already has.
"""

from __future__ import annotations

import http.client
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from hotswap_contract.wire import HTTP_PORT
from hotswap_operator.context import PodInfo
from hotswap_operator.traffic import MetricsError, PodSample, parse

TIMEOUT_SECONDS = 2.0  # per pod
BUDGET_SECONDS = 10.0  # per reading of all pods
MAX_BODY = 1 << 20  # bytes of /metrics text
MAX_PODS = 50  # pods read per window: the candidate's first, then stable ones by name


class ScrapeError(Exception):
    """A pod whose /metrics could not be read; the message says why."""


Fetch = Callable[[str, float], str]  # (pod IP, timeout) -> /metrics text


def fetch(ip: str, timeout: float) -> str:
    """GET http://<ip>:8080/metrics: the text, or ScrapeError naming what went wrong."""
    conn = http.client.HTTPConnection(ip, HTTP_PORT, timeout=timeout)
    try:
        conn.request("GET", "/metrics", headers={"Accept": "text/plain"})
        response = conn.getresponse()
        if response.status != 200:
            raise ScrapeError(f"/metrics answered HTTP {response.status}")
        body = response.read(MAX_BODY + 1)
    except (OSError, http.client.HTTPException) as exc:
        raise ScrapeError(f"/metrics not readable: {exc or type(exc).__name__}") from None
    finally:
        conn.close()
    if len(body) > MAX_BODY:
        raise ScrapeError(f"/metrics is larger than {MAX_BODY} bytes")
    return body.decode("utf-8", errors="replace")


@dataclass(frozen=True)
class Reading:
    """One reading of the pods: each pod's traffic so far, or why it has none."""

    at: float  # monotonic seconds
    samples: Mapping[str, PodSample]
    unread: Mapping[str, str]  # pod -> why


def chosen(pods: Sequence[PodInfo], candidate_pods: Sequence[str]) -> list[PodInfo]:
    """The pods one window reads: live ones, the candidate's first, at most MAX_PODS."""
    live = [p for p in pods if not p.terminating]
    first = sorted((p for p in live if p.name in candidate_pods), key=lambda p: p.name)
    rest = sorted((p for p in live if p.name not in candidate_pods), key=lambda p: p.name)
    return [*first, *rest][:MAX_PODS]


def read(
    pods: Sequence[PodInfo], get: Fetch = fetch, clock: Callable[[], float] = time.monotonic
) -> Reading:
    """Read every pod in turn within BUDGET_SECONDS; the rest are unread."""
    began = clock()
    samples: dict[str, PodSample] = {}
    unread: dict[str, str] = {}
    for pod in pods:
        left = BUDGET_SECONDS - (clock() - began)
        if not pod.ip or left <= 0:
            unread[pod.name] = "no pod IP yet" if not pod.ip else "scrape time budget spent"
            continue
        try:
            samples[pod.name] = parse(get(pod.ip, min(TIMEOUT_SECONDS, left)))
        except (ScrapeError, MetricsError) as exc:
            unread[pod.name] = str(exc)
    return Reading(at=began, samples=samples, unread=unread)
