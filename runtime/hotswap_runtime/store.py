"""Checkpoint store: fetch through fsspec, verify sha256 while streaming, cache by sha256.

The cache is a folder of files named by their sha256. A fetch streams the source into a
temporary file in that folder while hashing it, checks the size limit as bytes arrive,
and renames the file into place only when the hash matches, so a reader never sees a
partial or unverified file. A cache hit (a rollback, or several revisions sharing a
checkpoint) downloads nothing. The folder is kept under a byte bound by evicting the
least recently used files, never one that is serving or about to.

Credentials come from ``$HOTSWAP_SECRETS_DIR/<secretRef>/<KEY>`` files and are passed to
fsspec only; they are never logged or put into error messages.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
import uuid
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import IO, Any
from urllib.parse import urlsplit

import fsspec

from .contract import Checkpoint, short_sha
from .errors import CheckpointNotFound, CheckpointTooLarge, FetchError, IntegrityError, Superseded

log = logging.getLogger(__name__)

CHUNK = 8 << 20  # few, large reads: each one takes the GIL back once
_S3_KEYS = {
    "AWS_ACCESS_KEY_ID": "key",
    "AWS_SECRET_ACCESS_KEY": "secret",
    "AWS_SESSION_TOKEN": "token",
    "AWS_ENDPOINT_URL": "endpoint_url",
}


class CheckpointStore:
    """Fetches checkpoints into a sha256-keyed cache folder with a byte bound."""

    def __init__(
        self,
        cache_dir: Path,
        max_bytes: int,
        max_checkpoint_bytes: int,
        secrets_dir: Path | None = None,
    ) -> None:
        self.cache_dir = cache_dir
        self.max_bytes = max_bytes
        self.max_checkpoint_bytes = max_checkpoint_bytes
        self.secrets_dir = secrets_dir
        self._lock = threading.Lock()
        self._protected: frozenset[str] = frozenset()
        cache_dir.mkdir(parents=True, exist_ok=True)
        for stale in cache_dir.glob(".tmp-*"):
            stale.unlink(missing_ok=True)

    def path_for(self, sha256: str) -> Path:
        return self.cache_dir / sha256

    def cached(self, sha256: str) -> Path | None:
        """The cached file for ``sha256``, marked as recently used, or None."""
        path = self.path_for(sha256)
        try:
            os.utime(path)
        except FileNotFoundError:
            return None
        return path

    def protect(self, shas: Iterable[str]) -> None:
        """Declare the sha256s that must never be evicted (serving, loading)."""
        with self._lock:
            self._protected = frozenset(shas)

    def fetch(self, checkpoint: Checkpoint, cancelled: Callable[[], bool] | None = None) -> Path:
        """A verified local copy of ``checkpoint``, from the cache or downloaded."""
        hit = self.cached(checkpoint.sha256)
        if hit is not None:
            return hit
        tmp = self.cache_dir / f".tmp-{checkpoint.sha256}-{uuid.uuid4().hex}"
        try:
            self._download(checkpoint, tmp, cancelled or (lambda: False))
            final = self.path_for(checkpoint.sha256)
            tmp.replace(final)
        finally:
            tmp.unlink(missing_ok=True)
        self._evict(keep=checkpoint.sha256)
        return final

    def _download(self, checkpoint: Checkpoint, tmp: Path, cancelled: Callable[[], bool]) -> None:
        uri = checkpoint.uri
        digest = hashlib.sha256()
        try:
            with _Open(uri, self._options(checkpoint)) as (source, size):
                self._check_size(uri, size)
                with tmp.open("wb") as sink:
                    total = self._copy(uri, source, sink, digest, cancelled)
                    sink.flush()
                    os.fsync(sink.fileno())
        except (FetchError, CheckpointTooLarge, Superseded):
            raise
        except FileNotFoundError as exc:
            cause = exc.__cause__  # fsspec's http reports connection errors this way too
            if cause is not None and getattr(cause, "status", None) != 404:
                raise FetchError(f"cannot fetch checkpoint {uri}: {_describe(cause)}") from None
            raise CheckpointNotFound(
                f"checkpoint {uri} does not exist; check spec.checkpoint.uri"
            ) from None
        except Exception as exc:
            raise FetchError(f"cannot fetch checkpoint {uri}: {_describe(exc)}") from None
        if digest.hexdigest() != checkpoint.sha256:
            raise IntegrityError(
                f"checkpoint {uri}: sha256 is {digest.hexdigest()}, expected "
                f"{checkpoint.sha256} ({total} bytes read); the file is truncated or changed, "
                "or spec.checkpoint.sha256 is wrong"
            )
        log.info("fetched %s sha256=%s bytes=%d", uri, short_sha(checkpoint.sha256), total)

    def _copy(
        self,
        uri: str,
        source: IO[bytes],
        sink: IO[bytes],
        digest: Any,
        cancelled: Callable[[], bool],
    ) -> int:
        total = 0
        # One buffer for every chunk: no 8 MiB allocation (mmap, page faults, munmap) per read.
        view = memoryview(bytearray(CHUNK))
        while n := _read_into(source, view):
            total += n
            self._check_size(uri, total)
            if cancelled():
                raise Superseded(f"download of {uri} stopped: a newer revision is wanted")
            digest.update(view[:n])
            sink.write(view[:n])
        return total

    def _check_size(self, uri: str, size: int | None) -> None:
        if size is not None and size > self.max_checkpoint_bytes:
            raise CheckpointTooLarge(
                f"checkpoint {uri} is over the size limit of {self.max_checkpoint_bytes} "
                f"bytes (at least {size}); raise HOTSWAP_MAX_CHECKPOINT_BYTES if it is right"
            )

    def _options(self, checkpoint: Checkpoint) -> dict[str, Any]:
        secret = self._secret(checkpoint.secret_ref) if checkpoint.secret_ref else {}
        scheme = urlsplit(checkpoint.uri).scheme
        if scheme == "s3":
            return _s3_options(secret)
        if scheme in ("http", "https") and "HTTP_AUTHORIZATION" in secret:
            return {"headers": {"Authorization": secret["HTTP_AUTHORIZATION"]}}
        return {}

    def _secret(self, name: str) -> dict[str, str]:
        folder = (self.secrets_dir or Path("/nonexistent")) / name
        if not folder.is_dir():
            raise FetchError(
                f"secret {name!r} named by checkpoint.secretRef is not mounted at {folder}; "
                "create the Secret in the ModelDeployment's namespace"
            )
        return {
            item.name: item.read_text().strip()
            for item in folder.iterdir()
            if item.is_file() and not item.name.startswith(".")
        }

    def _evict(self, keep: str) -> None:
        with self._lock:
            protected = self._protected | {keep}
            files = [p for p in self.cache_dir.iterdir() if not p.name.startswith(".")]
            stats = sorted((p.stat().st_mtime, p.stat().st_size, p) for p in files)
            total = sum(size for _, size, _ in stats)
            for _, size, path in stats:
                if total <= self.max_bytes:
                    break
                if path.name in protected:
                    continue
                path.unlink(missing_ok=True)
                total -= size
                log.info("cache: evicted %s (%d bytes)", short_sha(path.name), size)


def _s3_options(secret: dict[str, str]) -> dict[str, Any]:
    options: dict[str, Any] = {"skip_instance_cache": True}
    for key, option in _S3_KEYS.items():
        if secret.get(key):
            options[option] = secret[key]
    if secret.get("AWS_REGION"):
        options["client_kwargs"] = {"region_name": secret["AWS_REGION"]}
    return options


class _Open:
    """Context manager yielding (binary stream, size or None) for any fsspec URI."""

    def __init__(self, uri: str, options: dict[str, Any]) -> None:
        self.uri = uri
        self.options = options
        self._file: Any = None

    def __enter__(self) -> tuple[IO[bytes], int | None]:
        fs, path = fsspec.core.url_to_fs(self.uri, **self.options)
        http = urlsplit(self.uri).scheme in ("http", "https")
        size = None if http else fs.size(path)
        kwargs: dict[str, Any] = {"block_size": 0} if http else {}
        self._file = fs.open(path, "rb", **kwargs)
        if http:
            size = getattr(self._file, "size", None)
        return self._file, size

    def __exit__(self, *exc: object) -> None:
        if self._file is not None:
            self._file.close()


def _read_into(source: IO[bytes], view: memoryview) -> int:
    """Read the next chunk into ``view``; 0 at the end."""
    readinto = getattr(source, "readinto", None)
    if readinto is not None:
        return int(readinto(view) or 0)
    chunk = source.read(len(view))
    view[: len(chunk)] = chunk
    return len(chunk)


def _describe(exc: BaseException) -> str:
    text = str(exc).strip() or repr(exc)
    return f"{type(exc).__name__}: {text}"
