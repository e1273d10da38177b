"""The operator as a process against the real API server (no kubelet, no helm).

`python -m hotswap_operator --namespace <ns>` with the cluster admin's kubeconfig, as
the chart would run it minus the pod: for tests of what only the whole operator shows
(watch triggers, retries, lost updates), where calling the sync directly would not.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from devcluster import procs
from devcluster.cluster import REPO, Cluster, free_port
from devcluster.rest import ApiError, KubeClient
from devcluster.waiting import wait_for

CPU_DEFAULTS = '{"gpu": {"enabled": false}}'
ADMISSION = "/apis/admissionregistration.k8s.io/v1"


@contextmanager
def operator_process(
    cluster: Cluster, namespace: str, log: Path, **env: str
) -> Iterator[dict[str, str]]:
    """Run the operator watching `namespace`; yields its environment (ports included)."""
    environ = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(str(REPO / d) for d in ("runtime", "operator", ".")),
        "KUBECONFIG": str(cluster.kubeconfig),
        "HOTSWAP_RUNTIME_DEFAULTS": CPU_DEFAULTS,
        "HOTSWAP_LIVENESS_ENDPOINT": f"http://127.0.0.1:{free_port()}/healthz",
        "HOTSWAP_METRICS_PORT": str(free_port()),
        "POD_IP": "127.0.0.1",
        "POD_NAMESPACE": namespace,
        **env,
    }
    argv = [sys.executable, "-m", "hotswap_operator", "--namespace", namespace]
    proc = procs.spawn(argv, log=log, env=environ, cwd=REPO)
    try:
        yield environ
    finally:
        procs.stop_group(proc, grace=10)


def refuse_events(client: KubeClient, namespace: str) -> str:
    """A ValidatingAdmissionPolicy that refuses (422) every Event written in `namespace`;
    returns once the API server enforces it. Delete it with `allow_events`."""
    name = f"refuse-events-{namespace}"[:63]
    client.post(
        f"{ADMISSION}/validatingadmissionpolicies",
        {
            "metadata": {"name": name},
            "spec": {
                "failurePolicy": "Fail",
                "matchConstraints": {
                    "resourceRules": [
                        {
                            "apiGroups": ["", "events.k8s.io"],
                            "apiVersions": ["*"],
                            "operations": ["CREATE", "UPDATE"],
                            "resources": ["events"],
                        }
                    ],
                    "namespaceSelector": {
                        "matchLabels": {"kubernetes.io/metadata.name": namespace}
                    },
                },
                "validations": [
                    {"expression": "false", "message": "refused by the test", "reason": "Invalid"}
                ],
            },
        },
    )
    client.post(
        f"{ADMISSION}/validatingadmissionpolicybindings",
        {"metadata": {"name": name}, "spec": {"policyName": name, "validationActions": ["Deny"]}},
    )

    def refused() -> bool:
        probe = {
            "metadata": {"generateName": "probe-", "namespace": namespace},
            "involvedObject": {"kind": "ConfigMap", "name": "probe", "namespace": namespace},
            "type": "Normal",
            "reason": "Probe",
            "message": "is the policy on yet?",
        }
        try:
            created = client.post(f"/api/v1/namespaces/{namespace}/events", probe)
        except ApiError as err:
            return err.status == 422 and name in err.body
        client.delete(f"/api/v1/namespaces/{namespace}/events/{created['metadata']['name']}")
        return False

    wait_for(refused, timeout=30, interval=0.2, what=f"Events refused in {namespace}")
    return name


def allow_events(client: KubeClient, name: str) -> None:
    for kind in ("validatingadmissionpolicybindings", "validatingadmissionpolicies"):
        try:
            client.delete(f"{ADMISSION}/{kind}/{name}")
        except ApiError as err:
            if err.status != 404:
                raise
