"""Hostile checkpoint files, written byte by byte, for the runtime's parser tests.

Every writer starts from the tiny model's legitimate weights and adds exactly one
defect, so a test that sees a refusal knows which check refused it. safetensors headers
are written as JSON text by hand (duplicate names need that); ``.pt`` archives are zip
files built with Python's ``zipfile`` around a pickle that names the same globals
``torch.save`` writes, so each defect (compression, a huge declared shape, a stride-0
view, a bytearray bomb) is present and nothing else differs.

Also here: the factories of hostile architectures (one exits the process from its
constructor, one from its forward) for ``python/tests.fixtures_runtime.hostile:...``.
"""

from __future__ import annotations

import collections
import io
import json
import pickle
import struct
import sys
import warnings
import zipfile
import zlib
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from devcluster import tiny

HOSTILE = "python/tests.fixtures_runtime.hostile"
# The allowlist of test runtimes: the tiny model and the fixtures' own architectures
# (these hostile ones, and modules that are allowed but not there).
ALLOWED = (*tiny.ALLOWED, "python/tests.fixtures_runtime")
GIB = 1 << 30

# safetensors dtype names, as the reference writer spells them
ST_DTYPES = {
    torch.float64: "F64",
    torch.float32: "F32",
    torch.float16: "F16",
    torch.bfloat16: "BF16",
    torch.int64: "I64",
    torch.int32: "I32",
    torch.int16: "I16",
    torch.int8: "I8",
    torch.uint8: "U8",
    torch.bool: "BOOL",
}
Entry = tuple[str, dict[str, Any]]


# ---- safetensors ------------------------------------------------------------------


def raw_bytes(tensor: torch.Tensor) -> bytes:
    return tensor.contiguous().view(torch.uint8).numpy().tobytes()


def contiguous_entries(
    state: dict[str, torch.Tensor], order: Iterable[str] | None = None
) -> tuple[list[Entry], bytes]:
    """Entries laid out back to back in ``order`` (default: the dict's), and the data."""
    entries: list[Entry] = []
    data = b""
    for name in order or state:
        tensor = state[name]
        blob = raw_bytes(tensor)
        info = {
            "dtype": ST_DTYPES[tensor.dtype],
            "shape": list(tensor.shape),
            "data_offsets": [len(data), len(data) + len(blob)],
        }
        entries.append((name, info))
        data += blob
    return entries, data


def header_text(entries: list[Entry], metadata: dict[str, str] | None = None) -> str:
    """A JSON object written member by member, so a name may appear twice."""
    members = [f"{json.dumps(name)}:{json.dumps(info)}" for name, info in entries]
    if metadata is not None:
        members.insert(0, f'"__metadata__":{json.dumps(metadata)}')
    return "{" + ",".join(members) + "}"


def write_safetensors(
    path: Path, header: str | bytes, data: bytes, declared_length: int | None = None
) -> Path:
    """A safetensors file: 8-byte little-endian header length, header, data."""
    head = header.encode() if isinstance(header, str) else header
    head += b" " * (-len(head) % 8)
    length = len(head) if declared_length is None else declared_length
    path.write_bytes(struct.pack("<Q", length) + head + data)
    return path


def safetensors_like(
    path: Path,
    state: dict[str, torch.Tensor] | None = None,
    order: Iterable[str] | None = None,
    edit: Callable[[list[Entry]], list[Entry]] | None = None,
    data_edit: Callable[[bytes], bytes] | None = None,
) -> Path:
    """The tiny weights as safetensors, after ``edit`` changed the header entries."""
    entries, data = contiguous_entries(state or tiny.weights(7), order)
    if edit is not None:
        entries = edit(entries)
    if data_edit is not None:
        data = data_edit(data)
    return write_safetensors(path, header_text(entries), data)


def _set(entries: list[Entry], name: str, **changes: Any) -> list[Entry]:
    return [(n, {**info, **changes} if n == name else info) for n, info in entries]


