"""http(s):// fetches against hostile servers on loopback: stalls, cancellation, slow
downloads, redirects to refused addresses, Authorization across origins, reflected text.

Loopback is refused by default; the store here allows 127.0.0.1/32 only, so 127.0.0.2
stands for "an address nobody allowed".
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import os
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import pytest

from devcluster import certs
from devcluster.ranges import send_range_head
from hotswap_contract.wire import Checkpoint
from hotswap_runtime.checkpoint.fetch import net as fetch_net
from hotswap_runtime.checkpoint.fetch import stream as fetch_stream
from hotswap_runtime.checkpoint.store import CheckpointStore
from hotswap_runtime.errors import (
    CheckpointNotFound,
    CheckpointTooLarge,
    FetchError,
    FetchRefused,
    IntegrityError,
    Superseded,
)
from tests.fixtures_runtime import hostile_http as hostile

IDLE = 1.0
DATA = os.urandom(200_000)
SHA = hashlib.sha256(DATA).hexdigest()
TOKEN = "Bearer origin-only-token"


MakeStore = Callable[..., CheckpointStore]


@pytest.fixture
def make_store(tmp_path: Path) -> Iterator[MakeStore]:
    """Stores on ``tmp_path`` that allow 127.0.0.1/32; a Secret ``web`` holds TOKEN."""
    secrets = tmp_path / "secrets"
    (secrets / "web").mkdir(parents=True)
    (secrets / "web" / "HTTP_AUTHORIZATION").write_text(TOKEN + "\n")
    made: list[CheckpointStore] = []

    def make(
        idle: float = IDLE, limit: int = 10**8, networks: tuple[str, ...] = ("127.0.0.1/32",)
    ) -> CheckpointStore:
        cache = tmp_path / f"cache{len(made)}"
        store = CheckpointStore(
            cache,
            10**9,
            limit,
            secrets,
            file_roots=(),
            allowed_networks=networks,
            idle_seconds=idle,
        )
        made.append(store)
        return store

    yield make
    for store in made:
        store.close()


@pytest.fixture
def store(make_store: MakeStore) -> CheckpointStore:
    return make_store()


@pytest.fixture
def web() -> Iterator[hostile.Hostile]:
    with hostile.serve() as server:
        yield server


def ck(uri: str, sha: str = SHA, secret: str | None = None) -> Checkpoint:
    return Checkpoint(uri=uri, sha256=sha, secretRef=secret)


def leftovers(store: CheckpointStore) -> list[str]:
    return [p.name for p in store.cache_dir.iterdir()]


def cancelled_fetch(
    store: CheckpointStore, checkpoint: Checkpoint, in_flight: threading.Event | Callable[[], bool]
) -> tuple[BaseException | None, float]:
    """Fetch in a worker; once ``in_flight`` holds, want a newer revision. Returns what
    the fetch raised and the seconds from the cancel to the fetch returning."""
    wanted = threading.Event()
    returned: list[float] = []

    def run() -> None:
        try:
            store.fetch(checkpoint, wanted.is_set)
        finally:
            returned.append(time.monotonic())

    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        future = pool.submit(run)
        reached = in_flight.wait if isinstance(in_flight, threading.Event) else _poll(in_flight)
        assert reached(10), "the fetch never reached the server"
        cancelled_at = time.monotonic()
        wanted.set()
        error = future.exception(timeout=10)
    return error, returned[0] - cancelled_at


def _poll(condition: Callable[[], bool]) -> Callable[[float], bool]:
    def wait(timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while not condition():
            if time.monotonic() > deadline:
                return False
            time.sleep(0.01)
        return True

    return wait


def test_body_stall_is_superseded_within_a_second(
    make_store: MakeStore, web: hostile.Hostile
) -> None:
    store = make_store(idle=60)  # only the cancel can end this fetch within the test
    wrote = threading.Event()
    uri = web.route("/stall", hostile.stall_after(DATA, 5000, web.release, wrote))
    error, latency = cancelled_fetch(store, ck(uri), wrote)
    assert isinstance(error, Superseded), error
    assert latency < 1.0, f"cancel took {latency:.3f}s"
    print(f"cancel latency (body stalled): {latency * 1000:.0f} ms")
    assert leftovers(store) == []


def test_stall_before_headers_is_superseded_within_a_second(
    make_store: MakeStore, web: hostile.Hostile
) -> None:
    store = make_store(idle=60)
    uri = web.route("/silent", hostile.stall_before(web.release))
    error, latency = cancelled_fetch(store, ck(uri), web.reached)
    assert isinstance(error, Superseded), error
    assert latency < 1.0, f"cancel took {latency:.3f}s"
    print(f"cancel latency (no headers yet): {latency * 1000:.0f} ms")
    assert leftovers(store) == []


def test_connect_that_hangs_is_superseded_within_a_second(make_store: MakeStore) -> None:
    store = make_store(idle=60)  # connecting may take 10 s: only the cancel ends it sooner
    with hostile.unanswered() as port:
        error, latency = cancelled_fetch(
            store, ck(f"http://127.0.0.1:{port}/x"), lambda: hostile.connecting(port)
        )
    assert isinstance(error, Superseded), error
    assert latency < 1.0, f"cancel took {latency:.3f}s"
    print(f"cancel latency (connecting): {latency * 1000:.0f} ms")


def test_connect_has_its_own_timeout(store: CheckpointStore) -> None:
    with hostile.unanswered() as port:
        start = time.monotonic()
        with pytest.raises(FetchError, match="did not accept a connection within 1 s"):
            store.fetch(ck(f"http://127.0.0.1:{port}/x"))
    assert time.monotonic() - start < IDLE + 2


@pytest.mark.parametrize("where", ["body", "headers"])
def test_stall_fails_after_the_idle_bound(
    store: CheckpointStore, web: hostile.Hostile, where: str
) -> None:
    if where == "body":
        uri = web.route("/stall", hostile.stall_after(DATA, 5000, web.release, threading.Event()))
    else:
        uri = web.route("/silent", hostile.stall_before(web.release))
    start = time.monotonic()
    with pytest.raises(FetchError, match=r"no bytes arrived for 1 s") as caught:
        store.fetch(ck(uri))
    elapsed = time.monotonic() - start
    assert caught.value.transient and type(caught.value) is FetchError
    assert IDLE * 0.9 <= elapsed < IDLE + 2, elapsed
    assert leftovers(store) == []


def test_slow_steady_download_outlasts_the_idle_bound(
    store: CheckpointStore, web: hostile.Hostile
) -> None:
    data = os.urandom(20 * 4096)
    uri = web.route("/trickle", hostile.trickle(data, 4096, 0.2))  # ~4 s in all
    start = time.monotonic()
    path = store.fetch(ck(uri, hashlib.sha256(data).hexdigest()))
    assert time.monotonic() - start > 3 * IDLE
    assert path.read_bytes() == data


def test_declared_and_actual_size_limits(make_store: MakeStore, web: hostile.Hostile) -> None:
    store = make_store(limit=1000)
    uri = web.route("/big", hostile.whole(DATA))
    with pytest.raises(CheckpointTooLarge, match="over the size limit of 1000 bytes"):
        store.fetch(ck(uri))

    def unannounced(h: BaseHTTPRequestHandler) -> None:  # no Content-Length: until close
        h.send_response(200)
        h.send_header("Connection", "close")
        h.end_headers()
        h.wfile.write(DATA)
        h.close_connection = True

    with pytest.raises(CheckpointTooLarge):
        store.fetch(ck(web.route("/unannounced", unannounced)))
    assert leftovers(store) == []


@pytest.mark.parametrize(
    ("target", "kind"),
    [
        ("http://169.254.169.254/latest/meta-data/iam/", "link-local"),
        ("http://10.1.2.3/x.safetensors", "private"),
        ("http://[::1]:1/x.safetensors", "loopback"),
        ("http://[::ffff:169.254.169.254]/x", "link-local"),
    ],
)
def test_redirect_to_a_refused_address(
    store: CheckpointStore, web: hostile.Hostile, target: str, kind: str
) -> None:
    uri = web.route("/go", hostile.redirect(target))
    start = time.monotonic()
    with pytest.raises(FetchRefused, match=rf"a redirect to a {kind} address") as e:
        store.fetch(ck(uri))
    assert time.monotonic() - start < 1.0, "a refused address must not be waited on"
    assert "policy.fetchAllowedNetworks" in str(e.value)
    assert not e.value.transient


def test_redirect_to_another_loopback_address_is_never_connected(
    store: CheckpointStore, web: hostile.Hostile
) -> None:
    with hostile.serve("127.0.0.2") as other:
        target = other.route("/x", hostile.whole(DATA))
        uri = web.route("/go", hostile.redirect(target))
        with pytest.raises(FetchRefused, match="a redirect to a loopback address is refused"):
            store.fetch(ck(uri))
        assert other.connections == 0 and other.requests == []
    assert leftovers(store) == []


def test_redirect_to_another_scheme_and_redirect_loops(
    store: CheckpointStore, web: hostile.Hostile
) -> None:
    uri = web.route("/file", hostile.redirect("file:///etc/passwd"))
    with pytest.raises(FetchRefused, match="scheme other than http or https"):
        store.fetch(ck(uri))
    loop = web.route("/loop", hostile.redirect("/loop"))
    with pytest.raises(FetchError, match="more than 5 redirects"):
        store.fetch(ck(loop))


def test_authorization_goes_to_the_original_origin_only(
    store: CheckpointStore, web: hostile.Hostile
) -> None:
    with hostile.serve() as other:  # same address, another port: another origin
        target = other.route("/ck", hostile.whole(DATA))
        web.route("/same", hostile.redirect("/ck"))
        web.route("/ck", hostile.whole(DATA))
        web.route("/cross", hostile.redirect(target))
        store.fetch(ck(web.url + "/same", secret="web"))
        assert [r.headers.get("Authorization") for r in web.requests] == [TOKEN, TOKEN]
        store.cache_dir.joinpath(SHA).unlink()
        store.fetch(ck(web.url + "/cross", secret="web"))
        assert web.requests[-1].headers.get("Authorization") == TOKEN
        assert [r.headers.get("Authorization") for r in other.requests] == [None]


def test_uri_userinfo_is_basic_auth_for_its_origin_only(
    store: CheckpointStore, web: hostile.Hostile
) -> None:
    with hostile.serve() as other:
        target = other.route("/ck", hostile.whole(DATA))
        web.route("/cross", hostile.redirect(target))
        userinfo_uri = web.url.replace("http://", "http://user:pa%20ss@") + "/cross"
        store.fetch(ck(userinfo_uri))
        assert web.requests[-1].headers["Authorization"] == "Basic dXNlcjpwYSBzcw=="
        assert "Authorization" not in other.requests[-1].headers


def test_reflected_text_and_query_never_reach_the_reason(
    store: CheckpointStore, web: hostile.Hostile
) -> None:
    marker = "MARKER-7f3a"
    web.route("/leak", hostile.leak(marker))
    web.route("/denied", hostile.leak(marker, status=403))
    web.route("/gone", hostile.leak(marker, status=404))
    web.route("/hop", hostile.redirect(f"http://169.254.169.254/{marker}?{marker}"))
    userinfo = web.url.replace("http://", "http://user:PASSWORD-1@")
    cases = {
        "/leak": (FetchError, "the server answered HTTP 500"),
        "/denied": (FetchError, "access denied (HTTP 403)"),
        "/gone": (CheckpointNotFound, "does not exist (HTTP 404)"),
        "/hop": (FetchRefused, "a redirect to a link-local address"),
    }
    for path, (kind, text) in cases.items():
        uri = f"{userinfo}{path}/x.safetensors?X-Amz-Signature=SIGNATURE-1#frag"
        with pytest.raises(kind) as caught:
            store.fetch(ck(uri))
        reason = str(caught.value)
        assert text in reason
        assert f"{web.url}{path}/x.safetensors" in reason
        for secret in (marker, "PASSWORD-1", "SIGNATURE-1", "frag", "user"):
            assert secret not in reason, (secret, reason)


def test_mismatch_reason_shows_neither_hash_nor_size(
    store: CheckpointStore, web: hostile.Hostile
) -> None:
    uri = web.route("/ck", hostile.whole(DATA))
    with pytest.raises(IntegrityError) as caught:
        store.fetch(ck(uri, "0" * 64))
    reason = str(caught.value)
    assert "content does not match spec.checkpoint.sha256" in reason
    assert SHA not in reason and SHA[:12] not in reason and str(len(DATA)) not in reason
    assert leftovers(store) == []


def test_connection_goes_to_the_checked_address(
    store: CheckpointStore, web: hostile.Hostile, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One DNS answer is checked and connected to: a name that no real resolver knows
    reaches the server only through it, with the name kept in the Host header."""
    answers = {"rebind.invalid": ["127.0.0.1"], "meta.invalid": ["169.254.169.254"]}

    async def resolve(host: str, port: int) -> list[str]:
        return answers[host]

    monkeypatch.setattr(fetch_net, "resolve", resolve)
    web.route("/ck", hostile.whole(DATA))
    store.fetch(ck(f"http://rebind.invalid:{web.port}/ck"))
    assert web.requests[-1].headers["Host"] == f"rebind.invalid:{web.port}"
    with pytest.raises(FetchRefused, match="a link-local address"):
        store.fetch(ck(f"http://meta.invalid:{web.port}/ck", "1" * 64))
    assert len(web.requests) == 1


