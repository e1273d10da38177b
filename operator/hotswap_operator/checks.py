"""The checks of a Canary bake window (pure): each spec check, the window's figures,
a verdict and a sentence that names the check and its figures.

* `errorRate`: the candidate's share of HTTP 5xx answers; `maxIncrease` bounds it
  against the stable pods' share in the same window (in points: 0.01 is one point),
  `max` bounds it outright.
* `p99Latency`: the candidate's p99 of successful requests; `maxRatio` bounds it
  against the stable pods' p99 in the same window, `maxMilliseconds` outright.
* `shadowAgreement`: the share of sampled live requests on which the candidate's pods
  agreed with the stable weights (their shadow comparison, docs/analysis.md); the worst
  candidate pod counts; `min` bounds it.

A check is Inconclusive, never Passed, when a pod could not be read, when fewer than
`minRequests` requests (per side compared) fell in the window, or when no candidate pod
reported shadow figures: the planner then runs another window (canary.py).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from hotswap_contract.wire import ShadowFigures
from hotswap_operator.spec import CheckSpec
from hotswap_operator.status import CheckResult, Verdict
from hotswap_operator.traffic import Traffic, Window


def evaluate(
    checks: Sequence[CheckSpec], window: Window | None, shadows: Mapping[str, ShadowFigures]
) -> tuple[CheckResult, ...]:
    """Each check's result; `window` None: no request figures (shadow checks only)."""
    return tuple(_one(check, window, shadows) for check in checks)


def failed(results: Sequence[CheckResult]) -> CheckResult | None:
    return next((r for r in results if r.result == "Failed"), None)


def inconclusive(results: Sequence[CheckResult]) -> CheckResult | None:
    return next((r for r in results if r.result == "Inconclusive"), None)


def _one(
    check: CheckSpec, window: Window | None, shadows: Mapping[str, ShadowFigures]
) -> CheckResult:
    if check.metric == "shadowAgreement":
        return _shadow(check, shadows)
    if window is None:
        return _result(check, "Inconclusive", "no reading of the pods' requests for this window")
    if window.unread:
        shown = "; ".join(window.unread[:3]) + (" ..." if len(window.unread) > 3 else "")
        return _result(check, "Inconclusive", f"pods not read: {shown}")
    if check.metric == "errorRate":
        return _error_rate(check, window)
    return _latency(check, window)


def _result(
    check: CheckSpec,
    verdict: Verdict,
    sentence: str,
    canary: float | None = None,
    stable: float | None = None,
) -> CheckResult:
    prefix = "inconclusive: " if verdict == "Inconclusive" else ""
    return CheckResult(
        metric=check.metric,
        result=verdict,
        canary=None if canary is None else round(canary, 6),
        stable=None if stable is None else round(stable, 6),
        message=f"check {check.metric}: {prefix}{sentence}",
    )


def _too_few(check: CheckSpec, window: Window, compare: bool) -> CheckResult | None:
    sides = [("canary", window.canary)] + ([("stable", window.stable)] if compare else [])
    for side, traffic in sides:
        if traffic.requests < check.min_requests:
            return _result(
                check,
                "Inconclusive",
                f"{traffic.requests:.0f} {side} requests in the {window.seconds:.0f} s window,"
                f" fewer than minRequests {check.min_requests}",
            )
    return None


def _pct(ratio: float) -> str:
    return f"{ratio * 100:.1f}%"


def _error_rate(check: CheckSpec, window: Window) -> CheckResult:
    compare = check.max_increase is not None
    short = _too_few(check, window, compare)
    if short is not None:
        return short
    c, s = window.canary, window.stable
    shown = f"canary error ratio {_pct(c.error_ratio)} ({c.errors:.0f} of {c.requests:.0f})"
    if check.max is not None and c.error_ratio > check.max:
        return _result(check, "Failed", f"{shown} is above max {_pct(check.max)}", c.error_ratio)
    if check.max_increase is None:
        return _result(check, "Passed", f"{shown} (max {_pct(check.max or 0)})", c.error_ratio)
    rise = c.error_ratio - s.error_ratio
    against = f"the stable pods' {_pct(s.error_ratio)} ({s.errors:.0f} of {s.requests:.0f})"
    verdict: Verdict = "Failed" if rise > check.max_increase else "Passed"
    limit = f"maxIncrease {_pct(check.max_increase)}"
    how = f"above {limit}" if verdict == "Failed" else f"({limit})"
    sentence = f"{shown} is {rise * 100:.1f} points above {against}, {how}"
    return _result(check, verdict, sentence, c.error_ratio, s.error_ratio)


def _ms(traffic: Traffic) -> float | None:
    p99 = traffic.quantile(0.99)
    return None if p99 is None else p99 * 1000


def _latency(check: CheckSpec, window: Window) -> CheckResult:
    compare = check.max_ratio is not None
    short = _too_few(check, window, compare)
    if short is not None:
        return short
    canary, stable = _ms(window.canary), _ms(window.stable)
    if canary is None or (compare and not stable):
        return _result(check, "Inconclusive", "no successful request was timed in the window")
    shown = f"canary p99 {canary:.0f} ms"
    if check.max_milliseconds is not None and canary > check.max_milliseconds:
        sentence = f"{shown} is above maxMilliseconds {check.max_milliseconds:g}"
        return _result(check, "Failed", sentence, canary, stable)
    if check.max_ratio is None or stable is None:
        return _result(check, "Passed", f"{shown} (maxMilliseconds {check.max_milliseconds:g})")
    ratio = canary / stable
    verdict: Verdict = "Failed" if ratio > check.max_ratio else "Passed"
    how = "above" if verdict == "Failed" else "within"
    sentence = (
        f"{shown} is {ratio:.1f}x the stable pods' {stable:.0f} ms, {how} maxRatio"
        f" {check.max_ratio:g}"
    )
    return _result(check, verdict, sentence, canary, stable)


def _shadow(check: CheckSpec, shadows: Mapping[str, ShadowFigures]) -> CheckResult:
    scored = {pod: f for pod, f in shadows.items() if f.samples > 0}
    if not scored:
        return _result(check, "Inconclusive", "no candidate pod reported shadow figures")
    pod = min(scored, key=lambda p: (1 - scored[p].rate, p))
    worst = scored[pod]
    agreement = 1 - worst.rate
    limit = check.min if check.min is not None else 0.0
    verdict: Verdict = "Failed" if agreement < limit else "Passed"
    how = "below" if verdict == "Failed" else "at least"
    sentence = (
        f"pod {pod} agreed with the stable weights on {_pct(agreement)} of"
        f" {worst.samples} sampled requests, {how} min {_pct(limit)}"
    )
    return _result(check, verdict, sentence, agreement)
