"""The docs name every series as Prometheus stores it, and docs/observability.md lists
every family the runtime and the operator expose (their /metrics bytes, rendered from
their registries here; tests/e2e/test_prometheus.py checks the same against a real
Prometheus scraping the e2e pods)."""

from __future__ import annotations

import torch
from prometheus_client import generate_latest

from devcluster import metric_docs
from hotswap_operator.metrics import Metrics as OperatorMetrics
from hotswap_runtime.serving.metrics import Metrics as RuntimeMetrics


def exposed() -> dict[str, str]:
    runtime = RuntimeMetrics(torch.device("cpu")).render().decode()
    operator = generate_latest(OperatorMetrics().registry).decode()
    return {**metric_docs.families(runtime), **metric_docs.families(operator)}


def test_the_docs_name_series_as_prometheus_stores_them() -> None:
    assert metric_docs.misnamed(exposed()) == {}


def test_the_observability_page_lists_every_family() -> None:
    assert metric_docs.unlisted(exposed()) == []


def test_a_counter_named_without_total_is_caught() -> None:
    """The check can fail: `hotswap_swaps` (no `_total`) returns nothing in PromQL."""
    families = exposed()
    assert families["hotswap_swaps"] == "counter"
    assert "hotswap_swaps" not in metric_docs.stored("hotswap_swaps", "counter")