def overlapping_offsets(path: Path) -> Path:
    """fc.bias points into fc.weight's bytes; data ends after scale (the reference
    loader refuses this; today's reader accepted it and aliased the standby)."""

    def edit(entries: list[Entry]) -> list[Entry]:
        info = dict(entries)
        w_end = info["fc.weight"]["data_offsets"][1]
        bias = info["fc.bias"]["data_offsets"]
        moved = [w_end - (bias[1] - bias[0]), w_end]
        scale = info["scale"]["data_offsets"]
        scale_at = [w_end, w_end + scale[1] - scale[0]]
        return _set(_set(entries, "fc.bias", data_offsets=moved), "scale", data_offsets=scale_at)

    def cut(data: bytes) -> bytes:  # drop the bias's own bytes: weight then scale
        w = tiny.weights(7)
        return raw_bytes(w["fc.weight"]) + raw_bytes(w["scale"])

    return safetensors_like(path, order=["fc.weight", "fc.bias", "scale"], edit=edit, data_edit=cut)


def duplicate_names(path: Path) -> Path:
    """fc.weight appears twice (a JSON object with a repeated key)."""

    def edit(entries: list[Entry]) -> list[Entry]:
        first = dict(entries)["fc.weight"]
        end = max(info["data_offsets"][1] for _, info in entries)
        extra = {**first, "data_offsets": [end, end + 48]}
        return [*entries, ("fc.weight", extra)]

    return safetensors_like(path, edit=edit, data_edit=lambda d: d + bytes(48))


def hole(path: Path) -> Path:
    """Eight unused bytes between fc.weight and fc.bias."""

    def edit(entries: list[Entry]) -> list[Entry]:
        out = []
        shift = 0
        for name, info in entries:
            begin, end = info["data_offsets"]
            if name == "fc.bias":
                shift = 8
            out.append((name, {**info, "data_offsets": [begin + shift, end + shift]}))
        return out

    def pad(data: bytes) -> bytes:
        cut = raw_bytes(tiny.weights(7)["fc.weight"])
        return data[: len(cut)] + bytes(8) + data[len(cut) :]

    return safetensors_like(path, order=["fc.weight", "fc.bias", "scale"], edit=edit, data_edit=pad)


def reversed_offsets(path: Path) -> Path:
    """fc.bias's offsets are [end, begin]."""

    def edit(entries: list[Entry]) -> list[Entry]:
        begin, end = dict(entries)["fc.bias"]["data_offsets"]
        return _set(entries, "fc.bias", data_offsets=[end, begin])

    return safetensors_like(path, edit=edit)


def wrong_nbytes(path: Path) -> Path:
    """fc.bias claims shape [4] (16 bytes) over 12 bytes of data."""
    return safetensors_like(path, edit=lambda e: _set(e, "fc.bias", shape=[4]))


def unknown_dtype(path: Path) -> Path:
    return safetensors_like(path, edit=lambda e: _set(e, "scale", dtype="F24"))


def trailing_bytes(path: Path) -> Path:
    """Data continues past the last tensor's end."""
    return safetensors_like(path, data_edit=lambda d: d + bytes(64))


def bad_shape(path: Path, shape: Any) -> Path:
    return safetensors_like(path, edit=lambda e: _set(e, "scale", shape=shape))


def huge_declared_header(path: Path, declared: int = 100 << 20) -> Path:
    """The length field claims a 100 MiB header in a file of a few hundred bytes."""
    entries, data = contiguous_entries(tiny.weights(7))
    return write_safetensors(path, header_text(entries), data, declared_length=declared)


def huge_header(path: Path, nbytes: int) -> Path:
    """A real header of about ``nbytes``: legitimate entries plus a padded __metadata__."""
    entries, data = contiguous_entries(tiny.weights(7))
    return write_safetensors(path, header_text(entries, {"pad": "x" * nbytes}), data)


def deep_json(path: Path, depth: int = 100_000) -> Path:
    return write_safetensors(path, "[" * depth + "]" * depth, b"")


