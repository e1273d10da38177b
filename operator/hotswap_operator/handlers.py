"""kopf wiring: watches in, the controller out.

kopf runs the watches (login, reconnects, a 410 re-list) and calls these handlers;
each only updates a cache or asks the controller for a sync (controller.py), so
handlers never fail and kopf never retries, annotates or patches anything: no diff
base, no progress annotations, no finalizer. The runtime pods are indexed
(`runtime_pods`): kopf fills the index from its watch before calling any handler, and
the sync workers read it instead of listing pods.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import socket
import uuid
from collections.abc import Iterable
from typing import Any

import kopf

from hotswap_contract.wire import API_GROUP, API_VERSION, PLURAL, REPLICA_PLURAL
from hotswap_operator import config, resources, watchhealth
from hotswap_operator.context import PodInfo
from hotswap_operator.controller import Controller, Key, Report
from hotswap_operator.events import EventRecorder
from hotswap_operator.kube import Kube, Permission, load_api_client
from hotswap_operator.leader import LeaderElector, Timing
from hotswap_operator.metrics import Metrics
from hotswap_operator.sync import Syncer
from hotswap_operator.watchhealth import WatchHealth

MD = (API_GROUP, API_VERSION, PLURAL)
REPLICAS = (API_GROUP, API_VERSION, REPLICA_PLURAL)
RUNTIME_PODS = {resources.LABEL_NAME: resources.RUNTIME_APP}
OWNED = {resources.LABEL_MANAGED_BY: resources.MANAGER}
CONNECT_TIMEOUT = 10.0  # seconds to open a connection to the API server (kopf's requests)

# What kopf itself calls: watching, and posting its own Events (warnings only).
KOPF_PERMISSIONS: set[Permission] = {
    (API_GROUP, PLURAL, "list"),
    (API_GROUP, PLURAL, "watch"),
    (API_GROUP, REPLICA_PLURAL, "list"),
    (API_GROUP, REPLICA_PLURAL, "watch"),
    ("", "pods", "list"),
    ("", "pods", "watch"),
    ("", "events", "create"),
    ("", "configmaps", "list"),
    ("", "configmaps", "watch"),
    ("apps", "deployments", "list"),
    ("apps", "deployments", "watch"),
}


@kopf.on.login()
def login(**kwargs: Any) -> kopf.ConnectionInfo:
    """Through the kubernetes client, as `Kube` connects: $KUBECONFIG when set (the
    operator run as a process, as tests do), else the in-cluster config.

    In a pod that is KUBERNETES_SERVICE_HOST:KUBERNETES_SERVICE_PORT, the address the
    kubelet gives every pod, with the ServiceAccount's token and CA: never a DNS name
    (kopf's own in-cluster login connects to https://kubernetes.default.svc, so a
    cluster DNS outage blinded the watches while the Lease, by address, was renewed).
    The kubeconfig's relative paths and tokenFile are resolved by the client; kopf
    calls this again on a 401, which re-reads a rotated token.
    """
    cfg = load_api_client().configuration
    header = cfg.get_api_key_with_prefix("BearerToken") or cfg.get_api_key_with_prefix(
        "authorization"
    )
    scheme, _, token = (header or "").strip().rpartition(" ")  # the token file's newline
    return kopf.ConnectionInfo(
        server=cfg.host,
        ca_path=cfg.ssl_ca_cert,
        insecure=not cfg.verify_ssl,
        scheme=scheme or None,
        token=token or None,
        certificate_path=cfg.cert_file,
        private_key_path=cfg.key_file,
    )


class QuietEventHandlers(logging.Filter):
    """Drop kopf's "Handler '<x>' succeeded." lines of watch-event and index handlers:
    they run on every pod report and readiness change, and their successes say nothing."""

    PATTERN = re.compile(r"^Handler '[\w.]*(_event|runtime_pods|replica_reports)' succeeded\.$")

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.levelno == logging.INFO and self.PATTERN.match(record.getMessage()))


@kopf.on.startup()
async def startup(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    settings.posting.level = logging.WARNING  # our own Events say what happened
    # No runtime observation of CRDs and namespaces: that would need cluster-wide
    # list/watch on both. The chart installs the CRD before the operator starts.
    settings.scanning.disabled = True
    settings.watching.server_timeout = 300
    # A connection that never opens fails (and counts against the watch) in bounded time.
    settings.networking.connect_timeout = CONNECT_TIMEOUT
    settings.watching.connect_timeout = CONNECT_TIMEOUT
    env = os.environ
    operator = config.operator_settings(env)
    health = WatchHealth(operator.watch_failure_seconds)
    memo.watch_health, memo.unwatch_health = health, watchhealth.install(health)
    kube = Kube.from_env()
    metrics = Metrics()
    recorder = EventRecorder(kube, resources.MANAGER, lambda r: metrics.events.labels(r).inc())
    controller = Controller(
        Syncer(kube, config.runtime_defaults(env), recorder),
        metrics,
        operator.sync_workers,
        operator.report_batch_seconds,
        operator.resync_seconds,
    )
    # Unique per process: a restarted container waits for the Lease like any other.
    identity = f"{env.get('POD_NAME') or socket.gethostname()}_{uuid.uuid4().hex[:8]}"
    elector = LeaderElector(
        kube,
        operator.lease_namespace,
        operator.lease_name,
        identity,
        controller.start_leading,
        controller.stop_leading,
        Timing(operator.lease_seconds, operator.renew_deadline_seconds, operator.retry_seconds),
        blind=health.blind,
    )
    metrics.blind.set_function(lambda: float(elector.blind_reason is not None))
    if operator.metrics_port:
        metrics.serve(operator.metrics_port, operator.metrics_address)
    controller.start()
    memo.controller, memo.elector = controller, elector
    memo.election = asyncio.create_task(elector.run(), name="hotswap-leader-election")


@kopf.on.cleanup()
async def cleanup(memo: kopf.Memo, **_: Any) -> None:
    """Stop syncing, then give the Lease up: another replica leads within a second."""
    election = getattr(memo, "election", None)
    if election is not None:
        election.cancel()
        await asyncio.gather(election, return_exceptions=True)
    controller: Controller | None = getattr(memo, "controller", None)
    if controller is not None:
        controller.stop_leading()
        await controller.stop()
    if getattr(memo, "elector", None) is not None:
        await asyncio.to_thread(memo.elector.release)
    if getattr(memo, "unwatch_health", None) is not None:
        memo.unwatch_health()


@kopf.on.probe(id="watches", errors=kopf.ErrorsMode.PERMANENT)
async def watches(memo: kopf.Memo, **_: Any) -> str:
    """The liveness endpoint fails (HTTP 500, the reason in the log) while this replica
    is blind: its watches have failed longer than HOTSWAP_WATCH_FAILURE_SECONDS."""
    health: WatchHealth | None = getattr(memo, "watch_health", None)
    reason = health.blind() if health is not None else None
    if reason is not None:
        raise kopf.PermanentError(f"blind: {reason}")
    return "ok"


@kopf.index("", "v1", "pods", labels=RUNTIME_PODS)
async def runtime_pods(body: kopf.Body, **_: Any) -> dict[Key, PodInfo] | None:
    """Runtime pods by the ModelDeployment they belong to (the sync's pod cache)."""
    name = (body.metadata.labels or {}).get(resources.LABEL_DEPLOYMENT)
    if not name or not body.metadata.namespace:
        return None
    return {(body.metadata.namespace, name): PodInfo.from_pod(body)}


@kopf.index(*REPLICAS, labels={resources.LABEL_DEPLOYMENT: kopf.PRESENT})
async def replica_reports(body: kopf.Body, **_: Any) -> dict[Key, Report] | None:
    """The pods' own reports (ModelReplica objects) by the ModelDeployment they name."""
    name = (body.metadata.labels or {}).get(resources.LABEL_DEPLOYMENT)
    if not name or not body.metadata.namespace or not body.metadata.name:
        return None
    return {(body.metadata.namespace, name): (body.metadata.name, dict(body.status or {}))}


def _attach(memo: kopf.Memo, kwargs: dict[str, Any], event: kopf.RawEvent) -> Controller:
    """The controller, its caches wired to kopf's indexes, the event counted."""
    controller: Controller = memo.controller
    kind = str(event["object"].get("kind", "")).lower()
    controller.metrics.watch_events.labels(kind or "unknown").inc()
    pod_index: kopf.Index[Key, PodInfo] = kwargs["runtime_pods"]
    report_index: kopf.Index[Key, Report] = kwargs["replica_reports"]

    def pods(key: Key) -> Iterable[PodInfo]:
        return tuple(pod_index[key]) if key in pod_index else ()

    def reports(key: Key) -> dict[str, Any]:
        return dict(report_index[key]) if key in report_index else {}

    controller.pods = pods
    controller.reports = reports
    return controller


@kopf.on.event(*MD)
async def model_deployment_event(event: kopf.RawEvent, memo: kopf.Memo, **kwargs: Any) -> None:
    """The spec, the pods' reports (status) and the object's deletion."""
    _attach(memo, kwargs, event).on_model_deployment(event["type"], event["object"])


@kopf.on.event("", "v1", "pods", labels=RUNTIME_PODS)
async def pod_event(event: kopf.RawEvent, memo: kopf.Memo, **kwargs: Any) -> None:
    """Readiness changes, new pods and deleted pods (whose reports get pruned)."""
    _attach(memo, kwargs, event).on_pod(event["type"], event["object"])


@kopf.on.event("", "v1", "configmaps", labels=OWNED)
@kopf.on.event("apps", "v1", "deployments", labels=OWNED)
async def child_event(event: kopf.RawEvent, memo: kopf.Memo, **kwargs: Any) -> None:
    """A ConfigMap edited or deleted, a Deployment deleted: the sync puts them back."""
    _attach(memo, kwargs, event).on_child(event["type"], event["object"])


@kopf.on.event(*REPLICAS, labels={resources.LABEL_DEPLOYMENT: kopf.PRESENT})
async def replica_event(event: kopf.RawEvent, memo: kopf.Memo, **kwargs: Any) -> None:
    """A pod's report changed: a sync aggregates it (a burst of reports is one sync)."""
    _attach(memo, kwargs, event).on_pod(event["type"], event["object"])
