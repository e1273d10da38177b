"""Write checkpoints and model.json documents the way users and kubelet do."""

from __future__ import annotations

import hashlib
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import safetensors.torch
import torch

from examples.checkpoints import DEFAULT_DIR
from hotswap_contract.wire import CONFIG_KEY

from . import tiny


def local_root() -> Path:
    """The examples' folder, which the local chart values (examples/values-local.yaml)
    mount at /models in runtime pods on the real node."""
    DEFAULT_DIR.mkdir(parents=True, exist_ok=True)
    return DEFAULT_DIR


def local_folder(stem: str) -> Path:
    """A new folder under ``local_root()``, readable by runtime containers (uid 10001)."""
    folder = Path(tempfile.mkdtemp(prefix=f"{stem}-", dir=local_root()))
    folder.chmod(0o755)
    return folder


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def save(state: dict[str, torch.Tensor], path: Path) -> str:
    """Save ``state`` as safetensors or .pt by suffix; return its sha256."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".safetensors":
        safetensors.torch.save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    else:
        torch.save(state, path)
    path.chmod(0o644)  # runtime containers read it as uid 10001, whatever the umask was
    return sha256_of(path)


def revision(
    number: int,
    uri: str,
    sha256: str,
    architecture: str = tiny.ARCHITECTURE,
    input_shape: tuple[int, ...] = (tiny.FEATURES,),
    args: dict[str, Any] | None = None,
    secret: str | None = None,
) -> dict[str, Any]:
    checkpoint: dict[str, Any] = {"uri": uri, "sha256": sha256}
    if secret:
        checkpoint["secretRef"] = secret
    return {
        "revision": number,
        "model": {
            "architecture": architecture,
            "args": args or {},
            "inputShape": list(input_shape),
        },
        "checkpoint": checkpoint,
    }


def config(generation: int, stable: dict[str, Any], name: str = "tiny") -> str:
    return json.dumps({"name": name, "generation": generation, "stable": stable})


def publish(config_dir: Path, text: str) -> None:
    """Replace model.json the way kubelet does: a new timestamped folder, then an
    atomic rename of the ``..data`` symlink, with ``model.json -> ..data/model.json``."""
    config_dir.mkdir(parents=True, exist_ok=True)
    stamp = config_dir / f"..{time.time_ns()}"
    stamp.mkdir()
    (stamp / CONFIG_KEY).write_text(text)
    tmp_link = config_dir / "..data_tmp"
    tmp_link.unlink(missing_ok=True)
    tmp_link.symlink_to(stamp.name)
    old = (config_dir / "..data").resolve() if (config_dir / "..data").exists() else None
    tmp_link.replace(config_dir / "..data")
    link = config_dir / CONFIG_KEY
    if not link.is_symlink():
        link.symlink_to(f"..data/{CONFIG_KEY}")
    if old is not None and old != stamp.resolve():
        for item in old.iterdir():
            item.unlink()
        old.rmdir()


def save_sharded(
    state: dict[str, torch.Tensor], folder: Path, shards: int, name: str = "model"
) -> tuple[Path, str]:
    """``state`` as ``shards`` safetensors files and a manifest
    (``<name>.safetensors.index.json``: Hugging Face's index plus each shard's sha256 and
    size); the manifest's path and sha256."""
    names = list(state)
    per = -(-len(names) // shards)
    weight_map: dict[str, str] = {}
    entries: dict[str, dict[str, Any]] = {}
    for i in range(shards):
        shard = f"{name}-{i + 1:05d}-of-{shards:05d}.safetensors"
        part = {k: state[k] for k in names[i * per : (i + 1) * per]}
        sha = save(part, folder / shard)
        entries[shard] = {"sha256": sha, "size": (folder / shard).stat().st_size}
        weight_map.update(dict.fromkeys(part, shard))
    total = sum(t.numel() * t.element_size() for t in state.values())
    manifest = folder / f"{name}.safetensors.index.json"
    doc = {"metadata": {"total_size": total}, "weight_map": weight_map, "shards": entries}
    manifest.write_text(json.dumps(doc))
    manifest.chmod(0o644)
    return manifest, sha256_of(manifest)
