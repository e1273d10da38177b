"""What the user may do, asked of the API server: a SelfSubjectAccessReview per verb.

The dashboard shows its edit buttons only where the review allows them, and asks again
before each edit (the API server's RBAC still decides the write itself). Every
authenticated user may create a SelfSubjectAccessReview (system:basic-user), so this
needs no permission of its own.
"""

from __future__ import annotations

from hotswap_contract.wire import API_GROUP, PLURAL
from hotswap_operator.kube import KubeError
from hotswap_operator.kubectl.api import Session

REVIEWS = "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews"
EDIT_VERBS = ("get", "patch")  # edits.py reads the ModelDeployment, then patches its spec


def allowed(session: Session, name: str, verb: str) -> bool:
    """Whether the user may `verb` ModelDeployment `name` (False when the review fails)."""
    body = {
        "apiVersion": "authorization.k8s.io/v1",
        "kind": "SelfSubjectAccessReview",
        "spec": {
            "resourceAttributes": {
                "group": API_GROUP,
                "resource": PLURAL,
                "verb": verb,
                "namespace": session.namespace,
                "name": name,
            }
        },
    }
    try:
        review = session.kube.request("POST", REVIEWS, body)
    except KubeError:
        return False
    return bool(((review or {}).get("status") or {}).get("allowed"))


def may_edit(session: Session, name: str) -> bool:
    """Whether every verb an edit needs is allowed."""
    return all(allowed(session, name, verb) for verb in EDIT_VERBS)
