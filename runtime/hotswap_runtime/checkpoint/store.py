"""Checkpoint store: fetch, verify sha256 while streaming, cache by sha256.

The cache is a folder of files named by their sha256. A fetch streams the source into a
temporary file in that folder while hashing it, checks the size limit before reading
and as bytes arrive, and renames the file into place only when the hash matches, so a
reader never sees a partial or unverified file. A cache hit (a rollback, or several
revisions sharing a checkpoint) downloads nothing. The folder is kept under a byte bound
by evicting the least recently used files, never one that is serving or about to.

Sources, each treated as hostile (docs/architecture.md, "Trust model"):

* ``file://`` under ``HOTSWAP_FILE_ROOTS`` only, regular files only (``fetch_file``);
* ``http(s)://``, ``s3://``, ``oci://`` (a registry's artifact layer) and ``hf://`` (a
  Hugging Face Hub file) on the store's own event-loop thread (``fetch_loop``),
  where a newer revision stops a download within a poll and no wait outlasts the idle
  bound; every address is checked before it is connected to (``fetch_net``).

Whatever fails, ``fetch`` raises a ``SwapError`` whose reason shows the URI redacted
(``redact.redact_uri``) and no text the source sent, and leaves no temporary file.
Credentials (``credentials``) go to the fetchers only.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractAsyncContextManager
from functools import partial
from pathlib import Path
from urllib.parse import urlsplit

from hotswap_contract import schemes
from hotswap_contract.policy import DEFAULT_FILE_ROOTS
from hotswap_contract.redact import redact_uri
from hotswap_contract.wire import Checkpoint, Fetched, short_sha
from hotswap_runtime.checkpoint.fetch.azure import KEYS as AZURE_KEYS
from hotswap_runtime.checkpoint.fetch.azure import is_blob_url, open_azure
from hotswap_runtime.checkpoint.fetch.credentials import read_secret
from hotswap_runtime.checkpoint.fetch.file import copy_file
from hotswap_runtime.checkpoint.fetch.gcs import open_gcs
from hotswap_runtime.checkpoint.fetch.hf import lfs_pins, open_hf
from hotswap_runtime.checkpoint.fetch.http import open_http, quiet_client_logs
from hotswap_runtime.checkpoint.fetch.loop import FetchLoop
from hotswap_runtime.checkpoint.fetch.net import NetPolicy
from hotswap_runtime.checkpoint.fetch.oci import open_oci
from hotswap_runtime.checkpoint.fetch.s3 import open_s3
from hotswap_runtime.checkpoint.fetch.stream import (
    FILES_IN_FLIGHT,
    Body,
    Sink,
    TapFor,
    pump,
    too_large,
)
from hotswap_runtime.checkpoint.manifest import (
    MAX_MANIFEST_BYTES,
    LocalCheckpoint,
    Manifest,
    PinShards,
    Shard,
    is_manifest,
    read_manifest,
)
from hotswap_runtime.checkpoint.peers.peering import Peering, Tally
from hotswap_runtime.checkpoint.streaming import StreamParser
from hotswap_runtime.errors import FetchError, FetchRefused, IntegrityError, Superseded, SwapError
from hotswap_runtime.settings import Settings

log = logging.getLogger(__name__)
MAX_MANIFESTS_KNOWN = 64  # manifests whose shards eviction spares while they are protected
MAX_PINS_KEPT = 16  # stock hf:// indexes whose shards' LFS pins are kept (a rollback asks none)


def _never() -> bool:
    return False


class _Stop:
    """The ``cancelled`` of a checkpoint's concurrent shard downloads: true once the
    caller's is, or once one of them failed (the first failure, kept to be raised)."""

    def __init__(self, cancelled: Callable[[], bool]) -> None:
        self.cancelled = cancelled
        self.failure: BaseException | None = None
        self._lock = threading.Lock()

    def __call__(self) -> bool:
        return self.failure is not None or self.cancelled()

    def fail(self, exc: BaseException) -> None:
        with self._lock:
            if self.failure is None:
                self.failure = exc


