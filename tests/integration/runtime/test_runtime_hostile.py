"""Hostile input against a real runtime process under load: no checkpoint, spec field,
storage endpoint or model.json can hurt serving, run code, or leak.

One runtime process serves revision 1 of the tiny model and reports to a real
ModelDeployment on the real API server, while clients send inference requests without
pause. Each case publishes one hostile revision (or model.json) and checks, once the
runtime has recorded the failure:

* the previous revision still answers every request, with exactly its outputs: 0
  failed requests over the whole module;
* the runtime's peak RSS (VmHWM, reset before the case) rose at most PEAK_BOUND above
  its RSS before the case: the checkpoint size limit (64 MiB here) plus 32 MiB;
* the reason is recorded with its code in model metadata, /metrics and the pod report;
* no secret (a URI's password, a presigned signature, the pod's environment, a Secret,
  a file outside the roots, text a server reflected) is in the log, /metrics, model
  metadata or the ModelDeployment's status;
* nothing outside the architecture allowlist was imported or run (marker files).

The classes are the issue's: code execution, memory amplification, aliasing, dtypes,
a swap path that cannot die or hang, disclosure, and model.json itself.
"""

from __future__ import annotations

import functools
import itertools
import json
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch

from devcluster import checkpoints as ck
from devcluster import tiny
from devcluster.cluster import REPO, Cluster
from devcluster.procs import source_path
from tests.fixtures_runtime import hostile
from tests.fixtures_runtime import hostile_http as servers
from tests.fixtures_runtime.server import RuntimeProcess, running, wait_for

NAME = "hostile"
POD = "hostile-0"
LIMIT = 64 << 20  # HOTSWAP_MAX_CHECKPOINT_BYTES and HOTSWAP_MAX_MODEL_BYTES
PEAK_BOUND = LIMIT + (32 << 20)
X = torch.tensor([[1.0, 2.0, 3.0, 4.0], [0.0, -1.0, 2.0, 5.0]])

ENV_SECRET = f"env-secret-{uuid.uuid4().hex}"
TOKEN_SECRET = f"token-secret-{uuid.uuid4().hex}"
FILE_SECRET = f"file-secret-{uuid.uuid4().hex}"
PASSWORD = f"pw-{uuid.uuid4().hex}"
SIGNATURE = f"sig-{uuid.uuid4().hex}"
REFLECTED = f"reflected-{uuid.uuid4().hex}"
SECRETS = (ENV_SECRET, TOKEN_SECRET, FILE_SECRET, PASSWORD, SIGNATURE, REFLECTED)

EVIL_MODULE = """
import pathlib
pathlib.Path({marker!r}).touch()

def make(**kwargs):
    pathlib.Path({marker!r}).touch()
"""


class Traffic:
    """Clients sending inference requests without pause; each answer must carry exactly
    the outputs of the revision it names."""

    def __init__(self, url: str, expected: dict[str, list[float]], clients: int = 2) -> None:
        self.url = f"{url}/v2/models/{NAME}/infer"
        self.expected = expected
        self.ok = 0
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(clients)]
        body = {"inputs": [{"name": "input", "shape": list(X.shape), "datatype": "FP32"}]}
        body["inputs"][0]["data"] = X.flatten().tolist()
        self.body = body

    def __enter__(self) -> Traffic:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(30)

    def _run(self) -> None:
        with httpx.Client(timeout=30) as client:
            while not self._stop.is_set():
                self._one(client)

    def _one(self, client: httpx.Client) -> None:
        try:
            response = client.post(self.url, json=self.body)
            answer = response.json()
        except (httpx.HTTPError, ValueError) as exc:
            self._fail(f"{type(exc).__name__}: {exc}")
            return
        if response.status_code != 200:
            self._fail(f"HTTP {response.status_code}: {response.text[:200]}")
            return
        version = answer["model_version"]
        if answer["outputs"][0]["data"] != self.expected.get(version):
            self._fail(f"revision {version} answered with other weights' outputs")
            return
        with self._lock:
            self.ok += 1

    def _fail(self, why: str) -> None:
        with self._lock:
            self.failures.append(why)

    def answers(self) -> int:
        with self._lock:
            return self.ok


