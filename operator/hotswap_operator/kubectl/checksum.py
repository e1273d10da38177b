"""`set checkpoint --resolve`: the sha256 of the checkpoint a user names, read where the
user can read it (never by the cluster): a local copy (`--from PATH`), a plain path or
file:// URI on this machine, http(s) streamed, s3:// with the user's own AWS
credentials (boto3, when installed), gs:// with the user's application default
credentials (google-auth; `STORAGE_EMULATOR_HOST` for an emulator), az:// with
`AZURE_STORAGE_CONNECTION_STRING` (azure-storage-blob, when installed), hf:// from
`HF_ENDPOINT` (default the Hub) with `HF_TOKEN`, as huggingface_hub reads them (the token
goes to that origin only, never to where it redirects; ``hf.py`` pins the revision to
its commit first). Nothing is kept: the bytes are
hashed as they come. An oci:// URI is not read here but resolved by ``oci.py`` (the
layer's digest from the registry's manifest, the URI pinned to that manifest).
"""

from __future__ import annotations

import hashlib
import os
import urllib.error
import urllib.request
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

from hotswap_contract.redact import redact_uri
from hotswap_operator.kubectl import hf
from hotswap_operator.kubectl.api import PluginError

CHUNK = 1 << 20
TIMEOUT = 30.0  # seconds without a byte from an http(s) server


def sha256_of(uri: str, local: Path | None = None) -> str:
    """The hex sha256 of the checkpoint: `local` when given, else what `uri` names."""
    return _hash(_chunks(uri, local))


def _hash(chunks: Iterable[bytes]) -> str:
    digest = hashlib.sha256()
    for chunk in chunks:
        digest.update(chunk)
    return digest.hexdigest()


def _chunks(uri: str, local: Path | None) -> Iterator[bytes]:
    if local is not None:
        return _file(local)
    scheme = urlsplit(uri).scheme
    if scheme in ("", "file"):
        return _file(Path(urlsplit(uri).path if scheme else uri))
    if scheme in ("http", "https"):
        return _http(uri)
    if scheme == "s3":
        return _s3(uri)
    if scheme == "gs":
        return _gs(uri)
    if scheme == "az":
        return _az(uri)
    if scheme == "hf":
        return _hf(uri)
    raise PluginError(
        f"cannot read {redact_uri(uri)} here (scheme {scheme}): hash a local copy with "
        "--from PATH, or give --sha256 HEX"
    )


def _file(path: Path) -> Iterator[bytes]:
    try:
        with path.open("rb") as handle:
            while chunk := handle.read(CHUNK):
                yield chunk
    except OSError as err:
        raise PluginError(f"cannot read {path}: {err.strerror}; check the path") from None


def _http(uri: str) -> Iterator[bytes]:
    yield from _http_request(urllib.request.Request(uri), uri)


def _http_request(request: urllib.request.Request, uri: str) -> Iterator[bytes]:
    try:
        with urllib.request.urlopen(
            request, timeout=TIMEOUT
        ) as answer:  # http(s) only: _chunks checked the scheme
            while chunk := answer.read(CHUNK):
                yield chunk
    except urllib.error.HTTPError as err:
        raise PluginError(f"{redact_uri(uri)} answered {err.code}; check the URI") from None
    except (urllib.error.URLError, OSError) as err:
        raise PluginError(f"cannot read {redact_uri(uri)}: {_reason(err)}") from None


def _s3(uri: str) -> Iterator[bytes]:
    try:
        import boto3  # type: ignore[import-not-found,unused-ignore]
    except ImportError:
        raise PluginError(
            "reading s3:// needs boto3 (pip install boto3, with your AWS credentials as the "
            "AWS CLI finds them), or hash a local copy with --from PATH"
        ) from None
    parts = urlsplit(uri)
    try:
        body: Any = boto3.client("s3").get_object(Bucket=parts.netloc, Key=parts.path[1:])["Body"]
        yield from body.iter_chunks(CHUNK)
    except Exception as err:  # botocore's errors: a missing object, no credentials
        raise PluginError(f"cannot read {redact_uri(uri)}: {type(err).__name__}") from None


def _gs(uri: str) -> Iterator[bytes]:
    """The JSON API media download, with the user's application default credentials
    (none against an emulator named by STORAGE_EMULATOR_HOST, as Google's clients do)."""
    parts = urlsplit(uri)
    emulator = os.environ.get("STORAGE_EMULATOR_HOST", "").rstrip("/")
    base = emulator if "://" in emulator else f"http://{emulator}"
    path = f"/storage/v1/b/{quote(parts.netloc, safe='')}/o/{quote(parts.path[1:], safe='')}"
    url = f"{base if emulator else 'https://storage.googleapis.com'}{path}?alt=media"
    request = urllib.request.Request(url)
    if not emulator:
        request.add_unredirected_header("Authorization", f"Bearer {_google_token(uri)}")
    yield from _http_request(request, uri)


def _google_token(uri: str) -> str:
    try:
        import google.auth
        import google.auth.transport.requests
    except ImportError:
        raise PluginError(
            "reading gs:// needs google-auth (pip install google-auth requests, then "
            "gcloud auth application-default login), or hash a local copy with --from PATH"
        ) from None
    try:
        scope = "https://www.googleapis.com/auth/devstorage.read_only"
        credentials, _ = google.auth.default(scopes=[scope])
        credentials.refresh(google.auth.transport.requests.Request())  # type: ignore[no-untyped-call]
    except Exception as err:  # google-auth's errors: no credentials, a refused refresh
        raise PluginError(
            f"cannot read {redact_uri(uri)}: {type(err).__name__}; run gcloud auth "
            "application-default login, or hash a local copy with --from PATH"
        ) from None
    return str(credentials.token)


def _az(uri: str) -> Iterator[bytes]:
    try:
        from azure.storage.blob import BlobServiceClient
    except ImportError:
        raise PluginError(
            "reading az:// needs azure-storage-blob (pip install azure-storage-blob), or "
            "hash a local copy with --from PATH"
        ) from None
    connection = os.environ.get("AZURE_STORAGE_CONNECTION_STRING")
    if not connection:
        raise PluginError(
            "reading az:// needs AZURE_STORAGE_CONNECTION_STRING (az storage account "
            "show-connection-string), or hash a local copy with --from PATH"
        )
    parts = urlsplit(uri)
    try:
        service = BlobServiceClient.from_connection_string(connection)
        blob = service.get_blob_client(parts.netloc, parts.path[1:])
        yield from blob.download_blob().chunks()
    except Exception as err:  # azure-core's errors: a missing blob, a refused key
        raise PluginError(f"cannot read {redact_uri(uri)}: {type(err).__name__}") from None


def _hf(uri: str) -> Iterator[bytes]:
    yield from _http_request(hf.hub_request(uri), uri)


def _reason(err: Exception) -> str:
    reason = getattr(err, "reason", None) or getattr(err, "strerror", None) or err
    return str(reason)
