"""README's "On your own cluster": its install commands, run as written, with Helm 4 and
(the second block) Helm 3, each on a control plane of its own; run twice, as the README
says the same commands upgrade. Both charts install: the CRDs are served and the
operator's Deployment exists (no node here runs it: the e2e tests do)."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
from pathlib import Path

import pytest

from devcluster.cluster import REPO, Cluster, ensure_binary
from devcluster.waiting import wait_for

README = REPO / "README.md"
CRDS = ("modeldeployments.hotswap.dev", "modelreplicas.hotswap.dev")


def install_blocks() -> list[list[str]]:
    """The ```sh blocks of the section, each a list of command lines."""
    text = README.read_text()
    section = text.split("## On your own cluster", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```sh\n(.*?)```", section, re.S)
    return [[line for line in block.splitlines() if line.strip()] for block in blocks]


def test_the_section_has_a_helm_4_and_a_helm_3_block():
    helm4, helm3 = install_blocks()
    assert all(line.startswith("helm ") for line in helm4 + helm3)
    assert any("--force-conflicts" in line for line in helm4)  # Helm 4 only
    assert not any("--force-conflicts" in line for line in helm3)


def run(helm: Path, cluster: Cluster, line: str) -> str:
    argv = shlex.split(line)
    assert argv[0] == "helm", line
    done = subprocess.run(
        [str(helm), *argv[1:], "--kubeconfig", str(cluster.kubeconfig)],
        capture_output=True,
        text=True,
        check=False,
        cwd=REPO,
        timeout=180,
    )
    assert done.returncode == 0, f"{line}:\n{done.stdout}{done.stderr}"
    return done.stdout


@pytest.mark.parametrize("block, helm", [(0, "helm_bin"), (1, "helm3_bin")])
def test_the_install_commands_install_then_upgrade(block, helm, request):
    binary: Path = request.getfixturevalue(helm)
    with Cluster(ensure_binary()) as cluster:
        lines = install_blocks()[block]
        for _ in ("install", "upgrade"):
            for line in lines:
                run(binary, cluster, line)
        client = cluster.rest()
        for crd in CRDS:
            wait_for(
                lambda crd=crd: any(
                    c["type"] == "Established" and c["status"] == "True"
                    for c in client.get(
                        f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{crd}"
                    )["status"].get("conditions", [])
                ),
                timeout=30,
                what=f"CRD {crd} established",
            )
        deployment = client.get("/apis/apps/v1/namespaces/hotswap-system/deployments/hotswap")
        assert deployment["spec"]["template"]["spec"]["serviceAccountName"] == "hotswap"
        listed = run(binary, cluster, "helm list -n hotswap-system -o json")
        revisions = {r["name"]: int(r["revision"]) for r in json.loads(listed)}
        assert revisions == {"hotswap-crds": 2, "hotswap": 2}  # installed, then upgraded
