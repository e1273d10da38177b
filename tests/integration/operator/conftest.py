"""Fixtures of the `kubectl hotswap` tests (test_kubectl_plugin.py, test_kubectl_dashboard*.py):
the CRDs with the plugin's documented role, user `alice` bound to it, and a browser.

The operator's own tests here define their own `crd` (the CRDs alone), which wins in
their modules.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from devcluster import browser
from devcluster.cluster import REPO, Cluster

ROLE = REPO / "examples" / "kubectl-hotswap-rbac.yaml"
PLUGIN = Path(sys.executable).parent / "kubectl-hotswap"


@pytest.fixture(scope="module")
def crd(cluster: Cluster) -> Cluster:
    """ModelDeployment and ModelReplica, and the ClusterRole `hotswap-kubectl` of
    examples/kubectl-hotswap-rbac.yaml; the plugin's console script must be installed."""
    cluster.apply_crd(REPO / "crds")
    cluster.kubectl("apply", "-f", str(ROLE))
    assert PLUGIN.exists(), f"{PLUGIN} missing: `pip install -e .` installs the console script"
    return cluster


@pytest.fixture
def alice(crd: Cluster, namespace: str) -> Path:
    """A kubeconfig for user alice, bound to the plugin's ClusterRole in `namespace` only."""
    return crd.bound_user("alice", namespace, "hotswap-kubectl")


@pytest.fixture(scope="module")
def chrome() -> Iterator[Any]:
    """Headless Chromium (a Selenium WebDriver) for the dashboard's browser tests."""
    with browser.chromium() as driver:
        yield driver
