"""PyTorch ``.pt``/``.pth`` files: only the zip archive ``torch.save`` writes, inspected
before ``torch.load`` sees it.

``torch.load`` would inflate a deflated record to whatever size its zip entry claims,
and its weights-only unpickler still allows calls such as ``bytearray(n)``; a legacy
(tar or raw pickle) file cannot be memory-mapped. So, before it runs:

* the zip's end records must sit exactly at the end of the file (no comment), and the
  central directory is read only after its entry count and size are bounded;
* every record is stored uncompressed, has a unique name under one top folder, is one
  of the records torch.save writes, agrees with its local header, and lies inside the
  file without overlapping another record (so their sizes sum to at most the file's);
* ``data.pkl`` is bounded by what a pickle for the expected tensors can need, and the
  only globals it may name are the few a state dict of plain tensors uses;
* every storage it names has a record of exactly the bytes it declares (``numel``
  elements of its type), as ``torch.load`` without ``mmap`` requires: with ``mmap`` it
  would map the declared length from the record's start, into the records after it.

Then ``torch.load(weights_only=True, mmap=True)`` maps the file: storages are views of
the mapping, so a stride-0 or oversized view costs nothing until it is copied, and it
is only copied after its name, shape and dtype were checked against the model's layout.
"""

from __future__ import annotations

import collections
import io
import os
import pickle
import pickletools
import struct
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import torch
from torch import nn

from hotswap_contract.redact import clip
from hotswap_runtime.checkpoint.layouts import Expected, TensorSpec, named
from hotswap_runtime.errors import FormatError

MAX_PICKLE_BYTES = 8 << 20
PICKLE_BASE_BYTES = 64 << 10  # room for the state dict's _metadata and framing
PICKLE_TENSOR_BYTES = 512  # one tensor's rebuild call in data.pkl, besides its name
EXTRA_RECORDS = 16  # data.pkl, version, byteorder, .format_version, .data/..., spare
MAX_NAME_BYTES = 1024

_EOCD = struct.Struct("<4sHHHHIIH")
_LOCATOR = struct.Struct("<4sIQI")
_EOCD64 = struct.Struct("<4sQHHIIQQQQ")
_CENTRAL = struct.Struct("<4sHHHHHHIIIHHHHHII")
_LOCAL = struct.Struct("<4sHHHHHIIIHH")
_TOP_RECORDS = {"data.pkl", "byteorder", "version", ".format_version", ".storage_alignment"}

_STORAGES = {  # the typed storage classes torch.save names, and their element types
    "FloatStorage": torch.float32,
    "DoubleStorage": torch.float64,
    "HalfStorage": torch.float16,
    "BFloat16Storage": torch.bfloat16,
    "LongStorage": torch.int64,
    "IntStorage": torch.int32,
    "ShortStorage": torch.int16,
    "CharStorage": torch.int8,
    "ByteStorage": torch.uint8,
    "BoolStorage": torch.bool,
    "ComplexFloatStorage": torch.complex64,
    "ComplexDoubleStorage": torch.complex128,
}
_DTYPE_GLOBALS = (
    "float32",
    "float64",
    "float16",
    "bfloat16",
    "int64",
    "int32",
    "int16",
    "int8",
    "uint8",
    "bool",
    "complex64",
    "complex128",
    "float8_e4m3fn",
    "float8_e5m2",
    "uint16",
    "uint32",
    "uint64",
)
ALLOWED_GLOBALS = frozenset(
    {
        "collections OrderedDict",
        "torch._utils _rebuild_tensor_v2",
        "torch._utils _rebuild_tensor_v3",
        "torch._utils _rebuild_parameter",
        "torch.storage UntypedStorage",
        *(f"torch {name}" for name in _STORAGES),
        *(f"torch {name}" for name in _DTYPE_GLOBALS),
    }
)


@dataclass(frozen=True)
class Record:
    name: str  # below the archive's top folder
    start: int  # first data byte in the file
    size: int