def as_dtype(path: Path, dtype: torch.dtype, names: Iterable[str] = ("fc.weight",)) -> Path:
    """The tiny weights with ``names`` stored in ``dtype`` (values stay exact)."""
    state = dict(tiny.weights(7))
    for name in names:
        state[name] = state[name].to(dtype)
    entries, data = contiguous_entries(state)
    return write_safetensors(path, header_text(entries), data)


# ---- .pt archives -----------------------------------------------------------------

_STORAGES = {
    torch.float32: "FloatStorage",
    torch.float64: "DoubleStorage",
    torch.float16: "HalfStorage",
    torch.int64: "LongStorage",
    torch.uint8: "ByteStorage",
}


class _Storage:
    """Pickles as torch.save's persistent id of storage ``key``."""

    def __init__(self, key: str, dtype: torch.dtype, numel: int) -> None:
        self.key, self.dtype, self.numel = key, dtype, numel


class _Rebuild:
    """Pickles as ``torch._utils._rebuild_tensor_v2(storage, offset, size, stride, ...)``."""

    def __init__(
        self, storage: _Storage, size: tuple[int, ...], stride: tuple[int, ...], offset: int = 0
    ) -> None:
        self.args = (storage, offset, size, stride, False, collections.OrderedDict())

    def __reduce__(self) -> tuple[Any, ...]:
        return (torch._utils._rebuild_tensor_v2, self.args)


class _Call:
    """Pickles as ``func(*args)`` for any importable ``func`` (bytearray, ...)."""

    def __init__(self, func: Any, *args: Any) -> None:
        self.func, self.args = func, args

    def __reduce__(self) -> tuple[Any, ...]:
        return (self.func, self.args)


class _Pickler(pickle.Pickler):
    def persistent_id(self, obj: Any) -> Any:
        if isinstance(obj, _Storage):
            storage_type = getattr(torch, _STORAGES[obj.dtype])
            return ("storage", storage_type, obj.key, "cpu", obj.numel)
        return None


def pickle_state(obj: Any) -> bytes:
    buffer = io.BytesIO()
    _Pickler(buffer, protocol=2).dump(obj)
    return buffer.getvalue()


def pt_archive(
    path: Path,
    pickled: bytes,
    records: dict[str, bytes],
    compress: Iterable[str] = (),
    extra: Iterable[tuple[str, bytes]] = (),
    name: str = "archive",
    comment: bytes = b"",
) -> Path:
    """A zip laid out like torch.save's: data.pkl, byteorder, data/<key>, version."""
    squeeze = set(compress)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as z:
        members = [
            ("data.pkl", pickled),
            ("byteorder", b"little"),
            *((f"data/{key}", blob) for key, blob in records.items()),
            ("version", b"3\n"),
            *extra,
        ]
        for member, blob in members:
            method = zipfile.ZIP_DEFLATED if member in squeeze else zipfile.ZIP_STORED
            z.writestr(f"{name}/{member}", blob, compress_type=method)
        z.comment = comment
    return path


def pt_from_views(
    path: Path, views: dict[str, tuple[torch.Tensor, tuple[int, ...], tuple[int, ...]]]
) -> Path:
    """A .pt whose entries are ``(storage tensor, size, stride)`` views of their own storage."""
    records: dict[str, bytes] = {}
    state = collections.OrderedDict()
    for key, (name, (storage, size, stride)) in enumerate(views.items()):
        records[str(key)] = raw_bytes(storage)
        ref = _Storage(str(key), storage.dtype, storage.numel())
        state[name] = _Rebuild(ref, size, stride)
    return pt_archive(path, pickle_state(state), records)


def stride0_pt(path: Path, shape: tuple[int, ...] = (1 << 16, 1 << 13)) -> Path:
    """fc.weight is a stride-0 view of one float: 2 GiB declared in a few hundred bytes."""
    w = tiny.weights(7)
    return pt_from_views(
        path,
        {
            "fc.weight": (torch.ones(1), shape, (0,) * len(shape)),
            "fc.bias": (w["fc.bias"], tuple(w["fc.bias"].shape), (1,)),
            "scale": (w["scale"], (1,), (1,)),
        },
    )


