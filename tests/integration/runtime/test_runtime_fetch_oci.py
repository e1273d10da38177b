"""oci:// fetches from the real CNCF distribution registry (``make registry``), started per
module over TLS with token auth (tests/fixtures_runtime/oci_registry.py); faults in a
blob's body come from a TCP relay in front of it (a reset, a stall), not from a mock."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import ssl
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import pytest

from devcluster import checkpoints as ck
from devcluster import oci_registry, tiny
from hotswap_contract.wire import Checkpoint
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
from tests.integration.runtime.test_runtime_fetch_http import cancelled_fetch
from tests.integration.runtime.test_runtime_remote_stores import infer, output_of, write_secret

DATA = os.urandom(400_000)
SHA = hashlib.sha256(DATA).hexdigest()
IDLE = 1.0


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[oci_registry.Registry]:
    with oci_registry.serve(tmp_path_factory.mktemp("registry")) as running_registry:
        running_registry.push("team/tiny", "v1", {"m.safetensors": DATA})
        yield running_registry


@pytest.fixture
def trusted(registry: oci_registry.Registry, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SSL_CERT_FILE", str(registry.ca))


def make_store(
    tmp_path: Path, registry: oci_registry.Registry, idle: float = IDLE, host: str | None = None
) -> CheckpointStore:
    secrets = tmp_path / "secrets"
    if not (secrets / "pull").exists():
        write_secret(secrets / "pull", {".dockerconfigjson": registry.docker_config(host)})
    return remote_store(tmp_path / f"cache-{idle:g}", secrets, idle)


@pytest.fixture
def store(
    tmp_path: Path, registry: oci_registry.Registry, trusted: None
) -> Iterator[CheckpointStore]:
    made = make_store(tmp_path, registry)
    yield made
    made.close()


def ck_oci(host: str, rest: str = "team/tiny:v1/m.safetensors", sha: str = SHA) -> Checkpoint:
    return Checkpoint(uri=f"oci://{host}/{rest}", sha256=sha, secretRef="pull")


def test_by_tag_title_or_digest_with_the_pull_secret(
    store: CheckpointStore, registry: oci_registry.Registry
) -> None:
    before = len(registry.issued)
    assert store.fetch(ck_oci(registry.host)).read_bytes() == DATA
    store.path_for(SHA).unlink()
    assert store.fetch(ck_oci(registry.host, "team/tiny:v1")).read_bytes() == DATA
    assert len(registry.issued) == before + 2  # one token per fetch, from the token server
    path, headers = registry.tokens.requests[-1]
    assert "repository%3Ateam%2Ftiny%3Apull" in path  # pull only
    assert headers["Authorization"].startswith("Basic ")


def test_a_wrong_sha256_or_an_unknown_file_fails_before_any_blob_is_read(
    store: CheckpointStore, registry: oci_registry.Registry
) -> None:
    with pytest.raises(IntegrityError, match=r"layer's digest is not spec\.checkpoint\.sha256"):
        store.fetch(ck_oci(registry.host, sha="0" * 64))
    with pytest.raises(FetchError, match=r"0 layers titled 'other\.safetensors'"):
        store.fetch(ck_oci(registry.host, "team/tiny:v1/other.safetensors"))
    with pytest.raises(CheckpointNotFound):
        store.fetch(ck_oci(registry.host, "team/tiny:nope/m.safetensors"))
    with pytest.raises(CheckpointNotFound):  # the registry knows no manifest of this digest
        store.fetch(ck_oci(registry.host, f"team/tiny@sha256:{'1' * 64}/m.safetensors"))
    assert list(store.cache_dir.iterdir()) == []


def test_a_reset_blob_download_resumes(
    store: CheckpointStore, registry: oci_registry.Registry
) -> None:
    port = int(registry.host.rsplit(":", 1)[1])
    with tcp_relay.relay(port, after=150_000) as faults:
        host = f"127.0.0.1:{faults.port}"
        store.secrets_dir = _secret_for(store, registry, host)
        assert store.fetch(ck_oci(host)).read_bytes() == DATA
        assert faults.cut.is_set()
        assert faults.connections >= 2, "the broken blob GET was not resumed on a new connection"


def test_a_stalled_blob_fails_within_the_idle_bound_and_a_cancel_within_a_second(
    tmp_path: Path, store: CheckpointStore, registry: oci_registry.Registry
) -> None:
    port = int(registry.host.rsplit(":", 1)[1])
    with tcp_relay.relay(port, after=150_000, stall=True) as faults:
        host = f"127.0.0.1:{faults.port}"
        store.secrets_dir = _secret_for(store, registry, host)
        with pytest.raises(FetchError, match=f"no bytes arrived for {IDLE:g} s"):
            store.fetch(ck_oci(host))
    with tcp_relay.relay(port, after=150_000, stall=True) as faults:
        host = f"127.0.0.1:{faults.port}"
        patient = make_store(tmp_path / "patient", registry, idle=60, host=host)
        error, latency = cancelled_fetch(patient, ck_oci(host), faults.cut)
        patient.close()
    assert isinstance(error, Superseded), error
    assert latency < 1.0, f"cancel took {latency:.3f}s"
    assert list(store.cache_dir.iterdir()) == []


def test_a_registry_or_token_realm_on_a_refused_address_is_never_connected(
    store: CheckpointStore, registry: oci_registry.Registry
) -> None:
    tls = _server_tls(registry)
    with hostile.serve("127.0.0.2", tls=tls) as elsewhere, hostile.serve(tls=tls) as fake:
        with pytest.raises(FetchRefused):
            store.fetch(ck_oci(f"127.0.0.2:{elsewhere.port}"))
        fake.route("/v2/", _challenge(f"https://127.0.0.2:{elsewhere.port}/token"))
        with pytest.raises(
            FetchRefused, match="the registry's token server: a redirect to a loopback"
        ):
            store.fetch(ck_oci(f"127.0.0.1:{fake.port}"))
        assert elsewhere.connections == 0


def test_no_password_or_token_in_reasons_or_logs(
    tmp_path: Path,
    registry: oci_registry.Registry,
    trusted: None,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    secrets = tmp_path / "wrong"
    login = {"username": "mallory", "password": oci_registry.PASSWORD}
    wrong = json.dumps({"auths": {registry.host: login}})
    write_secret(secrets / "pull", {".dockerconfigjson": wrong})
    store = make_store(tmp_path, registry)
    store.secrets_dir = secrets
    with pytest.raises(FetchError, match="access denied") as denied:
        store.fetch(ck_oci(registry.host))
    store.close()
    store = make_store(tmp_path / "right", registry)
    store.fetch(ck_oci(registry.host))
    store.close()
    shown = str(denied.value) + caplog.text
    assert oci_registry.PASSWORD not in shown
    assert not [token for token in registry.issued if token in shown]


def test_a_runtime_swaps_from_oci_artifacts(
    tmp_path: Path, registry: oci_registry.Registry
) -> None:
    """A real runtime swaps from a one-file artifact by tag, then a sharded one (its
    manifest a layer too) by the artifact's digest; no credential in its log."""
    sha1 = ck.save(tiny.weights(1), tmp_path / "v1" / "model.safetensors")
    manifest, sha2 = ck.save_sharded(tiny.weights(2), tmp_path / "v2", 2)
    registry.push(
        "team/swap", "v1", {"model.safetensors": (tmp_path / "v1/model.safetensors").read_bytes()}
    )
    files = {item.name: item.read_bytes() for item in sorted((tmp_path / "v2").iterdir())}
    digest = registry.push("team/swap", "v2", files)
    secrets = tmp_path / "secrets"
    write_secret(secrets / "pull", {".dockerconfigjson": registry.docker_config()})
    config = tmp_path / "config"

    def rev(n: int, rest: str, sha: str) -> str:
        uri = f"oci://{registry.host}/team/swap{rest}"
        return ck.config(n, ck.revision(n, uri, sha, secret="pull"))

    ck.publish(config, rev(1, ":v1/model.safetensors", sha1))
    env = {
        "HOTSWAP_CONFIG_DIR": str(config),
        "HOTSWAP_SECRETS_DIR": str(secrets),
        "SSL_CERT_FILE": str(registry.ca),
        "HOTSWAP_LOG_LEVEL": "debug",
    }
    with running(tmp_path, env) as runtime:
        assert infer(runtime.url) == ("1", output_of(1))
        ck.publish(config, rev(2, f"@{digest}/{manifest.name}", sha2))
        runtime.wait_version(2)
        assert infer(runtime.url) == ("2", output_of(2))
        log = runtime.log()
    assert oci_registry.PASSWORD not in log
    assert not [token for token in registry.issued if token in log]