def limits(expected: Expected | None) -> tuple[int, int]:
    """(most records, largest data.pkl) a file for ``expected`` can legitimately have."""
    if expected is None:
        return 1 + EXTRA_RECORDS, PICKLE_BASE_BYTES
    need = sum(len(name.encode()) + PICKLE_TENSOR_BYTES for name in expected.layout)
    return len(expected.layout) + EXTRA_RECORDS, min(MAX_PICKLE_BYTES, PICKLE_BASE_BYTES + need)


def load_checked(path: Path, where: str, expected: Expected | None) -> dict[str, torch.Tensor]:
    """The file's tensors as views of a private mapping of the file, checked against
    ``expected`` (or, for a single validation tensor, against the file's size)."""
    most, pickle_limit = limits(expected)
    with path.open("rb") as f:
        size = os.fstat(f.fileno()).st_size
        records = inspect_archive(f, size, most, pickle_limit, where)
        pickled = _read(f, records["data.pkl"])
    scan_pickle(pickled, where)
    check_storages(pickled, records, where)
    tensors = _tensors(_torch_load(path, where), where)
    if expected is not None:
        expected.check({n: TensorSpec(t.dtype, tuple(t.shape)) for n, t in tensors.items()}, where)
    else:
        _within(tensors, size, where)
    return tensors


# ---- the zip archive ------------------------------------------------------------------


def inspect_archive(
    f: IO[bytes], size: int, most: int, pickle_limit: int, where: str
) -> dict[str, Record]:
    """The records of a torch.save zip, checked; FormatError for anything else."""
    bad = f"checkpoint {where}: not an archive written by torch.save"
    magic = _pread(f, 0, 4)
    if magic != b"PK\x03\x04":
        raise FormatError(
            f"checkpoint {where}: not a zip archive; the legacy (pre-1.6) torch.save format "
            "and raw pickles are refused: re-save with torch.save, or use safetensors"
        )
    count, cd_start, cd_size = _end_records(f, size, bad)
    if count > most:
        raise FormatError(f"{bad}: it holds {count} records, more than the {most} it can need")
    if cd_size > count * (_CENTRAL.size + MAX_NAME_BYTES + 64):
        raise FormatError(f"{bad}: its central directory is larger than {count} records need")
    records = _central_directory(_pread(f, cd_start, cd_size), count, bad)
    placed = [_placed(f, name, *entry, bad) for name, entry in records.items()]
    _disjoint(placed, cd_start, bad)
    return _top_folder(placed, pickle_limit, bad)


def _end_records(f: IO[bytes], size: int, bad: str) -> tuple[int, int, int]:
    """(record count, central directory start, its size), from the end records that must
    close the file: a zip64 end record and locator (what torch.save writes) or not."""
    if size < _EOCD.size:
        raise FormatError(f"{bad}: too short")
    sig, disk, cd_disk, on_disk, count, cd_size, cd_start, comment = _EOCD.unpack(
        _pread(f, size - _EOCD.size, _EOCD.size)
    )
    if sig != b"PK\x05\x06" or comment:
        raise FormatError(f"{bad}: its end record is missing or followed by a comment")
    end = size - _EOCD.size
    at = end - _LOCATOR.size
    locator = _pread(f, at, _LOCATOR.size) if at >= 0 else b""
    if locator[:4] == b"PK\x06\x07":
        _, z_disk, z_offset, disks = _LOCATOR.unpack(locator)
        end = at - _EOCD64.size
        if z_disk != 0 or disks != 1 or z_offset != end or end < 0:
            raise FormatError(f"{bad}: its zip64 end record is not where it must be")
        z = _EOCD64.unpack(_pread(f, end, _EOCD64.size))
        if z[0] != b"PK\x06\x06" or z[1] != _EOCD64.size - 12 or z[4] or z[5]:
            raise FormatError(f"{bad}: its zip64 end record is malformed")
        small = (on_disk, count, cd_size, cd_start)
        big = (z[6], z[7], z[8], z[9])
        if any(s != b and s not in (0xFFFF, 0xFFFFFFFF) for s, b in zip(small, big, strict=True)):
            raise FormatError(f"{bad}: its two end records disagree")
        on_disk, count, cd_size, cd_start = big
    elif disk or cd_disk:
        raise FormatError(f"{bad}: it spans several disks")
    if on_disk != count or cd_start + cd_size != end:
        raise FormatError(f"{bad}: its central directory is not right before its end record")
    return count, cd_start, cd_size


