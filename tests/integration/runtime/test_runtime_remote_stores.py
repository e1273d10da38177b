"""Fetching over http:// (real local server) and s3:// (moto's S3 server on loopback),
credentials from the mounted Secret folder, rollback from the cache, supersede."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import torch

from devcluster import checkpoints as ck
from devcluster import tiny
from tests.fixtures_runtime import http as http_fixture
from tests.fixtures_runtime import moto_s3
from tests.fixtures_runtime.server import running

HTTP_TOKEN = "Bearer s3cret-token"
SUPERSEDED = r'hotswap_swaps_total\{[^}]*result="superseded"[^}]*\} 1'


def infer(url: str) -> tuple[str, list[float]]:
    body = {
        "inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}]
    }
    response = httpx.post(url + "/v2/models/tiny/infer", json=body, timeout=10)
    assert response.status_code == 200, response.text
    answer = response.json()
    return answer["model_version"], answer["outputs"][0]["data"]


def output_of(seed: int) -> list[float]:
    x = torch.tensor([[1.0, 2, 3, 4]])
    result: list[float] = tiny.expected(tiny.weights(seed), x).flatten().tolist()
    return result


def write_secret(folder: Path, values: dict[str, str]) -> None:
    folder.mkdir(parents=True)
    for key, value in values.items():
        (folder / key).write_text(value)


@pytest.fixture
def s3() -> Iterator[str]:
    with moto_s3.serve() as url:
        yield url


def test_s3_with_secret_credentials(tmp_path: Path, s3: str) -> None:
    client = moto_s3.client(s3)
    sha = {}
    for seed, name in ((1, "v1.safetensors"), (2, "v2.pt")):
        sha[seed] = ck.save(tiny.weights(seed), tmp_path / name)
        client.upload_file(str(tmp_path / name), moto_s3.BUCKET, f"tiny/{name}")
    secrets = tmp_path / "secrets"
    write_secret(secrets / "model-store", moto_s3.secret(s3))
    config = tmp_path / "config"

    def rev(n: int, name: str, sha256: str) -> str:
        uri = f"s3://models/tiny/{name}"
        return ck.config(n, ck.revision(n, uri, sha256, secret="model-store"))

    ck.publish(config, rev(1, "v1.safetensors", sha[1]))
    env = {
        "HOTSWAP_CONFIG_DIR": str(config),
        "HOTSWAP_SECRETS_DIR": str(secrets),
        "HOTSWAP_LOG_LEVEL": "debug",
    }
    with running(tmp_path, env) as runtime:
        assert infer(runtime.url) == ("1", output_of(1))
        ck.publish(config, rev(2, "v2.pt", sha[2]))
        runtime.wait_version(2)
        assert infer(runtime.url) == ("2", output_of(2))
        ck.publish(config, rev(3, "missing.pt", "3" * 64))
        failure = runtime.wait_failure(3)
        assert failure["code"] == "not_found", failure
        assert infer(runtime.url) == ("2", output_of(2))
        log = runtime.log()
    assert moto_s3.SECRET_KEY not in log and moto_s3.KEY_ID not in log


def test_http_with_authorization_and_rollback_from_cache(tmp_path: Path) -> None:
    store = tmp_path / "store"
    sha = {seed: ck.save(tiny.weights(seed), store / f"v{seed}.safetensors") for seed in (1, 2)}
    secrets = tmp_path / "secrets"
    write_secret(secrets / "web", {"HTTP_AUTHORIZATION": HTTP_TOKEN})
    config = tmp_path / "config"
    with http_fixture.serve(store, token=HTTP_TOKEN) as web:

        def rev(n: int, seed: int, secret: str | None = "web") -> str:
            uri = f"{web.url}/private/v{seed}.safetensors"
            return ck.config(n, ck.revision(n, uri, sha[seed], secret=secret))

        ck.publish(config, rev(1, 1))
        env = {"HOTSWAP_CONFIG_DIR": str(config), "HOTSWAP_SECRETS_DIR": str(secrets)}
        with running(tmp_path, env) as runtime:
            assert infer(runtime.url) == ("1", output_of(1))
            ck.publish(config, rev(2, 2, secret=None))
            failure = runtime.wait_failure(2)
            assert failure["code"] == "fetch_failed" and "403" in failure["reason"], failure
            ck.publish(config, rev(3, 2))
            runtime.wait_version(3)
            assert infer(runtime.url) == ("3", output_of(2))
            downloads = dict(web.gets)
            for seed in (1, 2):
                (store / f"v{seed}.safetensors").unlink()
            ck.publish(config, rev(4, 1))
            meta = runtime.wait_version(4)
            assert infer(runtime.url) == ("4", output_of(1))
            assert web.gets == downloads, "rollback to a cached sha256 downloaded again"
            assert meta["last_swap"]["phases"]["fetch"] < 0.5
            log = runtime.log()
    assert "s3cret-token" not in log


def test_newer_revision_supersedes_a_slow_download(tmp_path: Path) -> None:
    store = tmp_path / "store"
    big = dict(tiny.weights(2), pad=torch.zeros(20_000))  # trickles for ~4 s
    slow_sha = ck.save(big, store / "slow.safetensors")
    sha1 = ck.save(tiny.weights(1), tmp_path / "v1.safetensors")
    sha3 = ck.save(tiny.weights(3), tmp_path / "v3.safetensors")
    config = tmp_path / "config"
    ck.publish(config, ck.config(1, ck.revision(1, f"file://{tmp_path}/v1.safetensors", sha1)))
    with (
        http_fixture.serve(store) as web,
        running(tmp_path, {"HOTSWAP_CONFIG_DIR": str(config)}) as runtime,
    ):
        slow = ck.revision(2, f"{web.url}/slow/slow.safetensors", slow_sha)
        ck.publish(config, ck.config(2, slow))
        from tests.fixtures_runtime.server import wait_for

        wait_for(lambda: runtime.metadata()["state"] == "Loading", 10, "the slow load to start")
        ck.publish(config, ck.config(3, ck.revision(3, f"file://{tmp_path}/v3.safetensors", sha3)))
        runtime.wait_version(3)
        wait_for(
            lambda: re.search(
                r'hotswap_swaps_total\{[^}]*result="superseded"[^}]*\} 1', runtime.metrics()
            ),
            10,
            "the superseded swap to be counted",
        )
        assert infer(runtime.url) == ("3", output_of(3))
        assert "superseded" in runtime.log()
        assert not (tmp_path / "cache" / slow_sha).exists()


def test_sharded_checkpoints_over_http_and_s3(tmp_path: Path, s3: str) -> None:
    """A manifest pins its shards: fetched next to it with the checkpoint's Secret,
    cached per shard (rollback downloads nothing), a shard path trick refused with the
    old revision serving."""
    store = tmp_path / "store"
    manifests = {
        seed: ck.save_sharded(tiny.weights(seed), store / f"v{seed}", 2) for seed in (1, 2)
    }
    client = moto_s3.client(s3)
    for item in (store / "v2").iterdir():
        client.upload_file(str(item), moto_s3.BUCKET, f"tiny/{item.name}")
    secrets = tmp_path / "secrets"
    write_secret(secrets / "web", {"HTTP_AUTHORIZATION": HTTP_TOKEN})
    write_secret(secrets / "model-store", moto_s3.secret(s3))
    config = tmp_path / "config"
    with http_fixture.serve(store, token=HTTP_TOKEN) as web:

        def rev(n: int, uri: str, sha: str, secret: str) -> str:
            return ck.config(n, ck.revision(n, uri, sha, secret=secret))

        path1, sha1 = manifests[1]
        ck.publish(config, rev(1, f"{web.url}/private/v1/{path1.name}", sha1, "web"))
        env = {"HOTSWAP_CONFIG_DIR": str(config), "HOTSWAP_SECRETS_DIR": str(secrets)}
        with running(tmp_path, env) as runtime:
            assert infer(runtime.url) == ("1", output_of(1))
            assert web.gets["/private/v1/model-00002-of-00002.safetensors"] == 1
            path2, sha2 = manifests[2]
            ck.publish(config, rev(2, f"s3://models/tiny/{path2.name}", sha2, "model-store"))
            runtime.wait_version(2)
            assert infer(runtime.url) == ("2", output_of(2))
            trick = store / "v1" / "trick.safetensors.index.json"
            doc = json.loads(path1.read_text())
            doc["shards"] = {f"../v2/{k}": v for k, v in doc["shards"].items()}
            doc["weight_map"] = {k: f"../v2/{v}" for k, v in doc["weight_map"].items()}
            trick.write_text(json.dumps(doc))
            ck.publish(
                config, rev(3, f"{web.url}/private/v1/{trick.name}", ck.sha256_of(trick), "web")
            )
            failure = runtime.wait_failure(3)
            assert failure["code"] == "bad_manifest" and "below the manifest" in failure["reason"]
            downloads = dict(web.gets)
            ck.publish(config, rev(4, f"{web.url}/private/v1/{path1.name}", sha1, "web"))
            runtime.wait_version(4)
            assert infer(runtime.url) == ("4", output_of(1))
            assert web.gets == downloads, "rollback to cached shards downloaded again"
