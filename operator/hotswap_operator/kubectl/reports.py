"""Where the plugin reads each runtime pod's report: the one place to change if they move.

Today a pod writes its report (contract.PodReport) at `status.pods.<pod>` of its
ModelDeployment, so the reports come with the object `api.get_deployment` read and need
no further call or permission. If reports move to per-pod objects, only this function
(and the permission it declares) changes: list those objects by the ModelDeployment's
label and parse each the same way.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from hotswap_runtime.contract import PodReport

from hotswap_operator.kubectl.api import Session
from hotswap_operator.status import ModelDeploymentStatus


def pod_reports(session: Session, deployment: Mapping[str, Any]) -> dict[str, PodReport | str]:
    """Each pod's report, by pod name; an entry that does not parse maps to why."""
    del session  # reports travel with the ModelDeployment today (see module docstring)
    status = ModelDeploymentStatus.from_raw(deployment.get("status"))
    return dict(sorted(status.reports().items()))
