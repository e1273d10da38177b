"""A stock Hub ``model.safetensors.index.json`` (no ``shards`` table): read only from
hf:// at a commit id, each shard pinned by the sha256 and size of the Hub's LFS headers,
which are parsed strictly and never quoted."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import httpx
import pytest

from hotswap_contract.hub import parse_hf
from hotswap_contract.wire import Checkpoint
from hotswap_runtime.checkpoint.fetch.hf import linked_pin
from hotswap_runtime.checkpoint.manifest import read_manifest
from hotswap_runtime.errors import CheckpointTooLarge, ManifestError

COMMIT = "0a1b2c3d4e5f60718293a4b5c6d7e8f901234567"
SHA = hashlib.sha256(b"shard").hexdigest()
INDEX = {
    "metadata": {"total_size": 24},
    "weight_map": {
        "fc.weight": "model-00002-of-00002.safetensors",
        "fc.bias": "model-00001-of-00002.safetensors",
        "scale": "model-00001-of-00002.safetensors",
    },
}
LIMIT = 10_000


def test_a_revision_is_a_commit_only_as_40_lowercase_hex() -> None:
    def commit(revision: str) -> str | None:
        hub_file = parse_hf(f"hf://acme/tiny@{revision}/m.safetensors")
        assert hub_file is not None
        return hub_file.commit

    assert commit(COMMIT) == COMMIT
    for branch in ("main", COMMIT.upper(), COMMIT[:39], COMMIT + "0", "v1.0"):
        assert commit(branch) is None, branch


def stock(tmp_path: Path, revision: str, doc: object = INDEX) -> tuple[Path, Checkpoint]:
    path = tmp_path / "model.safetensors.index.json"
    path.write_text(json.dumps(doc))
    uri = f"hf://acme/tiny@{revision}/sub/{path.name}"
    return path, Checkpoint(uri=uri, sha256="0" * 64)


def test_a_stock_index_at_a_commit_takes_each_shard_from_the_pins(tmp_path: Path) -> None:
    path, checkpoint = stock(tmp_path, COMMIT)
    asked: list[tuple[str, ...]] = []

    def pin(uris: tuple[str, ...]) -> list[tuple[str, int]]:
        asked.append(uris)
        return [(SHA, 100), ("cd" * 32, 200)]

    manifest = read_manifest(path, checkpoint, LIMIT, pin)
    base = f"hf://acme/tiny@{COMMIT}/sub"
    assert asked == [
        (f"{base}/model-00001-of-00002.safetensors", f"{base}/model-00002-of-00002.safetensors")
    ]
    assert [(s.checkpoint.uri, s.checkpoint.sha256, s.size) for s in manifest.shards] == [
        (asked[0][0], SHA, 100),
        (asked[0][1], "cd" * 32, 200),
    ]
    assert manifest.owners == {"fc.weight": 1, "fc.bias": 0, "scale": 0}


def test_a_stock_index_at_a_branch_is_refused_without_a_lookup(tmp_path: Path) -> None:
    for revision in ("main", COMMIT.upper()):
        path, checkpoint = stock(tmp_path, revision)

        def pin(uris: tuple[str, ...]) -> list[tuple[str, int]]:
            raise AssertionError("the Hub was asked")

        with pytest.raises(ManifestError, match="its revision is not a commit id: pin it"):
            read_manifest(path, checkpoint, LIMIT, pin)


def test_a_stock_index_elsewhere_says_how_to_pin_its_shards(tmp_path: Path) -> None:
    path = tmp_path / "model.safetensors.index.json"
    path.write_text(json.dumps(INDEX))
    checkpoint = Checkpoint(uri=f"https://store.example/{COMMIT}/{path.name}", sha256="0" * 64)
    with pytest.raises(ManifestError, match=r'pins no shard .* add "shards"'):
        read_manifest(path, checkpoint, LIMIT, lambda uris: [(SHA, 100)] * len(uris))


@pytest.mark.parametrize(
    ("doc", "pins", "error", "reason"),
    [
        (INDEX, [(SHA, 4)], ManifestError, "must be"),  # under 8 bytes
        (INDEX, [("AB" * 32, 100)], ManifestError, "must be"),
        (INDEX, [(SHA, LIMIT // 2 + 1)], CheckpointTooLarge, "its shards take"),
        ({"weight_map": {"t": "../x.safetensors"}}, [], ManifestError, "below the manifest"),
        ({"weight_map": {"t": "x.bin"}}, [], ManifestError, "must be .safetensors"),
        ({"weight_map": {"t": 1}}, [], ManifestError, "tensor name -> shard"),
        ({"weight_map": {}}, [], ManifestError, "1 to 1024 shards"),
    ],
)
def test_pins_and_shard_names_are_checked_as_a_shards_table(
    tmp_path: Path,
    doc: dict[str, object],
    pins: list[tuple[str, int]],
    error: type[Exception],
    reason: str,
) -> None:
    path, checkpoint = stock(tmp_path, COMMIT, doc)

    def pin(uris: tuple[str, ...]) -> list[tuple[str, int]]:
        return [pins[0]] * len(uris) if pins else []

    with pytest.raises(error, match=reason):
        read_manifest(path, checkpoint, LIMIT, pin)


def headers(*pairs: tuple[str, str]) -> httpx.Headers:
    return httpx.Headers(list(pairs))


GOOD = (("X-Linked-Etag", f'"{SHA}"'), ("X-Linked-Size", "300"), ("X-Repo-Commit", COMMIT))


def test_the_hubs_lfs_headers_give_the_pin() -> None:
    assert linked_pin(headers(*GOOD), COMMIT, "s", LIMIT) == (SHA, 300)
    bare = (("x-linked-etag", SHA), ("x-linked-size", " 300 "))
    assert linked_pin(headers(*bare), COMMIT, "s", LIMIT) == (SHA, 300)


@pytest.mark.parametrize(
    "bad",
    [
        (("X-Linked-Size", "300"),),  # not an LFS file: no etag
        (("ETag", f'"{SHA}"'), ("X-Linked-Size", "300")),  # the plain ETag is not the pin
        (("X-Linked-Etag", f'"{SHA.upper()}"'), ("X-Linked-Size", "300")),
        (("X-Linked-Etag", f'W/"{SHA}"'), ("X-Linked-Size", "300")),
        (("X-Linked-Etag", f'"{SHA[:63]}"'), ("X-Linked-Size", "300")),
        (("X-Linked-Etag", f'"{SHA}0"'), ("X-Linked-Size", "300")),
        (("X-Linked-Etag", f'"{SHA}'), ("X-Linked-Size", "300")),
        (("X-Linked-Etag", f'"{SHA}"'), ("X-Linked-Etag", f'"{SHA}"'), ("X-Linked-Size", "300")),
        (("X-Linked-Etag", "x" * 70_000), ("X-Linked-Size", "300")),
        (("X-Linked-Etag", f'"{SHA}"'),),  # no size
        (("X-Linked-Etag", f'"{SHA}"'), ("X-Linked-Size", "-1")),
        (("X-Linked-Etag", f'"{SHA}"'), ("X-Linked-Size", "1" * 20)),
        (("X-Linked-Etag", f'"{SHA}"'), ("X-Linked-Size", "3e2")),
        (("X-Linked-Etag", f'"{SHA}"'), ("X-Linked-Size", "300"), ("X-Repo-Commit", "f" * 40)),
        (
            ("X-Linked-Etag", f'"{SHA}"'),
            ("X-Linked-Size", "300"),
            ("X-Repo-Commit", COMMIT.upper()),
        ),
    ],
)
def test_broken_lfs_headers_are_refused_unquoted(bad: tuple[tuple[str, str], ...]) -> None:
    with pytest.raises(ManifestError, match=r"^shard s: the Hub") as refused:
        linked_pin(headers(*bad), COMMIT, "s", LIMIT)
    for _, value in bad:
        assert value.strip('"') not in str(refused.value).replace(COMMIT, "")


def test_a_size_over_the_limit_is_too_large() -> None:
    big = (("X-Linked-Etag", SHA), ("X-Linked-Size", str(LIMIT + 1)))
    with pytest.raises(CheckpointTooLarge, match=f"over the size limit of {LIMIT} bytes"):
        linked_pin(headers(*big), COMMIT, "s", LIMIT)
    assert linked_pin(headers(big[0], ("X-Linked-Size", str(LIMIT))), COMMIT, "s", LIMIT)
