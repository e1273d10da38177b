"""bench/_common.py's window figures and bench/swap.py's peer summary (pure logic)."""

from __future__ import annotations

import math

from bench._common import Sample, overlapping, window_figures
from bench.swap import peer_summary


def samples(ms: float, n: int, ok: bool = True, t0: float = 0.0) -> list[Sample]:
    return [Sample(t0 + i, t0 + i + ms / 1000, ok, "1" if ok else None) for i in range(n)]


def test_overlapping_keeps_requests_in_flight_during_a_swap() -> None:
    swaps = [{"start": 10.0, "end": 11.0}, {"start": 20.0, "end": 20.5}]
    inside = Sample(10.2, 10.4, True, "1")
    across_start = Sample(9.5, 10.1, True, "1")
    across_end = Sample(20.4, 21.0, True, "1")
    touching = Sample(11.0, 11.5, True, "1")  # began as the swap ended
    between = Sample(12.0, 13.0, True, "1")
    got = overlapping([inside, across_start, across_end, touching, between], swaps)
    assert got == [inside, across_start, across_end]


def test_window_figures_median_ratio_spread_and_failures_apart() -> None:
    windows = [
        (samples(10, 200), samples(20, 200)),  # ratio 2
        # 5 failed requests that took 1 s: counted apart, not in the p99
        (samples(10, 200), samples(10, 195) + samples(1000, 5, ok=False)),  # ratio 1
        (samples(10, 200), samples(30, 200)),  # ratio 3
    ]
    got = window_figures(windows)
    assert got["p99_ratio"] == 2.0
    assert got["p99_ratio_per_repeat"] == [1.0, 2.0, 3.0]
    assert got["p99_ratio_spread"] == [1.0, 3.0]
    assert got["repeats"] == 3
    assert got["steady_requests_per_window"] == [200, 200, 200]
    assert got["swap_requests_per_window"] == [200, 200, 200]
    assert math.isclose(got["steady_p99_ms"], 10.0)
    assert math.isclose(got["swap_p99_ms"], 30.0)


def test_window_figures_steady_p50_counts_every_request() -> None:
    steady = samples(10, 40) + samples(50, 60, ok=False)
    got = window_figures([(steady, samples(10, 100))])
    assert math.isclose(got["steady_p50_ms"], 50.0)
    assert math.isclose(got["steady_p99_ms"], 10.0)


def result(ratio: float, spread: list[float], failed: int, visible: float) -> dict:
    return {
        "p99_ratio": ratio,
        "p99_ratio_spread": spread,
        "failed_requests": failed,
        "swap_visible_seconds_p50": visible,
    }


def peer(ratio: float, spread: list[float], failed: int, visible: float) -> dict:
    return {
        "system": "ray-serve",
        "ray_version": "2.60.0",
        "replicas": 1,
        "p99_ratio": ratio,
        "p99_ratio_spread": spread,
        "failed_requests": failed,
        "update_visible_seconds_p50": visible,
    }


def test_peer_summary_sets_both_systems_side_by_side() -> None:
    results = {
        "resnet18": {**result(1.4, [1.1, 1.6], 0, 0.2), "peer": peer(1.2, [1.0, 1.5], 2, 0.5)},
        "resnet50": {**result(1.1, [1.0, 1.3], 1, 0.4), "peer": peer(2.5, [2.0, 3.0], 3, 0.9)},
    }
    got = peer_summary(results, "resnet50")
    assert got["system"] == "ray-serve 2.60.0"
    assert got["replicas"] == 1
    assert got["failed_requests"] == {"hotswap": 1, "peer": 5}
    # each system's worst model, with that model's spread
    assert got["p99_ratio"] == {"hotswap": 1.4, "peer": 2.5}
    assert got["p99_ratio_spread"] == {"hotswap": [1.1, 1.6], "peer": [2.0, 3.0]}
    # the headline model's
    assert got["visible_seconds_p50"] == {"hotswap": 0.4, "peer": 0.9}
