"""The dashboard's state: one ModelDeployment and its pods' reports, kept current by
two API watches, and the document the page draws (`status` and `history`'s documents,
and which of its buttons apply now).

Each watch lists, then watches from the list's resourceVersion (a 410 or a dropped
connection lists again, after a backoff); every event marks the state changed. A
snapshot is rebuilt at most `RENDER_HZ` times a second however many events came (300
pods swapping make thousands of events), and the page's connections wait on its
number. The watches need list and watch on modeldeployments and modelreplicas.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from hotswap_contract.redact import clip
from hotswap_contract.wire import (
    API_GROUP,
    API_VERSION,
    DEPLOYMENT_LABEL,
    PLURAL,
    REPLICA_PLURAL,
    PodReport,
)
from hotswap_operator.kubectl import decisions, edits, views
from hotswap_operator.kubectl.api import PluginError, Session, requires

JSON = dict[str, Any]
RENDER_HZ = 4.0  # snapshots a second, at most
MAX_PODS = 5000  # reports kept: the status list's limit, as `status` reads them
WATCH_SECONDS = 240  # the API server ends each watch after this; it is made again
BACKOFF_SECONDS = (1.0, 2.0, 4.0, 8.0)
# The page's buttons: each writes what the plugin's subcommand of that name writes.
Action = Callable[[Mapping[str, Any]], edits.Edit]
ACTIONS: dict[str, Action] = {
    "pause": edits.pause,
    "resume": edits.resume,
    "promote": decisions.promote,
    "undo": edits.undo,
    "abort": decisions.abort,
    "retry": decisions.retry,
}


@dataclass(frozen=True)
class Snapshot:
    """The page's document and its number (1, 2, ...: each one newer)."""

    number: int
    document: JSON


