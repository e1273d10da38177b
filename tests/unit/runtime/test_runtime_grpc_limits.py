"""gRPC's own limits come from the runtime's settings (flags and HOTSWAP_ variables)."""

from __future__ import annotations

import pytest

from hotswap_runtime.errors import RequestTimeout, grpc_status, http_status
from hotswap_runtime.serving.grpc_server import options
from hotswap_runtime.settings import load_settings


def test_grpc_limits_from_env_reach_grpc_core() -> None:
    env = {
        "HOTSWAP_MODEL_NAME": "m",
        "HOTSWAP_MAX_REQUEST_BYTES": str(64 << 20),
        "HOTSWAP_GRPC_MAX_CONNECTIONS": "7",
        "HOTSWAP_GRPC_MAX_STREAMS": "3",
        "HOTSWAP_GRPC_RECEIVING": "2",
        "HOTSWAP_GRPC_RECEIVE_SECONDS": "1.5",
        "HOTSWAP_GRPC_MIN_PING_SECONDS": "20",
    }
    settings = load_settings([], env)
    assert (settings.grpc_receiving, settings.grpc_receive_seconds) == (2, 1.5)
    args = dict(options(settings))
    assert args["grpc.max_receive_message_length"] == 64 << 20
    assert args["grpc.max_allowed_incoming_connections"] == 7
    assert args["grpc.max_concurrent_streams"] == 3
    assert args["grpc.http2.min_ping_interval_without_data_ms"] == 20_000
    assert args["grpc.http2.bdp_probe"] == 0
    assert args["grpc.http2.lookahead_bytes"] == 64 << 10


@pytest.mark.parametrize(
    "var", ["HOTSWAP_GRPC_MAX_CONNECTIONS", "HOTSWAP_GRPC_MAX_STREAMS", "HOTSWAP_GRPC_RECEIVING"]
)
def test_grpc_limits_must_be_positive(var: str) -> None:
    with pytest.raises(SystemExit, match="must be >= 1"):
        load_settings([], {"HOTSWAP_MODEL_NAME": "m", var: "0"})
    with pytest.raises(SystemExit, match="RECEIVE_SECONDS must be positive"):
        load_settings([], {"HOTSWAP_MODEL_NAME": "m", "HOTSWAP_GRPC_RECEIVE_SECONDS": "0"})


def test_a_request_that_did_not_arrive_in_time_is_408_and_deadline_exceeded() -> None:
    assert (http_status(RequestTimeout("x")), grpc_status(RequestTimeout("x"))) == (
        408,
        "DEADLINE_EXCEEDED",
    )
