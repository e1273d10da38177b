"""s3:// fetches: moto's S3 server on loopback for the real protocol, and hostile
S3-speaking endpoints for stalls, cancellation and reflected error text."""

from __future__ import annotations

import concurrent.futures
import hashlib
import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from hotswap_contract.wire import Checkpoint
from hotswap_runtime.checkpoint.fetch import net as fetch_net
from hotswap_runtime.checkpoint.fetch import s3 as fetch_s3
from hotswap_runtime.checkpoint.fetch import stream as fetch_stream
from hotswap_runtime.checkpoint.store import CheckpointStore
from hotswap_runtime.errors import CheckpointNotFound, FetchError, FetchRefused, Superseded
from tests.fixtures_runtime import hostile_http as hostile
from tests.fixtures_runtime import moto_s3
from tests.fixtures_runtime.stores import remote_store

DATA = os.urandom(300_000)
SHA = hashlib.sha256(DATA).hexdigest()
IDLE = 1.0

MakeStore = Callable[..., CheckpointStore]


@pytest.fixture(scope="module")
def moto_url() -> Iterator[str]:
    with moto_s3.serve() as url:
        moto_s3.client(url).put_object(Bucket=moto_s3.BUCKET, Key="tiny/v1.safetensors", Body=DATA)
        yield url


@pytest.fixture
def make_store(tmp_path: Path) -> Iterator[MakeStore]:
    """Stores allowing 127.0.0.1/32 whose Secret ``store`` points at ``endpoint``."""
    made: list[CheckpointStore] = []

    def make(
        endpoint: str, idle: float = IDLE, networks: tuple[str, ...] = ("127.0.0.1/32",)
    ) -> CheckpointStore:
        secrets = tmp_path / f"secrets{len(made)}"
        folder = secrets / "store"
        folder.mkdir(parents=True)
        for key, value in moto_s3.secret(endpoint).items():
            (folder / key).write_text(value)
        store = remote_store(tmp_path / f"cache{len(made)}", secrets, idle, networks)
        made.append(store)
        return store

    yield make
    for store in made:
        store.close()
        assert [p.name for p in store.cache_dir.iterdir() if p.name.startswith(".")] == []


def ck(key: str = "tiny/v1.safetensors", sha: str = SHA) -> Checkpoint:
    return Checkpoint(uri=f"s3://models/{key}", sha256=sha, secretRef="store")


def test_fetch_with_credentials_from_the_secret(make_store: MakeStore, moto_url: str) -> None:
    store = make_store(moto_url)
    assert store.fetch(ck()).read_bytes() == DATA
    with pytest.raises(CheckpointNotFound, match=r"s3://models/tiny/missing.pt does not exist"):
        store.fetch(ck("tiny/missing.pt", "1" * 64))


def test_endpoint_hostname_connects_only_to_allowed_addresses(
    make_store: MakeStore, moto_url: str
) -> None:
    """``localhost`` resolves to 127.0.0.1 (allowed) and ::1 (refused): the fetch works,
    through the allowed address only."""
    store = make_store(moto_url.replace("127.0.0.1", "localhost"))
    assert store.fetch(ck()).read_bytes() == DATA


@pytest.mark.parametrize(
    ("endpoint", "kind"),
    [
        ("http://127.0.0.2:9000", "a loopback address"),
        ("http://169.254.169.254", "a link-local address"),
        ("http://[::1]:9000", "a loopback address"),
    ],
)
def test_endpoint_on_a_refused_address(make_store: MakeStore, endpoint: str, kind: str) -> None:
    start = time.monotonic()
    with pytest.raises(FetchRefused, match=rf"AWS_ENDPOINT_URL of the Secret\): {kind}") as e:
        make_store(endpoint).fetch(ck())
    assert time.monotonic() - start < 1.0
    assert "policy.fetchAllowedNetworks" in str(e.value)


def test_endpoint_is_checked_again_when_connecting(
    make_store: MakeStore, moto_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The pre-check saw a public address; the client's own lookup then gives loopback
    (as a rebinding DNS server would): the connection is refused."""

    async def public(host: str, port: int) -> list[str]:
        return ["93.184.216.34"]

    monkeypatch.setattr(fetch_net, "resolve", public)
    store = make_store(moto_url.replace("127.0.0.1", "localhost"), networks=())
    with pytest.raises(FetchRefused, match="a loopback address is refused"):
        store.fetch(ck())


def test_in_flight_s3_download_is_superseded_within_a_second(make_store: MakeStore) -> None:
    with hostile.serve() as fake_s3:
        wrote = threading.Event()
        fake_s3.route("/models/", hostile.stall_after(DATA, 4096, fake_s3.release, wrote))
        store = make_store(fake_s3.url, idle=60)
        wanted = threading.Event()
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            future = pool.submit(store.fetch, ck(), wanted.is_set)
            assert wrote.wait(10)
            cancelled_at = time.monotonic()
            wanted.set()
            error = future.exception(timeout=10)
            latency = time.monotonic() - cancelled_at
    assert isinstance(error, Superseded), error
    assert latency < 1.0, latency
    print(f"cancel latency (s3 body stalled): {latency * 1000:.0f} ms")


def test_stalled_s3_download_fails_after_the_idle_bound(make_store: MakeStore) -> None:
    with hostile.serve() as fake_s3:
        route = hostile.stall_after(DATA, 4096, fake_s3.release, threading.Event())
        fake_s3.route("/models/", route)
        start = time.monotonic()
        with pytest.raises(FetchError, match="no bytes arrived for 1 s") as caught:
            make_store(fake_s3.url).fetch(ck())
        assert caught.value.transient
        assert time.monotonic() - start < IDLE + 2


def test_s3_error_text_never_reaches_the_reason(make_store: MakeStore) -> None:
    marker = "MARKER-S3-ERROR"
    with hostile.serve() as fake_s3:
        fake_s3.route("/models/denied", hostile.leak(marker, status=403))
        fake_s3.route("/models/broken", hostile.leak(marker, status=500))
        store = make_store(fake_s3.url)
        for key, text in (("denied", "access denied (HTTP 403)"), ("broken", "HTTP 500")):
            with pytest.raises(FetchError) as caught:
                store.fetch(ck(key))
            reason = str(caught.value)
            assert text in reason, reason
            for secret in (marker, moto_s3.KEY_ID, moto_s3.SECRET_KEY, fake_s3.url):
                assert secret not in reason, (secret, reason)


def test_large_objects_are_read_in_parallel_ranged_parts(
    make_store: MakeStore, moto_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(fetch_stream, "PART_BYTES", 64_000)
    asked: list[tuple[int, int, int | None]] = []
    real = fetch_s3._range

    def counted(client: object, where: dict[str, str], span: tuple[int, int, int | None], *a):  # type: ignore[no-untyped-def]
        asked.append(span)
        return real(client, where, span, *a)

    monkeypatch.setattr(fetch_s3, "_range", counted)
    assert make_store(moto_url).fetch(ck()).read_bytes() == DATA
    assert sorted(asked) == [
        (start, min(start + 64_000, len(DATA)), len(DATA))
        for start in range(64_000, len(DATA), 64_000)
    ]
