"""The hf:// and oci:// URI grammars, a dockerconfigjson Secret key, and the registry
login it yields: parsed strictly, values never in a reason."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest

from hotswap_contract.wire import Checkpoint
from hotswap_runtime.checkpoint.fetch.credentials import read_secret
from hotswap_runtime.checkpoint.fetch.hf import parse_hf
from hotswap_runtime.checkpoint.fetch.oci import parse_oci, registry_login
from hotswap_runtime.checkpoint.manifest import read_manifest
from hotswap_runtime.errors import FetchError, ManifestError
from tests.unit.runtime.test_runtime_fetch_file import kubelet_secret

DIGEST = "ab" * 32


def test_hf_uris() -> None:
    hub = parse_hf("hf://acme/tiny@0123abc/sub/model.safetensors")
    assert hub.url("https://hub.example/") == (
        "https://hub.example/acme/tiny/resolve/0123abc/sub/model.safetensors"
    )
    assert parse_hf("hf://acme/tiny/m.safetensors").revision == "main"
    for bad in ("hf://tiny/m.pt/..", "hf://acme/tiny/../m.pt", "hf://acme/tiny", "hf://a/b/%2e"):
        with pytest.raises(FetchError, match="is not hf://"):
            parse_hf(bad)


def test_oci_uris() -> None:
    ref = parse_oci(f"oci://reg.example:5000/team/tiny:v1@sha256:{DIGEST}/w/m.safetensors")
    assert (ref.registry, ref.repository, ref.reference, ref.path) == (
        "reg.example:5000",
        "team/tiny",
        f"sha256:{DIGEST}",
        "w/m.safetensors",
    )
    assert ref.url("blobs", "sha256:x") == "https://reg.example:5000/v2/team/tiny/blobs/sha256:x"
    assert parse_oci("oci://reg/tiny:v1").path is None
    for bad in (
        "oci://reg/tiny",
        "oci://reg/Tiny:v1",
        "oci://reg/tiny:v1/../x",
        "oci://reg/t:v1?a",
    ):
        with pytest.raises(FetchError, match="is not oci://"):
            parse_oci(bad)


def test_a_dockerconfigjson_secret_is_read_with_its_line_breaks(tmp_path: Path) -> None:
    config = json.dumps({"auths": {"reg:5000": {"username": "u", "password": "p"}}}, indent=2)
    kubelet_secret(tmp_path, "pull", {".dockerconfigjson": config})
    assert read_secret(tmp_path, "pull") == {".dockerconfigjson": config}
    kubelet_secret(tmp_path, "bell", {".dockerconfigjson": "{\x07}"})
    with pytest.raises(FetchError, match="control characters"):
        read_secret(tmp_path, "bell")


def test_registry_login_matches_the_registry_host() -> None:
    auth = base64.b64encode(b"alice:s3cret").decode()
    config = json.dumps({"auths": {"https://reg:5000/v1/": {"auth": auth}, "other": {}}})
    assert registry_login(config, "reg:5000", "x") == "Basic " + auth
    assert registry_login(config, "reg", "x") is None
    plain = json.dumps({"auths": {"reg": {"username": "bob", "password": "pw"}}})
    assert registry_login(plain, "REG", "x") == "Basic " + base64.b64encode(b"bob:pw").decode()
    for bad in ("[]", "{", '{"auths": 1}', '{"auths": {"reg": {"auth": "!!s3cret"}}}'):
        with pytest.raises(FetchError, match="is not a docker config") as caught:
            registry_login(bad, "reg", "x")
        assert "s3cret" not in str(caught.value)


def test_a_hub_index_without_shards_says_how_to_pin_them(tmp_path: Path) -> None:
    index = {"metadata": {"total_size": 8}, "weight_map": {"w": "model-1.safetensors"}}
    path = tmp_path / "model.safetensors.index.json"
    path.write_text(json.dumps(index))
    checkpoint = Checkpoint(uri=f"hf://acme/tiny/{path.name}", sha256="0" * 64)
    with pytest.raises(ManifestError, match=r"pins no shard .* add \"shards\""):
        read_manifest(path, checkpoint, 10**9)
