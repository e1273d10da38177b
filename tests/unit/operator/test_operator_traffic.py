"""The runtime pods' /metrics as window figures: parsing, deltas, p99, the bounded read,
and the bake windows a Syncer keeps."""

from __future__ import annotations

import dataclasses
import http.server
import threading
from collections.abc import Iterator

import pytest
from operator_samples import SPEC, sync_context
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from hotswap_operator import scrape, traffic
from hotswap_operator.context import PodInfo
from hotswap_operator.scrape import Reading, ScrapeError
from hotswap_operator.status import CanaryState, ModelDeploymentStatus, RevisionRecord
from hotswap_operator.traffic import MetricsError, Traffic
from hotswap_operator.windows import Windows

CHECK = {"metric": "p99Latency", "maxRatio": 1.5}
BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


def runtime_metrics(requests: dict[tuple[str, str], int], seconds: dict[str, list[float]]) -> str:
    """/metrics text with the runtime's own families (runtime/.../serving/metrics.py)."""
    r = CollectorRegistry()
    count = Counter("hotswap_requests", "x", ["revision", "code"], registry=r)
    latency = Histogram("hotswap_request_seconds", "x", ["revision"], buckets=BUCKETS, registry=r)
    for (rev, code), n in requests.items():
        count.labels(rev, code).inc(n)
    for rev, values in seconds.items():
        for v in values:
            latency.labels(rev).observe(v)
    return generate_latest(r).decode()


def test_parse_reads_requests_errors_and_buckets_by_revision():
    text = runtime_metrics(
        {("1", "200"): 90, ("1", "503"): 10, ("2", "200"): 5}, {"1": [0.02] * 90, "2": [0.2] * 5}
    )
    sample = traffic.parse(text)
    assert (sample["1"].requests, sample["1"].errors) == (100, 10)
    assert sample["1"].buckets[-1] == (float("inf"), 90)
    assert sample["2"].quantile(0.99) == pytest.approx(0.1 + 0.15 * 0.99)
    with pytest.raises(MetricsError):
        traffic.parse('hotswap_requests_total{revision="1" 3\n')


def test_window_traffic_is_the_difference_and_a_restart_counts_from_zero():
    start = {"a": {"2": Traffic(10, 1, ((0.1, 9.0), (float("inf"), 9.0)))}}
    end = {
        "a": {"2": Traffic(30, 2, ((0.1, 28.0), (float("inf"), 28.0)))},
        "new": {"2": Traffic(500, 0, ())},  # not read at the start: not counted
    }
    got = traffic.window_traffic(start, end, "2")
    assert (got.requests, got.errors, got.buckets) == (20, 1, ((0.1, 19.0), (float("inf"), 19.0)))
    restarted = Traffic(4, 0, ((0.1, 4.0), (float("inf"), 4.0)))
    assert restarted.since(start["a"]["2"]) == restarted


def test_p99_interpolates_inside_its_bucket_and_caps_at_the_last_bound():
    t = Traffic(100, 0, ((0.05, 0.0), (0.1, 100.0), (float("inf"), 100.0)))
    assert t.quantile(0.99) == pytest.approx(0.0995)
    slow = Traffic(10, 0, ((5.0, 0.0), (float("inf"), 10.0)))
    assert slow.quantile(0.99) == 5.0
    assert Traffic().quantile(0.99) is None


def test_read_names_each_pod_it_could_not_read_and_keeps_a_time_budget():
    pods = [PodInfo("a", True, ip="10.0.0.1"), PodInfo("b", True), PodInfo("c", True, ip="x")]

    def fetch(ip: str, timeout: float) -> str:
        assert timeout <= scrape.TIMEOUT_SECONDS
        if ip == "x":
            raise ScrapeError("/metrics answered HTTP 302")
        return runtime_metrics({("1", "200"): 3}, {})

    reading = scrape.read(pods, fetch)
    assert set(reading.samples) == {"a"}
    assert reading.unread == {"b": "no pod IP yet", "c": "/metrics answered HTTP 302"}
    ticks = iter([0.0, 0.0, 11.0, 11.0])
    late = scrape.read(pods[:1] * 2, fetch, clock=lambda: next(ticks))
    assert late.unread == {"a": "scrape time budget spent"}