class Board:
    """The watched objects and the newest snapshot; `wait` blocks a connection until a
    newer one exists."""

    def __init__(self, session: Session, name: str, editable: Callable[[], bool]) -> None:
        self.session, self.name, self.editable = session, name, editable
        self.deployment: JSON | None = None
        self.replicas: dict[str, JSON] = {}
        self.problems: dict[str, str] = {}  # watch -> its last failure, cleared on success
        self._changed = threading.Event()
        self._lock = threading.Condition()
        self._snapshot = Snapshot(0, self._document())
        self._stop = threading.Event()

    # ---- threads --------------------------------------------------------------------

    def start(self, watches: bool = True) -> None:
        """The watch threads (unless `watches` is False) and the render thread."""
        targets = (self._watch_deployment, self._watch_replicas) if watches else ()
        for target in (*targets, self._render):
            threading.Thread(target=target, daemon=True, name=f"board-{target.__name__}").start()

    def show(self, deployment: JSON | None, replicas: list[JSON]) -> None:
        """Take these objects as the watches would (a LIST of each)."""
        self._on_deployment("LIST", {"items": [deployment] if deployment else []})
        self._on_replica("LIST", {"items": replicas})

    def stop(self) -> None:
        self._stop.set()
        self._changed.set()

    def _render(self) -> None:
        while not self._stop.is_set():
            self._changed.wait()
            self._changed.clear()
            document = self._document()
            with self._lock:
                self._snapshot = Snapshot(self._snapshot.number + 1, document)
                self._lock.notify_all()
            self._stop.wait(1.0 / RENDER_HZ)

    def wait(self, after: int, timeout: float) -> Snapshot:
        """The newest snapshot once its number passes `after` (or after `timeout`)."""
        with self._lock:
            self._lock.wait_for(lambda: self._snapshot.number > after, timeout)
            return self._snapshot

    # ---- watches --------------------------------------------------------------------

    @requires((API_GROUP, PLURAL, "list"), (API_GROUP, PLURAL, "watch"))
    def _watch_deployment(self) -> None:
        selector = {"field_selector": f"metadata.name={self.name}"}
        self._follow("deployment", PLURAL, selector, self._on_deployment)

    @requires((API_GROUP, REPLICA_PLURAL, "list"), (API_GROUP, REPLICA_PLURAL, "watch"))
    def _watch_replicas(self) -> None:
        selector = {"label_selector": f"{DEPLOYMENT_LABEL}={self.name}"}
        self._follow("replicas", REPLICA_PLURAL, selector, self._on_replica)

    def _follow(
        self, what: str, plural: str, selector: Mapping[str, str], on: Callable[[str, JSON], None]
    ) -> None:
        """List, then watch from there; list again after a failure (with backoff)."""
        from kubernetes import client, watch

        api: Any = client.CustomObjectsApi(self.session.kube.api)
        watcher: Any = watch.Watch
        args = (API_GROUP, API_VERSION, self.session.namespace, plural)
        failures = 0
        while not self._stop.is_set():
            try:
                listed: JSON = api.list_namespaced_custom_object(
                    *args, limit=MAX_PODS, _request_timeout=30, **selector
                )
                on("LIST", listed)
                self.problems.pop(what, None)
                failures = 0
                stream = watcher().stream(
                    api.list_namespaced_custom_object,
                    *args,
                    resource_version=listed["metadata"]["resourceVersion"],
                    timeout_seconds=WATCH_SECONDS,
                    _request_timeout=WATCH_SECONDS + 30,  # a silent connection ends too
                    **selector,
                )
                for event in stream:
                    if self._stop.is_set():
                        return
                    on(str(event["type"]), event["object"])
            except Exception as exc:  # 403, 410 Gone, no answer: say it, list again
                self.problems[what] = _failure(self.session, what, exc)
                self._changed.set()
                self._stop.wait(BACKOFF_SECONDS[min(failures, len(BACKOFF_SECONDS) - 1)])
                failures += 1

    def _on_deployment(self, kind: str, obj: JSON) -> None:
        if kind == "LIST":
            items = obj.get("items") or []
            self.deployment = items[0] if items else None
        elif kind in ("ADDED", "MODIFIED"):
            self.deployment = obj
        elif kind == "DELETED":
            self.deployment = None
        self._changed.set()

    def _on_replica(self, kind: str, obj: JSON) -> None:
        if kind == "LIST":
            self.replicas = {_name(i): i for i in obj.get("items") or ()}
        elif kind in ("ADDED", "MODIFIED") and (
            _name(obj) in self.replicas or len(self.replicas) < MAX_PODS
        ):
            self.replicas[_name(obj)] = obj
        elif kind == "DELETED":
            self.replicas.pop(_name(obj), None)
        self._changed.set()

    # ---- the document ---------------------------------------------------------------

    def _document(self) -> JSON:
        """status's and history's documents, what the user may do, and what fails."""
        md, replicas = self.deployment, list(self.replicas.values())
        editable = self.editable()
        doc: JSON = {
            "name": self.name,
            "namespace": self.session.namespace,
            "at": time.time(),
            "editable": editable,
            "actions": [],
            "problems": sorted(self.problems.values()),
            "status": None,
            "history": None,
        }
        if md is None:
            return doc
        doc["actions"] = applicable(md) if editable else []
        reports = dict(sorted((_name(r), _report(r)) for r in replicas))
        digest = _digest(md)
        doc["status"] = views.status_document(md, reports, digest)
        doc["history"] = views.history_document(md, reports, digest)["revisions"]
        return doc


def applicable(deployment: Mapping[str, Any]) -> list[str]:
    """The buttons that would write something now, as their subcommands decide: an edit
    refused (abort with no Canary running, retry with nothing rolled back) or already
    made (paused, this abort already asked) shows no button."""
    shown = []
    for name, action in ACTIONS.items():
        try:
            if action(deployment).patch is not None:
                shown.append(name)
        except PluginError:
            continue
    return shown


def _name(obj: Mapping[str, Any]) -> str:
    return str((obj.get("metadata") or {}).get("name", "?"))


def _report(item: Mapping[str, Any]) -> PodReport | str:
    try:
        return PodReport.model_validate(item.get("status") or {})
    except ValidationError as exc:
        return f"unreadable report: {exc.errors()[0]['msg']}"


def _digest(md: JSON) -> str | None:
    try:
        return edits.current_digest(md)
    except edits.RefusedError:
        return None


def _failure(session: Session, what: str, exc: Exception) -> str:
    status = getattr(exc, "status", None)
    where = f"{what} in namespace {session.namespace}"
    if status == 403:
        return (
            f"watching {where}: forbidden; the dashboard needs list and watch on "
            f"{PLURAL}.{API_GROUP} and {REPLICA_PLURAL}.{API_GROUP} "
            "(examples/kubectl-hotswap-rbac.yaml)"
        )
    return f"watching {where}: {clip(str(getattr(exc, 'reason', None) or exc), 200)}; retrying"
