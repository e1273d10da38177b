"""A small JSON client for the Kubernetes REST API, built on urllib3.

The harness speaks to the API server with plain dicts: no generated models, no
deserialisation surprises, thread-safe (one urllib3 pool shared by all threads).
"""

from __future__ import annotations

import json
import ssl
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

import urllib3
import yaml

JSON = dict[str, Any]
MERGE_PATCH = "application/merge-patch+json"
STRATEGIC_PATCH = "application/strategic-merge-patch+json"


class ApiError(RuntimeError):
    """A non-2xx answer from the API server."""

    def __init__(self, method: str, path: str, status: int, body: str) -> None:
        self.status = status
        self.body = body
        try:
            self.reason = str(json.loads(body).get("reason", ""))
            message = str(json.loads(body).get("message", body))
        except (ValueError, AttributeError):
            self.reason, message = "", body
        super().__init__(f"{method} {path}: HTTP {status} {self.reason}: {message}")


class KubeClient:
    """Talks to the server of a kubeconfig's current context (client cert or token)."""

    def __init__(self, kubeconfig: Path, timeout: float = 30.0) -> None:
        cfg = yaml.safe_load(kubeconfig.read_text())
        ctx_name = cfg["current-context"]
        ctx = _named(cfg["contexts"], ctx_name)["context"]
        cluster = _named(cfg["clusters"], ctx["cluster"])["cluster"]
        user = _named(cfg["users"], ctx["user"])["user"]
        base = kubeconfig.parent
        self.server: str = cluster["server"].rstrip("/")
        self.ca_path = base / cluster["certificate-authority"]
        ssl_ctx = ssl.create_default_context(cafile=str(self.ca_path))
        if "client-certificate" in user:
            ssl_ctx.load_cert_chain(
                str(base / user["client-certificate"]), str(base / user["client-key"])
            )
        self._headers: dict[str, str] = {"Accept": "application/json"}
        if "token" in user:
            self._headers["Authorization"] = f"Bearer {user['token']}"
        elif "tokenFile" in user:  # read once; make a new client after a refresh
            token = (base / user["tokenFile"]).read_text().strip()
            self._headers["Authorization"] = f"Bearer {token}"
        self._pool = urllib3.PoolManager(
            ssl_context=ssl_ctx, maxsize=32, retries=False, timeout=timeout
        )

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        params: Mapping[str, Any] | None = None,
        content_type: str = "application/json",
    ) -> JSON:
        url = self._url(path, params)
        headers = dict(self._headers)
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = content_type
        resp = self._pool.request(method, url, body=data, headers=headers)
        text = resp.data.decode(errors="replace")
        if resp.status >= 300:
            raise ApiError(method, path, resp.status, text)
        return json.loads(text) if text else {}

    def get(self, path: str, params: Mapping[str, Any] | None = None) -> JSON:
        return self.request("GET", path, params=params)

    def post(self, path: str, body: Any) -> JSON:
        return self.request("POST", path, body)

    def patch(self, path: str, body: Any, content_type: str = MERGE_PATCH) -> JSON:
        return self.request("PATCH", path, body, content_type=content_type)

    def delete(self, path: str, body: Any = None) -> JSON:
        return self.request("DELETE", path, body)

    def watch(
        self,
        path: str,
        params: Mapping[str, Any],
        opened: Callable[[urllib3.BaseHTTPResponse], None] | None = None,
    ) -> Iterator[JSON]:
        """Yield watch events until the server ends the stream (use timeoutSeconds).

        `opened` receives the response, e.g. to `shutdown()` it from another thread.
        """
        query = {**params, "watch": "true"}
        timeout = urllib3.Timeout(connect=10, read=float(params.get("timeoutSeconds", 60)) + 10)
        resp = self._pool.request(
            "GET",
            self._url(path, query),
            headers=self._headers,
            preload_content=False,
            timeout=timeout,
        )
        if opened is not None:
            opened(resp)
        try:
            if resp.status >= 300:
                raise ApiError("WATCH", path, resp.status, resp.read().decode(errors="replace"))
            for line in resp:
                if line.strip():
                    yield json.loads(line)
        finally:
            resp.release_conn()

    def _url(self, path: str, params: Mapping[str, Any] | None) -> str:
        url = self.server + path
        if params:
            url += "?" + urlencode({k: str(v) for k, v in params.items()})
        return url


def _named(items: list[JSON], name: str) -> JSON:
    for item in items:
        if item.get("name") == name:
            return item
    raise KeyError(f"kubeconfig has no entry named {name!r}")


def q(name: str) -> str:
    """Quote one path segment."""
    return quote(name, safe="")
