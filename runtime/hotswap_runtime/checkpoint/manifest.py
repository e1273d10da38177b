"""Sharded checkpoints: the manifest that names every shard and pins its sha256.

A sharded checkpoint is a JSON manifest whose URI ends in ``.json``; the spec's
``checkpoint.sha256`` pins the manifest, and the manifest pins every shard, so one
sha256 in the spec pins every byte. The format is Hugging Face's
``model.safetensors.index.json`` (``metadata``, ``weight_map``: tensor name -> shard)
with one more key, ``shards``: shard -> ``{"sha256": ..., "size": ...}``::

    {"metadata": {"total_size": 4000},
     "weight_map": {"0.weight": "model-00001-of-00002.safetensors",
                    "1.weight": "model-00002-of-00002.safetensors"},
     "shards": {"model-00001-of-00002.safetensors": {"sha256": "ab12...", "size": 2100},
                "model-00002-of-00002.safetensors": {"sha256": "cd34...", "size": 2100}}}

A stock index (``metadata`` and ``weight_map`` only, as the Hub publishes it) is read
from ``hf://`` at a commit id only (``hf://org/repo@<40 hex>/...``): a commit names one
tree for good, and the Hub's LFS metadata for it gives each shard's sha256 and size
(``fetch/hf.py``, asked through the ``pin`` the store passes), which then pin the shard
as a ``shards`` entry would. Elsewhere, or at a branch or tag, it is refused with the
fix. A ``shards`` table, when present, wins: no lookup is made.

The manifest is hostile like any file it names. Before any shard is fetched: at most
``MAX_MANIFEST_BYTES`` of strict JSON (no duplicate keys, no NaN), exactly these keys,
1 to ``MAX_SHARDS`` shards, each ``.safetensors`` with a lowercase sha256 and a size,
sizes that sum to at most the checkpoint limit, and a weight map whose shards are
exactly the listed ones. A shard reference is a relative path below the manifest's
folder (segments of letters, digits, ``._-``, none starting with a dot: no ``..``, no
percent-encoding, no query) or an absolute URI with the manifest's scheme and host and
such a path; two references to one URI are refused. Each shard is then fetched like a
checkpoint (same fetchers, same address policy and file roots, the checkpoint's
``secretRef``), bounded by its declared size and verified against its sha256.
"""

from __future__ import annotations

import posixpath
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from hotswap_contract.hub import parse_hf
from hotswap_contract.redact import clip, redact_uri
from hotswap_contract.wire import MAX_URI_LENGTH, Checkpoint, is_sha256
from hotswap_runtime.checkpoint.safetensors_file import strict_json_object
from hotswap_runtime.errors import CheckpointTooLarge, ManifestError

MAX_MANIFEST_BYTES = 8 << 20  # a weight map of tens of thousands of tensors
MAX_SHARDS = 1024
MAX_SEGMENTS = 8
SHARD_SUFFIX = ".safetensors"
_SEGMENT = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,199}")
_KEYS = {"metadata", "weight_map", "shards"}
# the shard URIs of a stock index -> the sha256 and size of each, in order
PinShards = Callable[[tuple[str, ...]], Sequence[tuple[str, int]]]


def is_manifest(uri: str) -> bool:
    """Whether ``uri`` names a shard manifest (its path ends in ``.json``)."""
    return PurePosixPath(urlsplit(uri).path).suffix.lower() == ".json"


@dataclass(frozen=True)
class Shard:
    """One shard: its name in the manifest and the checkpoint it is fetched as."""

    name: str
    checkpoint: Checkpoint
    size: int


@dataclass(frozen=True)
class Manifest:
    """A checked manifest: its shards in order, and which shard holds each tensor."""

    shards: tuple[Shard, ...]
    owners: dict[str, int]  # tensor name -> index in ``shards``

    @property
    def nbytes(self) -> int:
        return sum(shard.size for shard in self.shards)


@dataclass(frozen=True)
class LocalCheckpoint:
    """A fetched, verified checkpoint: its cached files with their redacted URIs (one
    file, or a manifest's shards in order) and the manifest, if sharded."""

    files: tuple[tuple[Path, str], ...]
    manifest: Manifest | None = None


def read_manifest(
    path: Path, checkpoint: Checkpoint, limit: int, pin: PinShards | None = None
) -> Manifest:
    """The checked manifest in ``path`` (fetched and verified as ``checkpoint``); its
    shards may sum to at most ``limit`` bytes. ``pin`` gives the shards of a stock
    index at an hf:// commit their sha256 and size (none: such an index is refused)."""
    shown = redact_uri(checkpoint.uri)
    bad = f"shard manifest {shown}"
    with path.open("rb") as f:
        raw = f.read(MAX_MANIFEST_BYTES + 1)
    if len(raw) > MAX_MANIFEST_BYTES:
        raise ManifestError(f"{bad} is over {MAX_MANIFEST_BYTES} bytes")
    doc = strict_json_object(raw, bad, "manifest", ManifestError)
    if "weight_map" in doc and "shards" not in doc and set(doc) <= _KEYS:
        doc["shards"] = _hub_shards(doc["weight_map"], checkpoint, bad, pin)
    if not set(doc) <= _KEYS or not {"weight_map", "shards"} <= set(doc):
        raise ManifestError(
            f"{bad} must hold weight_map and shards (and optionally metadata), nothing else"
        )
    if not isinstance(doc.get("metadata", {}), dict):
        raise ManifestError(f"{bad}: metadata is not an object")
    shards = _shards(doc["shards"], checkpoint, bad)
    total = sum(shard.size for shard in shards)
    if total > limit:
        raise CheckpointTooLarge(
            f"{bad}: its shards take {total} bytes, over the size limit of {limit} bytes; "
            "raise HOTSWAP_MAX_CHECKPOINT_BYTES if it is right"
        )
    return Manifest(shards, _owners(doc["weight_map"], shards, bad))


