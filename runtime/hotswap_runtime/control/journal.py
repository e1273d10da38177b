"""The load journal: what this pod was loading and serving, kept across restarts.

A checkpoint that kills the process while it loads (the kernel's OOM killer, a fatal
error in native code) would otherwise be loaded again after the container restarts,
and kill it again: a crash loop, and with AllAtOnce a whole fleet down with no reason
recorded anywhere. So before each load the runtime writes the revision it is about to
load into ``.journal.json`` in its cache volume (an emptyDir, which outlives container
restarts), and after the attempt the revision that serves. On start, a revision still
marked as loading is one that crashed the process: it is refused from then on, and the
revision served before it is loaded again from the checkpoint cache.

The file is written atomically (temporary file, fsync, rename) and read with a size
bound; a journal that cannot be read is ignored with a warning, never trusted.
"""

from __future__ import annotations

import contextlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from hotswap_contract.wire import Revision

log = logging.getLogger(__name__)

FILE = ".journal.json"
MAX_BYTES = 256 << 10
KEEP_CRASHED = 16


class Crash(BaseModel):
    model_config = ConfigDict(frozen=True)

    revision: int
    sha256: str


class _Record(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    loading: Revision | None = None
    serving: Revision | None = None
    crashed: tuple[Crash, ...] = Field(default=(), max_length=KEEP_CRASHED)


@dataclass(frozen=True)
class Recovery:
    """What the journal says after a restart."""

    crashed: tuple[Crash, ...]  # every revision that crashed this pod, newest last
    crashed_now: Crash | None  # the one whose load the last process died in, if any
    serving: Revision | None  # what served before that


class LoadJournal:
    """Reads and writes ``<cache_dir>/.journal.json``."""

    def __init__(self, cache_dir: Path) -> None:
        self.path = cache_dir / FILE
        self._record = _Record()

    def recover(self) -> Recovery:
        """Read the journal left by an earlier process and close its open load."""
        record = self._read()
        crashed_now = None
        if record.loading is not None:
            crashed_now = Crash(
                revision=record.loading.revision, sha256=record.loading.checkpoint.sha256
            )
            kept = (*record.crashed, crashed_now)[-KEEP_CRASHED:]
            record = _Record(serving=record.serving, crashed=kept)
        self._record = record
        self._write()
        return Recovery(record.crashed, crashed_now, record.serving)

    def loading(self, revision: Revision) -> None:
        """About to load ``revision``: if the process dies now, it is to blame."""
        self._record = self._record.model_copy(update={"loading": revision})
        self._write()

    def settled(self, serving: Revision | None) -> None:
        """The load attempt is over (whatever its result); ``serving`` answers requests."""
        self._record = self._record.model_copy(update={"loading": None, "serving": serving})
        self._write()

    def _read(self) -> _Record:
        try:
            with self.path.open("rb") as f:
                data = f.read(MAX_BYTES + 1)
        except FileNotFoundError:
            return _Record()
        except OSError as exc:
            log.warning("load journal %s unreadable (%s); starting afresh", self.path, exc)
            return _Record()
        if len(data) > MAX_BYTES:
            log.warning("load journal %s is over %d bytes; starting afresh", self.path, MAX_BYTES)
            return _Record()
        try:
            return _Record.model_validate_json(data)
        except ValidationError:
            log.warning("load journal %s is malformed; starting afresh", self.path)
            return _Record()

    def _write(self) -> None:
        tmp = self.path.with_name(FILE + ".tmp")
        try:
            with tmp.open("w") as f:
                f.write(self._record.model_dump_json(by_alias=True))
                f.flush()
                os.fsync(f.fileno())
            tmp.replace(self.path)
            _fsync_dir(self.path.parent)
        except OSError as exc:  # a full or read-only volume: serving goes on regardless
            log.warning("cannot write load journal %s: %s", self.path, exc)
            with contextlib.suppress(OSError):
                tmp.unlink()


def _fsync_dir(folder: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
