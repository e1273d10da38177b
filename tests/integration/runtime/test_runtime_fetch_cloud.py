"""gs:// and az:// fetches against real emulators started here: fake-gcs-server (the GCS
JSON API) and Azurite (the Azure Blob API), each behind a TCP proxy that resets or
stalls its first connection for the fault cases.

Each cloud: a runtime process swapping from it (and refusing a wrong sha256 while the
last revision serves), a fetch with the Secret's credentials, ranged parts pinned to one version,
a wrong sha256, a reset connection resumed, a stalled one failed within the idle bound,
a cancelled fetch within a second, refused endpoints, and no credential in logs or
reasons.
"""

from __future__ import annotations

import base64
import concurrent.futures
import hashlib
import json
import logging
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from devcluster import azurite, checkpoints, fake_gcs, tiny
from hotswap_contract.wire import Checkpoint
from hotswap_runtime.checkpoint.fetch import http as fetch_http
from hotswap_runtime.checkpoint.fetch import stream as fetch_stream
from hotswap_runtime.checkpoint.store import CheckpointStore
from hotswap_runtime.errors import (
    CheckpointNotFound,
    FetchError,
    FetchRefused,
    IntegrityError,
    Superseded,
)
from tests.fixtures_runtime import hostile_http as hostile
from tests.fixtures_runtime import tcp_relay
from tests.fixtures_runtime.server import running
from tests.fixtures_runtime.stores import remote_store

DATA = os.urandom(300_000)
SHA = hashlib.sha256(DATA).hexdigest()
NAME = "tiny/v1.safetensors"
IDLE = 1.0
GCS_KEY = fake_gcs.service_account_key()


@dataclass(frozen=True)
class Cloud:
    """One emulator, running: how to name an object, and the Secret that reaches it."""

    name: str
    endpoint: str
    scheme: str
    secret: Callable[[str], dict[str, str]]  # endpoint -> the Secret's keys
    secrets: tuple[str, ...]  # credential text that must never be logged

    def uri(self, name: str = NAME) -> str:
        bucket = fake_gcs.BUCKET if self.scheme == "gs" else azurite.CONTAINER
        return f"{self.scheme}://{bucket}/{name}"

    def via(self, port: int) -> str:
        """The endpoint with its port replaced (a proxy in front of it)."""
        parts = urlsplit(self.endpoint)
        return parts._replace(netloc=f"127.0.0.1:{port}").geturl()

    @property
    def port(self) -> int:
        return urlsplit(self.endpoint).port or 80


@pytest.fixture(scope="module")
def gcs(fake_gcs_bin: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cloud]:
    with fake_gcs.serve(fake_gcs_bin, tmp_path_factory.mktemp("gcs")) as url:
        fake_gcs.upload(url, NAME, DATA)
        secret = fake_gcs.secret(url, GCS_KEY)
        private_key = secret["GOOGLE_APPLICATION_CREDENTIALS_JSON"].split("-----")[4]
        yield Cloud(
            "gcs",
            url,
            "gs",
            lambda endpoint: fake_gcs.secret(endpoint, GCS_KEY),
            ("eyJ", private_key[40:80], fake_gcs.KEY_ID),
        )


@pytest.fixture(scope="module")
def azure(azurite_install: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cloud]:
    with azurite.serve(azurite_install, tmp_path_factory.mktemp("azurite")) as url:
        azurite.upload(url, NAME, DATA)
        yield Cloud("azure", url, "az", azurite.secret, (azurite.KEY, "sig="))


@pytest.fixture(params=["gcs", "azure"])
def cloud(request: pytest.FixtureRequest) -> Cloud:
    return request.getfixturevalue(request.param)  # type: ignore[no-any-return]


MakeStore = Callable[..., CheckpointStore]


@pytest.fixture
def make_store(tmp_path: Path) -> Iterator[MakeStore]:
    """Stores allowing 127.0.0.1/32 whose Secret ``store`` holds ``secret``."""
    made: list[CheckpointStore] = []

    def make(secret: dict[str, str], idle: float = IDLE) -> CheckpointStore:
        folder = tmp_path / f"secrets{len(made)}" / "store"
        folder.mkdir(parents=True)
        for key, value in secret.items():
            (folder / key).write_text(value)
        store = remote_store(tmp_path / f"cache{len(made)}", folder.parent, idle)
        made.append(store)
        return store

    yield make
    for store in made:
        store.close()
        assert [p.name for p in store.cache_dir.iterdir() if p.name.startswith(".")] == []


def ck(cloud: Cloud, name: str = NAME, sha: str = SHA) -> Checkpoint:
    return Checkpoint(uri=cloud.uri(name), sha256=sha, secretRef="store")


def test_fetch_with_the_secrets_credentials(make_store: MakeStore, cloud: Cloud) -> None:
    store = make_store(cloud.secret(cloud.endpoint))
    assert store.fetch(ck(cloud)).read_bytes() == DATA
    with pytest.raises(CheckpointNotFound, match=rf"{cloud.uri('tiny/missing.pt')} does not"):
        store.fetch(ck(cloud, "tiny/missing.pt", "1" * 64))


