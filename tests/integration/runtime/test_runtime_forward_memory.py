"""One request of many samples, just under the size limit, stays within the forward bound.

The model (``tiny.WIDE``) turns each 64-byte sample into 128 KiB of activations, so the
8,192 samples that fit a 512 KiB body would take 1 GiB in one forward pass. The runtime
sizes the activations on its load probe and runs the request in passes of the forward
batch that HOTSWAP_FORWARD_MEMORY_BYTES allows, on one revision, while small requests
keep being answered. The process's peak RSS (VmHWM, reset once the model is loaded)
must grow by at most the forward bound plus the request memory plus a margin.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import torch

from devcluster import checkpoints as ck
from devcluster import tiny
from tests.fixtures_runtime.server import reset_peak, running, status_kib

SAMPLES = 8192
BODY = SAMPLES * tiny.WIDE_FEATURES * 4  # 512 KiB of FP32
MAX_REQUEST = BODY + 4096
MEMORY = 2 * MAX_REQUEST + (24 << 20)  # what one binary request of the largest size holds
FORWARD = 64 << 20
MARGIN = 64 << 20
ACTIVATION = 2 * 2 * tiny.WIDE_WIDTH * 4  # hidden layer + relu per sample, x2 headroom
BENIGN = 2000  # at most this many small requests, one at a time


def binary_request(x: np.ndarray) -> tuple[bytes, bytes]:
    head = json.dumps(
        {
            "inputs": [
                {
                    "name": "input",
                    "shape": list(x.shape),
                    "datatype": "FP32",
                    "parameters": {"binary_data_size": x.nbytes},
                }
            ]
        }
    ).encode()
    return head, head + x.tobytes()


class Benign(threading.Thread):
    """Small requests one after another until told to stop; counts what failed."""

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        self.url = url
        self.answered = 0
        self.failed: list[str] = []
        self.started_answering = threading.Event()
        self.stop = threading.Event()

    def run(self) -> None:
        body = {
            "inputs": [{"name": "input", "shape": [1, 16], "datatype": "FP32", "data": [1] * 16}]
        }
        with httpx.Client(base_url=self.url, timeout=60) as client:
            for _ in range(BENIGN):
                if self.stop.is_set():
                    return
                try:
                    response = client.post("/v2/models/tiny/infer", json=body)
                    ok = response.status_code == 200
                    if not ok:
                        self.failed.append(f"{response.status_code}: {response.text[:200]}")
                except httpx.HTTPError as exc:
                    self.failed.append(repr(exc))
                self.answered += 1
                self.started_answering.set()


def test_one_request_of_many_samples_runs_in_bounded_passes_under_benign_load(
    tmp_path: Path,
) -> None:
    state = tiny.wide_weights(1)
    sha = ck.save(state, tmp_path / "wide.safetensors")
    uri = f"file://{tmp_path}/wide.safetensors"
    revision = ck.revision(1, uri, sha, architecture=tiny.WIDE, input_shape=(tiny.WIDE_FEATURES,))
    ck.publish(tmp_path / "config", ck.config(1, revision))
    env = {
        "HOTSWAP_CONFIG_DIR": str(tmp_path / "config"),
        "HOTSWAP_MAX_REQUEST_BYTES": str(MAX_REQUEST),
        "HOTSWAP_REQUEST_MEMORY_BYTES": str(MEMORY),
        "HOTSWAP_FORWARD_MEMORY_BYTES": str(FORWARD),
    }
    x = np.random.default_rng(0).integers(0, 4, (SAMPLES, tiny.WIDE_FEATURES)).astype(np.float32)
    head, body = binary_request(x)
    assert len(body) <= MAX_REQUEST
    with running(tmp_path, env) as runtime:
        pid = runtime.process.pid
        batching = runtime.metadata()["batching"]
        benign = Benign(runtime.url)
        reset_peak(pid)  # VmHWM := VmRSS
        base = status_kib(pid, "VmHWM")
        benign.start()
        assert benign.started_answering.wait(60), benign.failed
        began = time.monotonic()
        response = httpx.post(
            runtime.url + "/v2/models/tiny/infer",
            content=body,
            headers={"Inference-Header-Content-Length": str(len(head))},
            timeout=300,
        )
        took = time.monotonic() - began
        benign.stop.set()
        benign.join(60)
        peak = status_kib(pid, "VmHWM")
        alive = runtime.process.poll() is None
        log = runtime.log()
    growth = (peak - base) * 1024
    assert alive, log[-2000:]
    assert response.status_code == 200, response.text[:500]
    assert benign.answered > 0 and benign.failed == [], benign.failed[:5]
    model = tiny.make_wide()
    model.load_state_dict(state)
    with torch.inference_mode():
        expected = model(torch.from_numpy(x))  # the whole batch in one pass, here
    answer = response.json()["outputs"][0]
    assert answer["shape"] == [SAMPLES, tiny.CLASSES]
    assert answer["data"] == expected.flatten().tolist()
    assert growth <= FORWARD + MEMORY + MARGIN, (
        f"peak RSS grew {growth >> 20} MiB for one request of {SAMPLES} samples in "
        f"{took:.1f} s; the forward bound is {FORWARD >> 20} MiB, the request memory "
        f"{MEMORY >> 20} MiB"
    )
    assert batching["activation_bytes_per_sample"] == ACTIVATION
    assert batching["forward_batch"] == FORWARD // 2 // ACTIVATION
    assert f"forward passes of at most {FORWARD // 2 // ACTIVATION} samples" in log