def stride0_right_shape_pt(path: Path) -> Path:
    """fc.weight is a stride-0 view with the model's own shape: legal, costs 48 bytes."""
    w = tiny.weights(7)
    return pt_from_views(
        path,
        {
            "fc.weight": (torch.full((1,), 2.0), (tiny.CLASSES, tiny.FEATURES), (0, 0)),
            "fc.bias": (w["fc.bias"], tuple(w["fc.bias"].shape), (1,)),
            "scale": (w["scale"], (1,), (1,)),
        },
    )


def storage_size_pt(path: Path, stored: int, declared: int) -> Path:
    """fc.weight's storage holds ``stored`` floats, and data.pkl declares ``declared``:
    torch.load refuses it; with ``mmap=True`` it maps ``declared`` floats from the
    record's start (past its end into the next records' headers, or short of it)."""
    w = tiny.weights(7)
    records = {"0": raw_bytes(torch.arange(stored, dtype=torch.float32))}
    records |= {"1": raw_bytes(w["fc.bias"]), "2": raw_bytes(w["scale"])}
    state = collections.OrderedDict()
    state["fc.weight"] = _Rebuild(_Storage("0", torch.float32, declared), (3, 4), (4, 1))
    state["fc.bias"] = _Rebuild(_Storage("1", torch.float32, 3), (3,), (1,))
    state["scale"] = _Rebuild(_Storage("2", torch.float32, 1), (1,), (1,))
    return pt_archive(path, pickle_state(state), records)


def deflate_bomb_pt(path: Path, inflated: int = 256 << 20) -> Path:
    """data/0 is ``inflated`` zero bytes, deflated to a fraction of a MiB; the pickle
    declares a storage of that many floats behind fc.weight."""
    numel = inflated // 4
    w = tiny.weights(7)
    state = collections.OrderedDict(
        [
            ("fc.weight", _Rebuild(_Storage("0", torch.float32, numel), (numel,), (1,))),
            ("fc.bias", _Rebuild(_Storage("1", torch.float32, 3), (3,), (1,))),
            ("scale", _Rebuild(_Storage("2", torch.float32, 1), (1,), (1,))),
        ]
    )
    squeezer = zlib.compressobj(9, zlib.DEFLATED, -15)
    chunk = bytes(1 << 20)
    deflated = b"".join(squeezer.compress(chunk) for _ in range(inflated >> 20))
    deflated += squeezer.flush()
    records = {"1": raw_bytes(w["fc.bias"]), "2": raw_bytes(w["scale"])}
    pt_archive(path, pickle_state(state), {"0": b"", **records})
    _replace_with_deflated(path, "archive/data/0", deflated, inflated)
    return path


def _replace_with_deflated(path: Path, member: str, deflated: bytes, size: int) -> None:
    """Rewrite the archive with ``member`` as a raw deflate stream of ``size`` bytes."""
    source = zipfile.ZipFile(path)
    items = [(info, source.read(info)) for info in source.infolist()]
    source.close()
    out = io.BytesIO()
    central = []
    for info, blob in items:
        offset = out.tell()
        method, crc = 0, zlib.crc32(blob)
        usize = len(blob)
        if info.filename == member:
            blob, method, usize, crc = deflated, 8, size, _zero_crc(size)
        name = info.filename.encode()
        # flags, method, time, date, crc-32, sizes, name and extra lengths: the fields
        # the local header and the central directory entry share (APPNOTE 4.3.7, 4.3.12)
        fields = struct.pack("<HHHHIIIHH", 0, method, 0, 0, crc, len(blob), usize, len(name), 0)
        out.write(b"PK\x03\x04" + struct.pack("<H", 20) + fields + name + blob)
        central.append(
            b"PK\x01\x02"
            + struct.pack("<HH", 20, 20)
            + fields
            + struct.pack("<HHHII", 0, 0, 0, 0, offset)
            + name
        )
    start = out.tell()
    directory = b"".join(central)
    out.write(directory)
    out.write(
        struct.pack(
            "<4sHHHHIIH", b"PK\x05\x06", 0, 0, len(central), len(central), len(directory), start, 0
        )
    )
    path.write_bytes(out.getvalue())


