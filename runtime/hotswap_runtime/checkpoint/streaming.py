"""Parsing safetensors while they download: header checked, data copied into staging.

The store hands every chunk of a download to a tap (``fetch_stream.Sink``) after hashing
and writing it to the cache file. For a ``.safetensors`` file (or each shard of a
manifest, two of which may download at once and finish in any order) the tap here reads
the 8-byte length and the header as they arrive, checks them as ``safetensors_reader``
does (length bounded by the model's tensors and the declared size, strict JSON, offsets
back to back), and, when every tensor has exactly the model's name, dtype and shape,
copies the data section into the one staging buffer as its bytes arrive. Each shard's
data has its own place there, known before any header arrives: after the data of every
shard before it in the manifest, whose sizes the weight map (``owners``) and the model's
layout give; a shard whose header does not cover exactly the bytes the weight map gives
it turns the stream off. So the download, the sha256, the cache file and the parse are
one pass, and the host memory the swap adds is the staging buffer (the model's size,
reused across swaps) plus the fetch window.

Nothing streamed is used before the store has verified the sha256 of every file (the
fetch raises otherwise), and ``result`` hands the buffer over only when every byte of
every file went through the tap. Nor does the tap refuse anything: a header it cannot
accept only turns the stream off, because its bytes are not verified yet, and a reason
about them (a header length, a tensor name) would disclose what an unpinned file holds
(a file that is not a checkpoint at all, read for its sha256 mismatch). The file parse
after the sha256 matched gives the reason. ``result``, called once every sha256 matched,
checks the shards against the manifest's weight map with ``weight_map.check_shards``,
the check the cached files get, so a manifest streamed once is never refused from the
cache later. Anything else (a cached file, a file without a declared size, tensors to
cast or misaligned, a name the model does not have) turns the stream off, and the
swapper parses the cached files as before, with the same checks and the same reasons.
"""

from __future__ import annotations

import struct
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np
import torch

from hotswap_runtime.checkpoint.finite import all_finite
from hotswap_runtime.checkpoint.layouts import Expected, FlatLayout, StateDict
from hotswap_runtime.checkpoint.safetensors_file import (
    concat,
    flat_layout,
    header_limit,
    strict_json_object,
)
from hotswap_runtime.checkpoint.staging import Staging
from hotswap_runtime.checkpoint.weight_map import check_shard, check_shards
from hotswap_runtime.errors import FormatError

Tap = Callable[[memoryview], None]
COPY_OUTSIDE_GIL_BYTES = 1 << 20


@dataclass
class _File:
    """One file's progress through the tap."""

    size: int
    where: str  # its redacted URI
    bad: str
    head: bytearray = field(default_factory=bytearray)
    data_start: int | None = None  # offset of the data section, once the header is read
    layout: FlatLayout | None = None
    base: int = 0  # where its data goes in the staging buffer
    seen: int = 0  # bytes of the file seen
    screened: int = 0  # slots whose values were screened for NaN and infinity
    non_finite: list[str] = field(default_factory=list)  # its tensors holding NaN or inf


