"""What a failed fetch shows, through a real runtime process: the reason in model
metadata, the log (at debug level) and /metrics never hold a URI's password or query,
text a hostile server sent, file content, or the hash or size of a file it read."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from devcluster import checkpoints as ck
from devcluster import tiny
from tests.fixtures_runtime import hostile_http as hostile
from tests.fixtures_runtime.server import running

MARKER = "MARKER-REFLECTED-5c1e"
PASSWORD = "PASSWORD-9d2b"
SIGNATURE = "SIGNATURE-41aa"
ENV_SECRET = "ENV-SECRET-77f0"


def test_failures_show_no_secrets_anywhere(tmp_path: Path) -> None:
    models = tmp_path / "models"
    sha1 = ck.save(tiny.weights(1), models / "v1.safetensors")
    other = models / "v2.safetensors"
    other_sha = ck.save(tiny.weights(2), other)
    (models / "environ.safetensors").symlink_to("/proc/self/environ")
    config = tmp_path / "config"
    ck.publish(config, ck.config(1, ck.revision(1, f"file://{models}/v1.safetensors", sha1)))
    env = {
        "HOTSWAP_CONFIG_DIR": str(config),
        "HOTSWAP_FILE_ROOTS": str(models),
        "HOTSWAP_LOG_LEVEL": "debug",
        "HOTSWAP_TEST_MARKER": ENV_SECRET,  # lands in /proc/<runtime>/environ
    }
    with hostile.serve() as web, running(tmp_path, env) as runtime:
        web.route("/leak", hostile.leak(MARKER))
        web.route("/denied", hostile.leak(MARKER, status=403))
        web.route("/hop", hostile.redirect(f"http://169.254.169.254/{MARKER}?{MARKER}"))
        base = web.url.replace("http://", f"http://user:{PASSWORD}@")
        query = f"?X-Amz-Signature={SIGNATURE}&X-Amz-Credential=AKID%2F{MARKER}"
        cases: list[tuple[str, str, str, Callable[[str], bool]]] = [
            (f"{base}/leak/x.safetensors{query}", "1" * 64, "fetch_failed", _says("HTTP 500")),
            (f"{base}/denied/x.safetensors{query}", "2" * 64, "fetch_failed", _says("HTTP 403")),
            (f"{base}/hop/x.safetensors{query}", "3" * 64, "fetch_refused", _says("link-local")),
            (
                f"file://{models}/environ.safetensors",
                "4" * 64,
                "fetch_refused",
                _says("through a symlink"),
            ),
            (f"file://{other}", "5" * 64, "sha256_mismatch", _says("does not match")),
        ]
        for number, (uri, sha, code, expected) in enumerate(cases, start=2):
            ck.publish(config, ck.config(number, ck.revision(number, uri, sha)))
            failure = runtime.wait_failure(number)
            assert failure["code"] == code, failure
            assert expected(failure["reason"]), failure["reason"]
            _assert_clean(json.dumps(runtime.metadata()), other_sha)
            _assert_clean(runtime.metrics(), other_sha)
        assert runtime.metadata()["model_version"] == "1"
        log = runtime.log()
    _assert_clean(log, other_sha)
    assert "/leak/x.safetensors" in log, "the failures were logged (redacted)"


def _says(text: str) -> Callable[[str], bool]:
    return lambda reason: text in reason


def _assert_clean(text: str, file_sha: str) -> None:
    secrets: dict[str, Any] = {
        "password": PASSWORD,
        "signature": SIGNATURE,
        "reflected text": MARKER,
        "environment": ENV_SECRET,
        "sha256 of a file read": file_sha,
        "short sha256 of a file read": file_sha[:12],
    }
    for what, secret in secrets.items():
        assert secret not in text, f"{what} leaked: ...{_around(text, secret)}..."
    assert not re.search(r"\d+ bytes read", text)


def _around(text: str, needle: str) -> str:
    at = text.find(needle)
    return text[max(0, at - 120) : at + 60]
