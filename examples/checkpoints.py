"""Make the example checkpoints: seeded random initialisations saved as safetensors.

Nothing can be downloaded on the machines this project is built on, so the examples use
weights generated here: `torchvision/resnet18` with 10 classes, initialised from a fixed
seed (one seed per version) and saved with safetensors. The same torch release gives
the same bytes, so the sha256 values in resnet18.yaml hold on any machine.

    python -m examples.checkpoints            # writes v1 and v2, prints uri and sha256
    python -m examples.checkpoints --dir /srv/models --versions 1 2 3

Runtime pods read them where the chart mounts `runtime.modelVolume`: /models. The local
values (examples/values-local.yaml) make that volume a hostPath of DEFAULT_DIR, so the
URIs name the files by their path inside the pod: file:///models/resnet18-v1.safetensors.
"""

from __future__ import annotations

import argparse
import hashlib
from pathlib import Path

DEFAULT_DIR = Path("/var/tmp/hotswap-examples")
POD_DIR = "/models"  # where runtime pods see DEFAULT_DIR (the chart's runtime.modelVolume)
ARCHITECTURE = "resnet18"
ARGS = {"num_classes": 10}


def checkpoint_path(version: int, folder: Path = DEFAULT_DIR) -> Path:
    return folder / f"{ARCHITECTURE}-v{version}.safetensors"


def pod_uri(path: Path, folder: Path = DEFAULT_DIR) -> str:
    """The file:// URI of `path` (under `folder`) as a runtime pod names it."""
    return f"file://{POD_DIR}/{path.relative_to(folder).as_posix()}"


def host_path(uri: str, folder: Path = DEFAULT_DIR) -> Path:
    """The file on this machine that a pod's `file:///models/...` URI names."""
    prefix = f"file://{POD_DIR}/"
    if not uri.startswith(prefix):
        raise ValueError(f"{uri} is not under {prefix}")
    return folder / uri.removeprefix(prefix)


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        for chunk in iter(lambda: stream.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def make(version: int, folder: Path = DEFAULT_DIR) -> tuple[Path, str]:
    """Write checkpoint `version` (seed = version) unless present; return path, sha256."""
    path = checkpoint_path(version, folder)
    if not path.exists():
        import torch
        import torchvision
        from safetensors.torch import save_file

        torch.manual_seed(version)
        model = torchvision.models.get_model(ARCHITECTURE, weights=None, **ARGS)
        state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
        folder.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(".partial")
        save_file(state, str(partial), metadata={"seed": str(version)})
        partial.replace(path)
    path.chmod(0o644)  # runtime containers read it as uid 10001, whatever the umask was
    return path, sha256_of(path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", type=Path, default=DEFAULT_DIR)
    parser.add_argument("--versions", type=int, nargs="+", default=[1, 2])
    args = parser.parse_args(argv)
    for version in args.versions:
        path, sha = make(version, args.dir)
        print(f"{pod_uri(path, args.dir)} {sha}  ({path})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