def _hub_shards(
    weight_map: Any, checkpoint: Checkpoint, bad: str, pin: PinShards | None
) -> dict[str, dict[str, Any]]:
    """The ``shards`` table of a stock index at an hf:// commit: its shards by name,
    each with the sha256 and size ``pin`` gives (checked as a table's entries are)."""
    hub_file = parse_hf(checkpoint.uri)
    if hub_file is None or pin is None:
        raise ManifestError(
            f"{bad} pins no shard (a Hugging Face index.json as published): add "
            '"shards": {FILE: {"sha256": ..., "size": ...}} to the copy the URI names, '
            "or read it from hf:// at a commit id"
        )
    if hub_file.commit is None:
        raise ManifestError(
            f"{bad} pins no shard and its revision is not a commit id: pin it to a commit "
            "(@<40 hex>, as `kubectl hotswap set checkpoint --resolve` does), whose Hub LFS "
            'metadata pins each shard, or add a "shards" table'
        )
    if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
        raise ManifestError(f"{bad}: weight_map must be an object of tensor name -> shard")
    names = sorted(set(weight_map.values()))
    if not 1 <= len(names) <= MAX_SHARDS:
        raise ManifestError(f"{bad}: weight_map must name 1 to {MAX_SHARDS} shards")
    uris = tuple(shard_uri(checkpoint.uri, n, f"{bad}: shard {clip(n, 100)!r}") for n in names)
    pins = pin(uris)
    return {n: {"sha256": sha, "size": size} for n, (sha, size) in zip(names, pins, strict=True)}


def _shards(entries: Any, checkpoint: Checkpoint, bad: str) -> tuple[Shard, ...]:
    if not isinstance(entries, dict) or not 1 <= len(entries) <= MAX_SHARDS:
        raise ManifestError(f"{bad}: shards must be an object of 1 to {MAX_SHARDS} shards")
    shards: list[Shard] = []
    seen: set[str] = set()
    for name, info in entries.items():
        what = f"{bad}: shard {clip(name, 100)!r}"
        if (
            not isinstance(info, dict)
            or set(info) != {"sha256", "size"}
            or not isinstance(info["sha256"], str)
            or not is_sha256(info["sha256"])
            or type(info["size"]) is not int
            or info["size"] < 8
        ):
            raise ManifestError(
                f'{what} must be {{"sha256": <64 lowercase hex>, "size": <bytes, >= 8>}}'
            )
        uri = shard_uri(checkpoint.uri, name, what)
        if uri in seen:
            raise ManifestError(f"{what} names a file another shard names too")
        seen.add(uri)
        ref = Checkpoint(uri=uri, sha256=info["sha256"], secretRef=checkpoint.secret_ref)
        shards.append(Shard(name, ref, info["size"]))
    return tuple(shards)


def shard_uri(manifest_uri: str, ref: str, what: str) -> str:
    """The URI of shard ``ref``: relative to the manifest's folder, or absolute with the
    manifest's scheme and host; either way a path of plain segments."""
    base = urlsplit(manifest_uri)
    target = urlsplit(ref)
    if target.scheme or target.netloc:
        if (target.scheme, target.netloc) != (base.scheme, base.netloc):
            raise ManifestError(f"{what}: an absolute shard URI must have the manifest's host")
        if target.query or target.fragment:
            raise ManifestError(f"{what}: a shard URI may not carry a query or fragment")
        path = target.path
        _check_segments(path.lstrip("/"), what)
    else:
        _check_segments(ref, what)
        path = posixpath.join(posixpath.dirname(base.path), ref)
    uri = urlunsplit((base.scheme, base.netloc, path, "", ""))
    if len(uri) > MAX_URI_LENGTH:
        raise ManifestError(f"{what}: its URI is over {MAX_URI_LENGTH} characters")
    return uri


def _check_segments(path: str, what: str) -> None:
    segments = path.split("/")
    if len(segments) > MAX_SEGMENTS or not all(_SEGMENT.fullmatch(s) for s in segments):
        raise ManifestError(
            f"{what}: a shard must be a path below the manifest's folder of at most "
            f"{MAX_SEGMENTS} plain names (letters, digits, '._-', not starting with a dot)"
        )
    if not segments[-1].lower().endswith(SHARD_SUFFIX):
        raise ManifestError(f"{what}: shards must be {SHARD_SUFFIX} files")


def _owners(weight_map: Any, shards: tuple[Shard, ...], bad: str) -> dict[str, int]:
    if not isinstance(weight_map, dict) or not weight_map:
        raise ManifestError(f"{bad}: weight_map must be an object of tensor name -> shard")
    index = {shard.name: i for i, shard in enumerate(shards)}
    owners: dict[str, int] = {}
    for tensor, shard in weight_map.items():
        if not isinstance(shard, str) or shard not in index:
            raise ManifestError(
                f"{bad}: weight_map puts {clip(tensor, 100)!r} in a shard that shards does not list"
            )
        owners[tensor] = index[shard]
    unused = set(index) - {shards[i].name for i in owners.values()}
    if unused:
        raise ManifestError(
            f"{bad}: shard {clip(sorted(unused)[0], 100)!r} holds no tensor of weight_map"
        )
    return owners
