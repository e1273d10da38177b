"""helm test: one inference request through a ModelDeployment's Service.

    python inference-test.py BASE_URL MODEL    # e.g. http://resnet18.ml.svc:8080 resnet18

Reads the model's metadata, sends one sample of zeros shaped as its inputs, and exits 0
only for an HTTP 200 whose outputs all carry data. Standard library only (it runs in the
operator's image, templates/tests/inference.yaml); bounded: the sample's size, the
answers read and every wait.
"""

from __future__ import annotations

import json
import math
import sys
import urllib.error
import urllib.request
from typing import Any

TIMEOUT_SECONDS = 30.0
MAX_SAMPLE_ELEMENTS = 1 << 22  # 4 Mi zeros, about 8 MiB of JSON
MAX_ANSWER_BYTES = 64 << 20
ZERO = {"BOOL": False, "BYTES": ""}  # any other datatype is a number


class CheckError(Exception):
    """What the test reports before it exits 1."""


def call(url: str, body: bytes | None = None) -> tuple[int, Any]:
    """(status, JSON answer) of GET ``url``, or POST ``body`` as JSON."""
    headers = {"Content-Type": "application/json"} if body is not None else {}
    request = urllib.request.Request(url, data=body, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT_SECONDS) as answer:
            return answer.status, json.loads(answer.read(MAX_ANSWER_BYTES))
    except urllib.error.HTTPError as exc:
        raise CheckError(f"{url} answered HTTP {exc.code}: {exc.read(2048)!r}") from exc
    except (OSError, ValueError) as exc:  # refused, unresolved, timed out, not JSON
        raise CheckError(f"{url}: {type(exc).__name__}: {exc}") from exc


def zeros(tensor: dict[str, Any]) -> dict[str, Any]:
    """One sample for ``tensor``'s metadata: every variable dimension 1, all zeros."""
    shape = [1 if int(d) < 0 else int(d) for d in tensor["shape"]]
    count = math.prod(shape)
    if count > MAX_SAMPLE_ELEMENTS:
        raise CheckError(
            f"input {tensor['name']} has {count} elements per sample; too many to test"
        )
    datatype = str(tensor["datatype"])
    data = [ZERO.get(datatype, 0)] * count
    return {"name": tensor["name"], "shape": shape, "datatype": datatype, "data": data}


def check(base: str, model: str) -> str:
    """The summary line of a good answer, or CheckError saying what was wrong."""
    url = f"{base.rstrip('/')}/v2/models/{model}"
    _, meta = call(url)
    try:
        inputs = [zeros(t) for t in meta["inputs"]]
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckError(f"{url} gave metadata without usable inputs: {exc!r}") from exc
    status, answer = call(f"{url}/infer", json.dumps({"inputs": inputs}).encode())
    outputs = answer.get("outputs") if isinstance(answer, dict) else None
    if (
        status != 200
        or not outputs
        or not all(isinstance(o, dict) and o.get("data") for o in outputs)
    ):
        raise CheckError(f"{url}/infer answered {status} without outputs: {str(answer)[:300]}")
    names = ", ".join(str(o.get("name")) for o in outputs)
    return f"ok: {model} version {answer.get('model_version')} answered {names}"


def main(argv: list[str]) -> int:
    if len(argv) != 3:
        print(__doc__, file=sys.stderr)
        return 2
    try:
        print(check(argv[1], argv[2]))
    except CheckError as exc:
        print(f"FAILED: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
