"""The .pt reader: only torch.save's zip archive, inspected before torch.load sees it,
and tensors checked against the model's layout before anything is copied."""

from __future__ import annotations

import struct
import warnings
import zipfile
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from devcluster import tiny
from hotswap_runtime.checkpoint.layouts import Expected, layout_of
from hotswap_runtime.checkpoint.staging import Staging
from hotswap_runtime.checkpoint.torch_file import ALLOWED_GLOBALS
from hotswap_runtime.checkpoint.weights import read_state_dict
from hotswap_runtime.errors import FormatError, StateDictMismatch
from tests.fixtures_runtime import hostile

TINY = Expected(layout_of(tiny.make_model().state_dict()), tiny.ARCHITECTURE)
URI = "file:///m.pt"

CASES: dict[str, tuple[Callable[[Path], Path], type[Exception], str]] = {
    "legacy format": (hostile.legacy_pt, FormatError, "legacy .pre-1.6. torch.save format"),
    "raw pickle": (hostile.raw_pickle_pt, FormatError, "not a zip archive"),
    "deflate bomb": (
        lambda p: hostile.deflate_bomb_pt(p, 64 << 20),
        FormatError,
        "record 'archive/data/0' is compressed",
    ),
    "compressed data.pkl": (hostile.compressed_pickle_pt, FormatError, "data.pkl' is compressed"),
    "duplicate records": (hostile.duplicate_records_pt, FormatError, "appears twice"),
    "too many records": (hostile.many_records_pt, FormatError, "holds 5006 records, more than"),
    "bytearray bomb": (hostile.bytearray_bomb_pt, FormatError, "calls __builtin__.bytearray"),
    "stride-0 view of a huge shape": (
        hostile.stride0_pt,
        StateDictMismatch,
        r"wrong shapes: fc.weight \(65536, 8192\) vs model \(3, 4\)",
    ),
    "zip comment": (
        lambda p: hostile.pt_archive(p, b"", {}, comment=b"hi"),
        FormatError,
        "followed by a comment",
    ),
    "not under one folder": (
        lambda p: hostile.pt_archive(p, b"", {}, extra=[("../other/x", b"")]),
        FormatError,
        "not one torch.save writes|not all under one folder",
    ),
    "torchscript archive": (
        lambda p: _torchscript(p),
        FormatError,
        "is compressed|is not one torch.save writes",
    ),
    "oversized data.pkl": (
        lambda p: hostile.pt_archive(p, b"\x80\x02" + b"N" * 200_000 + b".", {}),
        FormatError,
        r"data.pkl is 200003 bytes, more than the \d+",
    ),
    "truncated": (lambda p: _truncated(p), FormatError, "not an archive written by torch.save"),
    "storage larger than its record": (
        lambda p: hostile.storage_size_pt(p, stored=8, declared=12),
        FormatError,
        r"declares storage 'data/0' as 48 bytes \(12 elements of 4 bytes\), but its "
        "record holds 32; torch.load refuses",
    ),
    "storage smaller than its record": (
        lambda p: hostile.storage_size_pt(p, stored=16, declared=12),
        FormatError,
        r"declares storage 'data/0' as 48 bytes \(12 elements of 4 bytes\), but its "
        "record holds 64; torch.load refuses",
    ),
    "storage without a record": (
        lambda p: _without_record(p),
        FormatError,
        "names storage 'data/0', which the archive does not hold",
    ),
}


def _without_record(path: Path) -> Path:
    """data.pkl names storage 0, and the archive holds no data/0 record."""
    hostile.storage_size_pt(path, stored=12, declared=12)
    with zipfile.ZipFile(path) as z:
        blobs = {n.partition("/")[2]: z.read(n) for n in z.namelist()}
    records = {n.partition("/")[2]: b for n, b in blobs.items() if n.startswith("data/")}
    del records["0"]
    return hostile.pt_archive(path, blobs["data.pkl"], records)


def _torchscript(path: Path) -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit is deprecated
        torch.jit.save(torch.jit.script(tiny.make_model()), str(path))
    return path


def _truncated(path: Path) -> Path:
    torch.save(tiny.weights(1), path)
    path.write_bytes(path.read_bytes()[:-30])
    return path


@pytest.mark.parametrize("case", list(CASES))
def test_hostile_pt_is_refused_before_anything_is_staged(tmp_path: Path, case: str) -> None:
    write, error, reason = CASES[case]
    path = write(tmp_path / "m.pt")
    staging = Staging(pin=False)
    with pytest.raises(error, match=reason) as refused:
        read_state_dict(path, URI, TINY, staging)
    assert not staging._buffers, "nothing was staged"
    assert len(str(refused.value)) < 400


@pytest.mark.parametrize(("stored", "declared"), [(8, 12), (16, 12)])
def test_a_storage_size_other_than_its_record_is_what_it_claims(
    tmp_path: Path, stored: int, declared: int
) -> None:
    """Unchecked, torch.load refuses it, but with mmap=True it serves the declared
    length from the record's start: the fixture is a real disagreement."""
    path = hostile.storage_size_pt(tmp_path / "m.pt", stored, declared)
    with pytest.raises(RuntimeError, match="does not match expected size"):
        torch.load(path, weights_only=True)
    mapped = torch.load(path, weights_only=True, mmap=True)["fc.weight"].flatten()
    assert mapped.untyped_storage().nbytes() == 4 * declared
    assert torch.equal(mapped[: min(stored, 12)], torch.arange(min(stored, 12)).float())