def _zero_crc(size: int) -> int:
    crc = 0
    chunk = bytes(1 << 20)
    for _ in range(size >> 20):
        crc = zlib.crc32(chunk, crc)
    return crc


def bytearray_bomb_pt(path: Path, nbytes: int = 2 * GIB) -> Path:
    """data.pkl calls ``bytearray(nbytes)``, a global torch.load(weights_only=True) allows."""
    _, records = _tiny_pt_parts(path)
    w = tiny.weights(7)
    state = collections.OrderedDict()
    for key, name in enumerate(w):
        t = w[name]
        state[name] = _Rebuild(_Storage(str(key), t.dtype, t.numel()), tuple(t.shape), t.stride())
    state["pad"] = _Call(bytearray, nbytes)
    return pt_archive(path, pickle_state(state), records)


def legacy_pt(path: Path) -> Path:
    """The pre-1.6 format (a raw pickle stream), which mmap cannot read."""
    torch.save(tiny.weights(7), path, _use_new_zipfile_serialization=False)
    return path


def raw_pickle_pt(path: Path) -> Path:
    path.write_bytes(pickle.dumps({"fc.weight": [1.0, 2.0]}, protocol=2))
    return path


def _tiny_pt_parts(path: Path) -> tuple[bytes, dict[str, bytes]]:
    """Write ``tiny.weights(7)`` to ``path`` as torch.save lays it out; its data.pkl and
    its data records by key, for a variant of that archive."""
    w = tiny.weights(7)
    views = {name: (t, tuple(t.shape), tuple(t.stride())) for name, t in w.items()}
    pt_from_views(path, views)
    with zipfile.ZipFile(path) as source:
        blobs = {i.filename.split("/", 1)[1]: source.read(i) for i in source.infolist()}
    records = {k.split("/", 1)[1]: v for k, v in blobs.items() if k.startswith("data/")}
    return blobs["data.pkl"], records


def many_records_pt(path: Path, count: int = 5000) -> Path:
    junk = [(f"data/junk{i}", b"") for i in range(count)]
    return pt_archive(path, *_tiny_pt_parts(path), extra=junk)


def compressed_pickle_pt(path: Path) -> Path:
    return pt_archive(path, *_tiny_pt_parts(path), compress=["data.pkl"])


def duplicate_records_pt(path: Path) -> Path:
    """Two zip entries named archive/data/0: readers disagree on which one counts."""
    pickled, records = _tiny_pt_parts(path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zipfile warns about the duplicate it writes
        return pt_archive(path, pickled, records, extra=[("data/0", bytes(48))])


def torch_saved(path: Path, state: dict[str, torch.Tensor]) -> Path:
    torch.save(state, path)
    return path


# ---- hostile architectures ---------------------------------------------------------


class ExitingForward(nn.Module):
    """The tiny model, except that its forward raises SystemExit."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(tiny.FEATURES, tiny.CLASSES)
        self.scale = nn.Parameter(torch.ones(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise SystemExit(3)


def make_exiting_forward() -> nn.Module:
    return ExitingForward()


def make_exiting() -> nn.Module:
    sys.exit(4)


def make_tied(features: int = tiny.FEATURES) -> nn.Module:
    """Two Linear layers sharing one weight (architecture-tied parameters)."""
    model = nn.Sequential(nn.Linear(features, features), nn.Linear(features, features))
    model[1].weight = model[0].weight
    return model


def make_swallowing() -> nn.Module:
    """A constructor that catches the allocation budget's refusal and goes on."""
    model = nn.Module()
    for _ in range(3):
        try:
            model.big = nn.Parameter(torch.ones(1 << 28))
        except Exception:  # the point: a factory swallowing the refusal
            continue
    return model
