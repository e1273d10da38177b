"""hf:// fetches against an HTTP server laid out like the Hugging Face Hub on loopback.

The "Hub" serves ``/ORG/REPO/resolve/REVISION/PATH`` and, like the real one, redirects
large files to its storage ("CDN", another origin on 127.0.0.1), answering HEAD and GET
of an LFS file with ``X-Linked-Etag`` (its sha256), ``X-Linked-Size`` and
``X-Repo-Commit`` (``hostile.hub_lfs``). The Secret names the mirror (``HF_ENDPOINT``)
and the token (``HF_TOKEN``). Each test starts its servers.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from devcluster import checkpoints as ck
from devcluster import tiny
from hotswap_contract.wire import Checkpoint
from hotswap_runtime.checkpoint.store import CheckpointStore
from hotswap_runtime.errors import (
    CheckpointNotFound,
    CheckpointTooLarge,
    FetchError,
    FetchRefused,
    IntegrityError,
    ManifestError,
    Superseded,
)
from tests.fixtures_runtime import hostile_http as hostile
from tests.fixtures_runtime import tcp_relay
from tests.fixtures_runtime.server import running
from tests.fixtures_runtime.stores import remote_store
from tests.integration.runtime.test_runtime_fetch_http import cancelled_fetch
from tests.integration.runtime.test_runtime_remote_stores import infer, output_of, write_secret

TOKEN = "hf_s3cretHubToken0123456789"
DATA = os.urandom(300_000)
SHA = hashlib.sha256(DATA).hexdigest()
IDLE = 1.0
COMMIT = "0a1b2c3d4e5f60718293a4b5c6d7e8f901234567"


@pytest.fixture
def hub() -> Iterator[hostile.Hostile]:
    with hostile.serve() as server:
        yield server


@pytest.fixture
def cdn() -> Iterator[hostile.Hostile]:
    with hostile.serve() as server:
        yield server


def make_store(tmp_path: Path, endpoint: str, idle: float = IDLE) -> CheckpointStore:
    secrets = tmp_path / "secrets"
    if not (secrets / "hub").exists():
        write_secret(secrets / "hub", {"HF_TOKEN": TOKEN + "\n", "HF_ENDPOINT": endpoint})
    return remote_store(tmp_path / "cache", secrets, idle)


@pytest.fixture
def store(tmp_path: Path, hub: hostile.Hostile) -> Iterator[CheckpointStore]:
    made = make_store(tmp_path, hub.url)
    yield made
    made.close()


def ck_hf(path: str, sha: str = SHA) -> Checkpoint:
    return Checkpoint(uri=f"hf://acme/tiny@0123abc/{path}", sha256=sha, secretRef="hub")


def test_a_file_redirected_to_storage_carries_the_token_to_the_hub_only(
    store: CheckpointStore, hub: hostile.Hostile, cdn: hostile.Hostile
) -> None:
    blob = cdn.route("/lfs/blob", hostile.ranged(DATA))
    hub.route("/acme/tiny/resolve/0123abc/model.safetensors", hostile.redirect(blob))
    path = store.fetch(ck_hf("model.safetensors"))
    assert path.read_bytes() == DATA
    assert [r.headers.get("Authorization") for r in hub.requests] == [f"Bearer {TOKEN}"]
    assert cdn.requests and all("Authorization" not in r.headers for r in cdn.requests)


def test_a_wrong_sha256_is_an_integrity_error_and_leaves_nothing(
    store: CheckpointStore, hub: hostile.Hostile
) -> None:
    hub.route("/acme/tiny/resolve/0123abc/m.safetensors", hostile.ranged(DATA))
    with pytest.raises(IntegrityError):
        store.fetch(ck_hf("m.safetensors", "0" * 64))
    assert list(store.cache_dir.iterdir()) == []


def test_a_reset_connection_resumes_and_a_stall_fails_within_the_idle_bound(
    store: CheckpointStore, hub: hostile.Hostile
) -> None:
    hub.route("/acme/tiny/resolve/0123abc/drop.safetensors", hostile.ranged(DATA, 100_000))
    assert store.fetch(ck_hf("drop.safetensors")).read_bytes() == DATA
    assert any("Range" in r.headers for r in hub.requests), "the broken GET was not resumed"
    wrote = threading.Event()
    stall = hostile.stall_after(DATA, 5000, hub.release, wrote)
    hub.route("/acme/tiny/resolve/0123abc/stall.safetensors", stall)
    other = hashlib.sha256(DATA + b"x").hexdigest()
    with pytest.raises(FetchError, match=f"no bytes arrived for {IDLE:g} s"):
        store.fetch(ck_hf("stall.safetensors", other))


def test_a_cancelled_fetch_stops_within_a_second(tmp_path: Path, hub: hostile.Hostile) -> None:
    store = make_store(tmp_path, hub.url, idle=60)
    wrote = threading.Event()
    hub.route(
        "/acme/tiny/resolve/0123abc/slow.safetensors",
        hostile.stall_after(DATA, 5000, hub.release, wrote),
    )
    error, latency = cancelled_fetch(store, ck_hf("slow.safetensors"), wrote)
    store.close()
    assert isinstance(error, Superseded), error
    assert latency < 1.0, f"cancel took {latency:.3f}s"


def test_a_mirror_on_a_refused_address_is_never_connected(tmp_path: Path) -> None:
    with hostile.serve("127.0.0.2") as elsewhere:
        store = make_store(tmp_path, elsewhere.url)
        with pytest.raises(FetchRefused):
            store.fetch(ck_hf("model.safetensors"))
        store.close()
        assert elsewhere.connections == 0


def test_bad_uris_are_refused_before_any_request(
    store: CheckpointStore, hub: hostile.Hostile
) -> None:
    for path in ("../x.safetensors", "a/%2e%2e/x.safetensors", ".hidden", "x?y=1"):
        with pytest.raises(FetchError, match="is not hf://ORG/REPO"):
            store.fetch(ck_hf(path))
    assert hub.requests == []


def test_no_token_in_reasons_or_logs(
    store: CheckpointStore, hub: hostile.Hostile, caplog: pytest.LogCaptureFixture
) -> None:
    hub.route("/acme/tiny/resolve/0123abc/", hostile.leak(TOKEN, 401))
    caplog.set_level(logging.DEBUG)
    with pytest.raises(FetchError) as failure:
        store.fetch(ck_hf("denied.safetensors"))
    assert "access denied (HTTP 401)" in str(failure.value)
    assert "hf://acme/tiny@0123abc/denied.safetensors" in str(failure.value)
    assert TOKEN not in str(failure.value) and TOKEN not in caplog.text


def test_a_sharded_repo_swaps_under_the_runtime(tmp_path: Path, hub: hostile.Hostile) -> None:
    """A real runtime swaps from hf:// files: one file, then a repository sharded
    through its manifest (model.safetensors.index.json with its shards pinned)."""
    repo = tmp_path / "repo"
    sha1 = ck.save(tiny.weights(1), repo / "v1.safetensors")
    manifest, sha2 = ck.save_sharded(tiny.weights(2), repo / "v2", 2)
    for item in [repo / "v1.safetensors", *sorted((repo / "v2").iterdir())]:
        name = item.relative_to(repo).as_posix()
        hub.route(f"/acme/tiny/resolve/main/{name}", hostile.ranged(item.read_bytes()))
    secrets = tmp_path / "secrets"
    write_secret(secrets / "hub", {"HF_TOKEN": TOKEN, "HF_ENDPOINT": hub.url})
    config = tmp_path / "config"

    def rev(n: int, path: str, sha: str) -> str:
        return ck.config(n, ck.revision(n, f"hf://acme/tiny/{path}", sha, secret="hub"))

    ck.publish(config, rev(1, "v1.safetensors", sha1))
    env = {"HOTSWAP_CONFIG_DIR": str(config), "HOTSWAP_SECRETS_DIR": str(secrets)}
    with running(tmp_path, env) as runtime:
        assert infer(runtime.url) == ("1", output_of(1))
        ck.publish(config, rev(2, f"v2/{manifest.name}", sha2))
        runtime.wait_version(2)
        assert infer(runtime.url) == ("2", output_of(2))
        log = runtime.log()
    assert TOKEN not in log
    shards = [r for r in hub.requests if "model-0000" in r.path]
    assert len({r.path for r in shards}) == 2


def test_a_connection_reset_mid_file_resumes(tmp_path: Path, hub: hostile.Hostile) -> None:
    """A real RST (a TCP relay in front of the Hub, SO_LINGER 0) mid-body: resumed with a
    range request on a new connection, the file complete."""
    hub.route("/acme/tiny/resolve/0123abc/rst.safetensors", hostile.ranged(DATA))
    with tcp_relay.relay(hub.port, after=150_000) as faults:
        store = make_store(tmp_path, f"http://127.0.0.1:{faults.port}")
        assert store.fetch(ck_hf("rst.safetensors")).read_bytes() == DATA
        store.close()
        assert faults.cut.is_set() and faults.connections >= 2
    resumed = [r.headers["Range"] for r in hub.requests if "Range" in r.headers]
    assert resumed and resumed[0].endswith(f"-{len(DATA) - 1}"), resumed


@dataclass
class StockRepo:
    """A repository sharded with a stock index.json (no ``shards`` table) on the Hub."""

    checkpoint: Checkpoint
    shards: dict[str, bytes]  # path in the repository -> bytes
    base: str  # /acme/tiny/resolve/REVISION


def stock_repo(
    folder: Path,
    hub: hostile.Hostile,
    cdn: hostile.Hostile,
    revision: str = COMMIT,
    seed: int = 2,
    links: dict[str, list[tuple[str, str]]] | None = None,
) -> StockRepo:
    """``tiny.weights(seed)`` in 3 shards under ``v{seed}/``: the index on the Hub, each
    shard an LFS file the Hub redirects to the CDN with its ``X-Linked-*`` headers
    (``links`` replaces a shard's)."""
    manifest, _ = ck.save_sharded(tiny.weights(seed), folder / f"v{seed}", 3)
    doc = json.loads(manifest.read_text())
    del doc["shards"]
    index = json.dumps(doc).encode()
    base = f"/acme/tiny/resolve/{revision}"
    hub.route(f"{base}/v{seed}/{manifest.name}", hostile.ranged(index))
    shards = {}
    for name in sorted(set(doc["weight_map"].values())):
        data = (manifest.parent / name).read_bytes()
        path = f"v{seed}/{name}"
        shards[path] = data
        blob = cdn.route(f"/lfs/{path}", hostile.ranged(data))
        sha = hashlib.sha256(data).hexdigest()
        headers = (links or {}).get(name, hostile.linked(sha, len(data), COMMIT))
        hub.route(f"{base}/{path}", hostile.hub_lfs(blob, headers))
    uri = f"hf://acme/tiny@{revision}/v{seed}/{manifest.name}"
    sha = hashlib.sha256(index).hexdigest()
    return StockRepo(Checkpoint(uri=uri, sha256=sha, secretRef="hub"), shards, base)


SHARD = "model-00002-of-00003.safetensors"


def test_a_stock_index_at_a_commit_is_pinned_by_the_hubs_lfs_sha256(
    tmp_path: Path,
    store: CheckpointStore,
    hub: hostile.Hostile,
    cdn: hostile.Hostile,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Each shard's sha256 and size from a HEAD to the Hub (the token to the Hub only,
    the redirect not followed), then its bytes from the CDN, verified; the pins are kept,
    so fetching it again asks nothing."""
    repo = stock_repo(tmp_path, hub, cdn)
    caplog.set_level(logging.INFO)
    local = store.fetch_checkpoint(repo.checkpoint)
    assert f"@{COMMIT}/v2/model.safetensors.index.json: 3 shards pinned by the Hub" in caplog.text
    assert [path.read_bytes() for path, _ in local.files] == list(repo.shards.values())
    assert local.manifest is not None
    assert [s.size for s in local.manifest.shards] == [len(d) for d in repo.shards.values()]
    heads = sorted(r.path for r in hub.requests if r.method == "HEAD")
    assert heads == [f"{repo.base}/{path}" for path in repo.shards]
    assert {r.headers.get("Authorization") for r in hub.requests} == {f"Bearer {TOKEN}"}
    assert cdn.requests and all(r.method == "GET" for r in cdn.requests)
    assert all("Authorization" not in r.headers for r in cdn.requests)
    asked = len(hub.requests) + len(cdn.requests)
    assert store.fetch_checkpoint(repo.checkpoint).files == local.files
    assert len(hub.requests) + len(cdn.requests) == asked


def test_a_shards_table_wins_over_the_hub(
    tmp_path: Path, store: CheckpointStore, hub: hostile.Hostile, cdn: hostile.Hostile
) -> None:
    manifest, sha = ck.save_sharded(tiny.weights(3), tmp_path / "v3", 3)
    for item in sorted(manifest.parent.iterdir()):
        hub.route(f"/acme/tiny/resolve/{COMMIT}/{item.name}", hostile.ranged(item.read_bytes()))
    uri = f"hf://acme/tiny@{COMMIT}/{manifest.name}"
    assert len(store.fetch_checkpoint(Checkpoint(uri=uri, sha256=sha, secretRef="hub")).files) == 3
    assert [r.method for r in hub.requests] == ["GET"] * 4


def test_a_stock_index_at_a_branch_is_refused_with_the_fix(
    tmp_path: Path, store: CheckpointStore, hub: hostile.Hostile, cdn: hostile.Hostile
) -> None:
    repo = stock_repo(tmp_path, hub, cdn, revision="main")
    with pytest.raises(ManifestError) as refused:
        store.fetch_checkpoint(repo.checkpoint)
    reason = str(refused.value)
    assert reason.startswith("shard manifest hf://acme/tiny@main/v2/model.safetensors.index")
    assert "not a commit id: pin it to a commit" in reason
    assert "kubectl hotswap set checkpoint --resolve" in reason and '"shards" table' in reason
    assert [r.method for r in hub.requests] == ["GET"] and cdn.requests == []


def etag_of(value: str) -> list[tuple[str, str]]:
    return [("X-Linked-Etag", value), ("X-Linked-Size", "300"), ("X-Repo-Commit", COMMIT)]


BROKEN_LINKS = {
    "missing": [("X-Linked-Size", "300"), ("X-Repo-Commit", COMMIT), ("ETag", '"abc"')],
    "garbled": etag_of('"' + "g" * 64 + '"'),
    "uppercase": etag_of('"' + "AB" * 32 + '"'),
    "short": etag_of('"' + "ab" * 31 + '"'),
    "oversized": etag_of('"' + "ab" * 4000 + '"'),
    "twice": [*etag_of("ab" * 32), ("X-Linked-Etag", "cd" * 32)],
    "another commit": [*etag_of("ab" * 32)[:2], ("X-Repo-Commit", "f" * 40)],
}


@pytest.mark.parametrize("case", sorted(BROKEN_LINKS))
def test_a_shard_without_a_clean_lfs_sha256_is_refused_before_any_byte(
    tmp_path: Path,
    store: CheckpointStore,
    hub: hostile.Hostile,
    cdn: hostile.Hostile,
    case: str,
) -> None:
    repo = stock_repo(tmp_path, hub, cdn, links={SHARD: BROKEN_LINKS[case]})
    with pytest.raises(ManifestError, match=f"^shard hf://acme/tiny@{COMMIT}/v2/{SHARD}: the Hub"):
        store.fetch_checkpoint(repo.checkpoint)
    assert cdn.requests == []
    assert {r.method for r in hub.requests if "model-0000" in r.path} == {"HEAD"}


def test_a_shard_whose_bytes_are_not_the_hubs_sha256_is_refused(
    tmp_path: Path, store: CheckpointStore, hub: hostile.Hostile, cdn: hostile.Hostile
) -> None:
    other = hashlib.sha256(b"other").hexdigest()
    links = {SHARD: hostile.linked(other, 1000, COMMIT)}
    repo = stock_repo(tmp_path, hub, cdn, links=links)
    with pytest.raises(IntegrityError, match=f"{SHARD}: content does not match .*{other}"):
        store.fetch_checkpoint(repo.checkpoint)
    assert not store.path_for(other).exists()


@pytest.mark.parametrize(
    ("size", "reason"),
    [
        (10**8 + 1, r"^checkpoint hf://\S+\.safetensors is over the size limit of 100000000"),
        (4 * 10**7, "its shards take 120000000 bytes"),
    ],
)
def test_sizes_over_the_limit_are_refused_before_any_byte(
    tmp_path: Path,
    store: CheckpointStore,
    hub: hostile.Hostile,
    cdn: hostile.Hostile,
    size: int,
    reason: str,
) -> None:
    """One shard over the store's limit (10**8), or three under it summing over it."""
    repo = stock_repo(tmp_path, hub, cdn)
    links = {}
    for path, data in repo.shards.items():
        sha = hashlib.sha256(data).hexdigest()
        links[path.split("/")[-1]] = hostile.linked(sha, size, COMMIT)
    repo = stock_repo(tmp_path / "again", hub, cdn, links=links)
    with pytest.raises(CheckpointTooLarge, match=reason):
        store.fetch_checkpoint(repo.checkpoint)
    assert cdn.requests == []


def test_a_refused_lookup_shows_no_token(
    tmp_path: Path,
    store: CheckpointStore,
    hub: hostile.Hostile,
    cdn: hostile.Hostile,
    caplog: pytest.LogCaptureFixture,
) -> None:
    repo = stock_repo(tmp_path, hub, cdn)
    hub.route(f"{repo.base}/v2/{SHARD}", hostile.leak(TOKEN, 401))
    caplog.set_level(logging.DEBUG)
    with pytest.raises(FetchError, match=r"access denied \(HTTP 401\)") as failure:
        store.fetch_checkpoint(repo.checkpoint)
    assert TOKEN not in str(failure.value) and TOKEN not in caplog.text
    hub.route(f"{repo.base}/v2/{SHARD}", hostile.leak(TOKEN, 404))
    with pytest.raises(CheckpointNotFound, match=f"{SHARD} does not exist"):
        store.fetch_checkpoint(repo.checkpoint)
    assert cdn.requests == []


def test_a_stalled_lookup_fails_within_the_idle_bound(
    tmp_path: Path, store: CheckpointStore, hub: hostile.Hostile, cdn: hostile.Hostile
) -> None:
    repo = stock_repo(tmp_path, hub, cdn)
    hub.route(f"{repo.base}/v2/{SHARD}", hostile.stall_before(hub.release))
    start = time.monotonic()
    with pytest.raises(FetchError, match=f"{SHARD}: no bytes arrived for {IDLE:g} s"):
        store.fetch_checkpoint(repo.checkpoint)
    assert time.monotonic() - start < IDLE + 2.0
    assert cdn.requests == []


def test_a_stock_index_swaps_and_a_lying_shard_keeps_the_old_model(
    tmp_path: Path, hub: hostile.Hostile, cdn: hostile.Hostile
) -> None:
    """A real runtime swaps from one hf:// file at a commit to a stock index of three
    shards at that commit; then to one whose shard the CDN serves with other bytes
    than the Hub's sha256 says: refused, revision 2 keeps serving."""
    one = ck.save(tiny.weights(1), tmp_path / "v1.safetensors")
    hub.route(
        f"/acme/tiny/resolve/{COMMIT}/v1.safetensors",
        hostile.ranged((tmp_path / "v1.safetensors").read_bytes()),
    )
    two = stock_repo(tmp_path, hub, cdn)
    three = stock_repo(tmp_path, hub, cdn, seed=3)
    cdn.route(f"/lfs/v3/{SHARD}", hostile.ranged(two.shards[f"v2/{SHARD}"]))
    secrets = tmp_path / "secrets"
    write_secret(secrets / "hub", {"HF_TOKEN": TOKEN, "HF_ENDPOINT": hub.url})
    config = tmp_path / "config"

    def rev(n: int, checkpoint: Checkpoint) -> str:
        return ck.config(n, ck.revision(n, checkpoint.uri, checkpoint.sha256, secret="hub"))

    ck.publish(
        config, rev(1, Checkpoint(uri=f"hf://acme/tiny@{COMMIT}/v1.safetensors", sha256=one))
    )
    env = {"HOTSWAP_CONFIG_DIR": str(config), "HOTSWAP_SECRETS_DIR": str(secrets)}
    with running(tmp_path, env) as runtime:
        assert infer(runtime.url) == ("1", output_of(1))
        ck.publish(config, rev(2, two.checkpoint))
        runtime.wait_version(2)
        assert infer(runtime.url) == ("2", output_of(2))
        ck.publish(config, rev(3, three.checkpoint))
        failure = runtime.wait_failure(3)
        assert failure["code"] == "sha256_mismatch", failure
        assert f"v3/{SHARD}" in failure["reason"], failure
        assert infer(runtime.url) == ("2", output_of(2))
        log = runtime.log()
    assert TOKEN not in log
