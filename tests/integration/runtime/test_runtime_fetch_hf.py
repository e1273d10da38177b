"""hf:// fetches against an HTTP server laid out like the Hugging Face Hub on loopback.

The "Hub" serves ``/ORG/REPO/resolve/REVISION/PATH`` and, like the real one, redirects
large files to its storage ("CDN", another origin on 127.0.0.1). The Secret names the
mirror (``HF_ENDPOINT``) and the token (``HF_TOKEN``). Each test starts its servers.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from devcluster import checkpoints as ck
from devcluster import tiny
from hotswap_contract.wire import Checkpoint
from hotswap_runtime.checkpoint.store import CheckpointStore
from hotswap_runtime.errors import FetchError, FetchRefused, IntegrityError, Superseded
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
