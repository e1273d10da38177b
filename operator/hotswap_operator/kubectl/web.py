"""`kubectl hotswap dashboard`'s web server: the page, its live document, its buttons.

A stdlib ThreadingHTTPServer on 127.0.0.1 (by default) serves three files from
`static/` (no CDN, no build step), the document as Server-Sent Events (`/events`), and
the edits as POSTs (`/edit/pause|resume|promote|undo|abort|retry`: `board.ACTIONS`, the
plugin's own edits). Who may use it:

* a random token per run, given once in the URL the plugin prints; the first load
  trades it for an HttpOnly SameSite=Strict cookie and redirects to a clean URL;
  every other request needs that cookie;
* an edit also needs the token in the `X-Hotswap-Token` header (the page reads it from
  its own HTML, which another origin cannot) and an `Origin` equal to the page's own
  (CSRF);
* the `Host` header must name the address served (DNS rebinding: a hostile name that
  resolves to 127.0.0.1 is refused);
* edits only with `--edit` and where a SelfSubjectAccessReview allows them, asked again
  before each one; the API server's RBAC decides the write.
"""

from __future__ import annotations

import hmac
import json
import secrets
import threading
import time
from collections.abc import Callable
from http import HTTPStatus
from http.cookies import SimpleCookie
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib.resources import files
from typing import Any
from urllib.parse import parse_qs, urlsplit

from hotswap_contract.redact import clip
from hotswap_operator.kubectl.api import PluginError, Session, get_deployment, patch_deployment
from hotswap_operator.kubectl.board import ACTIONS, Board

COOKIE = "hotswap_dashboard"
HEADER = "X-Hotswap-Token"
MAX_STREAMS = 16  # open /events connections at once
MAX_BODY = 4096  # bytes of an edit's request body
KEEPALIVE_SECONDS = 15.0  # an SSE comment this often keeps proxies and the page awake
STATIC = {
    "/": ("index.html", "text/html; charset=utf-8"),
    "/board.js": ("board.js", "text/javascript; charset=utf-8"),
    "/board.css": ("board.css", "text/css; charset=utf-8"),
}
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; "
    "connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; "
    "frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


class Access:
    """Whether edits are on (--edit) and the review allows them, asked at most every
    `ttl` seconds for the page (and afresh for each edit)."""

    def __init__(self, check: Callable[[], bool], enabled: bool, ttl: float = 30.0) -> None:
        self.check, self.enabled, self.ttl = check, enabled, ttl
        self._at, self._value = -ttl, False

    def cached(self) -> bool:
        if not self.enabled:
            return False
        if time.monotonic() - self._at >= self.ttl:
            self._value, self._at = self.check(), time.monotonic()
        return self._value

    def now(self) -> bool:
        self._at = -self.ttl
        return self.cached()


