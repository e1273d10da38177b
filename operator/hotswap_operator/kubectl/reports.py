"""Where the plugin reads each runtime pod's report: the pods' ModelReplicas.

Each runtime pod writes its report (contract.PodReport) into its own ModelReplica, named
after the pod and labelled with its ModelDeployment's name (docs/architecture.md,
"Scale"); the ModelDeployment carries only counts. A pod's report that does not parse
maps to the reason why, as the operator reads them.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import ValidationError

from hotswap_contract.wire import PodReport
from hotswap_operator.kubectl.api import Session, list_replicas


def pod_reports(session: Session, deployment: Mapping[str, Any]) -> dict[str, PodReport | str]:
    """Each pod's report, by pod name; one that does not parse maps to why."""
    name = str(deployment["metadata"]["name"])
    out: dict[str, PodReport | str] = {}
    for item in list_replicas(session, name):
        pod = str(item.get("metadata", {}).get("name", "?"))
        try:
            out[pod] = PodReport.model_validate(item.get("status") or {})
        except ValidationError as exc:
            out[pod] = f"unreadable report: {exc.errors()[0]['msg']}"
    return dict(sorted(out.items()))
