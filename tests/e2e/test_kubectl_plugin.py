"""`kubectl hotswap undo` on the real node: every pod returns to the previous revision
from its checkpoint cache, with the previous checkpoint's file deleted from the store.

One helm install, one 3-replica AllAtOnce ModelDeployment of the tiny test model. The
plugin runs as a user whom a RoleBinding gives only examples/kubectl-hotswap-rbac.yaml.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from devcluster import tiny
from devcluster.fleet import Fleet, cpu_deployment, pod_ids, summary
from examples.checkpoints import host_path

NAME = "undo"
REPLICAS = 3
SHAPE = (tiny.FEATURES,)
PLUGIN = Path(sys.executable).parent / "kubectl-hotswap"
JSON = dict[str, Any]


@pytest.fixture(scope="module")
def fleet(cluster, node, installed, files):
    md = cpu_deployment(NAME, REPLICAS, tiny.ARCHITECTURE, SHAPE, files["v1"])
    return Fleet(cluster, installed, NAME).deploy(md, timeout=420)


def hotswap(alice: Path, namespace: str, *args: str) -> str:
    env = {**os.environ, "PATH": f"{PLUGIN.parent}{os.pathsep}{os.environ['PATH']}"}
    cmd = [str(PLUGIN), *args, "-n", namespace, "--kubeconfig", str(alice)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=60, env=env)
    assert done.returncode == 0, f"{cmd}: {done.stderr}"
    return done.stdout


def test_undo_returns_every_pod_to_the_previous_revision_from_cache(fleet, files, alice):
    ns = fleet.namespace
    fleet.patch_spec({"checkpoint": files["v2"]})
    fleet.wait_serving(2, REPLICAS, timeout=180)
    before = pod_ids(fleet)
    host_path(files["v1"]["uri"]).unlink()  # a download of v1 would now fail
    with fleet.load(SHAPE) as load:
        load.all_answer("2")
        said = hotswap(alice, ns, "undo", NAME)
        assert "spec set back to revision 1" in said and "new revision (3" in said, said
        shown = hotswap(alice, ns, "status", NAME, "--wait", "--timeout", "3m")  # until Ready
        st = fleet.wait_serving(3, REPLICAS, timeout=30)
        load.all_answer("3")
        load.wait_answers(20)
    assert not load.failures, load.summary()
    reports = st["pods"]
    assert {(r["revision"], r["sha256"], r["state"]) for r in reports.values()} == {
        (3, files["v1"]["sha256"], "Serving")
    }, summary(st)
    assert pod_ids(fleet) == before  # same pods and containers, no restart
    assert [(h["revision"], h["sha256"]) for h in st["history"]] == [
        (1, files["v1"]["sha256"]),
        (2, files["v2"]["sha256"]),
        (3, files["v1"]["sha256"]),
    ]
    assert f"pods serve 3 ({REPLICAS} pods)" in shown, shown
    history = hotswap(alice, ns, "history", NAME).splitlines()
    assert history[-1].split()[0] == "3" and history[-1].endswith(
        "stable, 3 pods serve it (content of 1)"
    )
    print(f"\n$ kubectl hotswap undo {NAME}\n{said}")
    print(f"$ kubectl hotswap status {NAME} --wait\n{shown}\n$ kubectl hotswap history {NAME}")
    print("\n".join(history))
