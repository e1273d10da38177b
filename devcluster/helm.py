"""The chart as `helm template` renders it, for tests that read or apply its objects."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

from devcluster import strict_yaml

REPO = Path(__file__).resolve().parents[1]
CHART = REPO / "charts" / "hotswap"
CRDS_CHART = REPO / "charts" / "hotswap-crds"


def template(
    helm_bin: Path,
    *args: str,
    chart: Path = CHART,
    namespace: str | None = None,
    release: str = "hs",
) -> list[dict[str, Any]]:
    """The objects of `helm template <release> <chart> [--namespace <namespace>] <args>`."""
    cmd = [str(helm_bin), "template", release, str(chart)]
    if namespace is not None:
        cmd += ["--namespace", namespace]
    done = subprocess.run([*cmd, *args], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise AssertionError(f"{' '.join(cmd[1:])} failed:\n{done.stderr or done.stdout}")
    return [d for d in strict_yaml.load_all(done.stdout) if d]  # a repeated key fails
