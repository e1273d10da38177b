"""Credentials for a checkpoint URI: the known keys of one mounted Secret folder.

``checkpoint.secretRef`` names a folder under ``HOTSWAP_SECRETS_DIR`` (kubelet mounts
the Secret there: each key a symlink into a ``..data`` folder beside it). Only the keys
below are read, each a regular file inside that folder of at most ``MAX_VALUE_BYTES``,
opened the way file:// checkpoints are (no FIFO, device or symlink out of the folder).
The name is checked again here, and the folder must resolve inside the secrets folder.
Values are handed to the fetchers only: never logged, never put into a reason.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from hotswap_contract.policy import path_under
from hotswap_contract.wire import SECRET_NAME_PATTERN
from hotswap_runtime.checkpoint.fetch.file import NotRegularError, OutsideRootsError, open_regular
from hotswap_runtime.errors import FetchError

DOCKER_CONFIG = ".dockerconfigjson"  # a kubernetes.io/dockerconfigjson Secret's one key
MULTILINE = frozenset({DOCKER_CONFIG})  # JSON: line breaks allowed, other controls not
KEYS = (
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_ENDPOINT_URL",
    "AWS_REGION",
    "HTTP_AUTHORIZATION",
    "HF_TOKEN",
    "HF_ENDPOINT",
    DOCKER_CONFIG,
    "GOOGLE_APPLICATION_CREDENTIALS_JSON",
    "GCS_ENDPOINT_URL",
    "GCS_USE_METADATA_SERVER",
    "AZURE_STORAGE_ACCOUNT",
    "AZURE_STORAGE_ENDPOINT",
    "AZURE_STORAGE_SAS_TOKEN",
    "AZURE_STORAGE_KEY",
    "AZURE_USE_WORKLOAD_IDENTITY",
)
MAX_VALUE_BYTES = 64 << 10
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_CONTROL_BUT_LINES = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


def read_secret(secrets_dir: Path | None, name: str) -> dict[str, str]:
    """The known keys present in Secret ``name``'s folder, values stripped."""
    if not re.fullmatch(SECRET_NAME_PATTERN, name):
        raise FetchError("checkpoint.secretRef is not a valid Secret name")
    base = Path(secrets_dir or "/nonexistent").resolve()
    folder = (base / name).resolve()
    if not path_under(str(folder), [str(base)]) or folder == base or not folder.is_dir():
        raise FetchError(
            f"Secret {name!r} named by checkpoint.secretRef is not mounted in "
            f"HOTSWAP_SECRETS_DIR ({secrets_dir}); create the Secret in the "
            "ModelDeployment's namespace"
        )
    values = {}
    for key in KEYS:
        value = _read_key(str(folder), name, key)
        if value:
            values[key] = value
    return values


def _read_key(folder: str, name: str, key: str) -> str | None:
    try:
        fd, size = open_regular(f"{folder}/{key}", [folder])
    except FileNotFoundError:
        return None
    except (OutsideRootsError, NotRegularError, OSError, ValueError):
        raise _bad(name, key, "is not a regular file inside the Secret's folder") from None
    with os.fdopen(fd, "rb", buffering=0) as file:
        if size > MAX_VALUE_BYTES:
            raise _bad(name, key, f"is over {MAX_VALUE_BYTES} bytes")
        data = file.read(MAX_VALUE_BYTES + 1)
    if len(data) > MAX_VALUE_BYTES:
        raise _bad(name, key, f"is over {MAX_VALUE_BYTES} bytes")
    try:
        value = data.decode("utf-8").strip()
    except UnicodeDecodeError:
        raise _bad(name, key, "is not UTF-8 text") from None
    if (_CONTROL_BUT_LINES if key in MULTILINE else _CONTROL).search(value):
        raise _bad(name, key, "holds control characters (a line break inside the value?)")
    return value


def _bad(name: str, key: str, what: str) -> FetchError:
    return FetchError(f"key {key} of Secret {name!r} (checkpoint.secretRef) {what}; fix the Secret")
