"""gs:// and az:// fetches against real emulators started here: fake-gcs-server (the GCS
JSON API) and Azurite (the Azure Blob API), each behind a TCP proxy that resets or
stalls its first connection for the fault cases.

Each cloud: a runtime process swapping from it (and refusing a wrong sha256 while the
last revision serves), a fetch with the Secret's credentials, ranged parts pinned to one version,
a wrong sha256, a reset connection resumed, a stalled one failed within the idle bound,
a cancelled fetch within a second, refused endpoints, and no credential in logs or
reasons. az:// with Azure AD workload identity: Azurite over HTTPS with OAuth, a token
endpoint of the test's own that checks the projected ServiceAccount token, and each way
the exchange can fail.
"""

from __future__ import annotations

import base64
import concurrent.futures
import hashlib
import json
import logging
import os
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qsl, urlsplit

import pytest

from devcluster import azurite, checkpoints, fake_gcs, tiny
from devcluster.certs import CertificateAuthority
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


def test_gs_metadata_token_is_kept_until_5_minutes_before_it_expires(
    make_store: MakeStore, gcs: Cloud, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A token said to live 305 s is kept for 5 s: two fetches ask the metadata server
    once, a fetch after those 5 s asks it again."""
    secret = {"GCS_ENDPOINT_URL": gcs.endpoint, "GCS_USE_METADATA_SERVER": "true"}
    answer = json.dumps({"access_token": METADATA_TOKEN, "expires_in": 305}).encode()
    with hostile.serve() as metadata:
        metadata.route("/computeMetadata/v1/", hostile.whole(answer))
        monkeypatch.setenv("GCE_METADATA_HOST", f"127.0.0.1:{metadata.port}")
        start = time.monotonic()
        assert make_store(secret).fetch(ck(gcs)).read_bytes() == DATA
        asked = time.monotonic()
        assert make_store(secret).fetch(ck(gcs)).read_bytes() == DATA
        assert time.monotonic() - start < 5.0, "too slow to tell a kept token from a new one"
        assert len(metadata.requests) == 1
        time.sleep(max(0.0, asked + 5.1 - time.monotonic()))  # the kept token's 5 s
        assert make_store(secret).fetch(ck(gcs)).read_bytes() == DATA
        assert len(metadata.requests) == 2


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


# Azure AD workload identity: Azurite over HTTPS with --oauth basic, and a token endpoint
# of the test's own (a real HTTPS server) that checks what the runtime posts.

TENANT, CLIENT = "72f988bf-86f1-41af-91ab-2d7cd011db47", "c1d2e3f4-0000-4000-8000-hotswap"
ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"


@dataclass
class TokenEndpoint:
    """Azure AD's token endpoint, on loopback: a token for the projected ServiceAccount
    token ``expected``, per ``mode``: "issue", "refuse" (a 401 whose text carries a
    marker), "stall" (nothing until the server stops) or "junk" (200, not JSON)."""

    url: str
    release: threading.Event
    expected: str = ""
    mode: str = "issue"
    lifetime: int = 3599  # expires_in of the tokens issued
    forms: list[dict[str, str]] = field(default_factory=list)
    issued: list[str] = field(default_factory=list)

    def answer(self, form: dict[str, str]) -> tuple[int, bytes]:
        self.forms.append(form)
        if self.mode == "stall":
            self.release.wait()
            return 500, b""
        if self.mode == "junk":
            return 200, b"<html>MARKER-AAD</html>"
        wanted = {
            "grant_type": "client_credentials",
            "client_id": CLIENT,
            "client_assertion_type": ASSERTION_TYPE,
            "client_assertion": self.expected,
            "scope": "https://storage.azure.com/.default",
        }
        if self.mode == "refuse" or form != wanted:
            return 401, b'{"error": "invalid_client", "error_description": "MARKER-AAD"}'
        token = azurite.oauth_token()
        self.issued.append(token)
        return 200, json.dumps(
            {"token_type": "Bearer", "expires_in": self.lifetime, "access_token": token}
        ).encode()


@contextmanager
def token_endpoint(ca: CertificateAuthority) -> Iterator[TokenEndpoint]:
    pair = ca.issue("aad", "127.0.0.1", hosts=("127.0.0.1",), server=True)
    tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    tls.load_cert_chain(pair.cert, pair.key)
    state: TokenEndpoint

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            return None

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length", "0"))
            form = dict(parse_qsl(self.rfile.read(length).decode()))
            path_ok = self.path == f"/{TENANT}/oauth2/v2.0/token"
            kind = self.headers.get("Content-Type") == "application/x-www-form-urlencoded"
            status, body = state.answer(form) if path_ok and kind else (404, b"")
            try:
                self.send_response(status, "MARKER-AAD")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
            except OSError:
                pass  # the client gave up on a stalled answer

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    server.socket = tls.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    state = TokenEndpoint(f"https://127.0.0.1:{server.server_address[1]}", threading.Event())
    try:
        yield state
    finally:
        state.release.set()
        server.shutdown()
        server.server_close()


@dataclass(frozen=True)
class Identity:
    endpoint: str  # Azurite over HTTPS, OAuth on
    ca: Path
    aad: TokenEndpoint


@pytest.fixture(scope="module")
def identity(azurite_install: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Identity]:
    ca = CertificateAuthority(tmp_path_factory.mktemp("ca"))
    with azurite.serve(azurite_install, tmp_path_factory.mktemp("azurite-oauth"), ca) as url:
        azurite.upload(url, NAME, DATA)
        with token_endpoint(ca) as aad:
            yield Identity(url, ca.cert_path, aad)


@pytest.fixture
def workload(identity: Identity, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """The pod as the azure-workload-identity webhook sets it up: its four variables and
    a projected ServiceAccount token (a new one per test: tokens are kept per assertion);
    the path of that token file."""
    projected = tmp_path / "azure-identity-token"
    claims = base64.urlsafe_b64encode(os.urandom(300)).rstrip(b"=").decode()
    projected.write_text(f"eyJhbGciOiJSUzI1NiJ9.{claims}.c2lnbmVk\n")
    identity.aad.expected = projected.read_text().strip()
    identity.aad.mode, identity.aad.lifetime = "issue", 3599
    identity.aad.forms.clear()
    for name, value in {
        "AZURE_CLIENT_ID": CLIENT,
        "AZURE_TENANT_ID": TENANT,
        "AZURE_FEDERATED_TOKEN_FILE": str(projected),
        "AZURE_AUTHORITY_HOST": identity.aad.url + "/",
        "SSL_CERT_FILE": str(identity.ca),
    }.items():
        monkeypatch.setenv(name, value)
    yield projected


def wi_secret(identity: Identity) -> dict[str, str]:
    return {"AZURE_STORAGE_ENDPOINT": identity.endpoint, "AZURE_USE_WORKLOAD_IDENTITY": "true"}


def az(name: str = NAME, sha: str = SHA) -> Checkpoint:
    return Checkpoint(uri=f"az://{azurite.CONTAINER}/{name}", sha256=sha, secretRef="store")


def test_az_with_a_workload_identity_token(
    make_store: MakeStore, identity: Identity, workload: Path
) -> None:
    """The projected token is exchanged once for a storage token, which Azurite (OAuth)
    accepts as a Bearer; the token is kept for the next fetch; without it the same blob
    is refused."""
    assert make_store(wi_secret(identity)).fetch(az()).read_bytes() == DATA
    assert make_store(wi_secret(identity)).fetch(az()).read_bytes() == DATA
    assert len(identity.aad.forms) == 1  # the second fetch used the kept token
    with pytest.raises(FetchError):
        make_store({"AZURE_STORAGE_ENDPOINT": identity.endpoint}).fetch(az())
    with pytest.raises(CheckpointNotFound, match=r"az://models/tiny/none\.pt does not exist"):
        make_store(wi_secret(identity)).fetch(az("tiny/none.pt", "1" * 64))


def test_az_workload_identity_token_about_to_expire_is_not_kept(
    make_store: MakeStore, identity: Identity, workload: Path
) -> None:
    identity.aad.lifetime = 200  # under the 5 minutes a kept token must still have
    for _ in range(2):
        assert make_store(wi_secret(identity)).fetch(az()).read_bytes() == DATA
    assert len(identity.aad.forms) == 2


def test_az_workload_identity_without_a_usable_token_file(
    make_store: MakeStore, identity: Identity, workload: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A missing, unset or garbled token file fails before anything is posted; another
    ServiceAccount's token is refused by Azure AD: each reason names the checkpoint and
    the fix, and quotes neither token."""
    store = make_store(wi_secret(identity))
    monkeypatch.setenv("AZURE_FEDERATED_TOKEN_FILE", str(workload.parent / "missing"))
    with pytest.raises(
        FetchError,
        match=r"az://models/tiny/v1\.safetensors .*AZURE_FEDERATED_TOKEN_FILE .*cannot be "
        r"opened \(FileNotFoundError\); label the pods azure\.workload\.identity/use",
    ):
        store.fetch(az())
    monkeypatch.delenv("AZURE_FEDERATED_TOKEN_FILE")
    with pytest.raises(FetchError, match="the pod has no AZURE_FEDERATED_TOKEN_FILE; label"):
        store.fetch(az())
    for bad in (workload.parent, Path("/dev/zero")):
        monkeypatch.setenv("AZURE_FEDERATED_TOKEN_FILE", str(bad))
        with pytest.raises(FetchError, match="is not a service account token"):
            store.fetch(az())
    assert identity.aad.forms == []
    other = workload.parent / "other-token"
    other.write_text("eyJhbGciOiJSUzI1NiJ9.b3RoZXI.c2ln")
    monkeypatch.setenv("AZURE_FEDERATED_TOKEN_FILE", str(other))
    with pytest.raises(
        FetchError,
        match=r"Azure AD refused the pod's service account token \(HTTP 401\); check the "
        "federated identity credential",
    ) as refused:
        store.fetch(az())
    assert "MARKER" not in str(refused.value) and "b3RoZXI" not in str(refused.value)


@pytest.mark.parametrize("mode", ["refuse", "junk", "stall"])
def test_az_token_endpoint_refusing_garbling_or_stalling(
    make_store: MakeStore, identity: Identity, workload: Path, mode: str
) -> None:
    identity.aad.mode = mode
    expected = {
        "refuse": r"Azure AD refused the pod's service account token \(HTTP 401\)",
        "junk": r"the token endpoint's answer is not a token",
        "stall": r"no bytes arrived for 1 s",
    }[mode]
    start = time.monotonic()
    with pytest.raises(FetchError, match=expected) as caught:
        make_store(wi_secret(identity)).fetch(az())
    assert time.monotonic() - start < IDLE + 2
    assert "MARKER" not in str(caught.value)
    assert caught.value.transient  # retried later, as any failed fetch


@pytest.mark.parametrize(
    ("authority", "error", "kind"),
    [
        ("https://169.254.169.254", FetchRefused, "a link-local address"),
        ("https://127.0.0.2:{port}", FetchRefused, "a loopback address"),
        (
            "http://127.0.0.1:{port}",
            FetchError,
            "AZURE_AUTHORITY_HOST of the pod is not an https URL",
        ),
    ],
)
def test_az_token_endpoint_outside_the_address_policy_is_never_asked(
    make_store: MakeStore,
    identity: Identity,
    workload: Path,
    monkeypatch: pytest.MonkeyPatch,
    authority: str,
    error: type[Exception],
    kind: str,
) -> None:
    port = urlsplit(identity.aad.url).port
    monkeypatch.setenv("AZURE_AUTHORITY_HOST", authority.format(port=port))
    start = time.monotonic()
    with pytest.raises(error, match=kind) as caught:
        make_store(wi_secret(identity)).fetch(az())
    assert time.monotonic() - start < 1.0
    assert "az://models/tiny/v1.safetensors (its token from Azure AD workload identity" in str(
        caught.value
    )
    if error is FetchRefused:
        assert "policy.fetchAllowedNetworks" in str(caught.value)
    assert identity.aad.forms == []


def test_az_workload_identity_swap_never_shows_a_token(
    identity: Identity, workload: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A runtime process swaps to a blob read with the workload identity's token, and
    refuses a wrong sha256 while it serves; neither the storage token nor the projected
    token is in its log or its report, nor in the reasons or logs of the store here."""
    caplog.set_level(logging.DEBUG)
    path = tmp_path / "v2.safetensors"
    sha2 = checkpoints.save(tiny.weights(2), path)
    azurite.upload(identity.endpoint, "swap/v2.safetensors", path.read_bytes())
    secrets = tmp_path / "secrets"
    (secrets / "store").mkdir(parents=True)
    for key, value in wi_secret(identity).items():
        (secrets / "store" / key).write_text(value)
    config = tmp_path / "config"

    def rev(n: int, sha256: str) -> str:
        uri = f"az://{azurite.CONTAINER}/swap/v2.safetensors"
        return checkpoints.config(n, checkpoints.revision(n, uri, sha256, secret="store"))

    checkpoints.publish(config, rev(1, sha2))
    env = {"HOTSWAP_CONFIG_DIR": str(config), "HOTSWAP_SECRETS_DIR": str(secrets)}
    with running(tmp_path, {**env, "HOTSWAP_LOG_LEVEL": "debug"}) as runtime:
        assert runtime.metadata()["model_version"] == "1"
        checkpoints.publish(config, rev(2, "3" * 64))
        failure = runtime.wait_failure(2)
        assert failure["code"] == "sha256_mismatch", failure
        shown = json.dumps(runtime.metadata())
        log = runtime.log()
    reasons = []
    with pytest.raises(IntegrityError) as wrong:
        remote_store(tmp_path / "here", secrets, IDLE).fetch(az(sha="4" * 64))
    reasons.append(str(wrong.value))
    assert identity.aad.issued
    for secret in (*identity.aad.issued, workload.read_text().strip()):
        for text in (log, shown, caplog.text, *reasons):
            assert secret not in text
            assert secret.split(".")[1][:40] not in text
