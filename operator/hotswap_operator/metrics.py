"""The operator's Prometheus metrics, served on /metrics (port `HOTSWAP_METRICS_PORT`).

* `hotswap_operator_sync_seconds`: histogram, one sync (read, decide, write);
* `hotswap_operator_queue_depth`: ModelDeployments waiting for a sync worker;
* `hotswap_operator_sync_errors_total{reason}`: `Conflict` (status changed since it
  was read: synced again), `InvalidSpec`, `ChildConflict`, `ApiError`, `Unexpected`;
* `hotswap_operator_rollouts_total{outcome}`: `Complete` (every pod serves the stable
  revision: phase Ready), `RolledBack`, `Halted` (Canary without autoRollback),
  `Stalled` (phase Degraded or Failed);
* `hotswap_operator_events_total{result}`: Events `created`, `aggregated` (a repeat:
  count + 1) or `failed` (never fails a sync);
* `hotswap_operator_watch_events_total{kind}`: watch events received, by object kind
  (`modeldeployment`, `modelreplica`, `pod`, `configmap`, `deployment`): a flat line
  while pods report means the watch is not delivering;
* `hotswap_operator_leader`: 1 while this replica holds the leader Lease, else 0;
* `hotswap_operator_blind`: 1 while this replica's watches have failed longer than
  `HOTSWAP_WATCH_FAILURE_SECONDS` (it does not lead; its liveness endpoint fails);
* per ModelDeployment (the leader only): `hotswap_modeldeployment_info`,
  `_replicas` and the Canary's `_canary_step`, `_canary_steps`, `_canary_pods`,
  `_canary_paused` (object_metrics.py).

Prometheus stores each Counter with the suffix `_total` (`hotswap_operator_rollouts_total`)
and each Histogram as `_bucket`, `_sum` and `_count`.

Each operator process has its own registry (tests build several in one process).
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from hotswap_operator.object_metrics import ObjectCollector

SYNC_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.sync_seconds = Histogram(
            "hotswap_operator_sync_seconds",
            "Duration of one sync of a ModelDeployment",
            buckets=SYNC_BUCKETS,
            registry=self.registry,
        )
        self.queue_depth = Gauge(
            "hotswap_operator_queue_depth",
            "ModelDeployments waiting for a sync worker",
            registry=self.registry,
        )
        self.sync_errors = Counter(
            "hotswap_operator_sync_errors",
            "Syncs that failed, by reason",
            ["reason"],
            registry=self.registry,
        )
        self.rollouts = Counter(
            "hotswap_operator_rollouts",
            "Rollouts that ended, by outcome",
            ["outcome"],
            registry=self.registry,
        )
        self.events = Counter(
            "hotswap_operator_events",
            "Kubernetes Events posted, by result",
            ["result"],
            registry=self.registry,
        )
        self.watch_events = Counter(
            "hotswap_operator_watch_events",
            "Watch events received, by object kind",
            ["kind"],
            registry=self.registry,
        )
        self.leader = Gauge(
            "hotswap_operator_leader",
            "1 while this replica holds the leader Lease",
            registry=self.registry,
        )
        self.blind = Gauge(
            "hotswap_operator_blind",
            "1 while this replica's watches have failed longer than the bound",
            registry=self.registry,
        )

        self.objects = ObjectCollector()
        self.registry.register(self.objects)

    def watch_queue(self, depth: Callable[[], int]) -> None:
        self.queue_depth.set_function(lambda: float(depth()))

    def serve(self, port: int, address: str) -> None:
        """Serve /metrics on `address:port` (a daemon thread of prometheus_client)."""
        start_http_server(port, addr=address, registry=self.registry)