@dataclass
class World:
    cluster: Cluster
    namespace: str
    runtime: RuntimeProcess
    traffic: Traffic
    root: Path  # the file root
    outside: Path  # a folder outside it
    config_dir: Path
    http: servers.Hostile
    markers: Path
    numbers: Iterator[int]
    serving: int = 1
    expected: dict[str, list[float]] = field(default_factory=dict)

    def publish(self, revision: dict[str, Any]) -> None:
        ck.publish(self.config_dir, ck.config(revision["revision"], revision, name=NAME))

    def revision(
        self, uri: str, sha256: str, architecture: str = tiny.ARCHITECTURE, **model: Any
    ) -> dict[str, Any]:
        rev = ck.revision(next(self.numbers), uri, sha256, architecture=architecture)
        rev["model"].update(model)
        return rev

    def file(self, name: str, write: Callable[[Path], Path]) -> tuple[str, str]:
        path = write(self.root / name)
        return path.as_uri(), ck.sha256_of(path)

    def good_revision(self, name: str, seed: int) -> dict[str, Any]:
        """A verified revision of ``tiny.weights(seed)`` in file ``name``; its exact
        outputs are what Traffic and assert_previous_serves expect of it."""
        state = tiny.weights(seed)
        uri, sha = self.file(name, lambda p: _save(state, p))
        rev = self.revision(uri, sha)
        self.expected[str(rev["revision"])] = expected_outputs(state)
        return rev

    def serve(self, rev: dict[str, Any], timeout: float = 60) -> None:
        """Publish ``rev`` and wait until it is the serving revision."""
        self.publish(rev)
        self.runtime.wait_version(rev["revision"], timeout=timeout)
        self.serving = rev["revision"]

    def report(self) -> dict[str, Any]:
        """This pod's report: its ModelReplica's status ({} before the first)."""
        path = f"/apis/hotswap.dev/v1alpha1/namespaces/{self.namespace}/modelreplicas"
        items = self.cluster.rest().get(path)["items"]
        found = [i for i in items if i["metadata"]["name"] == POD]
        return dict(found[0].get("status") or {}) if found else {}


def expected_outputs(state: dict[str, torch.Tensor]) -> list[float]:
    return [float(v) for v in tiny.expected(state, X).flatten()]


