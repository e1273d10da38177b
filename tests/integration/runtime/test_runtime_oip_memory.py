"""Five 200 MB infer requests at once stay within the runtime's request memory.

Each request claims its body plus what decoding it allocates before a byte of the body
is read, is charged as its body arrives, and holds the charge until the answer is sent;
a request whose charge would leave an older one unable to finish waits (its bytes stay
in the kernel's socket buffers). The process's peak RSS
(VmHWM, reset once the model is loaded) must grow by at most the budget plus a margin
for the forward pass, where five bodies read at once would take over 1 GB.
"""

from __future__ import annotations

import http.client
import json
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from devcluster import checkpoints as ck
from devcluster import tiny
from tests.fixtures_runtime.server import reset_peak, running, status_kib

SAMPLE = (1024, 1024)  # 4 MiB of FP32 per sample
BATCH = 50  # 200 MiB per request
BODY = BATCH * 4 * SAMPLE[0] * SAMPLE[1]
MAX_REQUEST = BODY + 4096
MEMORY = 2 * MAX_REQUEST + (24 << 20)  # what one binary request of the largest size holds
MARGIN = 96 << 20


@pytest.mark.slow
def test_five_200mb_bodies_at_once_stay_within_the_request_memory(tmp_path: Path) -> None:
    sha = ck.save(tiny.weights(1), tmp_path / "a.safetensors")
    uri = f"file://{tmp_path}/a.safetensors"
    revision = ck.revision(1, uri, sha, architecture=tiny.POOLED, input_shape=SAMPLE)
    ck.publish(tmp_path / "config", ck.config(1, revision))
    env = {
        "HOTSWAP_CONFIG_DIR": str(tmp_path / "config"),
        "HOTSWAP_MAX_REQUEST_BYTES": str(MAX_REQUEST),
        "HOTSWAP_REQUEST_MEMORY_BYTES": str(MEMORY),
        # Each request waits for the ones before it: the test is of memory, not of waits.
        "HOTSWAP_REQUEST_WAIT_SECONDS": "300",
        "HOTSWAP_MAX_CHECKPOINT_BYTES": str(1 << 20),
    }
    x = np.full((BATCH, *SAMPLE), 0.5, np.float32)
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
    body = head + x.tobytes()
    del x
    results: list[tuple[int, dict]] = []
    lock = threading.Lock()

    def post(url: str) -> None:
        host, port = url.removeprefix("http://").split(":")
        conn = http.client.HTTPConnection(host, int(port), timeout=300)
        conn.request(
            "POST",
            "/v2/models/tiny/infer",
            body=body,
            headers={"Inference-Header-Content-Length": str(len(head))},
        )
        response = conn.getresponse()
        answer = json.loads(response.read())
        with lock:
            results.append((response.status, answer))
        conn.close()

    with running(tmp_path, env) as runtime:
        pid = runtime.process.pid
        reset_peak(pid)  # VmHWM := VmRSS
        base = status_kib(pid, "VmHWM")
        threads = [threading.Thread(target=post, args=(runtime.url,)) for _ in range(5)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(300)
        peak = status_kib(pid, "VmHWM")
    growth = (peak - base) * 1024
    assert [status for status, _ in results] == [200] * 5, results
    expected = tiny.expected(tiny.weights(1), torch.full((1, 4), 0.5)).tolist()[0]
    assert all(a["outputs"][0]["data"][:3] == expected for _, a in results)
    assert growth <= MEMORY + MARGIN, (
        f"peak RSS grew {growth >> 20} MiB for five {BODY >> 20} MiB bodies; the request "
        f"memory is {MEMORY >> 20} MiB"
    )