def test_loopback_needs_the_allowed_networks(make_store: MakeStore, web: hostile.Hostile) -> None:
    store = make_store(networks=())
    uri = web.route("/ck", hostile.whole(DATA))
    with pytest.raises(FetchRefused, match="a loopback address is refused"):
        store.fetch(ck(uri))
    assert web.connections == 0


def test_unreachable_port_fails_fast(store: CheckpointStore) -> None:
    uri = f"http://127.0.0.1:{hostile.unused_port()}/x.safetensors"
    with pytest.raises(FetchError, match="cannot connect to its host") as caught:
        store.fetch(ck(uri))
    assert caught.value.transient


def test_https_checks_the_certificate_against_the_hostname(
    store: CheckpointStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The connection goes to the resolved IP, but SNI and the certificate check use the
    URI's hostname: a certificate for ``localhost`` passes for https://localhost and
    fails for https://127.0.0.1 (same server)."""
    pair = certs.self_signed(tmp_path, "localhost", ("localhost",))
    monkeypatch.setenv("SSL_CERT_FILE", str(pair.cert))
    tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    tls.load_cert_chain(pair.cert, pair.key)
    with hostile.serve(tls=tls) as secure:
        secure.route("/ck", hostile.whole(DATA))
        path = store.fetch(ck(f"https://localhost:{secure.port}/ck"))
        assert path.read_bytes() == DATA
        path.unlink()
        with pytest.raises(FetchError, match="TLS verification failed"):
            store.fetch(ck(f"https://127.0.0.1:{secure.port}/ck"))


def ranges_asked(web: hostile.Hostile) -> list[str]:
    return [r.headers["Range"] for r in web.requests if "Range" in r.headers]


def test_a_dropped_connection_resumes_with_a_range_request(
    store: CheckpointStore, web: hostile.Hostile
) -> None:
    uri = web.route("/drop/", hostile.ranged(DATA, drop_after=70_000, drops=2))
    path = store.fetch(ck(uri + "m.safetensors"))
    assert path.read_bytes() == DATA
    # the first GET broke off after 70000 bytes; the resumed range broke off 70000 later
    assert ranges_asked(web) == [f"bytes=70000-{len(DATA) - 1}", f"bytes=140000-{len(DATA) - 1}"]


def test_a_source_that_keeps_dropping_fails_after_a_bounded_number_of_resumes(
    store: CheckpointStore, web: hostile.Hostile
) -> None:
    uri = web.route("/drop/", hostile.ranged(DATA, drop_after=1000, drops=100))
    with pytest.raises(FetchError, match="broke off"):
        store.fetch(ck(uri + "m.safetensors"))
    assert len(ranges_asked(web)) == fetch_stream.MAX_RESUMES
    assert leftovers(store) == []


def test_a_range_answered_with_200_is_refused(store: CheckpointStore, web: hostile.Hostile) -> None:
    uri = web.route("/drop/", hostile.ranged(DATA, drop_after=1000, honour=False))
    with pytest.raises(FetchError, match="answered a range request with HTTP 200"):
        store.fetch(ck(uri + "m.safetensors"))
    assert leftovers(store) == []


def test_large_files_are_read_in_parallel_ranged_parts(
    store: CheckpointStore, web: hostile.Hostile, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(fetch_stream, "PART_BYTES", 16_000)
    uri = web.route("/parts/", hostile.ranged(DATA, drop_after=20_000, drops=1))
    path = store.fetch(ck(uri + "m.safetensors"))
    assert path.read_bytes() == DATA
    asked = ranges_asked(web)
    parts = -(-len(DATA) // 16_000)
    assert len(asked) == parts - 1  # part 0 came from the first GET (which then dropped)
    assert sorted(asked, key=lambda r: int(r[6:].split("-")[0]))[0] == "bytes=16000-31999"


def test_the_first_response_is_closed_once_its_part_is_read(
    store: CheckpointStore, web: hostile.Hostile, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first GET asks for the whole file; once its part is read the client closes
    it, so the store does not go on sending bytes nobody reads (into socket buffers, or
    billed as egress) while the other parts come as ranges."""
    monkeypatch.setattr(fetch_stream, "PART_BYTES", 64 << 10)
    data = os.urandom(8 << 20)
    events: list[str] = []

    def route(h: BaseHTTPRequestHandler) -> None:
        ranged = "Range" in h.headers
        start, end = send_range_head(h, len(data), True)
        events.append("range" if ranged else "whole")
        try:
            for offset in range(start, end, 16 << 10):
                h.wfile.write(data[offset : min(offset + (16 << 10), end)])
        except OSError:  # the client closed the connection
            events.append("range closed" if ranged else "whole closed")

    uri = web.route("/first/", route)
    path = store.fetch(ck(uri + "m.safetensors", hashlib.sha256(data).hexdigest()))
    assert path.read_bytes() == data
    assert events.count("range") == len(data) // (64 << 10) - 1
    assert "range closed" not in events
    # closed while ranges were still being asked for, not at the end of the download
    assert "whole closed" in events
    assert events.index("whole closed") < len(events) - 8


def test_a_resumed_download_that_changed_fails_its_sha256(
    store: CheckpointStore, web: hostile.Hostile
) -> None:
    changed = DATA[:100_000] + bytes(len(DATA) - 100_000)
    served = [DATA, changed]

    def route(h: BaseHTTPRequestHandler) -> None:
        hostile.ranged(served.pop(0) if len(served) > 1 else served[0], 70_000, 1)(h)

    uri = web.route("/changing/", route)
    with pytest.raises(IntegrityError):
        store.fetch(ck(uri + "m.safetensors"))
    assert leftovers(store) == []
