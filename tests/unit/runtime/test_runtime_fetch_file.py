"""file:// checkpoints and Secret folders: only regular files under their roots.

Real files, FIFOs, sockets, directories and symlinks; nothing here may block.
"""

from __future__ import annotations

import hashlib
import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from hotswap_contract.wire import Checkpoint
from hotswap_runtime.checkpoint.fetch.credentials import MAX_VALUE_BYTES, read_secret
from hotswap_runtime.checkpoint.store import CheckpointStore
from hotswap_runtime.errors import CheckpointNotFound, FetchError, FetchRefused

SHA = "a" * 64


@pytest.fixture
def root(tmp_path: Path) -> Path:
    folder = tmp_path / "models"
    folder.mkdir()
    return folder


@pytest.fixture
def store(tmp_path: Path, root: Path) -> Iterator[CheckpointStore]:
    s = CheckpointStore(tmp_path / "cache", 10**6, 10**6, file_roots=(str(root),))
    yield s
    assert list((tmp_path / "cache").iterdir()) == [], "a temporary file was left behind"


def fetch(store: CheckpointStore, uri: str, sha: str = SHA) -> Path:
    return store.fetch(Checkpoint(uri=uri, sha256=sha))


def refusal(store: CheckpointStore, uri: str) -> str:
    with pytest.raises(FetchRefused) as caught:
        fetch(store, uri)
    assert not caught.value.transient
    return str(caught.value)


@pytest.mark.parametrize(
    "path",
    [
        "/proc/self/environ",
        "/etc/passwd",
        "/var/run/secrets/kubernetes.io/serviceaccount/token",
        "/dev/zero",
    ],
)
def test_paths_outside_the_roots_are_refused_before_opening(
    store: CheckpointStore, root: Path, path: str
) -> None:
    reason = refusal(store, f"file://{path}")
    assert "outside the folders file:// checkpoints may be read from" in reason
    assert f"HOTSWAP_FILE_ROOTS: {root}" in reason and "policy.fileRoots" in reason


def test_dot_dot_traversal_is_refused(store: CheckpointStore, root: Path, tmp_path: Path) -> None:
    (tmp_path / "secret.txt").write_text("token")
    reason = refusal(store, f"file://{root}/../secret.txt")
    assert "outside the folders" in reason and "token" not in reason


def test_a_mounted_secret_next_to_the_root_is_refused(store: CheckpointStore, root: Path) -> None:
    sibling = root.parent / "models-secrets"  # shares the root's name as a text prefix
    sibling.mkdir()
    (sibling / "token").write_text("s3cr3t")
    assert "outside the folders" in refusal(store, f"file://{sibling}/token")


@pytest.mark.parametrize(
    "target", ["/proc/self/environ", "/etc/passwd", "/dev/zero", "outside-file"]
)
def test_symlink_inside_a_root_to_outside_is_refused(
    store: CheckpointStore, root: Path, tmp_path: Path, target: str
) -> None:
    if target == "outside-file":
        (tmp_path / "token").write_text("s3cr3t")
        target = str(tmp_path / "token")
    (root / "innocent.safetensors").symlink_to(target)
    reason = refusal(store, f"file://{root}/innocent.safetensors")
    assert "through a symlink" in reason and "HOTSWAP_FILE_ROOTS" in reason
    assert target not in reason, "the reason must not show where the link leads"


def test_symlinked_folder_inside_a_root_is_refused(
    store: CheckpointStore, root: Path, tmp_path: Path
) -> None:
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc" / "shadow").write_text("root:x")
    (root / "sub").symlink_to(tmp_path / "etc")
    assert "through a symlink" in refusal(store, f"file://{root}/sub/shadow")


def test_symlink_within_the_root_is_followed(store: CheckpointStore, root: Path) -> None:
    data = os.urandom(100)
    (root / "v1.safetensors").write_bytes(data)
    (root / "latest.safetensors").symlink_to("v1.safetensors")
    path = fetch(store, f"file://{root}/latest.safetensors", hashlib.sha256(data).hexdigest())
    assert path.read_bytes() == data
    path.unlink()


def test_a_root_that_is_itself_a_symlink_works(tmp_path: Path) -> None:
    real = tmp_path / "real-models"
    real.mkdir()
    (tmp_path / "models-link").symlink_to(real)
    data = b"weights"
    (real / "v.pt").write_bytes(data)
    s = CheckpointStore(
        tmp_path / "cache", 10**6, 10**6, file_roots=(str(tmp_path / "models-link"),)
    )
    uri = f"file://{tmp_path}/models-link/v.pt"
    assert fetch(s, uri, hashlib.sha256(data).hexdigest()).read_bytes() == data