class Dashboard(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(
        self, address: tuple[str, int], session: Session, board: Board, access: Access
    ) -> None:
        super().__init__(address, Handler)
        self.session, self.board, self.access = session, board, access
        self.token = secrets.token_urlsafe(32)
        self.streams = threading.BoundedSemaphore(MAX_STREAMS)
        host, port = self.server_address[:2]
        self.origin = f"http://{_netloc(str(host), int(port))}"
        self.hosts = {_netloc(h, int(port)) for h in (str(host), "localhost", "127.0.0.1")}

    @property
    def url(self) -> str:
        return f"{self.origin}/?token={self.token}"


def _netloc(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class Handler(BaseHTTPRequestHandler):
    server: Dashboard
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        pass  # the URL carries the token: no access log

    # ---- checks ---------------------------------------------------------------------

    def _host_ok(self) -> bool:
        return self.headers.get("Host", "") in self.server.hosts

    def _cookie_ok(self) -> bool:
        cookie = SimpleCookie()
        try:
            cookie.load(self.headers.get("Cookie", ""))
        except Exception:
            return False
        value = cookie[COOKIE].value if COOKIE in cookie else ""
        return hmac.compare_digest(value.encode(), self.server.token.encode())

    def _refuse(self, status: HTTPStatus, message: str) -> None:
        self._send(status, json.dumps({"error": message}).encode(), "application/json")

    def _send(self, status: HTTPStatus, body: bytes, kind: str, **headers: str) -> None:
        self.send_response(status)
        for key, value in {**SECURITY_HEADERS, **headers}.items():
            self.send_header(key, value)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    # ---- GET ------------------------------------------------------------------------

    def do_GET(self) -> None:
        if not self._host_ok():
            return self._refuse(HTTPStatus.FORBIDDEN, "Host header names another site")
        url = urlsplit(self.path)
        given = parse_qs(url.query).get("token", [""])[0]
        if url.path == "/" and given:
            return self._trade(given)
        if not self._cookie_ok():
            return self._refuse(
                HTTPStatus.UNAUTHORIZED, "open the URL that `kubectl hotswap dashboard` printed"
            )
        if url.path == "/events":
            return self._events()
        if url.path == "/state":
            snapshot = self.server.board.wait(0, 10.0)
            return self._send(HTTPStatus.OK, _json(snapshot.document), "application/json")
        if url.path in STATIC:
            return self._static(*STATIC[url.path])
        return self._refuse(HTTPStatus.NOT_FOUND, f"no page {clip(url.path, 80)}")

    def _trade(self, given: str) -> None:
        """The token from the URL for a cookie, then a redirect to the clean URL."""
        if not hmac.compare_digest(given.encode(), self.server.token.encode()):
            return self._refuse(HTTPStatus.UNAUTHORIZED, "wrong token")
        cookie = f"{COOKIE}={self.server.token}; HttpOnly; SameSite=Strict; Path=/"
        self._send(HTTPStatus.SEE_OTHER, b"", "text/plain", Location="/", **{"Set-Cookie": cookie})

    def _static(self, name: str, kind: str) -> None:
        body = files("hotswap_operator.kubectl").joinpath("static", name).read_bytes()
        if name == "index.html":
            body = body.replace(b"{{TOKEN}}", self.server.token.encode())
        self._send(HTTPStatus.OK, body, kind)

    def _events(self) -> None:
        """The document as Server-Sent Events: each newer snapshot, as it comes."""
        if not self.server.streams.acquire(blocking=False):
            return self._refuse(HTTPStatus.TOO_MANY_REQUESTS, "too many open pages")
        try:
            self.send_response(HTTPStatus.OK)
            for key, value in SECURITY_HEADERS.items():
                self.send_header(key, value)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Connection", "close")
            self.end_headers()
            self.close_connection = True
            shown = 0
            while True:
                snapshot = self.server.board.wait(shown, KEEPALIVE_SECONDS)
                if snapshot.number == shown:
                    self.wfile.write(b": keepalive\n\n")
                else:
                    data = _json(snapshot.document)
                    self.wfile.write(b"id: %d\ndata: %s\n\n" % (snapshot.number, data))
                    shown = snapshot.number
                self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError, TimeoutError):
            pass  # the page went away
        finally:
            self.server.streams.release()

    # ---- POST -----------------------------------------------------------------------

    def do_POST(self) -> None:
        url = urlsplit(self.path)
        refused = self._csrf()
        if refused:
            return self._refuse(HTTPStatus.FORBIDDEN, refused)
        action = url.path.removeprefix("/edit/")
        if not url.path.startswith("/edit/") or action not in ACTIONS:
            return self._refuse(HTTPStatus.NOT_FOUND, f"no edit {clip(url.path, 80)}")
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_BODY:
            return self._refuse(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, "request body too large")
        self.rfile.read(length)  # no fields yet: read so the connection stays in step
        if not self.server.access.now():
            return self._refuse(
                HTTPStatus.FORBIDDEN,
                "edits are off: start the dashboard with --edit, as a user allowed get "
                "and patch on this ModelDeployment",
            )
        self._edit(action)

    def _csrf(self) -> str | None:
        """Why this POST is refused (None: it is the page's own)."""
        if not self._host_ok():
            return "Host header names another site"
        if self.headers.get("Origin") != self.server.origin:
            return "Origin is not this dashboard"
        if not self._cookie_ok():
            return "open the URL that `kubectl hotswap dashboard` printed"
        given = self.headers.get(HEADER, "")
        if not hmac.compare_digest(given.encode(), self.server.token.encode()):
            return f"the {HEADER} header is missing or wrong"
        return None

    def _edit(self, action: str) -> None:
        session, name = self.server.session, self.server.board.name
        try:
            edit = ACTIONS[action](get_deployment(session, name))
            if edit.patch is not None:
                patch_deployment(session, name, edit.patch, edit.resource_version)
        except PluginError as err:
            return self._refuse(HTTPStatus.CONFLICT, clip(str(err), 600))
        body = json.dumps({"message": clip(edit.message, 600)}).encode()
        self._send(HTTPStatus.OK, body, "application/json")


def _json(document: Any) -> bytes:
    return json.dumps(document, separators=(",", ":")).encode()
