"""Whether the operator can see: the outcome of kopf's watch and list requests.

kopf retries a failed watch or list forever and tells only its log: an operator whose
watches fail (the API server unreachable by the address they use, a proxy that drops
them, a revoked permission) would otherwise keep its Lease and a healthy liveness
endpoint while it acts on nothing. `WatchHealth` keeps, per watched path, since when
its requests have failed with no success since; the operator is blind once one path
has failed for longer than the bound. Then the leader gives up the Lease, no replica
takes it, and the liveness endpoint fails (handlers.py); the next successful response
on that path (a watch stream opened, a list answered) clears it.

kopf has no hook for this; `install` attaches to the two places kopf 1.45 (pinned in
pyproject) reports each request's outcome: `kopf._cogs.clients.errors.check_response`,
which every response passes through (success, or an HTTP error), and the ERROR records
"Request attempt #n failed ...: GET <url> -> <error>" it logs for each failed attempt
(connection errors, timeouts, 5xx, 403, 429). A unit test holds kopf to both.
"""

from __future__ import annotations

import logging
import re
import threading
import time
import urllib.parse
from collections.abc import Callable

import aiohttp

log = logging.getLogger(__name__)

MAX_PATHS = 64  # watched paths remembered (the operator watches five kinds)
MAX_ERROR_CHARS = 300  # the last error of a path, as the reason shows it
KOPF_CLIENT_LOGGER = "kopf._cogs.clients"
_GET_URL = re.compile(r"\bGET (\S+)")


class WatchHealth:
    """Since when each watched path has failed; blind once one failed > `bound` s."""

    def __init__(self, bound: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.bound = bound
        self.clock = clock
        self._failing: dict[str, tuple[float, str]] = {}  # path -> (since, last error)
        self._lock = threading.Lock()

    def succeeded(self, url: str) -> None:
        with self._lock:
            self._failing.pop(_path(url), None)

    def failed(self, url: str, error: str) -> None:
        path = _path(url)
        with self._lock:
            since = self._failing.get(path, (self.clock(), ""))[0]
            if path in self._failing or len(self._failing) < MAX_PATHS:
                self._failing[path] = (since, error[:MAX_ERROR_CHARS])

    def blind(self) -> str | None:
        """Why the operator cannot see (the path failing longest), or None."""
        with self._lock:
            if not self._failing:
                return None
            path, (since, error) = min(self._failing.items(), key=lambda item: item[1][0])
        failing_for = self.clock() - since
        if failing_for <= self.bound:
            return None
        return (
            f"the watch of {path} has failed for {failing_for:.0f}s (bound "
            f"{self.bound:g}s, HOTSWAP_WATCH_FAILURE_SECONDS): {error}; check that the API "
            "server is reachable from this pod (KUBERNETES_SERVICE_HOST) and the "
            "operator's RBAC"
        )


def _path(url: str) -> str:
    """The path a request watched or listed (a list and its watch share it)."""
    return urllib.parse.urlsplit(url).path or url


class _FailedAttempts(logging.Handler):
    """kopf's ERROR record of each failed GET attempt, as a failure of its path."""

    def __init__(self, health: WatchHealth) -> None:
        super().__init__(logging.ERROR)
        self.health = health

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if message.startswith("Request attempt") and (match := _GET_URL.search(message)):
            self.health.failed(match.group(1), message.rpartition(" -> ")[2] or message)


def install(health: WatchHealth) -> Callable[[], None]:
    """Report every kopf GET's outcome to `health`; returns what undoes it."""
    from kopf._cogs.clients import errors  # kopf's API client (see the module doc)

    original = errors.check_response

    async def check_response(response: aiohttp.ClientResponse) -> None:
        get = response.method.upper() == "GET"
        try:
            await original(response)
        except Exception as exc:
            if get:
                health.failed(str(response.url), f"{response.status} {exc}")
            raise
        if get:
            health.succeeded(str(response.url))

    handler = _FailedAttempts(health)
    errors.check_response = check_response
    logging.getLogger(KOPF_CLIENT_LOGGER).addHandler(handler)

    def uninstall() -> None:
        errors.check_response = original
        logging.getLogger(KOPF_CLIENT_LOGGER).removeHandler(handler)

    return uninstall
