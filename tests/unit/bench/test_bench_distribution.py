"""bench/distribution.py's pure parts: ratios, percentiles, the summary and its targets,
the sizes per N; devcluster/hollow.py's pod environment and volumes under --fetch."""

from __future__ import annotations

import base64
import copy
from pathlib import Path
from typing import Any

import pytest

from bench.distribution import (
    MIB,
    auto_mib,
    checkpoint_sizes,
    fetched_totals,
    phase_figures,
    summary,
)
from devcluster.hollow import HollowNode, container_env
from devcluster.rest import ApiError


def test_phase_figures_ratio_and_percentiles() -> None:
    got = phase_figures(4, 100 * MIB, 150 * MIB, [1.0, 2.0, 3.0, 10.0], True)
    assert got["store_read_ratio"] == 1.5
    assert (got["converge_p50_s"], got["converge_p95_s"], got["converge_max_s"]) == (2, 10, 10)
    assert got["converged"] is True


def test_a_pod_that_never_reported_means_not_converged() -> None:
    got = phase_figures(4, MIB, MIB, [1.0, 2.0, 3.0], True)
    assert got["converged"] is False
    assert got["pods_reported"] == 3


def test_fetched_totals_sum_the_reports() -> None:
    reports: list[dict[str, Any]] = [
        {"status": {"fetched": {"storeBytes": 10, "peerBytes": 0, "peers": 0}}},
        {"status": {"fetched": {"peerBytes": 10, "peers": 2, "peerFailures": 1}}},
        {"status": {}},
    ]
    got = fetched_totals(reports)
    assert got["reports_with_fetched"] == 2
    assert (got["store_bytes_reported"], got["peer_bytes"]) == (10, 10)
    assert (got["peers_used_max"], got["peer_failures"]) == (2, 1)


def phases(ratio: float, p95_on: float, p95_off: float, n: int) -> dict[str, Any]:
    return {
        "peers": {"store_read_ratio": ratio, "converge_p95_s": p95_on},
        "direct": {"store_read_ratio": float(n), "converge_p95_s": p95_off},
    }


def test_summary_at_the_largest_n_with_both_modes() -> None:
    per_size = {
        "10": phases(1.0, 5.0, 20.0, 10),
        "100": phases(1.2, 30.0, 260.0, 100),
        "300": {"peers": {"store_read_ratio": 1.0}},  # direct broke: not the summary's N
    }
    got = summary(per_size)
    assert got["pods"] == 100
    assert (got["store_read_ratio"], got["store_read_ratio_direct"]) == (1.2, 100.0)
    assert (got["converge_p95_s"], got["converge_p95_s_direct"]) == (30.0, 260.0)
    assert got["speedup_p95"] == {"10": 4.0, "100": 8.67}
    assert got["target_ratio_met"] is True
    assert got["target_speedup_met"] is True


def test_summary_targets_missed() -> None:
    got = summary({"10": phases(1.6, 5.0, 20.0, 10), "100": phases(1.0, 60.0, 260.0, 100)})
    assert got["target_ratio_met"] is False
    assert got["target_speedup_met"] is False
    assert summary({"10": phases(1.0, 5.0, 20.0, 10)})["target_speedup_met"] is None


def test_auto_mib_leaves_the_margin() -> None:
    gib = 1 << 30
    assert auto_mib(300, 40 * gib, 6 * gib, 8) == 112  # 34 GiB / 301 = 115.7 MiB
    assert auto_mib(300, 6 * gib, 6 * gib, 8) == 0


def test_checkpoint_sizes_per_n() -> None:
    assert checkpoint_sizes("256,256,auto", [10, 100, 300]) == ["256", "256", "auto"]
    assert checkpoint_sizes("32", [3, 10]) == ["32", "32"]
    with pytest.raises(SystemExit):
        checkpoint_sizes("big", [3])


POD: dict[str, Any] = {
    "metadata": {"name": "dist-1", "namespace": "ns", "uid": "u-1"},
    "spec": {
        "nodeName": "hollow-0",
        "volumes": [
            {"name": "cache", "emptyDir": {}},
            {"name": "peer-token", "secret": {"secretName": "dist-peer"}},
        ],
        "containers": [
            {
                "env": [
                    {"name": "HOTSWAP_MODEL_NAME", "value": "dist"},
                    {"name": "HOTSWAP_CACHE_DIR", "value": "/var/cache/hotswap"},
                    {"name": "HOTSWAP_PEER_TOKEN_FILE", "value": "/var/run/hotswap/peer/token"},
                    {"name": "HOTSWAP_FILE_ROOTS", "value": "/models"},
                    {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                    {
                        "name": "HOTSWAP_HOST",
                        "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}},
                    },
                ],
                "volumeMounts": [
                    {"name": "cache", "mountPath": "/var/cache/hotswap"},
                    {"name": "peer-token", "mountPath": "/var/run/hotswap/peer"},
                ],
            }
        ],
    },
}


class Secrets:
    """The node's client, as far as volumes() uses it."""

    def __init__(self) -> None:
        self.read: list[str] = []

    def get(self, path: str) -> dict[str, Any]:
        self.read.append(path)
        return {"data": {"token": base64.b64encode(b"s3cret").decode()}}


def test_the_pod_env_and_volumes_as_kubelet_makes_them(tmp_path: Path) -> None:
    client = Secrets()
    node = HollowNode(client, "hollow-0", 0.0, 10, tmp_path)  # type: ignore[arg-type]
    env = node.volumes(POD, tmp_path / "pod", container_env(POD, "127.100.0.1"))
    assert env["HOTSWAP_HOST"] == "127.100.0.1"
    assert env["POD_NAME"] == "dist-1"
    assert env["HOTSWAP_CACHE_DIR"] == f"{tmp_path}/pod/var/cache/hotswap"
    assert env["HOTSWAP_FILE_ROOTS"] == "/models"  # not a mount point: unchanged
    assert Path(env["HOTSWAP_PEER_TOKEN_FILE"]).read_bytes() == b"s3cret"
    assert client.read == ["/api/v1/namespaces/ns/secrets/dist-peer"]
    assert Path(env["HOTSWAP_CACHE_DIR"]).is_dir()


class NoSecret(Secrets):
    def get(self, path: str) -> dict[str, Any]:
        raise ApiError("GET", path, 404, "not found")


def test_a_missing_optional_secret_is_no_file(tmp_path: Path) -> None:
    pod = copy.deepcopy(POD)
    pod["spec"]["volumes"][1]["secret"]["optional"] = True
    node = HollowNode(NoSecret(), "hollow-0", 0.0, 10, tmp_path)  # type: ignore[arg-type]
    env = node.volumes(pod, tmp_path / "pod", container_env(pod, "127.100.0.1"))
    assert not Path(env["HOTSWAP_PEER_TOKEN_FILE"]).exists()
    with pytest.raises(ApiError):  # not optional: the pod does not start
        node.volumes(POD, tmp_path / "pod2", container_env(POD, "127.100.0.1"))
