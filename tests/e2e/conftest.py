"""e2e fixtures: one helm install of the chart per test module, in its own namespace."""

from __future__ import annotations

import os
import re
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.fleet import helm_install
from tests.harness.cluster import REPO, Cluster
from tests.harness.images import ImageCommand
from tests.harness.kubelet import LocalKubelet
from tests.harness.rest import ApiError
from tests.harness.waiting import wait_for

RELEASE = "hotswap"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/e2e/" in str(item.fspath).replace("\\", "/"):
            item.add_marker(pytest.mark.e2e)


@pytest.fixture(scope="session")
def images(kubelet: LocalKubelet) -> LocalKubelet:
    """The operator and runtime images carry this checkout's code, as built images do.

    PYTHONPATH=<checkout> alone (the kubelet's image env) reaches the tests' model code
    but not the packages under operator/ and runtime/: those would come from wherever
    the environment's editable install points, which need not be this checkout."""
    path = os.pathsep.join(str(REPO / d) for d in ("operator", "runtime", "."))
    for image, module in (
        ("hotswap-operator", "hotswap_operator"),
        ("hotswap-runtime", "hotswap_runtime"),
    ):
        kubelet.images.register(
            image, ImageCommand((sys.executable, "-m", module), {"PYTHONPATH": path})
        )
    return kubelet


@pytest.fixture(scope="module")
def installed(
    cluster: Cluster, images: LocalKubelet, helm_bin: Path, request: pytest.FixtureRequest
) -> Iterator[str]:
    """A namespace with the chart installed by helm, the operator watching only it.

    The operator runs as a pod on the local kubelet under the chart's ServiceAccount.
    Yields the namespace; deletes it (and so every pod in it) afterwards.
    """
    stem = re.sub(r"[^a-z0-9]+", "-", request.module.__name__.split(".")[-1].lower())
    namespace = f"{stem.strip('-')[:30]}-{uuid.uuid4().hex[:6]}"
    helm_install(cluster, helm_bin, RELEASE, namespace, f"watchNamespaces={{{namespace}}}")
    client = cluster.rest()
    wait_for(
        lambda: any(
            c.get("type") == "Ready" and c.get("status") == "True"
            for p in client.get(
                f"/api/v1/namespaces/{namespace}/pods",
                {"labelSelector": "app.kubernetes.io/name=hotswap-operator"},
            )["items"]
            for c in p.get("status", {}).get("conditions", [])
        ),
        timeout=120,
        what=f"operator pod Ready in {namespace}",
    )
    failed_before = request.session.testsfailed
    yield namespace
    if request.session.testsfailed > failed_before:
        _print_logs(cluster, images, namespace)
    try:
        client.delete(f"/api/v1/namespaces/{namespace}")
    except ApiError as err:
        if err.status != 404:
            raise


def _print_logs(cluster: Cluster, kubelet: LocalKubelet, namespace: str, lines: int = 40) -> None:
    """On failure: the tail of every pod's log in the namespace (operator first), and
    the whole logs kept under .cache/e2e-logs/<namespace>/ (shown with `pytest -s`)."""
    pods = cluster.rest().get(f"/api/v1/namespaces/{namespace}/pods")["items"]
    names = sorted((p["metadata"]["name"] for p in pods), key=lambda n: not n.startswith(RELEASE))
    keep = REPO / ".cache" / "e2e-logs" / namespace
    for name in names:
        try:
            text = kubelet.logs(namespace, name).read_text(errors="replace")
        except (KeyError, OSError):
            continue
        keep.mkdir(parents=True, exist_ok=True)
        (keep / f"{name}.log").write_text(text)
        tail = "\n".join(text.splitlines()[-lines:])
        print(f"\n----- {namespace}/{name} (last {lines} lines) -----\n{tail}")
    print(f"\nfull pod logs: {keep}")
