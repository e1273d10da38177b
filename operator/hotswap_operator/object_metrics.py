"""Per-ModelDeployment series the operator exports, from each sync's decided status.

* `hotswap_modeldeployment_info{namespace,name,phase,serving,stable,latest}`: 1 per
  object; `serving` is what the ready pods answer with ("2", "2,3"), `stable` the
  stable revision, `latest` the newest revision the spec asks for (the candidate while
  a Canary runs, else the stable);
* `hotswap_modeldeployment_replicas{namespace,name,state}`: pods by `state`
  (`current`: live pods, `ready`, `updated`: serving the stable revision, `failed`);
* `hotswap_modeldeployment_canary_step{namespace,name,revision}`: the 1-based step a
  Canary rollout of `revision` stands at, and `..._canary_steps` how many it has,
  `..._canary_pods` the pods on the candidate at this step, `..._canary_paused` 1 while
  paused or halted. Absent while no Canary runs.

One collector holds the last decided status of each object this replica syncs (only
the leader syncs): a phase change replaces the `info` series, an object gone or a lost
Lease drops its series, so no stale label set lingers.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from hotswap_operator.status import ModelDeploymentStatus

Key = tuple[str, str]  # (namespace, name)
REPLICA_STATES = ("current", "ready", "updated", "failed")


@dataclass(frozen=True)
class ObjectState:
    """The figures of one ModelDeployment, taken from its decided status."""

    phase: str
    serving: str
    stable: str
    latest: str
    replicas: tuple[int, int, int, int]  # by REPLICA_STATES
    canary: tuple[str, int, int, int, bool] | None  # revision, step, steps, pods, paused


def object_state(status: ModelDeploymentStatus) -> ObjectState:
    latest = status.candidate or status.stable
    canary = status.canary
    return ObjectState(
        phase=str(status.phase or ""),
        serving=status.serving or "",
        stable=str(status.stable.revision) if status.stable else "",
        latest=str(latest.revision) if latest else "",
        replicas=(
            status.replicas or 0,
            status.ready_replicas or 0,
            status.updated_replicas or 0,
            status.failed_replicas or 0,
        ),
        canary=(
            (
                str(canary.revision),
                canary.step,
                len(canary.steps),
                canary.steps[canary.step - 1] if 0 < canary.step <= len(canary.steps) else 0,
                canary.paused or bool(canary.halted),
            )
            if canary is not None
            else None
        ),
    )


class ObjectCollector(Collector):
    """Yields the per-object gauges at each scrape."""

    def __init__(self) -> None:
        self._states: dict[Key, ObjectState] = {}
        self._lock = threading.Lock()

    def set(self, key: Key, state: ObjectState) -> None:
        with self._lock:
            self._states[key] = state

    def drop(self, key: Key) -> None:
        with self._lock:
            self._states.pop(key, None)

    def clear(self) -> None:
        with self._lock:
            self._states.clear()

    def collect(self) -> Iterator[GaugeMetricFamily]:
        with self._lock:
            states = sorted(self._states.items())
        yield _info(states)
        yield _replicas(states)
        yield from _canary(states)


def _family(name: str, doc: str, labels: list[str]) -> GaugeMetricFamily:
    return GaugeMetricFamily(f"hotswap_modeldeployment_{name}", doc, labels=labels)


def _info(states: list[tuple[Key, ObjectState]]) -> GaugeMetricFamily:
    family = _family(
        "info",
        "1 per ModelDeployment: its phase, the revisions serving and the newest asked for",
        ["namespace", "name", "phase", "serving", "stable", "latest"],
    )
    for (namespace, name), s in states:
        family.add_metric([namespace, name, s.phase, s.serving, s.stable, s.latest], 1)
    return family


def _replicas(states: list[tuple[Key, ObjectState]]) -> GaugeMetricFamily:
    family = _family(
        "replicas", "Pods of a ModelDeployment by state", ["namespace", "name", "state"]
    )
    for (namespace, name), s in states:
        for state, count in zip(REPLICA_STATES, s.replicas, strict=True):
            family.add_metric([namespace, name, state], count)
    return family


def _canary(states: list[tuple[Key, ObjectState]]) -> Iterator[GaugeMetricFamily]:
    labels = ["namespace", "name", "revision"]
    families = (
        _family("canary_step", "The 1-based step a Canary rollout stands at", labels),
        _family("canary_steps", "Steps of the running Canary rollout", labels),
        _family("canary_pods", "Pods on the candidate at the current Canary step", labels),
        _family("canary_paused", "1 while the Canary rollout is paused or halted", labels),
    )
    for (namespace, name), s in states:
        if s.canary is None:
            continue
        revision, *values = s.canary
        for family, value in zip(families, values, strict=True):
            family.add_metric([namespace, name, revision], float(value))
    yield from families