def _central_directory(raw: bytes, count: int, bad: str) -> dict[str, tuple[int, int, int]]:
    """name -> (local header offset, size, flags) for each stored, unencrypted record."""
    records: dict[str, tuple[int, int, int]] = {}
    at = 0
    for _ in range(count):
        if at + _CENTRAL.size > len(raw):
            raise FormatError(f"{bad}: its central directory is cut short")
        fields = _CENTRAL.unpack_from(raw, at)
        sig, flags, method = fields[0], fields[3], fields[4]
        csize, usize, nlen, xlen, clen, offset = (*fields[8:13], fields[16])
        name_raw = raw[at + _CENTRAL.size : at + _CENTRAL.size + nlen]
        extra = raw[at + _CENTRAL.size + nlen : at + _CENTRAL.size + nlen + xlen]
        at += _CENTRAL.size + nlen + xlen + clen
        if sig != b"PK\x01\x02" or at > len(raw) or nlen > MAX_NAME_BYTES:
            raise FormatError(f"{bad}: its central directory is malformed")
        name = _name(name_raw, bad)
        usize, csize, offset = _zip64_sizes(usize, csize, offset, extra, bad)
        if method != 0 or csize != usize:
            raise FormatError(
                f"{bad}: record {clip(name, 100)!r} is compressed; torch.save stores "
                "every record uncompressed"
            )
        if flags & 0x41:
            raise FormatError(f"{bad}: record {clip(name, 100)!r} is encrypted")
        if name in records:
            raise FormatError(f"{bad}: record {clip(name, 100)!r} appears twice")
        records[name] = (offset, usize, flags)
    if at != len(raw):
        raise FormatError(f"{bad}: its central directory has trailing bytes")
    return records


def _name(raw: bytes, bad: str) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise FormatError(f"{bad}: a record name is not UTF-8") from None


def _zip64_sizes(
    usize: int, csize: int, offset: int, extra: bytes, bad: str
) -> tuple[int, int, int]:
    """Sizes and offset, taking the zip64 extra field's values where the 32-bit ones
    are saturated (in the order the format defines: size, compressed size, offset)."""
    wanted = [v == 0xFFFFFFFF for v in (usize, csize, offset)]
    if not any(wanted):
        return usize, csize, offset
    at = 0
    while at + 4 <= len(extra):
        tag, length = struct.unpack_from("<HH", extra, at)
        body = extra[at + 4 : at + 4 + length]
        at += 4 + length
        if tag != 1:
            continue
        values = [usize, csize, offset]
        pos = 0
        for i, want in enumerate(wanted):
            if want:
                if pos + 8 > len(body):
                    break
                values[i] = struct.unpack_from("<Q", body, pos)[0]
                pos += 8
        else:
            return values[0], values[1], values[2]
    raise FormatError(f"{bad}: a record's zip64 sizes are missing")


def _placed(
    f: IO[bytes], name: str, offset: int, size: int, flags: int, bad: str
) -> tuple[int, int, int, str]:
    """(header start, data start, data end, name): the local header must agree."""
    head = _pread(f, offset, _LOCAL.size)
    if len(head) != _LOCAL.size:
        raise FormatError(f"{bad}: record {clip(name, 100)!r} lies past the end of the file")
    sig, _, local_flags, method, _, _, _, csize, usize, nlen, xlen = _LOCAL.unpack(head)
    local_name = _pread(f, offset + _LOCAL.size, nlen)
    sizes_here = not local_flags & 0x08  # else a data descriptor follows the data
    known = (csize, usize) == (size, size) or (0xFFFFFFFF in (csize, usize))
    if (
        sig != b"PK\x03\x04"
        or method != 0
        or local_name != name.encode()
        or (sizes_here and not known)
    ):
        raise FormatError(f"{bad}: record {clip(name, 100)!r} disagrees with its local header")
    start = offset + _LOCAL.size + nlen + xlen
    return offset, start, start + size, name


