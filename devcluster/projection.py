"""Kubelet's atomic volume layout, for ConfigMap, Secret, projected and downward API volumes.

    <volume>/..2026_11_26_18_58_45.k3j2h1/model.json   the files of one version
    <volume>/..data -> ..2026_11_26_18_58_45.k3j2h1   swapped in one rename(2)
    <volume>/model.json -> ..data/model.json           one symlink per top-level entry

A new version is written into a fresh timestamped folder, then a `..data_tmp` symlink
to it is renamed over `..data` (atomic), then new per-key links are added, stale ones
removed, and the old folder deleted. A reader that needs several keys to agree resolves
`..data` once and reads them all from that folder (retrying if it vanished meanwhile).
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
import time
from pathlib import Path

Payload = dict[str, tuple[bytes, int]]  # relative path -> (content, file mode)
DATA = "..data"


def current(target: Path) -> Payload | None:
    """The payload now visible in `target`, or None if nothing was projected yet."""
    try:
        version = target / (target / DATA).readlink()
    except OSError:
        return None
    payload: Payload = {}
    for path in version.rglob("*"):
        if path.is_file():
            payload[str(path.relative_to(version))] = (
                path.read_bytes(),
                path.stat().st_mode & 0o777,
            )
    return payload


def write_atomic(target: Path, payload: Payload) -> bool:
    """Make `target` show exactly `payload`; False (and no change) if it already does."""
    if current(target) == payload:
        return False
    target.mkdir(parents=True, exist_ok=True)
    old = _readlink(target / DATA)
    stamp = time.strftime("..%Y_%m_%d_%H_%M_%S.", time.gmtime())
    version = Path(tempfile.mkdtemp(prefix=stamp, dir=target))
    version.chmod(0o755)
    for rel, (data, mode) in payload.items():
        _check_relative(rel)
        path = version / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        path.chmod(mode)
    tmp_link = target / "..data_tmp"
    with contextlib.suppress(FileNotFoundError):
        tmp_link.unlink()
    tmp_link.symlink_to(version.name)
    tmp_link.rename(target / DATA)  # the one atomic step
    _sync_key_links(target, {rel.split("/", 1)[0] for rel in payload})
    if old and old != version.name:
        shutil.rmtree(target / old, ignore_errors=True)
    return True


def _sync_key_links(target: Path, tops: set[str]) -> None:
    for top in tops:
        link = target / top
        if not link.is_symlink():
            link.symlink_to(f"{DATA}/{top}")
    for entry in target.iterdir():
        if entry.name.startswith("..") or entry.name in tops:
            continue
        if entry.is_symlink() and str(entry.readlink()).startswith(f"{DATA}/"):
            entry.unlink()


def _readlink(path: Path) -> str | None:
    try:
        return str(path.readlink())
    except OSError:
        return None


def _check_relative(rel: str) -> None:
    parts = rel.split("/")
    if rel.startswith("/") or ".." in parts or not rel or parts[0].startswith(".."):
        raise ValueError(f"volume item path {rel!r} must be relative, without '..'")
