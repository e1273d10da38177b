"""Settings, the error table, model builders, the reporter's patch body."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from devcluster import tiny
from hotswap_contract.wire import ModelSpec, PodReport, PodState
from hotswap_runtime.control.reporter import Reporter
from hotswap_runtime.errors import (
    ArchitectureError,
    InferenceFailed,
    InvalidInput,
    ModelNotFound,
    ModelNotReady,
    RequestTooLarge,
    VersionConflict,
    grpc_status,
    http_status,
)
from hotswap_runtime.settings import load_settings
from hotswap_runtime.swap.models import build_model


def test_settings_from_env_and_flags() -> None:
    env = {
        "HOTSWAP_MODEL_NAME": "m",
        "HOTSWAP_PORT": "9000",
        "HOTSWAP_CONFIG_DIR": "/c",
        "POD_NAME": "p-1",
        "HOTSWAP_CACHE_MAX_BYTES": "123",
    }
    s = load_settings(["--port", "9100"], env)
    assert (s.model_name, s.port, s.config_dir, s.pod_name, s.cache_max_bytes) == (
        "m",
        9100,
        Path("/c"),
        "p-1",
        123,
    )
    with pytest.raises(SystemExit):
        load_settings([], {"HOTSWAP_MODEL_NAME": "m", "HOTSWAP_DEVICE": "tpu"})


def test_one_table_maps_errors_to_codes() -> None:
    errors = (InvalidInput, ModelNotFound, VersionConflict, RequestTooLarge, ModelNotReady)
    assert [http_status(e("x")) for e in errors] == [400, 404, 409, 413, 503]
    assert [grpc_status(e("x")) for e in errors] == [
        "INVALID_ARGUMENT",
        "NOT_FOUND",
        "FAILED_PRECONDITION",
        "RESOURCE_EXHAUSTED",
        "UNAVAILABLE",
    ]
    assert (http_status(InferenceFailed("x")), grpc_status(InferenceFailed("x"))) == (
        500,
        "INTERNAL",
    )


def test_builders() -> None:
    spec = ModelSpec(
        architecture="torchvision/resnet18", args={"num_classes": 3}, inputShape=(3, 32, 32)
    )
    model = build_model(spec, "cpu", tiny.ALLOWED)
    assert model(torch.zeros(1, 3, 32, 32)).shape == (1, 3) and not model.training
    small = ModelSpec(
        architecture="python/devcluster.tiny:make_model",
        args={"classes": 5},
        inputShape=(4,),
    )
    assert build_model(small, "cpu", tiny.ALLOWED)(torch.zeros(1, 4)).shape == (1, 5)
    with pytest.raises(ArchitectureError, match=r"could not be built from model\.args"):
        build_model(
            ModelSpec(architecture="torchvision/resnet18", args={"bogus": 1}, inputShape=(3, 8, 8)),
            "cpu",
            tiny.ALLOWED,
        )
    with pytest.raises(ArchitectureError, match="has no callable 'nope'"):
        build_model(
            ModelSpec(architecture="python/devcluster.tiny:nope", inputShape=(4,)),
            "cpu",
            tiny.ALLOWED,
        )


def test_reporter_writes_its_own_modelreplica_owned_by_its_pod() -> None:
    reporter = Reporter(api=None, namespace="ns", name="m", pod="p-1", pod_uid="u-1")
    first = PodReport(state=PodState.SERVING, revision=2, swapSeconds={"fetch": 1.0, "x": 2.0})
    created = reporter.manifest(first)
    assert created["kind"] == "ModelReplica" and created["metadata"]["name"] == "p-1"
    assert created["metadata"]["labels"] == {"hotswap.dev/model-deployment": "m"}
    owner = created["metadata"]["ownerReferences"][0]
    assert (owner["kind"], owner["name"], owner["uid"]) == ("Pod", "p-1", "u-1")
    assert created["status"]["state"] == "Serving" and created["status"]["revision"] == 2
    entry = reporter.body(first)["status"]
    assert entry["state"] == "Serving" and entry["revision"] == 2
    assert entry["targetRevision"] is None  # null removes a stale field in a merge patch
    reporter._sent_phases = {"fetch", "x"}
    second = reporter.body(PodReport(state=PodState.LOADING, swapSeconds={"fetch": 0.5}))
    assert second["status"]["swapSeconds"] == {"fetch": 0.5, "x": None}


def test_a_throttled_report_waits_what_the_server_asks_and_no_more() -> None:
    from kubernetes.client.exceptions import ApiException

    from hotswap_runtime.control.reporter import MAX_RETRY_AFTER, retry_after

    throttled = ApiException(status=429, reason="Too Many Requests")
    throttled.headers = {"Retry-After": "2"}
    assert retry_after(throttled) == 2.0
    throttled.headers = {}
    assert retry_after(throttled) == 1.0  # APF's answer carries one; a proxy's may not
    throttled.headers = {"Retry-After": "86400"}
    assert retry_after(throttled) == MAX_RETRY_AFTER
    throttled.headers = {"Retry-After": "soon"}
    assert retry_after(throttled) == 1.0
    assert retry_after(ApiException(status=500)) == 0.0  # exponential back-off instead
    assert retry_after(OSError("refused")) == 0.0