def _disjoint(placed: list[tuple[int, int, int, str]], cd_start: int, bad: str) -> None:
    end = 0
    for header, _, data_end, name in sorted(placed):
        if header < end or data_end > cd_start:
            raise FormatError(
                f"{bad}: record {clip(name, 100)!r} overlaps another or the directory"
            )
        end = data_end


def _top_folder(
    placed: list[tuple[int, int, int, str]], pickle_limit: int, bad: str
) -> dict[str, Record]:
    tops = {name.partition("/")[0] for *_, name in placed}
    if len(tops) != 1:
        raise FormatError(f"{bad}: its records are not all under one folder")
    records = {}
    for _, start, end, name in placed:
        rel = name.partition("/")[2]
        if not _known_record(rel):
            raise FormatError(f"{bad}: record {clip(rel, 100)!r} is not one torch.save writes")
        records[rel] = Record(rel, start, end - start)
    pickle = records.get("data.pkl")
    if pickle is None:
        raise FormatError(f"{bad}: it has no data.pkl")
    if pickle.size > pickle_limit:
        raise FormatError(
            f"{bad}: its data.pkl is {pickle.size} bytes, more than the {pickle_limit} "
            "a state dict of this model's tensors can need"
        )
    return records


def _known_record(rel: str) -> bool:
    folder, _, leaf = rel.partition("/")
    if not leaf:
        return rel in _TOP_RECORDS
    return folder in ("data", ".data") and "/" not in leaf and bool(leaf)


def _pread(f: IO[bytes], offset: int, size: int) -> bytes:
    f.seek(offset)
    return f.read(size)


def _read(f: IO[bytes], record: Record) -> bytes:
    return _pread(f, record.start, record.size)


# ---- the pickle -------------------------------------------------------------------------


def scan_pickle(data: bytes, where: str) -> None:
    """Refuse a data.pkl that names any global a state dict of tensors does not need."""
    bad = f"checkpoint {where}: data.pkl"
    try:
        for opcode, arg, _ in pickletools.genops(data):
            if opcode.name in ("GLOBAL", "INST") and str(arg) not in ALLOWED_GLOBALS:
                shown = clip(str(arg).replace(" ", "."), 80)
                raise FormatError(
                    f"{bad} calls {shown}, which a state dict of tensors never needs; "
                    "save a plain state_dict (torch.save(model.state_dict(), path))"
                )
            if opcode.name in ("STACK_GLOBAL", "OBJ", "EXT1", "EXT2", "EXT4"):
                raise FormatError(
                    f"{bad} uses pickle opcode {opcode.name}, which torch.save never writes"
                )
    except FormatError:
        raise
    except Exception as exc:
        raise FormatError(f"{bad} is not a valid pickle ({type(exc).__name__})") from None


def check_storages(data: bytes, records: Mapping[str, Record], where: str) -> None:
    """Every storage data.pkl names has a record of exactly the bytes it declares
    (``numel`` elements of its type), as ``torch.load`` without ``mmap`` requires: with
    ``mmap`` it would map the declared length from the record's start, past its end into
    the records after it, or serve a record cut short. Run after ``scan_pickle``."""
    bad = f"checkpoint {where}: data.pkl"
    for key, numel, itemsize in _storage_refs(data, bad):
        name = f"data/{key}"
        record = records.get(name)
        if record is None:
            raise FormatError(
                f"{bad} names storage {clip(name, 100)!r}, which the archive does not hold; "
                "re-save it with torch.save"
            )
        if numel * itemsize != record.size:
            raise FormatError(
                f"{bad} declares storage {clip(name, 100)!r} as {numel * itemsize} bytes "
                f"({numel} elements of {itemsize} bytes), but its record holds {record.size}; "
                "torch.load refuses such a file: re-save it with torch.save"
            )


