"""An operator whose watches fail does not lead, and says so (watchhealth.py).

The operator process reaches the API server only through a proxy the test controls
(apiproxy.py). Blinded, the proxy refuses every watch and list while the Lease requests
still pass: the replica could renew its Lease for ever while it sees nothing. After
HOTSWAP_WATCH_FAILURE_SECONDS it must give the Lease up, not take it again, and fail
/healthz; once the watches pass again it must recover by itself.
"""

from __future__ import annotations

import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from apiproxy import ApiProxy

from devcluster.operator_process import operator_process
from devcluster.rest import ApiError, KubeClient
from devcluster.waiting import wait_for

BOUND = 5.0
LEASE = "/apis/coordination.k8s.io/v1/namespaces/{ns}/leases/hotswap-operator"


@pytest.fixture(scope="module")
def crd(cluster):
    cluster.apply_crd(Path(__file__).resolve().parents[3] / "crds")
    return cluster


def healthz(url: str) -> int | None:
    """The liveness endpoint's HTTP status (None while it does not answer)."""
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return int(response.status)
    except urllib.error.HTTPError as err:
        return err.code
    except OSError:
        return None


def holder(client: KubeClient, namespace: str) -> str | None:
    try:
        lease = client.get(LEASE.format(ns=namespace))
    except ApiError as err:
        if err.status == 404:
            return None
        raise
    return str(lease["spec"].get("holderIdentity") or "")


def test_a_leader_whose_watches_fail_gives_up_the_lease_and_fails_healthz(crd, namespace, tmp_path):
    client = crd.rest()
    with ApiProxy(crd) as proxy:
        env = {
            "KUBECONFIG": str(proxy.kubeconfig(tmp_path)),
            "HOTSWAP_WATCH_FAILURE_SECONDS": str(BOUND),
        }
        with operator_process(crd, namespace, tmp_path / "operator.log", **env) as running:
            url = running.env["HOTSWAP_LIVENESS_ENDPOINT"]
            wait_for(
                lambda: healthz(url) == 200 and holder(client, namespace),
                timeout=60,
                what="the operator leading and healthy",
            )
            leader = holder(client, namespace)

            proxy.blind()
            blinded = time.monotonic()
            wait_for(lambda: holder(client, namespace) == "", timeout=60, what="Lease released")
            released = time.monotonic() - blinded
            wait_for(lambda: healthz(url) == 500, timeout=30, what="/healthz failing")
            assert released >= BOUND, f"released {released:.1f}s after the watches failed"
            # kopf keeps trying (and failing) to watch; the blind replica leaves the Lease free.
            tries = proxy.refused
            wait_for(lambda: proxy.refused >= tries + 3, timeout=30, what="watches retried")
            assert holder(client, namespace) == ""
            assert "does not lead: the watch of" in (tmp_path / "operator.log").read_text()

            proxy.see()
            wait_for(
                lambda: healthz(url) == 200 and holder(client, namespace) == leader,
                timeout=90,
                what="the operator leading and healthy again",
            )