def test_chosen_reads_candidate_pods_first_and_at_most_max_pods():
    pods = [PodInfo(f"p{i:03}", True, ip="1") for i in range(80)]
    got = scrape.chosen([*pods, PodInfo("gone", True, True)], ["p079"])
    assert got[0].name == "p079" and len(got) == scrape.MAX_PODS


class _Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = self.server.body  # type: ignore[attr-defined]
        if body is None:
            self.send_response(302)
            self.send_header("Location", "http://example.invalid/metrics")
            self.end_headers()
            return
        self.send_response(200)
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def pod_server(monkeypatch: pytest.MonkeyPatch) -> Iterator[http.server.HTTPServer]:
    server = http.server.HTTPServer(("127.0.0.1", 0), _Handler)
    monkeypatch.setattr(scrape, "HTTP_PORT", server.server_address[1])
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def test_fetch_reads_metrics_refuses_redirects_and_large_bodies(pod_server):
    pod_server.body = b'hotswap_requests_total{revision="1",code="200"} 2\n'  # type: ignore[attr-defined]
    assert "hotswap_requests_total" in scrape.fetch("127.0.0.1", 2.0)
    pod_server.body = None  # type: ignore[attr-defined]
    with pytest.raises(ScrapeError, match="HTTP 302"):
        scrape.fetch("127.0.0.1", 2.0)
    pod_server.body = b"#" * (scrape.MAX_BODY + 10)  # type: ignore[attr-defined]
    with pytest.raises(ScrapeError, match="larger than"):
        scrape.fetch("127.0.0.1", 2.0)


def baking(at: str) -> ModelDeploymentStatus:
    return ModelDeploymentStatus(
        stable=RevisionRecord(revision=1),
        candidate=RevisionRecord(revision=2),
        candidatePods=("a",),
        canary=CanaryState(revision=2, step=1, steps=(1, 2), bakeStartedAt=at),
    )


def test_windows_read_at_the_start_and_the_end_of_a_bake():
    counts = iter([(10, 100), (30, 400)])

    def reader(pods):
        canary_n, stable_n = next(counts)
        return Reading(
            at=0.0 if canary_n == 10 else 60.0,
            samples={"a": {"2": Traffic(canary_n, 0, ())}, "b": {"1": Traffic(stable_n, 0, ())}},
            unread={},
        )

    windows = Windows(reader)
    pods = (PodInfo("a", True, ip="1"), PodInfo("b", True, ip="2"))
    windows.begin(("ml", "md"), baking("2026-01-01T00:00:00Z"), pods)
    windows.begin(("ml", "md"), baking("2026-01-01T00:00:00Z"), pods)  # once per window
    raw_spec = {**SPEC, "rollout": {"strategy": "Canary", "bakeSeconds": 60, "checks": [CHECK]}}
    ctx = sync_context(baking("2026-01-01T00:00:00Z"), now="2026-01-01T00:00:30Z")
    ctx = dataclasses.replace(ctx, raw_spec=raw_spec, pods=pods)
    assert windows.measure(("ml", "md"), ctx) is None  # not over yet
    ctx = dataclasses.replace(ctx, now="2026-01-01T00:01:00Z")
    window = windows.measure(("ml", "md"), ctx)
    assert window is not None and (window.revision, window.step, window.seconds) == (2, 1, 60.0)
    assert (window.canary.requests, window.stable.requests) == (20, 300)
    windows.begin(("ml", "md"), ModelDeploymentStatus(), pods)  # no bake: forgotten
    assert windows.measure(("ml", "md"), ctx) is None