def test_fifo_inside_a_root_is_refused_without_blocking(store: CheckpointStore, root: Path) -> None:
    os.mkfifo(root / "pipe.safetensors")  # no writer: a blocking open would hang forever
    assert "not a regular file" in refusal(store, f"file://{root}/pipe.safetensors")


def test_symlink_to_a_fifo_is_refused_without_blocking(store: CheckpointStore, root: Path) -> None:
    os.mkfifo(root / "pipe")
    (root / "link.pt").symlink_to(root / "pipe")
    assert "not a regular file" in refusal(store, f"file://{root}/link.pt")


def test_directory_and_socket_are_refused(store: CheckpointStore, root: Path) -> None:
    (root / "folder.pt").mkdir()
    assert "not a regular file" in refusal(store, f"file://{root}/folder.pt")
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(root / "sock.pt"))
        assert "not a regular file" in refusal(store, f"file://{root}/sock.pt")


def test_relative_and_host_forms_are_refused(store: CheckpointStore, root: Path) -> None:
    assert "absolute path" in refusal(store, f"file://models{root}/x.pt")
    with pytest.raises(CheckpointNotFound):
        fetch(store, f"file://localhost{root}/missing.pt")


# ---- Secret folders -------------------------------------------------------------


def kubelet_secret(secrets: Path, name: str, values: dict[str, str]) -> Path:
    """A Secret folder laid out as kubelet mounts it: keys are links into ..data."""
    folder = secrets / name
    stamp = folder / "..2026_11_27_00_00_00.000000000"
    stamp.mkdir(parents=True)
    for key, value in values.items():
        (stamp / key).write_text(value)
    (folder / "..data").symlink_to(stamp.name)
    for key in values:
        (folder / key).symlink_to(f"..data/{key}")
    return folder


def test_secret_reads_known_keys_only(tmp_path: Path) -> None:
    values = {"AWS_ACCESS_KEY_ID": "AKID\n", "HTTP_AUTHORIZATION": "Bearer x", "OTHER": "no"}
    kubelet_secret(tmp_path, "store", values)
    assert read_secret(tmp_path, "store") == {
        "AWS_ACCESS_KEY_ID": "AKID",
        "HTTP_AUTHORIZATION": "Bearer x",
    }


def test_secret_key_linking_out_of_its_folder_is_refused(tmp_path: Path) -> None:
    folder = kubelet_secret(tmp_path / "secrets", "store", {})
    (tmp_path / "token").write_text("service-account-token")
    (folder / "AWS_SECRET_ACCESS_KEY").symlink_to(tmp_path / "token")
    with pytest.raises(FetchError, match="not a regular file inside") as caught:
        read_secret(tmp_path / "secrets", "store")
    assert "service-account-token" not in str(caught.value)


def test_secret_fifo_and_oversize_values_are_refused(tmp_path: Path) -> None:
    folder = kubelet_secret(tmp_path, "pipe", {})
    os.mkfifo(folder / "AWS_REGION")
    with pytest.raises(FetchError, match=r"AWS_REGION .* not a regular file"):
        read_secret(tmp_path, "pipe")
    kubelet_secret(tmp_path, "big", {"HTTP_AUTHORIZATION": "x" * (MAX_VALUE_BYTES + 1)})
    with pytest.raises(FetchError, match=f"over {MAX_VALUE_BYTES} bytes"):
        read_secret(tmp_path, "big")
    kubelet_secret(tmp_path, "crlf", {"HTTP_AUTHORIZATION": "Bearer a\r\nX-Injected: 1"})
    with pytest.raises(FetchError, match="control characters"):
        read_secret(tmp_path, "crlf")


def test_secret_folder_must_be_inside_the_secrets_dir(tmp_path: Path) -> None:
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    kubelet_secret(tmp_path, "elsewhere", {"AWS_ACCESS_KEY_ID": "AKID"})
    (secrets / "linked").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(FetchError, match="is not mounted"):
        read_secret(secrets, "linked")
    with pytest.raises(FetchError, match="not a valid Secret name"):
        read_secret(secrets, "../elsewhere")
    with pytest.raises(FetchError, match="is not mounted"):
        read_secret(None, "store")