class StreamParser:
    """Parses the files of one checkpoint into ``staging`` as they download; the taps
    of two files may run at once, on two threads."""

    def __init__(self, expected: Expected, staging: Staging) -> None:
        self.expected = expected
        self.staging = staging
        self.limit = header_limit(expected)
        self.total = sum(spec.nbytes for spec in expected.layout.values())
        self.on = True
        self.owners: Mapping[str, int] | None = None
        self._spans: dict[int, tuple[int, int]] = {0: (0, self.total)}  # a single file
        self._files: dict[int, _File] = {}
        self._flat: torch.Tensor | None = None
        self._lock = threading.Lock()  # the files, their places and the buffer's allocation

    def off(self) -> None:
        """Parse from the cached files instead (a cache hit, a file it cannot stream)."""
        self.on = False

    def shards(self, owners: Mapping[str, int]) -> None:
        """A manifest's weight map (tensor -> shard index): shard ``i``'s data goes after
        the model's tensors that shards ``0 .. i-1`` own, whatever order they arrive in."""
        sizes: dict[int, int] = {}
        for name, spec in self.expected.layout.items():
            if name in owners:
                sizes[owners[name]] = sizes.get(owners[name], 0) + spec.nbytes
        self.owners = owners
        self._spans = {}
        base = 0
        for index in sorted(sizes):
            self._spans[index] = (base, sizes[index])
            base += sizes[index]

    @property
    def non_finite(self) -> list[str]:
        """The tensors holding NaN or infinity (when streamed), in the files' order."""
        return [name for _, f in sorted(self._files.items()) for name in f.non_finite]

    def tap(self, index: int, where: str) -> Callable[[int | None], Tap | None]:
        """What the sink calls with the declared size of file ``index`` (0, 1, ... in
        any order): its tap, or None when it cannot be streamed."""
        return lambda size: self._tap(index, size, where)

    def _tap(self, index: int, size: int | None, where: str) -> Tap | None:
        with self._lock:
            if not self.on or size is None or index in self._files:
                self.on = False
                return None
            file = _File(size, where, f"checkpoint {where}: not a valid safetensors file")
            self._files[index] = file
        return lambda chunk: self._add(index, file, chunk)

    def result(self, count: int) -> tuple[torch.Tensor, FlatLayout, StateDict] | None:
        """The staging buffer, the checked layout and the views, when all ``count``
        files streamed completely and hold exactly the model's tensors; else None.
        Called once every file's sha256 matched: shards that break the manifest's
        weight map raise the ManifestError that reading them from the cache raises."""
        if not self.on or sorted(self._files) != list(range(count)) or self._flat is None:
            return None
        files = [self._files[index] for index in range(count)]
        if any(f.layout is None or f.seen != f.size for f in files):
            return None
        if any(f.layout is not None and f.screened != len(f.layout.slots) for f in files):
            return None
        layouts = [f.layout for f in files if f.layout is not None]
        if self.owners is not None:  # the check read_flat makes (weight_map.py)
            check_shards(layouts, self.owners, [f.where for f in files])
        layout = concat(layouts, files[0].bad)
        if layout.specs() != dict(self.expected.layout) or layout.nbytes != self.total:
            return None
        return self._flat, layout, self.staging.views(layout)

    def _add(self, index: int, file: _File, chunk: memoryview) -> None:
        if not self.on:
            return
        start = file.seen
        file.seen += len(chunk)
        if file.seen > file.size:  # more than declared: the sha256 check fails it anyway
            self.on = False
            return
        if file.data_start is None:
            file.head += chunk
            try:
                if not self._header(index, file):
                    return
            except FormatError:  # unverified bytes: no reason may quote them (see above)
                self.on = False
                return
            assert file.data_start is not None
            chunk = memoryview(file.head)[file.data_start :]
            start = file.data_start
            file.head = bytearray()
        if self._flat is None or file.layout is None:
            return
        offset = file.base + start - file.data_start
        _copy(self._flat[offset : offset + len(chunk)], chunk)
        self._screen(file)

    def _screen(self, file: _File) -> None:
        """The NaN/infinity screen of the tensors whose bytes have all arrived, so it
        overlaps the download too (``finite``: numpy on this thread, no OpenMP team next
        to the serving threads'); read only after the sha256 matched."""
        layout, flat = file.layout, self._flat
        assert layout is not None and flat is not None and file.data_start is not None
        arrived = file.seen - file.data_start
        while file.screened < len(layout.slots) and layout.slots[file.screened].end <= arrived:
            slot = layout.slots[file.screened]
            file.screened += 1
            values = flat[file.base + slot.begin : file.base + slot.end].view(slot.dtype)
            if not all_finite(values):
                file.non_finite.append(slot.name)

    def _header(self, index: int, file: _File) -> bool:
        """Read the header once it has arrived; whether the data section has begun."""
        if len(file.head) < 8:
            return False
        length = struct.unpack("<Q", file.head[:8])[0]
        if length > file.size - 8:
            raise FormatError(f"{file.bad}: header length {length} is past the end of the file")
        if length > self.limit:
            raise FormatError(
                f"{file.bad}: its header is {length} bytes, more than the {self.limit} bytes "
                "a header for this model's tensors can need"
            )
        if len(file.head) < 8 + length:
            return False
        header = strict_json_object(bytes(file.head[8 : 8 + length]), file.bad)
        file.layout = flat_layout(header, file.size - 8 - length, file.bad)
        file.data_start = 8 + length
        if self.owners is not None:
            check_shard(file.layout, index, self.owners, file.where)
        self._place(index, file)
        return True

    def _place(self, index: int, file: _File) -> None:
        """Give the file's data its place in the staging buffer, or turn the stream off
        (its tensors need a cast, are misaligned, are not the model's, or do not take
        exactly the bytes the weight map gives the file)."""
        layout = file.layout
        assert layout is not None
        model = self.expected.layout
        base, nbytes = self._spans.get(index, (0, -1))
        fits = all(
            slot.name in model
            and model[slot.name] == slot.spec
            and (base + slot.begin) % slot.dtype.itemsize == 0
            for slot in layout.slots
        )
        if not fits or layout.nbytes != nbytes:
            self.on = False
            return
        with self._lock:
            if self._flat is None:
                self._flat = self.staging.flat(self.total)
        file.base = base


def _copy(dst: torch.Tensor, chunk: memoryview) -> None:
    """``chunk`` into ``dst``: large chunks (ranged parts, file reads) through numpy, which
    lets go of the GIL while it copies and, unlike torch, starts no OpenMP team next to
    the serving threads'; small socket chunks directly."""
    if len(chunk) >= COPY_OUTSIDE_GIL_BYTES:
        np.copyto(dst.numpy(), np.frombuffer(chunk, dtype=np.uint8))
        return
    memoryview(dst.numpy()).cast("B")[:] = chunk  # type: ignore[arg-type]