def _secret_for(store: CheckpointStore, registry: oci_registry.Registry, host: str) -> Path:
    assert store.secrets_dir is not None
    folder = store.secrets_dir.parent / f"secrets-{host.replace(':', '-')}"
    write_secret(folder / "pull", {".dockerconfigjson": registry.docker_config(host)})
    return folder


def _server_tls(registry: oci_registry.Registry) -> ssl.SSLContext:
    tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    tls.load_cert_chain(registry.ca, registry.ca.with_suffix(".key"))
    return tls


def _challenge(realm: str) -> hostile.Route:
    def route(h: BaseHTTPRequestHandler) -> None:
        h.send_response(401)
        h.send_header("WWW-Authenticate", f'Bearer realm="{realm}",service="x"')
        h.send_header("Content-Length", "0")
        h.end_headers()

    return route


def test_a_hostile_registry_s_manifests_are_checked_before_any_blob(
    store: CheckpointStore, registry: oci_registry.Registry
) -> None:
    """A registry answering a digest with other content, an index, an endless manifest,
    a token with a line break in it or an endless token answer: refused, and no blob is
    asked for."""
    index = json.dumps({"schemaVersion": 2, "manifests": []}).encode()
    with hostile.serve(tls=_server_tls(registry)) as fake:
        host = f"127.0.0.1:{fake.port}"
        fake.route("/v2/x/manifests/sha256:", hostile.whole(b'{"layers": []}'))
        with pytest.raises(IntegrityError, match="does not match the URI's digest"):
            store.fetch(ck_oci(host, f"x@sha256:{'2' * 64}/m.safetensors"))
        fake.route("/v2/x/manifests/index", hostile.whole(index))
        with pytest.raises(FetchError, match="is an index"):
            store.fetch(ck_oci(host, "x:index/m.safetensors"))
        endless = b"[" * (5 << 20)
        fake.route("/v2/x/manifests/big", hostile.whole(endless))
        with pytest.raises(FetchError, match="a registry answer is over"):
            store.fetch(ck_oci(host, "x:big/m.safetensors"))
        fake.route("/v2/y/", _challenge(f"{fake.url}/token"))
        fake.route("/token", hostile.whole(b'{"token": "a\\r\\nX-Injected: 1"}'))
        with pytest.raises(FetchError, match="without a usable token"):
            store.fetch(ck_oci(host, "y:v1/m.safetensors"))
        fake.route("/v2/z/", _challenge(f"{fake.url}/big-token"))
        fake.route("/big-token", hostile.whole(b" " * (70 << 10)))
        with pytest.raises(FetchError, match="a registry answer is over 65536 bytes"):
            store.fetch(ck_oci(host, "z:v1/m.safetensors"))
        assert not [r for r in fake.requests if "/blobs/" in r.path]


def test_a_sharded_artifact_by_digest_asks_for_one_token(
    tmp_path: Path, store: CheckpointStore, registry: oci_registry.Registry
) -> None:
    manifest, sha = ck.save_sharded(tiny.weights(3), tmp_path / "sharded", 3)
    digest = registry.push(
        "team/sharded", "v1", {item.name: item for item in sorted((tmp_path / "sharded").iterdir())}
    )
    before = len(registry.issued)
    uri = f"oci://{registry.host}/team/sharded@{digest}/{manifest.name}"
    local = store.fetch_checkpoint(Checkpoint(uri=uri, sha256=sha, secretRef="pull"))
    assert len(local.files) == 3
    assert len(registry.issued) == before + 1  # the manifest and 3 shards: one login
