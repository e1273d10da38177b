"""`kubectl hotswap set checkpoint`: the edit (pure) and --resolve's sha256, read from a
local file, a real HTTP server, moto's S3 server, the storage emulators and the
distribution registry (token auth, oci:// pinned to its manifest) on loopback."""

from __future__ import annotations

import base64
import hashlib
import http.server
import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar

import pytest

from devcluster import azurite, fake_gcs, oci_registry
from hotswap_contract.wire import Checkpoint
from hotswap_operator.kubectl import checksum, edits, hf, oci
from hotswap_operator.kubectl.api import PluginError
from tests.fixtures_runtime import moto_s3
from tests.fixtures_runtime.stores import remote_store

DATA = bytes(range(256)) * 9000  # over one CHUNK: read in pieces
SHA = hashlib.sha256(DATA).hexdigest()
MD = {
    "metadata": {"name": "resnet", "namespace": "ml", "resourceVersion": "7"},
    "spec": {"checkpoint": {"uri": "s3://models/v1.pt", "sha256": "1" * 64, "secretRef": {}}},
}


def test_set_checkpoint_patches_uri_and_sha256_at_the_read_version():
    edit = edits.set_checkpoint(MD, "https://u:pw@store.example/v2.safetensors?sig=x", SHA.upper())
    assert edit.patch == {
        "spec": {
            "checkpoint": {"uri": "https://u:pw@store.example/v2.safetensors?sig=x", "sha256": SHA}
        }
    }  # a merge patch: secretRef stays
    assert edit.resource_version == "7"
    assert "pw" not in edit.message and "sig=x" not in edit.message
    assert f"sha256 {SHA[:12]}" in edit.message


def test_set_checkpoint_refuses_a_bad_sha256_and_skips_an_unchanged_one():
    with pytest.raises(edits.RefusedError, match="64 hex digits"):
        edits.set_checkpoint(MD, "s3://models/v2.pt", "abc")
    same = edits.set_checkpoint(MD, "s3://models/v1.pt", "1" * 64)
    assert same.patch is None and "already" in same.message


def test_resolve_reads_a_local_copy_a_path_and_a_file_uri(tmp_path: Path):
    local = tmp_path / "v2.safetensors"
    local.write_bytes(DATA)
    assert checksum.sha256_of("s3://models/v2.safetensors", local) == SHA
    assert checksum.sha256_of(str(local)) == SHA
    assert checksum.sha256_of(local.as_uri()) == SHA
    with pytest.raises(PluginError, match=r"cannot read .*missing"):
        checksum.sha256_of(str(tmp_path / "missing"))
    with pytest.raises(PluginError, match="--from PATH"):
        checksum.sha256_of("hdfs://bucket/v2.safetensors")


class Files(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        if self.path != "/v2.safetensors":
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(DATA)))
        self.end_headers()
        self.wfile.write(DATA)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def server() -> Iterator[str]:
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Files)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    thread.join()


def test_resolve_streams_http(server: str):
    assert checksum.sha256_of(f"{server}/v2.safetensors") == SHA
    with pytest.raises(PluginError, match="answered 404"):
        checksum.sha256_of(f"{server}/nothing")


def test_resolve_reads_s3_with_the_users_credentials(monkeypatch: pytest.MonkeyPatch):
    with moto_s3.serve() as url:
        moto_s3.client(url).put_object(Bucket=moto_s3.BUCKET, Key="m/v2.pt", Body=DATA)
        for key, value in moto_s3.secret(url).items():  # as the AWS CLI finds them
            monkeypatch.setenv(key, value)
        assert checksum.sha256_of(f"s3://{moto_s3.BUCKET}/m/v2.pt") == SHA
        with pytest.raises(PluginError, match=r"cannot read s3://models/m/none\.pt: NoSuchKey"):
            checksum.sha256_of(f"s3://{moto_s3.BUCKET}/m/none.pt")


def test_resolve_reads_gs_from_an_emulator(
    monkeypatch: pytest.MonkeyPatch, fake_gcs_bin: Path, tmp_path: Path
):
    with fake_gcs.serve(fake_gcs_bin, tmp_path) as url:
        fake_gcs.upload(url, "m/v2.pt", DATA)
        monkeypatch.setenv("STORAGE_EMULATOR_HOST", url)  # as Google's clients read it
        assert checksum.sha256_of(f"gs://{fake_gcs.BUCKET}/m/v2.pt") == SHA
        with pytest.raises(PluginError, match=r"gs://models/m/none\.pt answered 404"):
            checksum.sha256_of(f"gs://{fake_gcs.BUCKET}/m/none.pt")


def test_resolve_reads_az_with_the_users_connection_string(
    monkeypatch: pytest.MonkeyPatch, azurite_install: Path, tmp_path: Path
):
    with azurite.serve(azurite_install, tmp_path) as url:
        azurite.upload(url, "m/v2.pt", DATA)
        connection = (
            f"DefaultEndpointsProtocol=http;AccountName={azurite.ACCOUNT};"
            f"AccountKey={azurite.KEY};BlobEndpoint={url};"
        )
        monkeypatch.setenv("AZURE_STORAGE_CONNECTION_STRING", connection)
        assert checksum.sha256_of(f"az://{azurite.CONTAINER}/m/v2.pt") == SHA
        with pytest.raises(PluginError, match=r"cannot read az://models/m/none\.pt: \w+") as e:
            checksum.sha256_of(f"az://{azurite.CONTAINER}/m/none.pt")
        assert azurite.KEY not in str(e.value)


