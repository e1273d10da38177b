"""Fixtures shared by every test: the real control plane, helm, kubeconform, and a fresh
namespace per test.

Tests that use any of them are marked `cluster` automatically (`-m "not cluster"` skips
them). Nothing is skipped silently: a missing control-plane binary is built (quick when
current), a missing helm is installed.
"""

from __future__ import annotations

import fcntl
import os
import re
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from devcluster.cluster import REPO, Cluster, ensure_binary
from devcluster.rest import ApiError
from devcluster.waiting import wait_for

HELM = REPO / ".cache" / "bin" / "helm"
HELM3 = REPO / ".cache" / "bin" / "helm3"  # the README's install commands, with Helm 3
# HOTSWAP_KUBECONFORM: another place for it (a shared .cache/bin left as it is).
FAKE_GCS = REPO / ".cache" / "bin" / "fake-gcs-server"  # scripts/install-fake-gcs-server.sh
AZURITE = REPO / ".cache" / "azurite"  # scripts/install-azurite.sh (npm ci)
KUBECONFORM = Path(os.environ.get("HOTSWAP_KUBECONFORM", REPO / ".cache" / "bin" / "kubeconform"))
PROMETHEUS = REPO / ".cache" / "bin" / "prometheus"  # promtool beside it
LUAHEALTH = REPO / ".cache" / "bin" / "luahealth"
CLUSTER_FIXTURES = {"cluster", "namespace", "helm_bin", "helm3_bin", "kubeconform_bin"}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if CLUSTER_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.cluster)


@pytest.fixture(scope="session")
def cluster() -> Iterator[Cluster]:
    """The control plane (etcd, apiserver, controller-manager, scheduler), one per session."""
    with Cluster(ensure_binary()) as running:
        yield running


@pytest.fixture(scope="session")
def helm_bin() -> Path:
    """The pinned helm binary, installed with `go install` if missing."""
    return _installed("install-helm.sh", HELM)


@pytest.fixture(scope="session")
def helm3_bin() -> Path:
    """Helm 3 (pinned in scripts/install-helm.sh), for the README's install commands."""
    return _installed("install-helm.sh", HELM3, "3")


@pytest.fixture(scope="session")
def fake_gcs_bin() -> Path:
    """The pinned fake-gcs-server (GCS emulator), installed with `go install` if missing."""
    return _installed("install-fake-gcs-server.sh", FAKE_GCS)


@pytest.fixture(scope="session")
def azurite_install() -> Path:
    """The pinned Azurite (Azure Blob emulator) folder, installed with `npm ci` if missing."""
    return _installed("install-azurite.sh", AZURITE)


@pytest.fixture(scope="session")
def prometheus_bin() -> Path:
    """Pinned prometheus (kubernetes_sd only) and promtool beside it, from Go modules."""
    return _installed("install-prometheus.sh", PROMETHEUS)


@pytest.fixture(scope="session")
def promtool_bin(prometheus_bin: Path) -> Path:
    return prometheus_bin.parent / "promtool"


@pytest.fixture(scope="session")
def luahealth_bin() -> Path:
    """gopher-lua running a health check as Argo CD does (devcluster/luahealth)."""
    return _installed("../devcluster/luahealth/build.sh", LUAHEALTH)


def _installed(script: str, binary: Path, *args: str) -> Path:
    """Run scripts/<script> (quick when `binary` is current), one process at a time."""
    binary.parent.mkdir(parents=True, exist_ok=True)
    with (binary.parent / f".{binary.name}.install.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        done = subprocess.run(
            [str(REPO / "scripts" / script), str(binary), *args],
            capture_output=True,
            text=True,
            check=False,
        )
    if done.returncode != 0:
        raise RuntimeError(f"scripts/{script} failed:\n{done.stdout}{done.stderr}")
    return binary


@pytest.fixture(scope="session")
def kubeconform_bin() -> Path:
    """The pinned kubeconform binary, installed with `go install` if missing."""
    return _installed("install-kubeconform.sh", KUBECONFORM)


@pytest.fixture
def namespace(cluster: Cluster, request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh namespace (with its default ServiceAccount), deleted after the test."""
    stem = re.sub(r"[^a-z0-9]+", "-", request.node.name.lower()).strip("-")[:40].strip("-")
    name = f"{stem or 't'}-{uuid.uuid4().hex[:6]}"
    client = cluster.rest()
    client.post("/api/v1/namespaces", {"metadata": {"name": name}})
    wait_for(
        lambda: client.get(f"/api/v1/namespaces/{name}/serviceaccounts/default"),
        timeout=30,
        what=f"ServiceAccount default in namespace {name}",
    )
    yield name
    try:
        client.delete(f"/api/v1/namespaces/{name}")
    except ApiError as err:
        if err.status != 404:
            raise
