"""Benchmark: one object downloaded from fake-gcs-server and Azurite by the runtime's
store (gs:// and az:// over the hardened HTTP client: ranged parts, sha256, cache file),
by the store reading the same HTTPS request as an http(s):// URI (``store_as_http``),
by a plain streaming GET that hashes, and by obstore when importable (``--obstore-path``).

Each client reads the same ``--mb`` MiB object ``--runs`` times; the best time counts.
The last line printed is one JSON object: seconds per cloud and client.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from devcluster import azurite, fake_gcs
from hotswap_contract.wire import Checkpoint
from hotswap_runtime.checkpoint.store import CheckpointStore

REPO = Path(__file__).resolve().parents[1]
NAME = "bench/object.bin"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--mb", type=int, default=256)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--obstore-path", help="a folder holding obstore (pip install --target)")
    args = p.parse_args(argv)
    if args.obstore_path:
        sys.path.append(args.obstore_path)
    data = os.urandom(args.mb << 20)
    sha = hashlib.sha256(data).hexdigest()
    results: dict[str, Any] = {"mb": args.mb}
    with tempfile.TemporaryDirectory(dir="/var/tmp") as tmp:
        root = Path(tmp)
        binary = REPO / ".cache" / "bin" / "fake-gcs-server"
        with fake_gcs.serve(binary, root / "gcs", backend="filesystem") as url:
            fake_gcs.upload(url, NAME, data)
            secret = fake_gcs.secret(url, fake_gcs.service_account_key())
            clients = {
                "store": lambda: _store(root, secret, f"gs://{fake_gcs.BUCKET}/{NAME}", sha),
                "store_as_http": lambda: _store(root, {}, fake_gcs.media_url(url, NAME), sha),
                "plain_get": lambda: _get(fake_gcs.media_url(url, NAME)),
                "obstore": lambda: _obstore_gcs(url),
            }
            results["gs"] = _measure(clients, args.runs)
        with azurite.serve(REPO / ".cache" / "azurite", root / "azurite") as url:
            azurite.upload(url, NAME, data)
            secret = azurite.secret(url)
            clients = {
                "store": lambda: _store(root, secret, f"az://{azurite.CONTAINER}/{NAME}", sha),
                "store_as_http": lambda: _store(root, {}, azurite.blob_url(url, NAME), sha),
                "plain_get": lambda: _get(azurite.blob_url(url, NAME)),
                "obstore": lambda: _obstore_az(url),
            }
            results["az"] = _measure(clients, args.runs)
    print(json.dumps(results))
    return 0


def _measure(clients: dict[str, Callable[[], None]], runs: int) -> dict[str, float | str]:
    out: dict[str, float | str] = {}
    for name, run in clients.items():
        try:
            best = min(_timed(run) for _ in range(runs))
        except ImportError:
            out[name] = "not installed"
            continue
        out[name] = round(best, 3)
        print(f"{name}: {best:.3f} s", file=sys.stderr, flush=True)
    return out


def _timed(run: Callable[[], None]) -> float:
    start = time.perf_counter()
    run()
    return time.perf_counter() - start


def _store(root: Path, secret: dict[str, str], uri: str, sha: str) -> None:
    folder = Path(tempfile.mkdtemp(dir=root)) / "store"
    folder.mkdir()
    for key, value in secret.items():
        (folder / key).write_text(value)
    store = CheckpointStore(
        folder.parent / "cache",
        4 << 30,
        4 << 30,
        folder.parent,
        file_roots=(),
        allowed_networks=("127.0.0.1/32",),
    )
    try:
        store.fetch(Checkpoint(uri=uri, sha256=sha, secretRef="store" if secret else None))
    finally:
        store.close()


def _get(url: str) -> None:
    digest = hashlib.sha256()
    with httpx.stream("GET", url, timeout=60) as response:
        response.raise_for_status()
        for chunk in response.iter_raw(1 << 20):
            digest.update(chunk)


def _obstore_gcs(url: str) -> None:
    from obstore.store import GCSStore  # type: ignore[import-not-found,unused-ignore]

    store = GCSStore(fake_gcs.BUCKET, skip_signature=True, config={"base_url": url})
    _obstore_read(store)


def _obstore_az(url: str) -> None:
    from obstore.store import AzureStore  # type: ignore[import-not-found,unused-ignore]

    os.environ["AZURITE_BLOB_STORAGE_URL"] = url.rsplit("/", 1)[0]  # obstore adds the account
    store = AzureStore(azurite.CONTAINER, config={"use_emulator": True})
    _obstore_read(store)


def _obstore_read(store: Any) -> None:
    import obstore  # type: ignore[import-not-found,unused-ignore]

    digest = hashlib.sha256()
    for chunk in obstore.get(store, NAME).stream(min_chunk_size=1 << 20):
        digest.update(chunk)


if __name__ == "__main__":
    raise SystemExit(main())
