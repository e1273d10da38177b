"""Bad checkpoints and bad model.json: the old model keeps serving, and says why.

One runtime process serves revision 1; each case publishes a broken revision and checks
that revision 1 still answers, that model metadata names the failure, and that the
metrics count it under its reason.
"""

from __future__ import annotations

import itertools
import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch

from devcluster import checkpoints as ck
from devcluster import tiny
from tests.fixtures_runtime import hostile
from tests.fixtures_runtime import http as http_fixture
from tests.fixtures_runtime.server import RuntimeProcess, free_port, running, wait_for

MAX_BYTES = 200_000


class Evil:
    """Pickles to a call that creates a marker file when unpickled unrestricted."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, (f"touch {self.marker}",))


@dataclass
class World:
    runtime: RuntimeProcess
    root: Path
    http: http_fixture.FileServer
    config_dir: Path
    numbers: Iterator[int]

    def publish(self, make: Callable[[int], dict[str, Any]]) -> int:
        number = next(self.numbers)
        ck.publish(self.config_dir, ck.config(number, make(number)))
        return number

    def file(self, name: str, state: dict[str, torch.Tensor]) -> tuple[str, str]:
        sha = ck.save(state, self.root / name)
        return f"file://{self.root / name}", sha


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    root = tmp_path_factory.mktemp("bad")
    config_dir = root / "config"
    sha = ck.save(tiny.weights(1), root / "good.safetensors")
    ck.publish(config_dir, ck.config(1, ck.revision(1, f"file://{root}/good.safetensors", sha)))
    env = {
        "HOTSWAP_CONFIG_DIR": str(config_dir),
        "HOTSWAP_MAX_CHECKPOINT_BYTES": str(MAX_BYTES),
    }
    with http_fixture.serve(root) as server, running(root, env) as runtime:
        yield World(runtime, root, server, config_dir, itertools.count(2))


def assert_still_serving(world: World) -> None:
    body = {
        "inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}]
    }
    response = httpx.post(world.runtime.url + "/v2/models/tiny/infer", json=body, timeout=10)
    assert response.status_code == 200
    assert response.json()["model_version"] == "1"
    expected = tiny.expected(tiny.weights(1), torch.tensor([[1.0, 2, 3, 4]])).flatten().tolist()
    assert response.json()["outputs"][0]["data"] == expected


def check_failure(world: World, number: int, code: str, reason: str) -> dict[str, Any]:
    failure = world.runtime.wait_failure(number)
    assert failure["code"] == code, failure
    assert re.search(reason, failure["reason"]), failure["reason"]
    meta = world.runtime.metadata()
    assert meta["model_version"] == "1"
    assert meta["state"] == "Failed"
    metrics = world.runtime.metrics()
    assert re.search(rf'hotswap_swaps_total\{{[^}}]*reason="{code}"[^}}]*\}} [1-9]', metrics)
    assert f'hotswap_last_failure_info{{reason="{code}",revision="{number}"}} 1.0' in metrics
    assert_still_serving(world)
    return failure


def broken(**changes: torch.Tensor | None) -> dict[str, torch.Tensor]:
    state = dict(tiny.weights(5))
    for key, value in changes.items():
        if value is None:
            state.pop(key)
        else:
            state[key] = value
    return state


def test_sha256_mismatch(world: World) -> None:
    uri, _ = world.file("other.safetensors", tiny.weights(2))
    wrong = "0" * 64
    n = world.publish(lambda n: ck.revision(n, uri, wrong))
    failure = check_failure(world, n, "sha256_mismatch", r"does not match spec\.checkpoint\.sha256")
    assert not re.search("[0-9a-f]{64}", failure["reason"].replace(wrong, "")), "hash revealed"


def test_truncated_file(world: World) -> None:
    whole = world.root / "whole.safetensors"
    ck.save(tiny.weights(3), whole)
    cut = world.root / "cut.safetensors"
    cut.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    n = world.publish(lambda n: ck.revision(n, f"file://{cut}", ck.sha256_of(cut)))
    check_failure(world, n, "bad_format", "not a valid safetensors file")


def test_truncated_file_with_original_sha(world: World) -> None:
    whole = world.root / "whole2.pt"
    sha = ck.save(tiny.weights(3), whole)
    cut = world.root / "cut2.pt"
    cut.write_bytes(whole.read_bytes()[:100])
    n = world.publish(lambda n: ck.revision(n, f"file://{cut}", sha))
    failure = check_failure(world, n, "sha256_mismatch", "the file changed")
    assert "100 bytes" not in failure["reason"], "the number of bytes read is not shown"


def test_pickle_that_runs_code_is_refused_without_running(world: World) -> None:
    marker = world.root / "pwned"
    path = world.root / "evil.pt"
    torch.save({"fc.weight": Evil(marker)}, path)
    n = world.publish(lambda n: ck.revision(n, f"file://{path}", ck.sha256_of(path)))
    check_failure(world, n, "bad_format", r"data\.pkl calls posix\.system, which a state dict")
    assert not marker.exists(), "the pickle's payload ran"


def test_missing_keys(world: World) -> None:
    uri, sha = world.file("missing.safetensors", broken(**{"fc.bias": None}))
    n = world.publish(lambda n: ck.revision(n, uri, sha))
    check_failure(world, n, "state_dict_mismatch", "missing keys: fc.bias")


def test_extra_keys(world: World) -> None:
    uri, sha = world.file("extra.safetensors", broken(**{"head.weight": torch.ones(2)}))
    n = world.publish(lambda n: ck.revision(n, uri, sha))
    check_failure(world, n, "state_dict_mismatch", "unexpected keys: head.weight")


def test_wrong_shapes(world: World) -> None:
    uri, sha = world.file("shapes.pt", broken(**{"fc.weight": torch.ones(3, 5)}))
    n = world.publish(lambda n: ck.revision(n, uri, sha))
    check_failure(world, n, "state_dict_mismatch", r"wrong shapes: fc.weight \(3, 5\)")


def test_nan_weights(world: World) -> None:
    weight = tiny.weights(5)["fc.weight"].clone()
    weight[0, 0] = float("nan")
    uri, sha = world.file("nan.safetensors", broken(**{"fc.weight": weight}))
    n = world.publish(lambda n: ck.revision(n, uri, sha))
    check_failure(world, n, "non_finite", "NaN or infinity: fc.weight")


def test_unknown_torchvision_architecture(world: World) -> None:
    uri, sha = world.file("arch.safetensors", tiny.weights(6))
    n = world.publish(lambda n: ck.revision(n, uri, sha, architecture="torchvision/resnet9000"))
    check_failure(world, n, "bad_architecture", "no model named 'resnet9000'")


def test_unknown_python_architecture(world: World) -> None:
    uri, sha = world.file("arch2.safetensors", tiny.weights(6))
    missing = "python/tests.fixtures_runtime.no_such_mod:make"  # allowed, but not there
    n = world.publish(lambda n: ck.revision(n, uri, sha, architecture=missing))
    check_failure(world, n, "bad_architecture", "cannot import the module of architecture")


def test_architecture_outside_the_allowlist(world: World) -> None:
    uri, sha = world.file("arch3.safetensors", tiny.weights(6))
    n = world.publish(lambda n: ck.revision(n, uri, sha, architecture="python/os:system"))
    check_failure(world, n, "bad_architecture", "architecture python/os:system is not allowed")


def test_http_404(world: World) -> None:
    uri = f"{world.http.url}/nowhere.safetensors"
    n = world.publish(lambda n: ck.revision(n, uri, "1" * 64))
    check_failure(world, n, "not_found", "nowhere.safetensors does not exist")


def test_unreachable_host(world: World) -> None:
    uri = f"http://127.0.0.1:{free_port()}/good.safetensors"
    n = world.publish(lambda n: ck.revision(n, uri, "2" * 64))
    check_failure(world, n, "fetch_failed", "cannot fetch checkpoint http://127.0.0.1")


def test_oversize_file(world: World) -> None:
    uri, sha = world.file("big.safetensors", broken(**{"pad": torch.zeros(MAX_BYTES // 4 + 10)}))
    n = world.publish(lambda n: ck.revision(n, uri, sha))
    check_failure(world, n, "too_large", f"over the size limit of {MAX_BYTES} bytes")


def test_refused_file_type(world: World) -> None:
    path = world.root / "weights.npz"
    path.write_bytes(b"PK\x03\x04not really")
    n = world.publish(lambda n: ck.revision(n, f"file://{path}", ck.sha256_of(path)))
    check_failure(world, n, "bad_format", "file type '.npz' is refused")


# Hostile files (tests/fixtures_runtime/hostile.py), each under the 200 kB size limit:
# (file name, writer, code, what the reason says)
HOSTILE_FILES: list[tuple[str, Callable[[Path], Path], str, str]] = [
    ("overlap.safetensors", hostile.overlapping_offsets, "bad_format", "'fc.bias' overlaps"),
    ("dup.safetensors", hostile.duplicate_names, "bad_format", "'fc.weight' appears twice"),
    ("hole.safetensors", hostile.hole, "bad_format", "'fc.bias' leaves a hole"),
    ("header.safetensors", hostile.huge_declared_header, "bad_format", "past the end of the file"),
    (
        "bigheader.safetensors",
        lambda p: hostile.huge_header(p, 150_000),
        "bad_format",
        r"header is \d+ bytes, more than the \d+ bytes a header for this model",
    ),
    ("stride0.pt", hostile.stride0_pt, "state_dict_mismatch", r"fc.weight \(65536, 8192\)"),
    (
        "deflate.pt",
        lambda p: hostile.deflate_bomb_pt(p, 64 << 20),
        "bad_format",
        "record 'archive/data/0' is compressed",
    ),
    ("bytearray.pt", hostile.bytearray_bomb_pt, "bad_format", r"calls __builtin__\.bytearray"),
    ("legacy.pt", hostile.legacy_pt, "bad_format", r"legacy \(pre-1\.6\) torch\.save format"),
    (
        "half.safetensors",
        lambda p: hostile.as_dtype(p, torch.float16),
        "state_dict_mismatch",
        "fc.weight is float16, the model's is float32; save the checkpoint in float32 or set "
        "spec.model.castWeights: true",
    ),
    (
        "long.pt",
        lambda p: hostile.torch_saved(p, {**tiny.weights(5), "fc.bias": torch.ones(3).long()}),
        "state_dict_mismatch",
        "fc.bias is int64, the model's is float32",
    ),
]


@pytest.mark.parametrize(
    ("name", "write", "code", "reason"), HOSTILE_FILES, ids=[c[0] for c in HOSTILE_FILES]
)
def test_hostile_checkpoint_is_refused(
    world: World, name: str, write: Callable[[Path], Path], code: str, reason: str
) -> None:
    path = write(world.root / name)
    assert path.stat().st_size < MAX_BYTES
    n = world.publish(lambda n: ck.revision(n, f"file://{path}", ck.sha256_of(path)))
    failure = check_failure(world, n, code, reason)
    assert len(failure["reason"]) <= 400


def test_model_args_for_a_giant_model_are_refused_unbuilt(world: World) -> None:
    uri, sha = world.file("giant.safetensors", tiny.weights(6))
    n = world.publish(lambda n: ck.revision(n, uri, sha, args={"classes": 10**9}))
    check_failure(world, n, "model_too_large", "has 20000000004 bytes of parameters and buffers")


def test_a_forward_that_exits_fails_validation(world: World) -> None:
    uri, sha = world.file("exits.safetensors", tiny.weights(6))
    arch = f"{hostile.HOSTILE}:make_exiting_forward"
    n = world.publish(lambda n: ck.revision(n, uri, sha, architecture=arch))
    check_failure(world, n, "validation_failed", r"validate failed: SystemExit: 3")


def test_a_factory_that_exits_is_refused(world: World) -> None:
    uri, sha = world.file("exits2.safetensors", tiny.weights(6))
    arch = f"{hostile.HOSTILE}:make_exiting"
    n = world.publish(lambda n: ck.revision(n, uri, sha, architecture=arch))
    check_failure(world, n, "bad_architecture", "could not be built from model.args: SystemExit")


def config_errors(world: World) -> int:
    found = re.search(r"^hotswap_config_errors_total (\S+)", world.runtime.metrics(), re.M)
    return int(float(found.group(1))) if found else 0


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("{not json", "invalid model.json"),
        ('{"name": "tiny", "generation": 99, "stable": {"revision": 0}}', "stable.revision"),
    ],
)
def test_malformed_model_json(world: World, text: str, reason: str) -> None:
    before = config_errors(world)
    ck.publish(world.config_dir, text)
    wait_for(lambda: config_errors(world) > before, 30, "the config error to be counted")
    failure = world.runtime.metadata()["last_failure"]
    assert failure["code"] == "config_error"
    assert reason in failure["reason"]
    assert 'hotswap_last_failure_info{reason="config_error",revision=""} 1.0' in (
        world.runtime.metrics()
    )
    assert_still_serving(world)
