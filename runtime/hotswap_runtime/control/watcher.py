"""Watchers feeding the desired-revision path from model.json.

``FileWatcher`` reads ``$HOTSWAP_CONFIG_DIR/model.json``: inotify (watchfiles) on the
folder catches kubelet's atomic ``..data`` symlink swap, and a periodic resync catches
anything inotify missed. ``ApiWatcher`` watches the same ConfigMap through the API for
sub-second propagation, where RBAC allows. Both parse with ``contract.parse_config``
and pick this pod's revision with ``ModelConfig.revision_for``; a malformed document
is reported and the old model keeps serving.

The file is read off the event loop, at most ``MAX_CONFIG_BYTES``, and only when it is
a regular file (opened non-blocking): a model.json that is huge, a FIFO or a device
such as /dev/zero is a config error in status, never a stalled server.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import random
import stat
import threading
import time
from pathlib import Path
from typing import Any

import watchfiles

from hotswap_contract.wire import CONFIG_KEY, MAX_CONFIG_BYTES, ConfigError, parse_config
from hotswap_runtime.control.desired import Reconciler
from hotswap_runtime.control.reporter import retry_after

log = logging.getLogger(__name__)
WATCHED_SECONDS = 5.0  # a watch that ran this long and dropped is re-listed at once
# Each watch asks the server to end it after a random 5 to 10 minutes, as client-go's
# reflector does: pods started together do not list, watch and open a new TLS
# connection together (a thousand pods with a fixed 60 s were 17 handshakes a second).
WATCH_TIMEOUT_SECONDS = (300, 600)


class ConfigReader:
    """Turns model.json text into an offer or a reported error, once per distinct text."""

    def __init__(self, reconciler: Reconciler, pod: str, source: str) -> None:
        self.reconciler = reconciler
        self.pod = pod
        self.source = source
        self._last_bad: bytes | None = None  # digest of the last rejected document

    def feed(self, text: str | bytes) -> None:
        try:
            config = parse_config(text)
        except ConfigError as exc:
            self.reject(str(exc), text)
            return
        self._last_bad = None
        revision = config.revision_for(self.pod)
        self.reconciler.offer(revision, config.generation, self.source)

    def reject(self, reason: str, content: str | bytes = b"") -> None:
        """Report ``reason`` once per distinct bad document."""
        raw = content.encode() if isinstance(content, str) else content
        digest = hashlib.sha256(reason.encode() + b"\0" + raw).digest()
        if digest != self._last_bad:
            self._last_bad = digest
            self.reconciler.config_error(reason, self.source)


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
            data = read_bounded(path, MAX_CONFIG_BYTES)
        except FileNotFoundError:
            if not self._missing_reported:
                self._missing_reported = True
                log.warning("%s does not exist yet; waiting for the ConfigMap mount", path)
            return
        except ConfigError as exc:
            self.reader.reject(str(exc))
            return
        except OSError as exc:
            self.reader.reject(f"cannot read {CONFIG_KEY}: {exc.strerror or type(exc).__name__}")
            return
        self._missing_reported = False
        self.reader.feed(data)

    async def read(self) -> None:
        """``read_once`` on a worker thread: the event loop keeps serving meanwhile."""
        await asyncio.to_thread(self.read_once)

    async def run(self, stop: asyncio.Event) -> None:
        await self.read()
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
                    await self.read()
            except (OSError, RuntimeError) as exc:
                log.warning("inotify on %s stopped (%s); relying on resync", self.config_dir, exc)
                await _wait(stop, self.resync_seconds)

    async def _resync(self, stop: asyncio.Event) -> None:
        while not await _wait(stop, self.resync_seconds):
            await self.read()


def read_bounded(path: Path, limit: int) -> bytes:
    """The content of regular file ``path`` (symlinks followed), at most ``limit`` bytes.

    Opened non-blocking, so a FIFO cannot stall the reader; anything but a regular file,
    or a file over ``limit``, is a ConfigError."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise ConfigError(f"{CONFIG_KEY} is not a regular file")
        if info.st_size > limit:
            raise ConfigError(f"{CONFIG_KEY} is {info.st_size} bytes, over the limit of {limit}")
        chunks = []
        size = 0
        while chunk := os.read(fd, min(1 << 16, limit + 1 - size)):
            chunks.append(chunk)
            size += len(chunk)
            if size > limit:
                raise ConfigError(f"{CONFIG_KEY} is over the limit of {limit} bytes")
        return b"".join(chunks)
    finally:
        os.close(fd)


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
        self._listed_at: float | None = None  # when this attempt's list succeeded

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
            self._listed_at = None
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
                if exc.status == 429:  # throttled: come back when asked, not later
                    if self._stop.wait(retry_after(exc) + random.uniform(0, 1)):
                        return
                    continue
            except Exception as exc:
                log.warning("API watch of configmap %s: %s", self.name, exc)
            listed = self._listed_at
            if listed is not None and time.monotonic() - listed > WATCHED_SECONDS:
                # It was watching (a stream the server dropped or ended): list again soon,
                # spread over a second, not after a back-off grown by earlier failures.
                backoff = 1.0
                if self._stop.wait(random.uniform(0, 1)):
                    return
                continue
            if self._stop.wait(backoff):
                return
            backoff = min(backoff * 2, 30.0)

    def _watch_once(self, core: Any) -> None:
        from kubernetes import watch

        listing = core.list_namespaced_config_map(
            self.namespace, field_selector=f"metadata.name={self.name}"
        )
        self._listed_at = time.monotonic()
        for item in listing.items:
            self._feed(item)
        self._watch = watch.Watch()  # type: ignore[no-untyped-call]
        for event in self._watch.stream(
            core.list_namespaced_config_map,
            self.namespace,
            field_selector=f"metadata.name={self.name}",
            resource_version=listing.metadata.resource_version,
            timeout_seconds=random.randint(*WATCH_TIMEOUT_SECONDS),
        ):
            if self._stop.is_set():
                return
            if event["type"] in ("ADDED", "MODIFIED"):
                self._feed(event["object"])

    def _feed(self, configmap: Any) -> None:
        self.events += 1
        text = (configmap.data or {}).get(CONFIG_KEY)
        self.reader.feed("" if text is None else text)