class CheckpointStore:
    """Fetches checkpoints into a sha256-keyed cache folder with a byte bound."""

    def __init__(
        self,
        cache_dir: Path,
        max_bytes: int,
        max_checkpoint_bytes: int,
        secrets_dir: Path | None = None,
        *,
        file_roots: Sequence[str] = DEFAULT_FILE_ROOTS,
        allowed_networks: Sequence[str] = (),
        idle_seconds: float = 30.0,
        peering: Peering | None = None,
        proxy: str | None = None,
    ) -> None:
        self.cache_dir = cache_dir
        self.peering = peering
        self.last_fetched: Fetched | None = None  # where the last checkpoint's bytes came from
        self.max_bytes = max_bytes
        self.max_checkpoint_bytes = max_checkpoint_bytes
        self.secrets_dir = secrets_dir
        self.file_roots = tuple(file_roots)
        self.net = NetPolicy.of(allowed_networks, idle_seconds, proxy)
        self._loop = FetchLoop()
        self._lock = threading.Lock()
        self._protected: frozenset[str] = frozenset()
        self._shards: dict[str, frozenset[str]] = {}  # manifest sha256 -> its shards'
        # a stock hf:// index's (URI, sha256) -> its shards' (sha256, size) from the Hub
        self._pins: dict[tuple[str, str], tuple[tuple[str, int], ...]] = {}
        quiet_client_logs()
        cache_dir.mkdir(parents=True, exist_ok=True)
        for stale in cache_dir.glob(".tmp-*"):
            stale.unlink(missing_ok=True)

    @classmethod
    def from_settings(cls, settings: Settings, peering: Peering | None = None) -> CheckpointStore:
        return cls(
            settings.cache_dir,
            settings.cache_max_bytes,
            settings.max_checkpoint_bytes,
            settings.secrets_dir,
            file_roots=settings.file_roots,
            allowed_networks=settings.fetch_allowed_networks,
            idle_seconds=settings.fetch_idle_seconds,
            peering=peering,
            proxy=settings.fetch_proxy,
        )

    def close(self) -> None:
        """Stop the fetch loop thread (a later fetch starts it again)."""
        self._loop.close()

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

    def fetch_checkpoint(
        self,
        checkpoint: Checkpoint,
        cancelled: Callable[[], bool] | None = None,
        parser: StreamParser | None = None,
    ) -> LocalCheckpoint:
        """A verified local copy of ``checkpoint``: one file, or a manifest (``.json``,
        at most MAX_MANIFEST_BYTES) and then each shard it pins, each cached by its own
        sha256. Each file downloaded goes through ``parser`` too (parsed while it
        downloads). Raises what ``fetch`` raises, and ManifestError for a bad manifest."""
        tally = Tally()
        if self.peering is not None:
            self.peering.new_checkpoint()
        try:
            return self._fetch_checkpoint(checkpoint, cancelled, parser, tally)
        finally:
            self.last_fetched = tally.figures()

    def _fetch_checkpoint(
        self,
        checkpoint: Checkpoint,
        cancelled: Callable[[], bool] | None,
        parser: StreamParser | None,
        tally: Tally,
    ) -> LocalCheckpoint:
        shown = redact_uri(checkpoint.uri)
        if not is_manifest(checkpoint.uri):
            tap = parser.tap(0, shown) if parser is not None else None
            path = self.fetch(checkpoint, cancelled, tap_for=tap, tally=tally)
            return LocalCheckpoint(((path, shown),))
        path = self.fetch(checkpoint, cancelled, MAX_MANIFEST_BYTES, tally=tally)
        pin = self._hub_pins(checkpoint, cancelled or _never)
        manifest = read_manifest(path, checkpoint, self.max_checkpoint_bytes, pin)
        with self._lock:  # shards of a protected manifest are protected too
            self._shards.pop(checkpoint.sha256, None)
            shas = frozenset(shard.checkpoint.sha256 for shard in manifest.shards)
            self._shards[checkpoint.sha256] = shas
            while len(self._shards) > MAX_MANIFESTS_KNOWN:
                del self._shards[next(iter(self._shards))]
        if parser is not None:
            parser.shards(manifest.owners)
        related = (checkpoint.sha256, *shas)
        files = self._fetch_shards(manifest, cancelled, parser, (tally, related))
        return LocalCheckpoint(files, manifest)

    def _hub_pins(self, checkpoint: Checkpoint, cancelled: Callable[[], bool]) -> PinShards:
        """The ``pin`` of a stock index at an hf:// commit: its shards' sha256 and size
        from the Hub's LFS metadata (``hf.lfs_pins``, on the fetch loop), kept per
        manifest URI and sha256 (both fix the commit and the shard names)."""
        key = (checkpoint.uri, checkpoint.sha256)
        shown = redact_uri(checkpoint.uri)

        def pin(uris: tuple[str, ...]) -> tuple[tuple[str, int], ...]:
            kept = self._pins.get(key)
            if kept is not None and len(kept) == len(uris):
                return kept
            ref = checkpoint.secret_ref
            secret = read_secret(self.secrets_dir, ref) if ref else {}

            async def lookups() -> list[tuple[str, int]]:
                return await lfs_pins(uris, secret, self.net, self.max_checkpoint_bytes)

            start = time.monotonic()
            try:
                pins = tuple(self._loop.run(lookups, cancelled, shown))
            except SwapError:
                raise
            except Exception as exc:  # a library's own exception: its text may quote the Hub
                raise FetchError(f"cannot fetch checkpoint {shown}: {type(exc).__name__}") from None
            with self._lock:
                self._pins[key] = pins
                while len(self._pins) > MAX_PINS_KEPT:
                    del self._pins[next(iter(self._pins))]
            took = time.monotonic() - start
            log.info("%s: %d shards pinned by the Hub's LFS sha256 (%.3fs)", shown, len(pins), took)
            return pins

        return pin

    def _fetch_shards(
        self,
        manifest: Manifest,
        cancelled: Callable[[], bool] | None,
        parser: StreamParser | None,
        tallied: tuple[Tally, tuple[str, ...]],
    ) -> tuple[tuple[Path, str], ...]:
        """Each shard of ``manifest``, verified and cached, in order. From the network
        ``FILES_IN_FLIGHT`` download at once, so the next one's requests go out while
        the one before drains into its sink, fsyncs and is renamed (``file://`` shards,
        bound by the disk, one after another). The first shard to fail stops the others;
        its error is raised once every download has returned (and removed its temp file)."""
        shards = manifest.shards
        remote = urlsplit(shards[0].checkpoint.uri).scheme in schemes.REMOTE
        stop = _Stop(cancelled or _never)
        with ThreadPoolExecutor(
            FILES_IN_FLIGHT if remote else 1, thread_name_prefix="hotswap-shard"
        ) as pool:
            futures = [
                pool.submit(self._fetch_shard, shard, (index, stop), parser, tallied)
                for index, shard in enumerate(shards)
            ]
        if stop.failure is not None:
            raise stop.failure
        paths = [future.result() for future in futures]
        return tuple(
            (path, redact_uri(s.checkpoint.uri)) for path, s in zip(paths, shards, strict=True)
        )

    def _fetch_shard(
        self,
        shard: Shard,
        place: tuple[int, _Stop],
        parser: StreamParser | None,
        tallied: tuple[Tally, tuple[str, ...]],
    ) -> Path:
        index, stop = place
        tally, related = tallied
        where = redact_uri(shard.checkpoint.uri)
        tap = parser.tap(index, where) if parser is not None else None
        try:
            if stop():
                raise Superseded(f"download of {where} stopped: a newer revision is wanted")
            return self.fetch(shard.checkpoint, stop, shard.size, tap, tally=tally, related=related)
        except BaseException as exc:
            stop.fail(exc)
            raise

    def fetch(
        self,
        checkpoint: Checkpoint,
        cancelled: Callable[[], bool] | None = None,
        limit: int | None = None,
        tap_for: TapFor | None = None,
        *,
        tally: Tally | None = None,
        related: tuple[str, ...] = (),
    ) -> Path:
        """A verified local copy of the one file ``checkpoint``, from the cache or
        downloaded (from a peer when the store has peering, else the source); at most
        ``limit`` bytes (the checkpoint limit by default). A download hands its chunks
        to the tap ``tap_for`` gives once the size is known. ``tally`` counts where the
        bytes came from; ``related``: the sha256 of the checkpoint's other files.

        Raises a SwapError: Superseded once ``cancelled()`` turns true, FetchError and
        its kinds, CheckpointTooLarge (for a cached file too, as its download would),
        IntegrityError."""
        shown = redact_uri(checkpoint.uri)
        limit = min(limit or self.max_checkpoint_bytes, self.max_checkpoint_bytes)
        tally = tally or Tally()
        hit = self.cached(checkpoint.sha256)
        if hit is not None:
            size = hit.stat().st_size
            if size > limit:  # a shard its manifest declares smaller
                raise too_large(shown, limit)
            tally.add("cache", size)
            return hit
        tmp = self.cache_dir / f".tmp-{checkpoint.sha256}-{uuid.uuid4().hex}"
        try:
            sink = Sink(tmp.open("xb"), shown, limit, tap_for)
            total = self._download(checkpoint, sink, cancelled or _never, (tally, related))
            final = self.path_for(checkpoint.sha256)
            tmp.replace(final)
        except SwapError:
            raise
        except Exception as exc:  # a library's own exception: its text may quote the source
            raise FetchError(f"cannot fetch checkpoint {shown}: {type(exc).__name__}") from None
        finally:
            tmp.unlink(missing_ok=True)
        log.info("fetched %s sha256=%s bytes=%d", shown, short_sha(checkpoint.sha256), total)
        self._evict(keep=checkpoint.sha256)
        return final

    def _download(
        self,
        checkpoint: Checkpoint,
        sink: Sink,
        cancelled: Callable[[], bool],
        tallied: tuple[Tally, tuple[str, ...]],
    ) -> int:
        """Stream the source (or a peer) into the sink's file and verify it; the number
        of bytes."""
        shown = sink.shown
        with sink.file as file:
            self._copy(checkpoint, sink, cancelled, tallied)
            file.flush()
            os.fsync(file.fileno())
        if not sink.matches(checkpoint.sha256):
            raise IntegrityError(
                f"checkpoint {shown}: content does not match spec.checkpoint.sha256 "
                f"({checkpoint.sha256}); the file changed, or the sha256 in the spec is wrong"
            )
        return sink.total

    def _copy(
        self,
        checkpoint: Checkpoint,
        sink: Sink,
        cancelled: Callable[[], bool],
        tallied: tuple[Tally, tuple[str, ...]],
    ) -> None:
        uri, shown = checkpoint.uri, sink.shown
        tally, related = tallied
        scheme = urlsplit(uri).scheme
        if scheme == schemes.FILE:
            copy_file(uri, self.file_roots, sink, cancelled)
            tally.add("store", sink.total)
            return
        if scheme not in schemes.REMOTE:  # read on the fetch loop
            raise FetchRefused(f"checkpoint {shown}: only {schemes.LISTED} URIs are read")

        async def from_store() -> None:
            await pump(self._open_remote(checkpoint, scheme), sink, self.net)

        if self.peering is None:
            self._loop.run(from_store, cancelled, shown)
            tally.add("store", sink.total)
            return
        peering = self.peering
        fetched = partial(peering.fetch, checkpoint.sha256, related, sink, from_store, tally)
        self._loop.run(fetched, cancelled, shown)

    def _open_remote(
        self, checkpoint: Checkpoint, scheme: str
    ) -> AbstractAsyncContextManager[Body]:
        ref = checkpoint.secret_ref
        secret = read_secret(self.secrets_dir, ref) if ref else {}
        if scheme == "s3":
            return open_s3(checkpoint.uri, secret, self.net)
        if scheme == "oci":
            return open_oci(checkpoint.uri, checkpoint.sha256, secret, self.net)
        if scheme == "hf":
            return open_hf(checkpoint.uri, secret, self.net)
        if scheme == "gs":
            return open_gcs(checkpoint.uri, secret, self.net)
        if scheme == "az" or (is_blob_url(checkpoint.uri) and secret.keys() & set(AZURE_KEYS)):
            return open_azure(checkpoint.uri, secret, self.net)
        return open_http(checkpoint.uri, secret.get("HTTP_AUTHORIZATION"), self.net)

    def _evict(self, keep: str) -> None:
        with self._lock:
            protected = self._protected | {keep}
            protected |= {s for sha in protected for s in self._shards.get(sha, ())}
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
