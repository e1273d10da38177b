"""Writing kubeconfig files (JSON, which every kubeconfig reader accepts as YAML)."""

from __future__ import annotations

import json
from pathlib import Path


def write_kubeconfig(
    path: Path,
    server: str,
    ca: Path,
    *,
    cert: Path | None = None,
    key: Path | None = None,
    token: str | None = None,
    token_file: Path | None = None,
    namespace: str | None = None,
    user: str = "user",
) -> Path:
    """Write a one-context kubeconfig atomically (temp file + rename); return `path`."""
    creds: dict[str, str] = {}
    if cert is not None and key is not None:
        creds["client-certificate"] = str(cert)
        creds["client-key"] = str(key)
    if token is not None:
        creds["token"] = token
    if token_file is not None:
        creds["tokenFile"] = str(token_file)
    context: dict[str, str] = {"cluster": "local", "user": user}
    if namespace:
        context["namespace"] = namespace
    doc = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {"name": "local", "cluster": {"server": server, "certificate-authority": str(ca)}}
        ],
        "users": [{"name": user, "user": creds}],
        "contexts": [{"name": "local", "context": context}],
        "current-context": "local",
    }
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(doc, indent=2) + "\n")
    tmp.chmod(0o600)
    tmp.replace(path)
    return path