COMMIT = "0a1b2c3d4e5f60718293a4b5c6d7e8f901234567"
HF_FILE = "/sub/v2.safetensors"


class Hub(http.server.BaseHTTPRequestHandler):
    """The Hub's resolve URL: the file for the right token, redirected to `CDN`, which
    serves it to a request without a token only; a HEAD of a branch's file names its
    commit in X-Repo-Commit (`nocommit` names none, `garbled` a wrong one)."""

    CDN = ""
    seen: ClassVar[list[tuple[str, str]]] = []  # (method, path) of every request

    def do_GET(self) -> None:
        self.seen.append((self.command, self.path))
        token = self.headers.get("Authorization")
        if self.path == "/blob/v2" and token is None:
            self.send_response(200)
            self.send_header("Content-Length", str(len(DATA)))
            self.end_headers()
            self.wfile.write(DATA)
        elif (
            self.path
            in (
                "/acme/tiny/resolve/0123abc/sub/v2.safetensors",
                f"/acme/tiny/resolve/{COMMIT}{HF_FILE}",
            )
            and token == "Bearer hf_s3cr3t"
        ):
            self.send_response(302)
            self.send_header("Location", f"{self.CDN}/blob/v2")
            self.end_headers()
        else:
            self.send_error(401 if token is None else 404)

    def do_HEAD(self) -> None:
        self.seen.append((self.command, self.path))
        commits = {"main": COMMIT, "nocommit": None, "garbled": COMMIT.upper()}
        revision = self.path.removeprefix("/acme/tiny/resolve/").partition("/")[0]
        if self.headers.get("Authorization") != "Bearer hf_s3cr3t":
            self.send_error(401)
        elif self.path.endswith(HF_FILE) and revision in commits:
            self.send_response(302)
            self.send_header("Location", f"{self.CDN}/blob/v2")
            if commit := commits[revision]:
                self.send_header("X-Repo-Commit", commit)
            self.send_header("Content-Length", "0")
            self.end_headers()
        else:
            self.send_error(404)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def hub(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The Hub and its CDN (another origin) on loopback, named by HF_ENDPOINT, with
    HF_TOKEN set as huggingface_hub reads them."""
    hub = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Hub)
    cdn = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Hub)  # another origin
    Hub.CDN = f"http://127.0.0.1:{cdn.server_address[1]}"
    Hub.seen.clear()
    threads = [threading.Thread(target=s.serve_forever, daemon=True) for s in (hub, cdn)]
    for thread in threads:
        thread.start()
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{hub.server_address[1]}")
    monkeypatch.setenv("HF_TOKEN", "hf_s3cr3t")
    try:
        yield
    finally:
        for server in (hub, cdn):
            server.shutdown()


def test_resolve_reads_hf_with_the_token_for_the_hub_only(
    hub: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert checksum.sha256_of("hf://acme/tiny@0123abc/sub/v2.safetensors") == SHA
    with pytest.raises(PluginError, match=r"hf://acme/tiny/none answered 404") as err:
        checksum.sha256_of("hf://acme/tiny/none")
    assert "s3cr3t" not in str(err.value)
    with pytest.raises(PluginError, match="is not hf://ORG/REPO"):
        checksum.sha256_of("hf://acme/tiny/../etc/passwd")
    monkeypatch.setenv("HF_ENDPOINT", "file:///etc")
    with pytest.raises(PluginError, match="HF_ENDPOINT is not an http"):
        checksum.sha256_of("hf://acme/tiny/v2.safetensors")


def test_resolve_pins_an_hf_revision_to_the_commit_the_hub_names(hub: None) -> None:
    """One HEAD with the token, its redirect not followed (the CDN is never asked); a
    commit id is kept without asking; no usable X-Repo-Commit, or an error, refused."""
    pinned = f"hf://acme/tiny@{COMMIT}{HF_FILE}"
    assert hf.pin(f"hf://acme/tiny{HF_FILE}") == pinned
    assert Hub.seen == [("HEAD", f"/acme/tiny/resolve/main{HF_FILE}")]
    assert checksum.sha256_of(pinned) == SHA  # what --resolve hashes then
    Hub.seen.clear()
    assert hf.pin(pinned) == pinned and Hub.seen == []
    for revision in ("nocommit", "garbled"):
        with pytest.raises(
            PluginError,
            match=rf"did not say which commit revision '{revision}' of hf://acme/tiny@"
            r".*; give the URI as hf://ORG/REPO@COMMIT/PATH",
        ):
            hf.pin(f"hf://acme/tiny@{revision}{HF_FILE}")
    with pytest.raises(PluginError, match=r"hf://acme/tiny/none\.safetensors answered 404") as err:
        hf.pin("hf://acme/tiny/none.safetensors")
    assert "s3cr3t" not in str(err.value)


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[oci_registry.Registry]:
    """The distribution registry with token auth; team/tiny:v1 holds two files."""
    with oci_registry.serve(tmp_path_factory.mktemp("registry")) as running:
        running.push("team/tiny", "v1", {"m.safetensors": DATA, "other.bin": b"other"})
        yield running


@pytest.fixture
def docker_config(
    registry: oci_registry.Registry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Path:
    """The user's docker config ($DOCKER_CONFIG/config.json) with the registry's login."""
    monkeypatch.setenv("SSL_CERT_FILE", str(registry.ca))
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path))
    (tmp_path / "config.json").write_text(registry.docker_config())
    return tmp_path / "config.json"


def test_resolve_pins_an_oci_tag_to_its_manifest_and_reads_the_layers_digest(
    registry: oci_registry.Registry, docker_config: Path, tmp_path: Path
):
    """The layer's digest is the sha256 (no blob is read), the URI gets the manifest's
    digest, and the runtime fetches exactly that file with the pinned URI and sha256."""
    digest = registry.push("team/tiny", "v2", {"m.safetensors": DATA, "other.bin": b"other"})
    asked = len(registry.tokens.requests)
    uri = f"oci://{registry.host}/team/tiny:v2/m.safetensors"
    pinned = oci.resolve(uri)
    assert (pinned.sha256, pinned.manifest) == (SHA, digest)
    assert pinned.uri == f"oci://{registry.host}/team/tiny:v2@{digest}/m.safetensors"
    assert oci.resolve(pinned.uri) == pinned  # a digest reference stays as it is
    token_requests = registry.tokens.requests[asked:]
    assert token_requests and all(
        headers.get("Authorization", "").startswith("Basic ") for _, headers in token_requests
    )
    registry.push("team/tiny", "v2", {"m.safetensors": b"moved"})  # the tag moves on
    assert oci.resolve(uri).sha256 != SHA
    assert oci.resolve(pinned.uri) == pinned  # the pinned URI does not
    secrets = tmp_path / "secrets" / "pull"
    secrets.mkdir(parents=True)
    (secrets / ".dockerconfigjson").write_text(registry.docker_config())
    store = remote_store(tmp_path / "cache", secrets.parent, 5.0)
    try:
        fetched = store.fetch(Checkpoint(uri=pinned.uri, sha256=pinned.sha256, secretRef="pull"))
        assert fetched.read_bytes() == DATA
    finally:
        store.close()


def test_resolve_oci_without_a_path_takes_the_artifacts_only_layer(
    registry: oci_registry.Registry, docker_config: Path
):
    digest = registry.push("team/single", "v1", {"m.safetensors": DATA})
    pinned = oci.resolve(f"oci://{registry.host}/team/single:v1")
    assert pinned == oci.Pinned(f"oci://{registry.host}/team/single:v1@{digest}", SHA, digest)
    with pytest.raises(PluginError, match=r"the artifact has 2 layers in all \(one expected; "):
        oci.resolve(f"oci://{registry.host}/team/tiny:v1")


def test_resolve_oci_says_what_is_wrong(
    registry: oci_registry.Registry,
    docker_config: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
):
    """Wrong credentials, none, a missing tag, a manifest without the file, a bad URI:
    each a clear error, and no password or token in any of them."""
    host = registry.host
    wrong = tmp_path / "wrong.json"
    login = base64.b64encode(f"{oci_registry.USER}:not-the-password".encode()).decode()
    wrong.write_text(json.dumps({"auths": {host: {"auth": login}}}))
    messages = []
    with pytest.raises(
        PluginError,
        match=rf"{host}/team/tiny: the registry refused access \(HTTP 401\) with the login "
        rf"from {wrong}; run docker login",
    ) as e:
        oci.resolve(f"oci://{host}/team/tiny:v1/m.safetensors", wrong)
    messages.append(str(e.value))
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "nowhere"))
    with pytest.raises(
        PluginError, match=r"refused access \(HTTP 401\) with the login from no docker config"
    ) as e:
        oci.resolve(f"oci://{host}/team/tiny:v1/m.safetensors")
    messages.append(str(e.value))
    with pytest.raises(
        PluginError, match=r"team/tiny has no manifest v9 \(HTTP 404\); check the tag"
    ) as e:
        oci.resolve(f"oci://{host}/team/tiny:v9/m.safetensors", docker_config)
    messages.append(str(e.value))
    with pytest.raises(
        PluginError,
        match=r"the artifact has 0 layers titled 'w/none.pt' \(one expected; titles: "
        r"'m.safetensors', 'other.bin'\)",
    ) as e:
        oci.resolve(f"oci://{host}/team/tiny:v1/w/none.pt", docker_config)
    messages.append(str(e.value))
    with pytest.raises(PluginError, match="is not oci://REGISTRY/REPOSITORY:TAG"):
        oci.resolve(f"oci://{host}/Team/tiny:v1/../m.pt", docker_config)
    for message in messages:
        assert oci_registry.PASSWORD not in message
        assert all(token not in message for token in registry.issued)
