"""`kubectl hotswap set checkpoint`: the edit (pure) and --resolve's sha256, read from a
local file, a real HTTP server and moto's S3 server on loopback."""

from __future__ import annotations

import hashlib
import http.server
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from devcluster import azurite, fake_gcs
from hotswap_operator.kubectl import checksum, edits
from hotswap_operator.kubectl.api import PluginError
from tests.fixtures_runtime import moto_s3

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


class Hub(http.server.BaseHTTPRequestHandler):
    """The Hub's resolve URL: the file for the right token, redirected to `CDN`, which
    serves it to a request without a token only."""

    CDN = ""

    def do_GET(self) -> None:
        token = self.headers.get("Authorization")
        if self.path == "/blob/v2" and token is None:
            self.send_response(200)
            self.send_header("Content-Length", str(len(DATA)))
            self.end_headers()
            self.wfile.write(DATA)
        elif (
            self.path == "/acme/tiny/resolve/0123abc/sub/v2.safetensors"
            and token == "Bearer hf_s3cr3t"
        ):
            self.send_response(302)
            self.send_header("Location", f"{self.CDN}/blob/v2")
            self.end_headers()
        else:
            self.send_error(401 if token is None else 404)

    def log_message(self, *args: object) -> None:
        pass


def test_resolve_reads_hf_with_the_token_for_the_hub_only(monkeypatch: pytest.MonkeyPatch):
    hub = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Hub)
    cdn = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Hub)  # another origin
    Hub.CDN = f"http://127.0.0.1:{cdn.server_address[1]}"
    threads = [threading.Thread(target=s.serve_forever, daemon=True) for s in (hub, cdn)]
    for thread in threads:
        thread.start()
    try:
        monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{hub.server_address[1]}")
        monkeypatch.setenv("HF_TOKEN", "hf_s3cr3t")  # as huggingface_hub reads them
        assert checksum.sha256_of("hf://acme/tiny@0123abc/sub/v2.safetensors") == SHA
        with pytest.raises(PluginError, match=r"hf://acme/tiny/none answered 404") as err:
            checksum.sha256_of("hf://acme/tiny/none")
        assert "s3cr3t" not in str(err.value)
        with pytest.raises(PluginError, match="is not hf://ORG/REPO"):
            checksum.sha256_of("hf://acme/tiny/../etc/passwd")
        monkeypatch.setenv("HF_ENDPOINT", "file:///etc")
        with pytest.raises(PluginError, match="HF_ENDPOINT is not an http"):
            checksum.sha256_of("hf://acme/tiny/v2.safetensors")
    finally:
        for server in (hub, cdn):
            server.shutdown()
