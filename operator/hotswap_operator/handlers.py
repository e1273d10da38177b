"""kopf handlers: thin wrappers around reconcile() and Aggregator.aggregate().

Progress and the diff base live in annotations under hotswap.dev/ (the CRD's status
schema would prune kopf's usual status.kopf). Retries are exceptions: TemporaryError
when the API refuses a write, PermanentError for a spec that cannot work.
"""

from __future__ import annotations

import logging
import os
import re
import time
from typing import Any

import kopf
from hotswap_runtime.contract import API_GROUP, API_VERSION, PLURAL

from hotswap_operator import config, resources
from hotswap_operator.kube import ChildConflictError, Kube, KubeError, Permission, load_api_client
from hotswap_operator.reconcile import Aggregator, reconcile, utcnow
from hotswap_operator.spec import SpecError

MD = (API_GROUP, API_VERSION, PLURAL)
RUNTIME_PODS = {resources.LABEL_NAME: resources.RUNTIME_APP}
OWNED = {resources.LABEL_MANAGED_BY: resources.MANAGER}

# What kopf itself calls: watching, annotating (progress), posting its own events.
KOPF_PERMISSIONS: set[Permission] = {
    (API_GROUP, PLURAL, "list"),
    (API_GROUP, PLURAL, "watch"),
    (API_GROUP, PLURAL, "patch"),
    ("", "pods", "list"),
    ("", "pods", "watch"),
    ("", "events", "create"),
    ("", "configmaps", "list"),  # child_event: put back a deleted ConfigMap
    ("", "configmaps", "watch"),
    ("apps", "deployments", "list"),  # ... or Deployment
    ("apps", "deployments", "watch"),
}


@kopf.on.login()
def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
    """$KUBECONFIG when set (the local kubelet sets one per pod), else in-cluster.

    The kubeconfig goes through the kubernetes client, which resolves relative paths and
    reads tokenFile; kopf calls this again on a 401, which re-reads a rotated token.
    """
    if not os.environ.get("KUBECONFIG"):
        return kopf.login_with_service_account(**kwargs)
    cfg = load_api_client().configuration
    header = cfg.get_api_key_with_prefix("BearerToken") or cfg.get_api_key_with_prefix(
        "authorization"
    )
    scheme, _, token = (header or "").rpartition(" ")
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
    """Drop kopf's "Handler '<x>_event' succeeded." lines: watch-event handlers run on
    every pod report and readiness change, and their successes say nothing."""

    PATTERN = re.compile(r"^Handler '[\w.]*_event' succeeded\.$")

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.levelno == logging.INFO and self.PATTERN.match(record.getMessage()))


@kopf.on.startup()
def startup(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=API_GROUP)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=API_GROUP, key="last-handled-configuration"
    )
    settings.persistence.finalizer = f"{API_GROUP}/finalizer"
    settings.posting.level = logging.WARNING  # our own Events say what happened
    # No runtime observation of CRDs and namespaces: that would need cluster-wide
    # list/watch on both. The chart installs the CRD before the operator starts.
    settings.scanning.disabled = True
    settings.watching.server_timeout = 300
    logging.getLogger("kopf.objects").addFilter(QuietEventHandlers())
    memo.kube = Kube.from_env()
    memo.defaults = config.runtime_defaults(os.environ)
    memo.aggregator = Aggregator(memo.kube)


@kopf.on.resume(*MD)
@kopf.on.create(*MD)
@kopf.on.update(*MD)
def reconcile_handler(body: kopf.Body, memo: kopf.Memo, logger: kopf.Logger, **_: Any) -> None:
    try:
        events = reconcile(memo.kube, body, memo.defaults)
    except ChildConflictError as exc:  # may clear up when the other object goes away
        raise kopf.TemporaryError(str(exc), delay=exc.retry_seconds) from exc
    except SpecError as exc:
        raise kopf.PermanentError(str(exc)) from exc
    except KubeError as exc:
        if exc.status == 404:  # the ModelDeployment or its namespace is being deleted
            return
        name = body["metadata"]["name"]
        raise kopf.TemporaryError(f"reconcile of {name}: {exc}", delay=5) from exc
    now = utcnow()
    for event in events:
        memo.kube.post_event(body, event, now)
        logger.info(f"{event.reason}: {event.message}")


@kopf.on.event(*MD)
def md_event(event: kopf.RawEvent, memo: kopf.Memo, **_: Any) -> None:
    """Pod reports arrive as status changes, which update handlers ignore."""
    meta = event["object"]["metadata"]
    if event["type"] == "DELETED":
        memo.aggregator.forget(meta["namespace"], meta["name"])
        return
    _aggregate(memo, meta["namespace"], meta["name"])


@kopf.on.event("", "v1", "pods", labels=RUNTIME_PODS)
def pod_event(event: kopf.RawEvent, memo: kopf.Memo, **_: Any) -> None:
    """Readiness changes and deleted pods (whose status entries get pruned)."""
    meta = event["object"]["metadata"]
    name = (meta.get("labels") or {}).get(resources.LABEL_DEPLOYMENT)
    if name:
        _aggregate(memo, meta["namespace"], name)


@kopf.on.event("", "v1", "configmaps", labels=OWNED)
@kopf.on.event("apps", "v1", "deployments", labels=OWNED)
def child_event(event: kopf.RawEvent, memo: kopf.Memo, **_: Any) -> None:
    """A deleted ConfigMap or Deployment of a live ModelDeployment is put back."""
    meta = event["object"]["metadata"]
    name = (meta.get("labels") or {}).get(resources.LABEL_DEPLOYMENT)
    if event["type"] != "DELETED" or not name:
        return
    try:
        body = memo.kube.model_deployment(meta["namespace"], name)
        if body is None or body["metadata"].get("deletionTimestamp"):
            return  # the owner is going away: the garbage collector is at work
        reconcile(memo.kube, body, memo.defaults)
    except (KubeError, SpecError) as exc:  # the next spec change or restart repairs it
        logging.getLogger(__name__).warning(f"restoring {meta['name']}: {exc}")


def _aggregate(memo: kopf.Memo, namespace: str, name: str, attempts: int = 3) -> None:
    # Event handlers are not retried by kopf: a few quick tries, then the next report
    # or pod change aggregates again.
    for attempt in range(1, attempts + 1):
        try:
            memo.aggregator.aggregate(namespace, name)
            return
        except KubeError as exc:
            logging.getLogger(__name__).warning(
                f"aggregate {namespace}/{name} (try {attempt}/{attempts}): {exc}"
            )
            time.sleep(attempt)