def test_wrong_sha256_is_refused(make_store: MakeStore, cloud: Cloud) -> None:
    with pytest.raises(IntegrityError, match=r"does not match spec\.checkpoint\.sha256"):
        make_store(cloud.secret(cloud.endpoint)).fetch(ck(cloud, sha="2" * 64))


def test_ranged_parts_in_parallel_pinned_to_one_version(
    make_store: MakeStore, cloud: Cloud, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(fetch_stream, "PART_BYTES", 64_000)
    asked: list[tuple[tuple[int, int, int], dict[str, str], str]] = []
    real = fetch_http._range

    def counted(client, url, auth, policy, shown, span, headers):  # type: ignore[no-untyped-def]
        asked.append((span, headers, str(url)))
        return real(client, url, auth, policy, shown, span, headers)

    monkeypatch.setattr(fetch_http, "_range", counted)
    assert make_store(cloud.secret(cloud.endpoint)).fetch(ck(cloud)).read_bytes() == DATA
    spans = [(s, min(s + 64_000, len(DATA)), len(DATA)) for s in range(64_000, len(DATA), 64_000)]
    assert sorted(span for span, _, _ in asked) == spans
    for _, headers, url in asked:  # one version: GCS's generation, Azure's ETag
        assert ("generation=" in url) if cloud.scheme == "gs" else ("If-Match" in headers)


def test_a_reset_connection_is_resumed(make_store: MakeStore, cloud: Cloud) -> None:
    with tcp_relay.relay(cloud.port, 100_000) as proxy:
        store = make_store(cloud.secret(cloud.via(proxy.port)))
        assert store.fetch(ck(cloud)).read_bytes() == DATA
        assert proxy.cut.is_set() and proxy.connections >= 2


def test_a_stalled_connection_fails_after_the_idle_bound(
    make_store: MakeStore, cloud: Cloud
) -> None:
    with tcp_relay.relay(cloud.port, 100_000, stall=True) as proxy:
        store = make_store(cloud.secret(cloud.via(proxy.port)))
        start = time.monotonic()
        with pytest.raises(FetchError, match="no bytes arrived for 1 s") as caught:
            store.fetch(ck(cloud))
        assert caught.value.transient
        assert time.monotonic() - start < IDLE + 2
        assert proxy.cut.is_set()


def test_a_cancelled_fetch_ends_within_a_second(make_store: MakeStore, cloud: Cloud) -> None:
    with tcp_relay.relay(cloud.port, 100_000, stall=True) as proxy:
        store = make_store(cloud.secret(cloud.via(proxy.port)), idle=60)
        wanted = concurrent.futures.ThreadPoolExecutor(1)
        with wanted as pool:
            cancel = [False]
            future = pool.submit(store.fetch, ck(cloud), lambda: cancel[0])
            assert proxy.cut.wait(10)
            cancelled_at = time.monotonic()
            cancel[0] = True
            error = future.exception(timeout=10)
            latency = time.monotonic() - cancelled_at
    assert isinstance(error, Superseded), error
    assert latency < 1.0, latency
    print(f"cancel latency ({cloud.name} body stalled): {latency * 1000:.0f} ms")


@pytest.mark.parametrize(
    ("endpoint", "kind"),
    [
        ("http://127.0.0.2:9000", "a loopback address"),
        ("http://169.254.169.254", "a link-local address"),
        ("http://[::1]:9000", "a loopback address"),
    ],
)
def test_an_endpoint_on_a_refused_address(
    make_store: MakeStore, cloud: Cloud, endpoint: str, kind: str
) -> None:
    start = time.monotonic()
    with pytest.raises(FetchRefused, match=kind) as caught:
        make_store(cloud.secret(endpoint + "/devstoreaccount1")).fetch(ck(cloud))
    assert time.monotonic() - start < 1.0
    assert "policy.fetchAllowedNetworks" in str(caught.value)
    assert cloud.uri() in str(caught.value)


def test_no_credential_in_logs_or_reasons(
    make_store: MakeStore, cloud: Cloud, caplog: pytest.LogCaptureFixture
) -> None:
    """Fetches that work (Azure: with the key and with a SAS), fail their sha256 and are
    denied (Azurite checks the key and the SAS; fake-gcs-server takes any token) log and
    report no credential."""
    caplog.set_level(logging.DEBUG)
    good = cloud.secret(cloud.endpoint)
    reasons = []
    make_store(good).fetch(ck(cloud))
    with pytest.raises(IntegrityError) as wrong:
        make_store(good).fetch(ck(cloud, sha="3" * 64))
    reasons.append(str(wrong.value))
    if cloud.scheme == "az":
        sas = azurite.secret(cloud.endpoint, "sas")
        make_store(sas).fetch(ck(cloud))
        with pytest.raises(IntegrityError) as wrong:
            make_store(sas).fetch(ck(cloud, sha="4" * 64))
        reasons.append(str(wrong.value))
        bad = {**good, "AZURE_STORAGE_KEY": base64.b64encode(os.urandom(64)).decode()}
        with pytest.raises(FetchError, match=r"access denied \(HTTP 403\)") as denied:
            make_store(bad).fetch(ck(cloud))
        reasons.append(str(denied.value))
    for secret in cloud.secrets:
        assert secret not in caplog.text, secret
        for reason in reasons:
            assert secret not in reason, (secret, reason)


METADATA_TOKEN = "ya29.hotswap-metadata-token"


@pytest.mark.parametrize(
    ("answer", "error"),
    [
        (json.dumps({"access_token": METADATA_TOKEN, "expires_in": 3599}).encode(), None),
        (b"<html>MARKER-METADATA</html>", "the metadata server's answer is not a token"),
        (b"x" * (70 << 10), "the metadata server's answer is not a token"),
    ],
)
def test_gs_token_from_the_metadata_server_when_the_secret_asks(
    make_store: MakeStore,
    gcs: Cloud,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    answer: bytes,
    error: str | None,
) -> None:
    """``GCS_USE_METADATA_SERVER: "true"``: the token comes from the metadata server
    (here on loopback, named by GCE_METADATA_HOST), asked with ``Metadata-Flavor``;
    a bad answer fails the fetch without quoting it."""
    caplog.set_level(logging.DEBUG)
    secret = {"GCS_ENDPOINT_URL": gcs.endpoint, "GCS_USE_METADATA_SERVER": "true"}
    with hostile.serve() as metadata:
        metadata.route("/computeMetadata/v1/", hostile.whole(answer))
        monkeypatch.setenv("GCE_METADATA_HOST", f"127.0.0.1:{metadata.port}")
        store = make_store(secret)
        if error is None:
            assert store.fetch(ck(gcs)).read_bytes() == DATA
        else:
            with pytest.raises(FetchError, match=error) as caught:
                store.fetch(ck(gcs))
            assert "MARKER" not in str(caught.value)
    asked = metadata.requests[0]
    assert asked.path == "/computeMetadata/v1/instance/service-accounts/default/token"
    assert asked.headers.get("Metadata-Flavor") == "Google"
    assert METADATA_TOKEN not in caplog.text


def test_gs_metadata_server_is_refused_unless_the_admin_allows_it(
    make_store: MakeStore, gcs: Cloud, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GCE_METADATA_HOST", "169.254.169.254")
    secret = {"GCS_ENDPOINT_URL": gcs.endpoint, "GCS_USE_METADATA_SERVER": "true"}
    start = time.monotonic()
    with pytest.raises(FetchRefused, match=r"token from the metadata server.*a link-local") as e:
        make_store(secret).fetch(ck(gcs))
    assert time.monotonic() - start < 1.0
    assert "policy.fetchAllowedNetworks" in str(e.value)


def test_the_runtime_swaps_from_the_store_and_keeps_serving_on_a_wrong_sha256(
    cloud: Cloud, tmp_path: Path
) -> None:
    """A runtime process: revision 1 (.safetensors) and 2 (.pt) from the emulator with
    the Secret's credentials, revision 3 with a wrong sha256 refused while 2 serves; no
    credential in its log."""
    sha = {}
    for seed, name in ((1, "v1.safetensors"), (2, "v2.pt")):
        sha[seed] = checkpoints.save(tiny.weights(seed), tmp_path / name)
        data = (tmp_path / name).read_bytes()
        upload = fake_gcs.upload if cloud.scheme == "gs" else azurite.upload
        upload(cloud.endpoint, f"swap/{name}", data)
    secrets = tmp_path / "secrets"
    (secrets / "store").mkdir(parents=True)
    for key, value in cloud.secret(cloud.endpoint).items():
        (secrets / "store" / key).write_text(value)
    config = tmp_path / "config"

    def rev(n: int, name: str, sha256: str) -> str:
        uri = cloud.uri(f"swap/{name}")
        return checkpoints.config(n, checkpoints.revision(n, uri, sha256, secret="store"))

    checkpoints.publish(config, rev(1, "v1.safetensors", sha[1]))
    env = {"HOTSWAP_CONFIG_DIR": str(config), "HOTSWAP_SECRETS_DIR": str(secrets)}
    with running(tmp_path, {**env, "HOTSWAP_LOG_LEVEL": "debug"}) as runtime:
        assert runtime.metadata()["model_version"] == "1"
        checkpoints.publish(config, rev(2, "v2.pt", sha[2]))
        runtime.wait_version(2)
        checkpoints.publish(config, rev(3, "v2.pt", "3" * 64))
        failure = runtime.wait_failure(3)
        assert failure["code"] == "sha256_mismatch", failure
        assert runtime.metadata()["model_version"] == "2"
        log = runtime.log()
    for secret in cloud.secrets:
        assert secret not in log, secret
