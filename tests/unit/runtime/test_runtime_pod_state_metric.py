"""`hotswap_pod_state{state}`: 1 for where the pod stands, 0 for the other states, from
the first scrape on (an alert on Loading needs the series before the first swap)."""

from __future__ import annotations

import torch
from prometheus_client.parser import text_string_to_metric_families

from hotswap_contract.wire import PodState
from hotswap_runtime.control.desired import Status
from hotswap_runtime.serving.metrics import Metrics


def states(metrics: Metrics) -> dict[str, float]:
    text = metrics.render().decode()
    (family,) = [f for f in text_string_to_metric_families(text) if f.name == "hotswap_pod_state"]
    return {s.labels["state"]: s.value for s in family.samples}


def status(state: PodState) -> Status:
    return Status(
        state=state,
        serving=None,
        target=None,
        last_failure=None,
        last_swap=None,
        config_generation=None,
    )


def test_one_state_is_1_the_others_0() -> None:
    metrics = Metrics(torch.device("cpu"))
    assert states(metrics) == {s.value: 0.0 for s in PodState}
    metrics.status_changed(status(PodState.LOADING))
    assert states(metrics) == {"Pending": 0, "Loading": 1, "Serving": 0, "Failed": 0}
    metrics.status_changed(status(PodState.FAILED))
    assert states(metrics) == {"Pending": 0, "Loading": 0, "Serving": 0, "Failed": 1}