def test_deflate_bomb_is_what_it_claims(tmp_path: Path) -> None:
    """Unchecked, torch.load inflates the record: the fixture is a real bomb."""
    path = hostile.deflate_bomb_pt(tmp_path / "m.pt", 64 << 20)
    assert path.stat().st_size < 1 << 20
    info = zipfile.ZipFile(path).getinfo("archive/data/0")
    assert info.compress_type == zipfile.ZIP_DEFLATED and info.file_size == 64 << 20
    loaded = torch.load(path, weights_only=True)
    assert loaded["fc.weight"].numel() == 16 << 20


def test_stride0_view_of_the_right_shape_costs_only_the_target(tmp_path: Path) -> None:
    path = hostile.stride0_right_shape_pt(tmp_path / "m.pt")
    parsed = read_state_dict(path, URI, TINY, Staging(pin=False))
    weight = parsed.state["fc.weight"]
    assert weight.is_contiguous() and weight.untyped_storage().nbytes() == 48
    assert torch.equal(weight, torch.full((3, 4), 2.0))


def test_torch_save_archives_are_accepted(tmp_path: Path) -> None:
    """What torch.save writes (zip64 end records, data descriptors, aligned records,
    parameters, an OrderedDict with _metadata) passes every check."""
    model = tiny.make_model()
    path = tmp_path / "m.pt"
    torch.save(model.state_dict(), path)
    parsed = read_state_dict(path, URI, TINY, Staging(pin=False))
    assert all(torch.equal(parsed.state[n], t) for n, t in model.state_dict().items())
    params = {n: torch.nn.Parameter(t) for n, t in tiny.weights(2).items()}
    torch.save(params, path)
    parsed = read_state_dict(path, URI, TINY, Staging(pin=False))
    assert torch.equal(parsed.state["fc.bias"], tiny.weights(2)["fc.bias"])


def test_a_torchvision_state_dict_is_accepted(tmp_path: Path) -> None:
    import torchvision

    model = torchvision.models.resnet18()
    path = tmp_path / "r.pt"
    torch.save(model.state_dict(), path)
    expected = Expected(layout_of(model.state_dict()), "torchvision/resnet18")
    parsed = read_state_dict(path, URI, expected, Staging(pin=False))
    assert torch.equal(parsed.state["layer1.0.bn1.running_var"], model.layer1[0].bn1.running_var)


def test_allowed_globals_are_only_what_state_dicts_need() -> None:
    assert "builtins bytearray" not in ALLOWED_GLOBALS
    assert "__builtin__ bytearray" not in ALLOWED_GLOBALS
    assert not any("_rebuild_qtensor" in g or "sparse" in g for g in ALLOWED_GLOBALS)


def test_zip64_sizes_in_the_central_directory_are_read(tmp_path: Path) -> None:
    """torch.save writes sizes and offsets past 4 GiB as zip64 extra fields; the same
    archive with its sizes moved into zip64 fields (as a huge file has them) passes."""
    path = tmp_path / "m.pt"
    torch.save(tiny.weights(4), path)
    data = bytearray(path.read_bytes())
    z = zipfile.ZipFile(path)
    start = z.start_dir
    z.close()
    end = data.index(b"PK\x06\x06", start)
    out, at = bytearray(), start
    while at < end:
        fixed = bytearray(data[at : at + 46])
        nlen, xlen, clen = struct.unpack_from("<HHH", fixed, 28)
        csize, usize = struct.unpack_from("<II", fixed, 20)
        name = data[at + 46 : at + 46 + nlen]
        extra = data[at + 46 + nlen : at + 46 + nlen + xlen]
        struct.pack_into("<II", fixed, 20, 0xFFFFFFFF, 0xFFFFFFFF)
        extra = struct.pack("<HHQQ", 1, 16, usize, csize) + extra
        struct.pack_into("<H", fixed, 30, len(extra))
        out += fixed + name + extra + data[at + 46 + nlen + xlen : at + 46 + nlen + xlen + clen]
        at += 46 + nlen + xlen + clen
    rebuilt = bytearray(data[:start] + out + data[end:])
    z64 = rebuilt.index(b"PK\x06\x06", start)
    grow = len(out) - (end - start)
    struct.pack_into("<Q", rebuilt, z64 + 40, len(out))  # central directory size
    loc = rebuilt.index(b"PK\x06\x07", z64)
    struct.pack_into("<Q", rebuilt, loc + 8, z64)  # where the zip64 end record now is
    eocd = rebuilt.index(b"PK\x05\x06", loc)
    struct.pack_into("<I", rebuilt, eocd + 12, len(out))
    assert grow > 0
    path.write_bytes(bytes(rebuilt))
    parsed = read_state_dict(path, URI, TINY, Staging(pin=False))
    assert torch.equal(parsed.state["fc.weight"], tiny.weights(4)["fc.weight"])
