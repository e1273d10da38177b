"""Swaps under concurrent load against a real runtime process on loopback.

Eight clients send requests without pause while model.json flips between two
checkpoints whose outputs differ. Every answer must be 200 and carry exactly the output
that the checkpoint of its ``model_version`` gives; with dynamic batching on too, where
requests share forward passes.
"""

from __future__ import annotations

import os
import re
import threading
from pathlib import Path

import httpx
import pytest
import torch

from devcluster import checkpoints as ck
from devcluster import tiny
from tests.fixtures_runtime.server import running, wait_for

CLIENTS = 8
SWAPS = 22
MIN_REQUESTS = 3000
INPUTS = [[1.0, 2.0, 3.0, 4.0], [-2.0, 0.0, 5.0, 1.0], [3.0, -1.0, -1.0, 2.0]]


class Load:
    """Closed-loop clients recording (status, version, input index, output) per answer."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.answers: list[tuple[int, str | None, int, list[float] | None]] = []
        self.errors: list[str] = []
        self.threads = [threading.Thread(target=self._client, args=(i,)) for i in range(CLIENTS)]

    def __enter__(self) -> Load:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(30)

    def count(self) -> int:
        with self.lock:
            return len(self.answers)

    def _client(self, seed: int) -> None:
        with httpx.Client(base_url=self.url, timeout=30) as client:
            n = seed
            while not self.stop.is_set():
                k = n % len(INPUTS)
                n += 1
                body = {
                    "inputs": [
                        {"name": "input", "shape": [1, 4], "datatype": "FP32", "data": INPUTS[k]}
                    ]
                }
                try:
                    response = client.post("/v2/models/tiny/infer", json=body)
                except httpx.HTTPError as exc:
                    with self.lock:
                        self.errors.append(repr(exc))
                    continue
                answer = response.json() if response.status_code == 200 else None
                with self.lock:
                    self.answers.append(
                        (
                            response.status_code,
                            answer["model_version"] if answer else None,
                            k,
                            answer["outputs"][0]["data"] if answer else None,
                        )
                    )


@pytest.mark.slow
@pytest.mark.parametrize(
    ("mode", "batching"), [("auto", False), ("inplace", False), ("auto", True)]
)
def test_swaps_under_load_never_fail_a_request(tmp_path: Path, mode: str, batching: bool) -> None:
    torch.set_num_threads(1)
    states = {"a": tiny.weights(1), "b": tiny.weights(2)}
    sha = {
        "a": ck.save(states["a"], tmp_path / "a.safetensors"),
        "b": ck.save(states["b"], tmp_path / "b.pt"),
    }
    uri = {"a": f"file://{tmp_path}/a.safetensors", "b": f"file://{tmp_path}/b.pt"}
    which = {r: "a" if r % 2 else "b" for r in range(1, SWAPS + 2)}
    expected = {
        (name, k): tiny.expected(state, torch.tensor([INPUTS[k]])).flatten().tolist()
        for name, state in states.items()
        for k in range(len(INPUTS))
    }
    assert expected[("a", 0)] != expected[("b", 0)], "the two checkpoints must differ"
    config_dir = tmp_path / "config"

    def publish(rev: int) -> None:
        name = which[rev]
        ck.publish(config_dir, ck.config(rev, ck.revision(rev, uri[name], sha[name])))

    publish(1)
    env = {"HOTSWAP_CONFIG_DIR": str(config_dir), "HOTSWAP_SWAP_MODE": mode}
    if batching:  # a batch runs whole on one lease: every answer in it names that revision
        env |= {"HOTSWAP_MAX_BATCH_SIZE": "8", "HOTSWAP_MAX_QUEUE_DELAY_US": "2000"}
    with running(tmp_path, env) as runtime, Load(runtime.url) as load:
        for rev in range(2, SWAPS + 2):
            before = load.count()
            wait_for(lambda b=before: load.count() >= b + 50, 30, "requests before the swap")
            publish(rev)
            runtime.wait_version(rev)
        wait_for(lambda: load.count() >= MIN_REQUESTS, 60, f"{MIN_REQUESTS} answers")
        metrics = runtime.metrics()
        meta = runtime.metadata()

    assert not load.errors, load.errors[:5]
    statuses = {status for status, *_ in load.answers}
    assert statuses == {200}, f"non-2xx answers: {statuses}"
    wrong = [
        (version, k, data)
        for _, version, k, data in load.answers
        if data != expected[(which[int(version or 0)], k)]
    ]
    assert not wrong, f"{len(wrong)} answers disagree with their model_version: {wrong[:3]}"
    versions = {int(version or 0) for _, version, *_ in load.answers}
    assert len(versions) >= SWAPS, f"only revisions {sorted(versions)} answered"
    ok = re.search(r'hotswap_swaps_total\{reason="ok",result="ok"\} (\d+)', metrics)
    assert ok is not None and int(float(ok.group(1))) == SWAPS + 1
    assert meta["model_version"] == str(SWAPS + 1)
    series = set(re.findall(r'hotswap_requests_total\{[^}]*revision="(\d+)"', metrics))
    assert len(series) <= 5, f"request series of old revisions are not pruned: {series}"
    assert meta["device"].startswith(os.environ.get("HOTSWAP_TEST_DEVICE", "cpu"))
    if batching:
        sizes = re.search(r"^hotswap_batch_size_sum (\S+)$", metrics, re.M)
        count = re.search(r"^hotswap_batch_size_count (\S+)$", metrics, re.M)
        assert sizes and count and float(sizes.group(1)) > float(count.group(1)), (
            "no forward pass ran more than one request"
        )
    if mode == "inplace":
        assert meta["last_swap"]["mode"] == "inplace"
    else:
        assert meta["last_swap"]["mode"] == "standby"