def _storage_refs(data: bytes, bad: str) -> list[tuple[str, int, int]]:
    """(key, numel, element size) of each storage data.pkl names, as torch.load's
    unpickler reads them; every global replaced by an inert stand-in, so nothing of
    torch is built (the pickle is bounded by ``limits``, and torch.load reads it next)."""
    reader = _StorageRefs(io.BytesIO(data), bad)
    try:
        reader.load()
    except FormatError:
        raise
    except Exception as exc:
        raise FormatError(f"{bad} is not a valid pickle ({type(exc).__name__})") from None
    return reader.refs


@dataclass(frozen=True)
class _StorageType:
    itemsize: int


class _Inert:
    """What a rebuild call or a storage stands for while the storages are collected."""


def _inert(*args: object, **kwargs: object) -> _Inert:
    return _Inert()


class _StorageRefs(pickle.Unpickler):
    """An unpickler that collects the storages a torch.save pickle names."""

    def __init__(self, file: IO[bytes], bad: str) -> None:
        super().__init__(file)
        self.bad = bad
        self.refs: list[tuple[str, int, int]] = []

    def find_class(self, module: str, name: str) -> object:
        if f"{module} {name}" not in ALLOWED_GLOBALS:
            raise FormatError(f"{self.bad} calls {clip(f'{module}.{name}', 80)}")
        if module == "collections":
            return collections.OrderedDict
        if (module, name) == ("torch.storage", "UntypedStorage"):
            return _StorageType(1)
        if name in _STORAGES:
            return _StorageType(_STORAGES[name].itemsize)
        return _inert

    def persistent_load(self, pid: object) -> _Inert:
        if (
            not isinstance(pid, tuple)
            or len(pid) != 5
            or pid[0] not in ("storage", b"storage")
            or not isinstance(pid[1], _StorageType)
            or not isinstance(pid[2], str)
            or type(pid[4]) is not int
            or pid[4] < 0
        ):
            raise FormatError(
                f"{self.bad} names a storage in a form torch.save never writes; "
                "re-save it with torch.save"
            )
        self.refs.append((pid[2], pid[4], pid[1].itemsize))
        return _Inert()


# ---- torch.load and what it returns -----------------------------------------------------


def _torch_load(path: Path, where: str) -> object:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as exc:
        raise FormatError(
            f"checkpoint {where}: refused by torch.load(weights_only=True, mmap=True) "
            f"({type(exc).__name__}); save a plain state_dict or use safetensors"
        ) from None


def _tensors(loaded: object, where: str) -> dict[str, torch.Tensor]:
    if isinstance(loaded, Mapping) and set(loaded) == {"state_dict"}:
        loaded = loaded["state_dict"]
    if not isinstance(loaded, Mapping):
        raise FormatError(f"checkpoint {where}: holds a {type(loaded).__name__}, not a state_dict")
    bad = [clip(str(k), 100) for k, v in loaded.items() if not isinstance(k, str) or not _plain(v)]
    if bad:
        raise FormatError(f"checkpoint {where}: entries that are not plain tensors: {named(bad)}")
    return {str(k): v for k, v in loaded.items()}


def _plain(value: object) -> bool:
    return (
        type(value) in (torch.Tensor, nn.Parameter)
        and isinstance(value, torch.Tensor)
        and value.layout == torch.strided
        and not value.is_quantized
        and value.device.type == "cpu"
    )


def _within(tensors: Mapping[str, torch.Tensor], size: int, where: str) -> None:
    """Without an expected layout (a validation tensor): the tensors declare at most as
    many bytes as the file has, so copying them costs at most the file's size."""
    declared = sum(t.numel() * t.element_size() for t in tensors.values())
    if declared > size:
        raise FormatError(
            f"{where}: its tensors declare {declared} bytes in a {size}-byte file "
            "(views repeating the same bytes are refused here)"
        )