def peak_rss(pid: int) -> tuple[int, int]:
    """(VmRSS, VmHWM) of process ``pid`` in bytes."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            fields[key] = int(value.split()[0]) * 1024
    return fields["VmRSS"], fields["VmHWM"]


def reset_peak(pid: int) -> None:
    Path(f"/proc/{pid}/clear_refs").write_text("5")


@pytest.fixture(scope="module")
def world(cluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    base = tmp_path_factory.mktemp("hostile")
    root, outside, config_dir = base / "models", base / "outside", base / "config"
    for folder in (root, outside):
        folder.mkdir()
    (outside / "secret.txt").write_text(FILE_SECRET)
    secrets = base / "secrets" / "creds"
    secrets.mkdir(parents=True)
    (secrets / "HTTP_AUTHORIZATION").write_text(f"Bearer {TOKEN_SECRET}")
    markers, modules = base / "markers", base / "modules"
    markers.mkdir()
    modules.mkdir()
    (modules / "evil_marker.py").write_text(EVIL_MODULE.format(marker=str(markers / "imported")))
    namespace = _namespace_with_model_deployment(cluster)
    good = tiny.weights(1)
    sha = ck.save(good, root / "v1.safetensors")
    ck.publish(
        config_dir,
        ck.config(1, ck.revision(1, (root / "v1.safetensors").as_uri(), sha), name=NAME),
    )
    env = {
        "HOTSWAP_CONFIG_DIR": str(config_dir),
        "HOTSWAP_FILE_ROOTS": str(root),
        "HOTSWAP_SECRETS_DIR": str(base / "secrets"),
        "HOTSWAP_FETCH_ALLOWED_NETWORKS": "127.0.0.1/32",
        "HOTSWAP_FETCH_IDLE_SECONDS": "5",
        "HOTSWAP_MAX_CHECKPOINT_BYTES": str(LIMIT),
        "HOTSWAP_MAX_MODEL_BYTES": str(LIMIT),
        "HOTSWAP_API_WATCH": "false",
        "HOTSWAP_LOG_LEVEL": "debug",
        "POD_NAME": POD,
        "POD_NAMESPACE": namespace,
        "KUBECONFIG": str(cluster.kubeconfig),
        "HOTSWAP_TEST_SECRET": ENV_SECRET,
        "PYTHONPATH": source_path(str(modules)),  # this checkout's contract too
    }
    expected = {"1": expected_outputs(good)}
    with (
        servers.serve() as http,
        running(base, env, model=NAME) as runtime,
        Traffic(runtime.url, expected) as traffic,
    ):
        wait_for(lambda: traffic.answers() >= 20, 30, "traffic on revision 1")
        yield World(
            cluster,
            namespace,
            runtime,
            traffic,
            root,
            outside,
            config_dir,
            http,
            markers,
            itertools.count(2),
            expected=expected,
        )
    assert traffic.failures == [], traffic.failures[:5]
    assert traffic.ok > 0


def _namespace_with_model_deployment(cluster: Cluster) -> str:
    client = cluster.rest()
    cluster.apply_crd(REPO / "crds")
    namespace = f"hostile-{uuid.uuid4().hex[:6]}"
    client.post("/api/v1/namespaces", {"metadata": {"name": namespace}})
    client.post(
        f"/apis/hotswap.dev/v1alpha1/namespaces/{namespace}/modeldeployments",
        {
            "apiVersion": "hotswap.dev/v1alpha1",
            "kind": "ModelDeployment",
            "metadata": {"name": NAME},
            "spec": {
                "model": {"architecture": tiny.ARCHITECTURE, "inputShape": [tiny.FEATURES]},
                "checkpoint": {"uri": "file:///models/v1.safetensors", "sha256": "1" * 64},
            },
        },
    )
    return namespace


# ---- the cases ----------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    code: str  # the failure's reason code
    says: str  # a fragment of the reason
    revision: dict[str, Any]


def code_execution(world: World, kind: str) -> Case:
    uri, sha = world.file(f"code-{kind}.safetensors", lambda p: _save(tiny.weights(5), p))
    marker = world.markers / "ran"
    calls = {
        "os-system": ("python/os:system", {"command": f"touch {marker}"}),
        "subprocess-run": ("python/subprocess:run", {"args": ["touch", str(marker)]}),
        "builtins-exit": ("python/builtins:exit", {}),
        "module-outside-allowlist": ("python/evil_marker:make", {}),
    }
    architecture, args = calls[kind]
    rev = world.revision(uri, sha, architecture=architecture, args=args)
    return Case("bad_architecture", f"architecture {architecture} is not allowed", rev)


def reexported(world: World, kind: str) -> Case:
    """An allowed module's import (``from subprocess import run``, ``from torch.hub
    import load``) named as the factory: refused before it is called."""
    uri, sha = world.file(f"reexport-{kind}.safetensors", lambda p: _save(tiny.weights(5), p))
    marker = world.markers / "ran"
    hub = world.root.parent / "hub"
    hub.mkdir(exist_ok=True)
    (hub / "hubconf.py").write_text(f"import pathlib\npathlib.Path({str(marker)!r}).touch()\n")
    calls = {
        "subprocess-run": ("run", {"args": ["touch", str(marker)]}),
        "torch-hub-load": ("load", {"repo_or_dir": str(hub), "model": "m", "source": "local"}),
    }
    name, args = calls[kind]
    architecture = f"python/tests.fixtures_runtime.reexports:{name}"
    rev = world.revision(uri, sha, architecture=architecture, args=args)
    return Case("bad_architecture", "not in an allowed module", rev)


def ghost_tensor(world: World) -> Case:
    """A shard manifest whose weight map names a tensor no shard holds, its shards new
    to the pod (so parsed while they download): refused as it is from the cache."""
    manifest, _ = ck.save_sharded(tiny.weights(6), world.root / "manifest-ghost", 3)
    doc = json.loads(manifest.read_text())
    doc["weight_map"]["ghost.weight"] = next(iter(doc["shards"]))
    manifest.write_text(json.dumps(doc))
    rev = world.revision(manifest.as_uri(), ck.sha256_of(manifest))
    return Case("bad_manifest", "which no shard holds", rev)


def storages(world: World, kind: str) -> Case:
    """A .pt whose storage in data.pkl is longer or shorter than its record."""
    stored = {"past-its-record": 8, "short-of-its-record": 16}[kind]
    write = functools.partial(hostile.storage_size_pt, stored=stored, declared=12)
    uri, sha = world.file(f"storage-{kind}.pt", write)
    return Case("bad_format", "but its record holds", world.revision(uri, sha))


def memory(world: World, kind: str) -> Case:
    writers: dict[str, tuple[str, Callable[[Path], Path], str]] = {
        "stride0-view": ("pt", hostile.stride0_pt, ""),
        "deflate-bomb": ("pt", hostile.deflate_bomb_pt, ""),
        "bytearray-bomb": ("pt", hostile.bytearray_bomb_pt, ""),
        "declared-100MB-header": ("safetensors", hostile.huge_declared_header, "header"),
        "48MB-header": (
            "safetensors",
            lambda p: hostile.huge_header(p, 48 << 20),
            "header",
        ),
        "deep-json-header": ("safetensors", hostile.deep_json, ""),
    }
    suffix, write, says = writers[kind]
    uri, sha = world.file(f"mem-{kind}.{suffix}", write)
    code = "state_dict_mismatch" if kind == "stride0-view" else "bad_format"  # wrong shape
    return Case(code, says, world.revision(uri, sha))


def giant_model(world: World) -> Case:
    uri, sha = world.file("giant.safetensors", lambda p: _save(tiny.weights(5), p))
    rev = world.revision(uri, sha, args={"classes": 10**9})
    return Case("model_too_large", "HOTSWAP_MAX_MODEL_BYTES", rev)


def aliasing(world: World, kind: str) -> Case:
    write = {"overlapping": hostile.overlapping_offsets, "duplicates": hostile.duplicate_names}
    uri, sha = world.file(f"alias-{kind}.safetensors", write[kind])
    return Case("bad_format", "", world.revision(uri, sha))


def dtypes(world: World, dtype: torch.dtype) -> Case:
    name = str(dtype).removeprefix("torch.")
    uri, sha = world.file(f"dtype-{name}.safetensors", lambda p: hostile.as_dtype(p, dtype))
    return Case("state_dict_mismatch", name, world.revision(uri, sha))


def disclosure(world: World, kind: str) -> Case:
    link = world.root / "innocent.safetensors"
    if kind == "symlink-to-secret" and not link.is_symlink():
        link.symlink_to(world.outside / "secret.txt")
    secret_copy = world.root / "secret-copy.safetensors"
    secret_copy.write_text(FILE_SECRET)
    http = world.http
    cases: dict[str, tuple[str, str, str]] = {
        "proc-environ": ("file:///proc/self/environ", "fetch_refused", "outside"),
        "outside-root": ((world.outside / "secret.txt").as_uri(), "fetch_refused", "outside"),
        "symlink-to-secret": (link.as_uri(), "fetch_refused", "symlink"),
        "sha256-of-a-secret": (secret_copy.as_uri(), "sha256_mismatch", "does not match"),
        "redirect-to-metadata": (
            http.route("/meta", servers.redirect("http://169.254.169.254/latest/x"))
            + ".safetensors",
            "fetch_refused",
            "link-local",
        ),
        "reflected-text": (
            http.route("/leak", servers.leak(REFLECTED, 403)) + ".safetensors",
            "fetch_failed",
            "HTTP 403",
        ),
        "password-and-signature": (
            http.route("/gone", servers.leak(REFLECTED, 500)).replace(
                "http://", f"http://user:{PASSWORD}@"
            )
            + f".safetensors?X-Amz-Signature={SIGNATURE}&X-Amz-Credential={TOKEN_SECRET}",
            "fetch_failed",
            "HTTP 500",
        ),
    }
    uri, code, says = cases[kind]
    rev = world.revision(uri, "0" * 63 + "1")  # never the secret's own sha256
    if kind in ("reflected-text", "password-and-signature"):
        rev["checkpoint"]["secretRef"] = "creds"
    return Case(code, says, rev)


def _save(state: dict[str, torch.Tensor], path: Path) -> Path:
    ck.save(state, path)
    return path


CASES: dict[str, Callable[[World], Case]] = {
    **{
        f"code/{k}": (lambda w, k=k: code_execution(w, k))
        for k in ("os-system", "subprocess-run", "builtins-exit", "module-outside-allowlist")
    },
    **{
        f"memory/{k}": (lambda w, k=k: memory(w, k))
        for k in (
            "stride0-view",
            "deflate-bomb",
            "bytearray-bomb",
            "declared-100MB-header",
            "48MB-header",
            "deep-json-header",
        )
    },
    "memory/giant-model-args": giant_model,
    **{
        f"code/reexported-{k}": (lambda w, k=k: reexported(w, k))
        for k in ("subprocess-run", "torch-hub-load")
    },
    "manifest/tensor-in-no-shard": ghost_tensor,
    **{
        f"pt/storage-{k}": (lambda w, k=k: storages(w, k))
        for k in ("past-its-record", "short-of-its-record")
    },
    **{f"aliasing/{k}": (lambda w, k=k: aliasing(w, k)) for k in ("overlapping", "duplicates")},
    "dtype/float16": lambda w: dtypes(w, torch.float16),
    "dtype/int64": lambda w: dtypes(w, torch.int64),
    **{
        f"disclosure/{k}": (lambda w, k=k: disclosure(w, k))
        for k in (
            "proc-environ",
            "outside-root",
            "symlink-to-secret",
            "sha256-of-a-secret",
            "redirect-to-metadata",
            "reflected-text",
            "password-and-signature",
        )
    },
}


def assert_nothing_leaked(world: World) -> None:
    metadata = world.runtime.get(f"/v2/models/{NAME}").text
    places = {
        "log": world.runtime.log(),
        "metrics": world.runtime.metrics(),
        "metadata": metadata,
        "report": json.dumps(world.report()),
    }
    secret_sha = ck.sha256_of(world.outside / "secret.txt")
    # the secret file's size as a message would say it ("44 bytes"), not the tail of a
    # logged short sha256 followed by bytes=N ("...ac1fe9f30d44 bytes=1080")
    size = re.compile(rf"(?<![0-9a-zA-Z]){len(FILE_SECRET)} bytes(?!=)")
    for where, text in places.items():
        for secret in (*SECRETS, secret_sha, secret_sha[:12]):
            assert secret not in text, f"{secret[:12]}... found in the {where}"
        assert not size.search(text), f"the secret file's size found in the {where}"
    assert not list(world.markers.iterdir()), "a module outside the allowlist ran"


def assert_previous_serves(world: World) -> None:
    start = world.traffic.answers()
    wait_for(lambda: world.traffic.answers() >= start + 10, 30, "10 more answers")
    meta = world.runtime.metadata()
    assert meta["model_version"] == str(world.serving)
    assert world.traffic.failures == [], world.traffic.failures[:5]


def wait_reported(world: World, number: int, code: str) -> dict[str, Any]:
    failure: dict[str, Any] = world.runtime.wait_failure(number, timeout=60)
    if code:
        assert failure["code"] == code, failure
    assert f'reason="{failure["code"]}"' in world.runtime.metrics()
    report = wait_for(
        lambda: (
            (p := world.report()).get("targetRevision") == number
            and p.get("state") == "Failed"
            and p
        ),
        30,
        f"the pod report of revision {number}",
    )
    assert report["message"] == failure["reason"]
    assert report["revision"] == world.serving
    return failure


@pytest.mark.parametrize("case", sorted(CASES))
def test_hostile_revision_is_refused_under_load(world: World, case: str) -> None:
    pid = world.runtime.process.pid
    made = CASES[case](world)
    before, _ = peak_rss(pid)
    reset_peak(pid)
    world.publish(made.revision)
    failure = wait_reported(world, made.revision["revision"], made.code)
    _, peak = peak_rss(pid)
    print(f"{case}: {failure['code']}, peak RSS +{(peak - before) / 2**20:.1f} MiB")  # with -s
    assert failure["reason"] and made.says in failure["reason"], failure
    assert peak - before <= PEAK_BOUND, f"peak RSS rose {(peak - before) >> 20} MiB"
    assert_previous_serves(world)
    assert_nothing_leaked(world)


def test_after_every_failure_a_legitimate_revision_serves_its_exact_weights(world: World) -> None:
    """Run last in this module's order: whatever the cases above left behind (aliased
    buffers, staging, failures remembered), the next verified checkpoint serves exactly
    what a fresh model loaded from the same file computes."""
    rev = world.good_revision("legit-after.safetensors", 8)
    world.serve(rev)
    assert_previous_serves(world)
    body = {"inputs": [{"name": "input", "shape": list(X.shape), "datatype": "FP32"}]}
    body["inputs"][0]["data"] = X.flatten().tolist()
    answer = httpx.post(f"{world.runtime.url}/v2/models/{NAME}/infer", json=body).json()
    assert answer["outputs"][0]["data"] == expected_outputs(tiny.weights(8))


def test_a_factory_that_raises_system_exit_leaves_the_loader_alive(world: World) -> None:
    uri, sha = world.file("exit.safetensors", lambda p: _save(tiny.weights(5), p))
    for factory in ("make_exiting", "make_exiting_forward"):
        rev = world.revision(uri, sha, architecture=f"{hostile.HOSTILE}:{factory}")
        world.publish(rev)
        failure = wait_reported(world, rev["revision"], "")
        assert "SystemExit" in failure["reason"], failure
    world.serve(world.good_revision("after-exit.safetensors", 9))
    assert_previous_serves(world)


def test_a_stalled_download_yields_to_a_newer_revision_within_a_second(world: World) -> None:
    release, wrote = threading.Event(), threading.Event()
    slow = ck.save(tiny.weights(11), world.outside / "slow.safetensors")  # not in the cache
    data = (world.outside / "slow.safetensors").read_bytes()
    stalled = world.http.route("/stall", servers.stall_after(data, 64, release, wrote))
    first = world.revision(stalled + ".safetensors", slow)
    world.publish(first)
    wrote.wait(30)
    newer = world.good_revision("newer.safetensors", 10)
    began = time.monotonic()
    world.serve(newer, timeout=30)
    took = time.monotonic() - began
    release.set()
    assert took < 3, f"the newer revision served {took:.2f}s after it was published"
    wait_for(  # the superseded attempt is recorded first, then the newer one's
        lambda: (world.runtime.metadata()["last_swap"] or {}).get("revision") == newer["revision"],
        30,
        "the newer revision's swap recorded",
    )
    assert world.runtime.metadata()["last_swap"]["result"] == "ok"
    assert_previous_serves(world)


@pytest.mark.parametrize("kind", ["dev-zero", "huge"])
def test_a_hostile_model_json_is_a_config_error_and_serving_goes_on(
    world: World, kind: str
) -> None:
    link = world.config_dir / "model.json"
    target = link.readlink()
    link.unlink()
    if kind == "dev-zero":
        link.symlink_to("/dev/zero")
    else:
        link.write_text(" " * (50 << 20))
    try:
        failure = wait_for(
            lambda: (
                (f := world.runtime.metadata().get("last_failure") or {}).get("code")
                == "config_error"
                and "model.json" in f["reason"]
                and f
            ),
            30,
            "the config error",
        )
        started = time.monotonic()
        assert world.runtime.get("/v2/health/ready").status_code == 200
        assert time.monotonic() - started < 1
        assert failure["revision"] is None
        assert_previous_serves(world)
    finally:
        link.unlink()
        link.symlink_to(target)
