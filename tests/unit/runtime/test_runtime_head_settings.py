"""Request head and connection settings: from the environment, checked, and reaching
the protocol class uvicorn is given."""

from __future__ import annotations

import pytest

from hotswap_runtime.serving.head import HeadLimits, bounded_protocol, refusal, too_large
from hotswap_runtime.settings import load_settings

ENV = {
    "HOTSWAP_MODEL_NAME": "m",
    "HOTSWAP_HEAD_BYTES": "4096",
    "HOTSWAP_HEAD_SECONDS": "2.5",
    "HOTSWAP_KEEP_ALIVE_SECONDS": "30",
    "HOTSWAP_MAX_CONNECTIONS": "64",
}


def test_head_settings_come_from_the_environment_and_are_checked() -> None:
    s = load_settings([], ENV)
    assert (s.head_bytes, s.head_seconds, s.keep_alive_seconds, s.max_connections) == (
        4096,
        2.5,
        30,
        64,
    )
    with pytest.raises(SystemExit, match="HOTSWAP_HEAD_BYTES must be 1024 or more"):
        load_settings(["--head-bytes", "100"], ENV)
    with pytest.raises(SystemExit, match="HOTSWAP_MAX_CONNECTIONS must be >= 1"):
        load_settings([], {**ENV, "HOTSWAP_MAX_CONNECTIONS": "0"})


def test_the_protocol_class_carries_its_limits_and_refusals_close() -> None:
    limits = HeadLimits(4096, 2.5, 64)
    assert bounded_protocol(limits).limits == limits
    answer = refusal(431, too_large(limits))
    assert answer.startswith(b"HTTP/1.1 431 Request Header Fields Too Large\r\n")
    assert b"connection: close\r\n" in answer and b"HOTSWAP_HEAD_BYTES" in answer
