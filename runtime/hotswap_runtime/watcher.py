"""Watchers feeding the desired-revision path from model.json.

``FileWatcher`` reads ``$HOTSWAP_CONFIG_DIR/model.json``: inotify (watchfiles) on the
folder catches kubelet's atomic ``..data`` symlink swap, and a periodic resync catches
anything inotify missed. ``ApiWatcher`` watches the same ConfigMap through the API for
sub-second propagation, where RBAC allows. Both parse with ``contract.parse_config``
and pick this pod's revision with ``ModelConfig.revision_for``; a malformed document
is reported and the old model keeps serving.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from pathlib import Path
from typing import Any

import watchfiles

from .contract import CONFIG_KEY, ConfigError, parse_config
from .desired import Reconciler

log = logging.getLogger(__name__)


class ConfigReader:
    """Turns model.json text into an offer or a reported error, once per distinct text."""

    def __init__(self, reconciler: Reconciler, pod: str, source: str) -> None:
        self.reconciler = reconciler
        self.pod = pod
        self.source = source
        self._last_bad: str | None = None

    def feed(self, text: str) -> None:
        try:
            config = parse_config(text)
        except ConfigError as exc:
            if text != self._last_bad:
                self._last_bad = text
                self.reconciler.config_error(str(exc), self.source)
            return
        self._last_bad = None
        revision = config.revision_for(self.pod)
        self.reconciler.offer(revision, config.generation, self.source)


class FileWatcher:
    """Reads the mounted model.json on start, on every inotify event and periodically."""

    def __init__(
        self, config_dir: Path, reconciler: Reconciler, pod: str, resync_seconds: float
    ) -> None:
        self.config_dir = config_dir
        self.reader = ConfigReader(reconciler, pod, f"file {config_dir / CONFIG_KEY}")
        self.resync_seconds = resync_seconds
        self._missing_reported = False

    def read_once(self) -> None:
        path = self.config_dir / CONFIG_KEY
        try:
            text = path.read_text()
        except FileNotFoundError:
            if not self._missing_reported:
                self._missing_reported = True
                log.warning("%s does not exist yet; waiting for the ConfigMap mount", path)
            return
        except OSError as exc:
            log.warning("cannot read %s: %s", path, exc)
            return
        self._missing_reported = False
        self.reader.feed(text)

    async def run(self, stop: asyncio.Event) -> None:
        self.read_once()
        await asyncio.gather(self._inotify(stop), self._resync(stop))

    async def _inotify(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            if not self.config_dir.is_dir():
                await _wait(stop, self.resync_seconds)
                continue
            try:
                async for _changes in watchfiles.awatch(
                    self.config_dir,
                    stop_event=stop,
                    watch_filter=None,
                    recursive=False,
                    debounce=20,
                    step=10,
                ):
                    self.read_once()
            except (OSError, RuntimeError) as exc:
                log.warning("inotify on %s stopped (%s); relying on resync", self.config_dir, exc)
                await _wait(stop, self.resync_seconds)

    async def _resync(self, stop: asyncio.Event) -> None:
        while not await _wait(stop, self.resync_seconds):
            self.read_once()


async def _wait(stop: asyncio.Event, seconds: float) -> bool:
    """Wait up to ``seconds``; True when ``stop`` was set."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)
    return stop.is_set()


class ApiWatcher:
    """Watches ConfigMap ``name`` through the Kubernetes API on a background thread."""

    def __init__(
        self, api: Any, namespace: str, name: str, reconciler: Reconciler, pod: str
    ) -> None:
        self.api = api
        self.namespace = namespace
        self.name = name
        self.reader = ConfigReader(reconciler, pod, f"configmap {namespace}/{name}")
        self._stop = threading.Event()
        self._watch: Any = None
        self._thread = threading.Thread(target=self._run, name="hotswap-api-watch", daemon=True)
        self.events = 0

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._watch is not None:
            self._watch.stop()

    def _run(self) -> None:
        from kubernetes import client
        from kubernetes.client.exceptions import ApiException

        core = client.CoreV1Api(self.api)
        backoff = 1.0
        while not self._stop.is_set():
            try:
                self._watch_once(core)
                backoff = 1.0
            except ApiException as exc:
                if exc.status in (401, 403):
                    log.warning(
                        "API watch of configmap %s/%s is off: %s %s (the mounted file still "
                        "works; grant get/list/watch on it to enable the fast path)",
                        self.namespace,
                        self.name,
                        exc.status,
                        exc.reason,
                    )
                    return
                log.warning("API watch of configmap %s: %s %s", self.name, exc.status, exc.reason)
            except Exception as exc:
                log.warning("API watch of configmap %s: %s", self.name, exc)
            if self._stop.wait(backoff):
                return
            backoff = min(backoff * 2, 30.0)

    def _watch_once(self, core: Any) -> None:
        from kubernetes import watch

        listing = core.list_namespaced_config_map(
            self.namespace, field_selector=f"metadata.name={self.name}"
        )
        for item in listing.items:
            self._feed(item)
        self._watch = watch.Watch()  # type: ignore[no-untyped-call]
        for event in self._watch.stream(
            core.list_namespaced_config_map,
            self.namespace,
            field_selector=f"metadata.name={self.name}",
            resource_version=listing.metadata.resource_version,
            timeout_seconds=60,
        ):
            if self._stop.is_set():
                return
            if event["type"] in ("ADDED", "MODIFIED"):
                self._feed(event["object"])

    def _feed(self, configmap: Any) -> None:
        self.events += 1
        text = (configmap.data or {}).get(CONFIG_KEY)
        if text is None:
            self.reader.feed("")
            return
        self.reader.feed(text)
