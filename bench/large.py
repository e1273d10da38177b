"""Benchmark: a multi-GB sharded checkpoint swapped under load, from a file and over HTTP.

The model is ``python/hotswap_runtime.examples:mlp`` (a stack of Linear layers, on the
default allowlist) sized to ``--gb`` gigabytes in each ``--dtypes`` dtype, with random
weights saved as sharded safetensors (``--shards`` files and a manifest) under
``/var/tmp`` (deleted afterwards). For each dtype it starts ``python -m hotswap_runtime``
on loopback, loads revision A, swaps to B, A and B (a fresh build, then each model's
first reuse as the standby), then measures under closed-loop HTTP load:

* ``file``: a swap to A from ``file://``, then ``http``: a swap to B from a local HTTP
  server (byte ranges, ``Accept-Ranges: bytes``) capped at ``--mbps`` MiB/s in all; or,
  then each other ``--source`` in turn, swapping between A and B: ``gs``: from
  fake-gcs-server (its filesystem backend), with a service account key in the Secret;
  ``az``: from Azurite, with the account key in the Secret; ``oci``: B pushed as an OCI
  artifact (each file a raw layer, named by the artifact's digest) to the CNCF
  distribution registry (``make registry``: TLS, token auth), the swap from ``oci://``
  with the pull secret. The emulators and the registry run on loopback, started here
  from ``make emulators``'s and ``make registry``'s builds, each behind a TCP proxy
  capped at ``--mbps`` too (TLS passes through it).
  The runtime's cache is emptied of the files not serving before each, so each swap
  reads every byte from its source.
* ``swap_seconds``: from writing ``model.json`` to the first metadata answer naming the
  new revision; ``fetch_only_seconds``: a plain download of the same bytes in the same
  run (a sequential read of each file; one streaming GET per file through the same
  capped server or emulator, the JSON API media URL for gs, the blob URL with a SAS for
  az, or of each blob from the same registry with a pull token);
  ``swap_over_fetch`` their ratio (target <= 1.15).
* ``rss_growth_mb``: peak RSS of the runtime during the swap (sampled every 20 ms) minus
  its RSS just before; target <= model size + the fetch window (128 MiB: two shards in
  flight, four 16 MiB parts each).
* failed requests (target 0) and p99 during the swap over steady p99 (few requests: a
  2 GB model answers in about a second on a CPU; the counts are reported).

The last line printed is one JSON object with the figures per dtype and source.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import math
import shutil
import ssl
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench._common import LoadGenerator, Runtime, free_port, percentile, poll, rss_mb
from devcluster import azurite, fake_gcs
from devcluster.capped_proxy import CappedProxy
from devcluster.capped_store import CappedStore

ARCHITECTURE = "python/hotswap_runtime.examples:mlp"
FEATURES = 64
REPOSITORY = "bench/large"
SOURCES = ("http", "oci", "gs", "az")
REPO = Path(__file__).resolve().parents[1]
WINDOW_MB = 128  # fetch_stream.WINDOW_BYTES: 2 shards in flight x 4 parts x 16 MiB


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    root = Path(tempfile.mkdtemp(prefix="hotswap-large-", dir=args.dir))
    results: dict[str, Any] = {}
    try:
        for dtype in args.dtypes:
            print(f"== {dtype}, {args.gb} GB", file=sys.stderr, flush=True)
            results[dtype] = Large(dtype, args, root / dtype).run()
            print(json.dumps(results[dtype]), file=sys.stderr, flush=True)
            shutil.rmtree(root / dtype, ignore_errors=True)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print(json.dumps(_summary(results, args)))
    return 0


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--gb", type=float, default=2.0, help="model size in GB (default 2)")
    p.add_argument("--dtypes", default="float16", help="comma-separated (float16,float32)")
    p.add_argument("--shards", type=int, default=8)
    p.add_argument("--hidden", type=int, default=8192, help="width of each Linear layer")
    p.add_argument("--mbps", type=float, default=200.0, help="HTTP server cap, MiB/s")
    p.add_argument(
        "--source",
        default="http",
        help=f"remote sources after file, comma-separated ({','.join(SOURCES)})",
    )
    p.add_argument("--clients", type=int, default=2, help="0: no load (the pipeline alone)")
    p.add_argument("--steady-seconds", type=float, default=10.0)
    p.add_argument("--dir", default="/var/tmp", help="where checkpoints and the cache go")
    p.add_argument("--log", help="a folder to keep the runtime's log in")
    args = p.parse_args(argv)
    args.dtypes = args.dtypes.split(",")
    args.source = args.source.split(",")
    if not set(args.source) <= set(SOURCES):
        p.error(f"--source: one or more of {', '.join(SOURCES)}")
    return args


class Large:
    """One dtype: two sharded revisions, a runtime process, load, two measured swaps."""

    def __init__(self, dtype: str, args: argparse.Namespace, root: Path) -> None:
        self.dtype = dtype
        self.args = args
        self.root = root
        self.revision = 0
        itemsize = torch.empty(0, dtype=getattr(torch, dtype)).element_size()
        per_layer = args.hidden * args.hidden * itemsize
        self.layers = 1 + math.ceil(args.gb * 1e9 / per_layer)  # the first layer is narrow
        self.model = {"features": FEATURES, "hidden": args.hidden, "layers": self.layers}
        self.manifests: dict[str, tuple[Path, str]] = {}
        self.digests: dict[str, str] = {}  # --source oci: each revision's artifact

    def run(self) -> dict[str, Any]:
        self.root.mkdir(parents=True)
        for name, seed in (("a", 1), ("b", 2)):
            self.manifests[name] = self._checkpoint(self.root / name, seed)
        nbytes = sum(p.stat().st_size for p in (self.root / "a").glob("*.safetensors"))
        with (
            CappedStore(self.root, self.args.mbps) as store,
            self._registry() as registry,
            contextlib.ExitStack() as clouds,
        ):
            self.url = store.url
            self.registry = registry
            self.oci_host = self._oci_host(registry, clouds)
            self.direct = {
                source: clouds.enter_context(_cloud(source, self.root))
                for source in self.args.source
                if source in ("gs", "az")
            }
            self._upload()
            self.clouds = {
                source: f"http://127.0.0.1:{clouds.enter_context(_capped(url, self.args.mbps))}"
                + urlsplit(url).path
                for source, url in self.direct.items()
            }
            self._write_secret()
            self._publish("a", "file")
            runtime = Runtime(self._env(), free_port(), self.root / "runtime.log")
            runtime.start(wait_ready=False)  # the first load of a few GB takes a while
            poll(runtime._ready, 900, "the runtime to load revision A", 0.2)
            load = LoadGenerator(f"{runtime.url}/v2/models/large/infer", _body(), self.args.clients)
            load.start()
            try:
                if self.args.clients:  # 0: no load, the swap pipeline's own speed
                    poll(lambda: len([s for s in load.samples if s.ok]) >= 3, 300, "warm-up")
                # A fresh build, then each model's first reuse as a standby (which binds
                # it to a buffer of its own): from then on the steady state is measured.
                for name in ("b", "a", "b"):
                    self._swap(runtime, name, "file", load)
                t0 = time.perf_counter()
                time.sleep(self.args.steady_seconds)
                steady = load.since(t0, time.perf_counter())
                sources = ["file", *self.args.source]
                figures = {
                    source: self._measured(runtime, "ab"[i % 2], source, load, steady)
                    for i, source in enumerate(sources)
                }
                failed = sum(not s.ok for s in load.samples)
            finally:
                load.stop()
                runtime.stop()
                if self.args.log:
                    shutil.copy(runtime.log_path, Path(self.args.log) / f"large-{self.dtype}.log")
        return {
            "dtype": self.dtype,
            "model_bytes": nbytes,
            "model_gb": round(nbytes / 1e9, 3),
            "layers": self.layers,
            "hidden": self.args.hidden,
            "shards": self.args.shards,
            "http_cap_mib_s": self.args.mbps,
            "window_mb": WINDOW_MB,
            "failed_requests": failed,
            "steady_requests": len(steady),
            **figures,
        }

    def _measured(
        self, runtime: Runtime, name: str, source: str, load: LoadGenerator, steady: list[Any]
    ) -> dict[str, Any]:
        self._drop_cached(runtime)
        fetch_only = self._fetch_only(name, source)
        swap = self._swap(runtime, name, source, load)
        model_mb = swap["bytes"] / 2**20
        during = [s for s in load.samples if s.start < swap["end"] and s.end > swap["start"]]
        steady_ok = [s.end - s.start for s in steady if s.ok]
        during_ok = [s.end - s.start for s in during if s.ok]
        ratio = (
            percentile(during_ok, 99) / percentile(steady_ok, 99)
            if during_ok and steady_ok
            else None
        )
        return {
            "swap_seconds": round(swap["seconds"], 3),
            "fetch_only_seconds": round(fetch_only, 3),
            "swap_over_fetch": round(swap["seconds"] / fetch_only, 3),
            "phases": swap["phases"],
            "mode": swap["mode"],
            "rss_growth_mb": round(swap["rss_growth_mb"], 1),
            "rss_growth_target_mb": round(model_mb + WINDOW_MB, 1),
            "requests_during_swap": len(during),
            "p99_ratio": round(ratio, 3) if ratio is not None else None,
        }

    def _swap(
        self, runtime: Runtime, name: str, source: str, load: LoadGenerator
    ) -> dict[str, Any]:
        assert runtime.process is not None
        pid = runtime.process.pid
        before = rss_mb(pid)
        peak = [before]
        done = threading.Event()

        def sample() -> None:
            while not done.wait(0.02):
                peak[0] = max(peak[0], rss_mb(pid))

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        start = time.perf_counter()
        revision = self._publish(name, source)
        meta = poll(
            lambda: (m := runtime.metadata("large"))["model_version"] == str(revision) and m,
            900,
            f"revision {revision}",
            0.02,
        )
        end = time.perf_counter()
        done.set()
        sampler.join()
        # The answer names the revision a moment before the swap's record is written.
        meta = poll(
            lambda: (m := runtime.metadata("large"))["last_swap"]["revision"] == revision and m,
            60,
            f"the record of the swap to revision {revision}",
            0.02,
        )
        files = (self.root / name).glob("*.safetensors")
        return {
            "start": start,
            "end": end,
            "seconds": end - start,
            "phases": meta["last_swap"]["phases"],
            "mode": meta["last_swap"]["mode"],
            "rss_growth_mb": peak[0] - before,
            "bytes": sum(p.stat().st_size for p in files),
        }

    def _fetch_only(self, name: str, source: str) -> float:
        """A plain download of the same bytes from the same source."""
        files = sorted((self.root / name).glob("*.safetensors"))
        start = time.perf_counter()
        for path in files:
            if source == "file":
                with path.open("rb", buffering=0) as f:
                    buffer = bytearray(8 << 20)
                    while f.readinto(buffer):
                        pass
            elif source == "oci":
                self._plain_blob(path)
            else:
                with httpx.stream("GET", self._plain_url(source, name, path.name), timeout=60) as r:
                    r.raise_for_status()
                    for _ in r.iter_raw(1 << 20):
                        pass
        return time.perf_counter() - start

    def _plain_url(self, source: str, name: str, file: str) -> str:
        if source == "gs":
            return fake_gcs.media_url(self.clouds["gs"], f"{name}/{file}")
        if source == "az":
            return azurite.blob_url(self.clouds["az"], f"{name}/{file}")
        return f"{self.url}/{name}/{file}"

    def _upload(self) -> None:
        """Every file of A and B into each emulator (directly, not through the cap)."""
        for source, endpoint in self.direct.items():
            for path in sorted(self.root.glob("[ab]/*")):
                name = f"{path.parent.name}/{path.name}"
                with path.open("rb") as f:
                    (fake_gcs if source == "gs" else azurite).upload(endpoint, name, f)

    def _write_secret(self) -> None:
        """The Secret that reaches each emulator through its capped proxy."""
        if not self.clouds:
            return
        folder = self.root / "secrets" / "store"
        folder.mkdir(parents=True)
        secret: dict[str, str] = {}
        for source, endpoint in self.clouds.items():
            if source == "gs":
                secret |= fake_gcs.secret(endpoint, fake_gcs.service_account_key())
            else:
                secret |= azurite.secret(endpoint)
        for key, value in secret.items():
            (folder / key).write_text(value)

    def _plain_blob(self, path: Path) -> None:
        """GET one blob from the registry: a pull token, then the blob by its digest."""
        registry = self.registry
        assert registry is not None
        token = registry.token(REPOSITORY, "pull")
        url = f"https://{self.oci_host}/v2/{REPOSITORY}/blobs/sha256:{_sha256(path)}"
        verify = ssl.create_default_context(cafile=registry.ca)
        headers = {"Authorization": f"Bearer {token}"}
        with httpx.stream("GET", url, headers=headers, verify=verify, timeout=60) as r:
            assert r.status_code == 200, r.status_code
            for _ in r.iter_raw(1 << 20):
                pass

    @contextmanager
    def _registry(self) -> Iterator[Any]:
        """The registry with both revisions pushed (``--source oci``), else None."""
        if "oci" not in self.args.source:
            yield None
            return
        from devcluster import oci_registry

        with oci_registry.serve(self.root / "registry") as registry:
            for name in ("a", "b"):
                files = sorted((self.root / name).iterdir())
                self.digests[name] = registry.push(REPOSITORY, name, {f.name: f for f in files})
            yield registry

    def _oci_host(self, registry: Any, clouds: contextlib.ExitStack) -> str:
        """Where the runtime reaches the registry (``host:port`` of its capped proxy),
        and the pull secret that logs in there."""
        if registry is None:
            return ""
        port = clouds.enter_context(_capped(f"https://{registry.host}", self.args.mbps))
        host = f"127.0.0.1:{port}"
        secrets = self.root / "secrets" / "pull"
        secrets.mkdir(parents=True)
        (secrets / ".dockerconfigjson").write_text(registry.docker_config(host))
        return host

    def _drop_cached(self, runtime: Runtime) -> None:
        """Empty the runtime's cache of every file but the serving revision's."""
        serving = runtime.metadata("large")["model_version"]
        keep = self._serving_shas(int(serving))
        for path in (self.root / "cache").iterdir():
            if path.name not in keep and not path.name.startswith("."):
                path.unlink(missing_ok=True)

    def _serving_shas(self, revision: int) -> set[str]:
        name = self.served[revision]
        manifest, sha = self.manifests[name]
        shards = json.loads(manifest.read_text())["shards"]
        return {sha} | {entry["sha256"] for entry in shards.values()}

    # ---- inputs -------------------------------------------------------------------------

    def _checkpoint(self, folder: Path, seed: int) -> tuple[Path, str]:
        """Random weights of the model, saved as sharded safetensors and a manifest."""
        import safetensors.torch

        folder.mkdir(parents=True)
        dtype = getattr(torch, self.dtype)
        generator = torch.Generator().manual_seed(seed)
        shapes = _shapes(self.layers, self.args.hidden)
        per = -(-len(shapes) // self.args.shards)
        names = list(shapes)
        weight_map: dict[str, str] = {}
        entries: dict[str, dict[str, Any]] = {}
        count = -(-len(names) // per)
        for i in range(count):
            shard = f"model-{i + 1:05d}-of-{count:05d}.safetensors"
            part = {}
            for key in names[i * per : (i + 1) * per]:
                scale = 1.0 / shapes[key][-1] ** 0.5
                tensor = torch.rand(shapes[key], generator=generator) * 2 - 1
                part[key] = (tensor * scale).to(dtype)
            safetensors.torch.save_file(part, str(folder / shard))
            del part
            entries[shard] = {
                "sha256": _sha256(folder / shard),
                "size": (folder / shard).stat().st_size,
            }
            weight_map.update(dict.fromkeys(names[i * per : (i + 1) * per], shard))
        manifest = folder / "model.safetensors.index.json"
        manifest.write_text(json.dumps({"weight_map": weight_map, "shards": entries}))
        return manifest, _sha256(manifest)

    def _publish(self, name: str, source: str) -> int:
        from hotswap_contract.wire import CONFIG_KEY

        self.revision += 1
        if not hasattr(self, "served"):
            self.served: dict[int, str] = {}
        self.served[self.revision] = name
        manifest, sha = self.manifests[name]
        uri = f"file://{manifest}" if source == "file" else f"{self.url}/{name}/{manifest.name}"
        secret = {}
        if source == "oci":
            uri = f"oci://{self.oci_host}/{REPOSITORY}@{self.digests[name]}/{manifest.name}"
            secret = {"secretRef": "pull"}
        if source in ("gs", "az"):
            bucket = fake_gcs.BUCKET if source == "gs" else azurite.CONTAINER
            uri = f"{source}://{bucket}/{name}/{manifest.name}"
            secret = {"secretRef": "store"}
        doc = {
            "name": "large",
            "generation": self.revision,
            "stable": {
                "revision": self.revision,
                "model": {
                    "architecture": ARCHITECTURE,
                    "args": self.model,
                    "inputShape": [FEATURES],
                    "dtype": self.dtype,
                },
                "checkpoint": {"uri": uri, "sha256": sha, **secret},
            },
        }
        config = self.root / "config"
        config.mkdir(exist_ok=True)
        tmp = config / f".{CONFIG_KEY}.tmp"
        tmp.write_text(json.dumps(doc))
        tmp.replace(config / CONFIG_KEY)
        return self.revision

    def _env(self) -> dict[str, str]:
        limit = str(int(3 * self.args.gb * 1e9) + (1 << 30))
        return {
            "HOTSWAP_MODEL_NAME": "large",
            "HOTSWAP_CONFIG_DIR": str(self.root / "config"),
            "HOTSWAP_CACHE_DIR": str(self.root / "cache"),
            "HOTSWAP_FILE_ROOTS": str(self.root),
            "HOTSWAP_FETCH_ALLOWED_NETWORKS": "127.0.0.1/32",
            "HOTSWAP_CACHE_MAX_BYTES": limit,
            "HOTSWAP_MAX_CHECKPOINT_BYTES": limit,
            "HOTSWAP_MAX_MODEL_BYTES": limit,
            "HOTSWAP_DEVICE": "cpu",
            "HOTSWAP_RESYNC_SECONDS": "300",
            "HOTSWAP_TORCH_THREADS": "1",
            "OMP_NUM_THREADS": "1",
            "HOTSWAP_LOG_LEVEL": "info",
            "HOTSWAP_SECRETS_DIR": str(self.root / "secrets"),
            **({"SSL_CERT_FILE": str(self.registry.ca)} if self.registry is not None else {}),
        }


def _shapes(layers: int, hidden: int) -> dict[str, tuple[int, ...]]:
    """The state-dict shapes of ``mlp(FEATURES, hidden, 10, layers)``."""
    shapes: dict[str, tuple[int, ...]] = {}
    width = FEATURES
    for i in range(layers):
        shapes[f"{2 * i + 1}.weight"] = (hidden, width)
        shapes[f"{2 * i + 1}.bias"] = (hidden,)
        width = hidden
    shapes[f"{2 * layers + 1}.weight"] = (10, width)
    shapes[f"{2 * layers + 1}.bias"] = (10,)
    return shapes


def _body() -> bytes:
    x = [round(i / FEATURES, 4) for i in range(FEATURES)]
    doc = {"inputs": [{"name": "input", "shape": [1, FEATURES], "datatype": "FP32", "data": x}]}
    return json.dumps(doc).encode()


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(8 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _summary(results: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    rows = [(d, s, r[s]) for d, r in results.items() for s in ("file", *args.source)]
    return {
        "bench": "large",
        "gb": args.gb,
        "dtypes": args.dtypes,
        "http_cap_mib_s": args.mbps,
        "failed_requests": sum(r["failed_requests"] for r in results.values()),
        "swap_over_fetch": {f"{d}/{s}": f["swap_over_fetch"] for d, s, f in rows},
        "swap_seconds": {f"{d}/{s}": f["swap_seconds"] for d, s, f in rows},
        "rss_growth_mb": {f"{d}/{s}": f["rss_growth_mb"] for d, s, f in rows},
        "p99_ratio": {f"{d}/{s}": f["p99_ratio"] for d, s, f in rows},
        "results": results,
    }


@contextlib.contextmanager
def _capped(url: str, mbps: float) -> Iterator[int]:
    """A proxy capped at ``mbps`` MiB/s in front of the server of ``url``; its port."""
    parts = urlsplit(url)
    with CappedProxy((parts.hostname or "127.0.0.1", parts.port or 80), mbps) as proxy:
        yield proxy.port


@contextlib.contextmanager
def _cloud(source: str, root: Path) -> Iterator[str]:
    """The emulator of ``source`` (built by ``make emulators``); its endpoint."""
    if source == "gs":
        binary = REPO / ".cache" / "bin" / "fake-gcs-server"
        with fake_gcs.serve(binary, root / "gcs", backend="filesystem") as url:
            yield url
    else:
        with azurite.serve(REPO / ".cache" / "azurite", root / "azurite") as url:
            yield url


if __name__ == "__main__":
    raise SystemExit(main())
