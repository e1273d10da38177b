"""The dashboard's web server on loopback: who may read the page and who may press its
buttons (token, cookie, Host, Origin, --edit), with a real HTTP client. The Board is fed
objects directly (no API server: its watches are tested in
tests/integration/operator/test_kubectl_dashboard.py)."""

from __future__ import annotations

import http.client
import json
import threading
import time

import pytest

from devcluster.waiting import wait_for
from hotswap_operator.kube import Kube
from hotswap_operator.kubectl.api import Session
from hotswap_operator.kubectl.board import RENDER_HZ, Board
from hotswap_operator.kubectl.web import COOKIE, MAX_BODY, Access, Dashboard

MD = {
    "metadata": {"name": "m", "namespace": "ns", "generation": 1},
    "spec": {
        "replicas": 2,
        "model": {"architecture": "torchvision/resnet18", "inputShape": [3, 8, 8]},
        "checkpoint": {"uri": "https://u:pa55word@h/m.pt?sig=s3cr3t", "sha256": "1" * 64},
    },
}
REPLICA = {"metadata": {"name": "m-a"}, "status": {"revision": 1, "sha256": "1" * 64,
                                                   "state": "Serving"}}  # fmt: skip


def serve(editable):
    session = Session(Kube(None), "ns")
    access = Access(lambda: editable, enabled=True)
    board = Board(session, "m", access.cached)
    board.show(MD, [REPLICA])
    board.start(watches=False)
    server = Dashboard(("127.0.0.1", 0), session, board, access)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, board


@pytest.fixture
def dashboard():
    server, board = serve(editable=False)
    yield server
    board.stop()
    server.shutdown()
    server.server_close()


def call(server, method, path, headers=None, body=None):
    host, port = server.server_address[:2]
    conn = http.client.HTTPConnection(host, port, timeout=10)
    conn.request(method, path, body=body, headers={"Host": f"{host}:{port}", **(headers or {})})
    answer = conn.getresponse()
    data = answer.read()
    conn.close()
    return answer, data


def own(server):
    return {"Cookie": f"{COOKIE}={server.token}"}


def test_the_token_becomes_a_cookie_and_only_it_opens_the_page(dashboard):
    answer, _ = call(dashboard, "GET", f"/?token={dashboard.token}")
    assert answer.status == 303 and answer.getheader("Location") == "/"
    cookie = answer.getheader("Set-Cookie")
    assert f"{COOKIE}={dashboard.token}" in cookie
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie
    assert call(dashboard, "GET", "/?token=nope")[0].status == 401
    for path in ("/", "/board.js", "/state", "/events"):
        assert call(dashboard, "GET", path)[0].status == 401, path
    answer, page = call(dashboard, "GET", "/", own(dashboard))
    assert answer.status == 200 and dashboard.token.encode() in page  # for the header
    assert "script-src 'self'" in answer.getheader("Content-Security-Policy")
    assert b"https://" not in page and b"http://" not in page  # no CDN: every asset is ours
    assert call(dashboard, "GET", "/board.js", own(dashboard))[0].status == 200


def test_the_state_carries_the_pods_and_no_credentials(dashboard):
    answer, data = call(dashboard, "GET", "/state", own(dashboard))
    doc = json.loads(data)
    assert answer.status == 200 and doc["editable"] is False
    assert [p["name"] for p in doc["status"]["pods"]] == ["m-a"]
    assert b"pa55word" not in data and b"s3cr3t" not in data


def test_a_host_of_another_name_is_refused(dashboard):
    port = dashboard.server_address[1]
    for host in (f"evil.example:{port}", "127.0.0.1:1", ""):
        answer, _ = call(dashboard, "GET", "/state", {**own(dashboard), "Host": host})
        assert answer.status == 403, host


def test_posts_need_origin_token_header_and_edits(dashboard):
    host, port = dashboard.server_address[:2]
    good = {**own(dashboard), "Origin": f"http://{host}:{port}", "X-Hotswap-Token": dashboard.token}
    for bad in (
        {"Origin": "http://evil.example"},
        {"Origin": ""},
        {"X-Hotswap-Token": "nope"},
        {"Cookie": f"{COOKIE}=nope"},
        {"Host": f"evil.example:{port}"},
    ):
        assert call(dashboard, "POST", "/edit/pause", {**good, **bad})[0].status == 403, bad
    assert call(dashboard, "POST", "/edit/rm-rf", good)[0].status == 404
    big = call(dashboard, "POST", "/edit/pause", good, b"x" * (MAX_BODY + 1))[0]
    assert big.status == 413
    answer, data = call(dashboard, "POST", "/edit/pause", good)  # RBAC says no (editable False)
    assert answer.status == 403 and "edits are off" in json.loads(data)["error"]


def test_events_stream_each_newer_document(dashboard):
    host, port = dashboard.server_address[:2]
    conn = http.client.HTTPConnection(host, port, timeout=10)
    conn.request("GET", "/events", headers={"Host": f"{host}:{port}", **own(dashboard)})
    answer = conn.getresponse()
    assert answer.getheader("Content-Type") == "text/event-stream"
    first = json.loads(_event(answer))
    dashboard.board.show(MD, [REPLICA, {**REPLICA, "metadata": {"name": "m-b"}}])
    second = wait_for(lambda: json.loads(_event(answer)), 10, what="a second event")
    conn.close()
    assert len(first["status"]["pods"]) == 1 and len(second["status"]["pods"]) == 2


def _event(answer):
    """The data of the next event of the stream."""
    while True:
        line = answer.fp.readline().decode()
        if line.startswith("data: "):
            return line.removeprefix("data: ")


def test_a_burst_of_watch_events_makes_few_snapshots(dashboard):
    board = dashboard.board
    first = board.wait(0, 10).number
    began = time.monotonic()
    for i in range(500):  # 500 events, as fast as they come
        board.show(MD, [REPLICA, {**REPLICA, "metadata": {"name": f"m-{i}"}}])
    last = wait_for(lambda: _newest(board, "m-499"), 10, what="the last event's snapshot")
    spent = time.monotonic() - began
    assert last.number - first <= 2 + spent * RENDER_HZ, (last.number - first, spent)


def _newest(board, pod):
    snapshot = board.wait(0, 1)
    return snapshot if pod in [p["name"] for p in snapshot.document["status"]["pods"]] else None
