"""file:// checkpoints: only regular files under the admin's file roots, checked as opened.

The path is refused unless its text lies under ``HOTSWAP_FILE_ROOTS``. The file is then
opened in two steps that never block and never open anything but a regular file: an
``O_PATH`` descriptor (no read access, no side effects of opening a FIFO or a device)
whose real path, as the kernel resolved it, must lie under a root's real path and whose
type must be a regular file; then a read-only reopen of that very descriptor through
``/proc/self/fd``, checked to be the same inode. A symlink inside a root that leads to
``/proc/self/environ``, a ServiceAccount token or a mounted Secret is refused, and no
rename between the check and the read can change what is read. The size comes from
``fstat`` before the first read.
"""

from __future__ import annotations

import errno
import os
import posixpath
import stat
from collections.abc import Callable, Sequence
from pathlib import Path

from hotswap_contract.policy import path_under
from hotswap_runtime.checkpoint.fetch.stream import SLICE_BYTES, Sink
from hotswap_runtime.errors import CheckpointNotFound, FetchError, FetchRefused, Superseded

CHUNK = SLICE_BYTES  # reads the sink takes in one slice (see fetch_stream.SLICE_BYTES)
_REOPEN = os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC


class OutsideRootsError(Exception):
    """The file the kernel resolved lies outside every root."""


class NotRegularError(Exception):
    """The path names a directory, FIFO, socket or device."""


def open_regular(path: str, roots: Sequence[str]) -> tuple[int, int]:
    """A read-only descriptor and the size of the regular file at absolute ``path``,
    which must resolve (symlinks followed) to a file under the real path of a root.

    Raises OutsideRootsError, NotRegularError, or the OSError of opening it."""
    real_roots = [os.path.realpath(root) for root in roots]
    handle = os.open(path, os.O_PATH | os.O_CLOEXEC)
    try:
        seen = os.fstat(handle)
        if not path_under(str(Path(f"/proc/self/fd/{handle}").readlink()), real_roots):
            raise OutsideRootsError(path)
        if not stat.S_ISREG(seen.st_mode):
            raise NotRegularError(path)
        fd = os.open(f"/proc/self/fd/{handle}", _REOPEN)
    finally:
        os.close(handle)
    opened = os.fstat(fd)
    if (opened.st_dev, opened.st_ino) != (seen.st_dev, seen.st_ino):
        os.close(fd)
        raise OutsideRootsError(path)
    return fd, opened.st_size


def copy_file(uri: str, roots: Sequence[str], sink: Sink, cancelled: Callable[[], bool]) -> None:
    """Stream the file named by the file:// ``uri`` into ``sink``."""
    path = _local_path(uri, sink.shown)
    if not path_under(path, roots):
        raise FetchRefused(
            f"checkpoint {sink.shown} is outside the folders file:// checkpoints may be read "
            f"from (HOTSWAP_FILE_ROOTS: {_listed(roots)}); move it under one, or ask the "
            "cluster admin to add its folder to the chart value policy.fileRoots"
        )
    fd, size = _open(posixpath.normpath(path), roots, sink.shown)
    with os.fdopen(fd, "rb", buffering=0) as source:
        sink.declare(size)
        view = memoryview(bytearray(max(1, min(CHUNK, size))))
        while n := _read(source.readinto, view, sink.shown):
            if cancelled():
                raise Superseded(f"reading {sink.shown} stopped: a newer revision is wanted")
            sink.add(view[:n])


def _local_path(uri: str, shown: str) -> str:
    rest = uri.split("://", 1)[1]
    if rest.startswith("localhost/"):
        rest = rest[len("localhost") :]
    if not rest.startswith("/"):
        raise FetchRefused(
            f"checkpoint {shown} does not name an absolute path; write file:///<path>"
        )
    return rest


def _open(path: str, roots: Sequence[str], shown: str) -> tuple[int, int]:
    try:
        return open_regular(path, roots)
    except OutsideRootsError:
        raise FetchRefused(
            f"checkpoint {shown} leads (through a symlink) to a file outside "
            f"HOTSWAP_FILE_ROOTS ({_listed(roots)}) and is refused; point spec.checkpoint.uri "
            "at the file itself, or ask the cluster admin to add its folder to the chart "
            "value policy.fileRoots"
        ) from None
    except NotRegularError:
        raise FetchRefused(
            f"checkpoint {shown} is not a regular file (a directory, FIFO, socket or "
            "device) and is refused; point spec.checkpoint.uri at a checkpoint file"
        ) from None
    except ValueError:  # a NUL in the path
        raise FetchRefused(f"checkpoint {shown} is not a valid path") from None
    except OSError as exc:
        raise _os_failure(exc, shown) from None


def _read(readinto: Callable[[memoryview], int | None], view: memoryview, shown: str) -> int:
    try:
        return readinto(view) or 0
    except OSError as exc:
        raise _os_failure(exc, shown) from None


def _os_failure(exc: OSError, shown: str) -> FetchError:
    if exc.errno in (errno.ENOENT, errno.ENOTDIR):
        return CheckpointNotFound(f"checkpoint {shown} does not exist; check spec.checkpoint.uri")
    if exc.errno in (errno.EACCES, errno.EPERM):
        return FetchError(
            f"the runtime may not read checkpoint {shown} (permission denied); make it "
            "readable by the runtime's user"
        )
    if exc.errno == errno.ELOOP:
        return FetchRefused(f"checkpoint {shown} is a loop of symlinks and is refused")
    name = errno.errorcode.get(exc.errno or 0, type(exc).__name__)
    return FetchError(f"cannot read checkpoint {shown} ({name})")


def _listed(roots: Sequence[str]) -> str:
    return ", ".join(roots) if roots else "(none)"
