"""Kubernetes API access for the runtime: off unless credentials exist."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

SERVICE_ACCOUNT = Path("/var/run/secrets/kubernetes.io/serviceaccount/token")


def api_client(kubeconfig: Path | None) -> Any:
    """An ApiClient from KUBECONFIG or in-cluster credentials, or None when neither."""
    from kubernetes import client, config

    if kubeconfig is not None and kubeconfig.is_file():
        return config.new_client_from_config(config_file=str(kubeconfig))  # type: ignore[no-untyped-call]
    if os.environ.get("KUBERNETES_SERVICE_HOST") and SERVICE_ACCOUNT.is_file():
        configuration = client.Configuration()
        config.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
        return client.ApiClient(configuration)
    log.info("no Kubernetes credentials: API watch and status reports are off")
    return None
