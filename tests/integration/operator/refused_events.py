"""What the operator tests do around the operator process (devcluster/operator_process.py):
refuse, then allow again, the Events of a namespace."""

from __future__ import annotations

from devcluster.rest import ApiError, KubeClient
from devcluster.waiting import wait_for

ADMISSION = "/apis/admissionregistration.k8s.io/v1"


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
