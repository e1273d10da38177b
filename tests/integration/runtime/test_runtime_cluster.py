"""The runtime against a real kube-apiserver: API watch of the ConfigMap (no mounted
file at all) and the status report landing in the pod's own ModelReplica."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any

from devcluster import checkpoints as ck
from devcluster import tiny
from devcluster.cluster import Cluster
from hotswap_contract.wire import PEERS_KEY, Peer, Peers
from tests.fixtures_runtime.http import serve
from tests.fixtures_runtime.server import REPO, free_port, running, wait_for

NAME = "tiny"
POD = "tiny-7d9f-abcde"


def configmap(namespace: str, text: str) -> str:
    return json.dumps(
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": f"{NAME}-model", "namespace": namespace},
            "data": {"model.json": text},
        }
    )


def deployment(namespace: str, uri: str, sha256: str) -> str:
    return json.dumps(
        {
            "apiVersion": "hotswap.dev/v1alpha1",
            "kind": "ModelDeployment",
            "metadata": {"name": NAME, "namespace": namespace},
            "spec": {
                "replicas": 1,
                "model": {"architecture": tiny.ARCHITECTURE, "inputShape": [tiny.FEATURES]},
                "checkpoint": {"uri": uri, "sha256": sha256},
            },
        }
    )


def pod_status(cluster: Cluster, namespace: str, pod: str = POD) -> dict[str, Any]:
    """The pod's report: the status of the ModelReplica named after it ({} before it)."""
    out = cluster.kubectl(
        "get", "modelreplicas.hotswap.dev", "-n", namespace, "-o", "json", "--ignore-not-found"
    )
    items = json.loads(out.stdout or '{"items": []}').get("items", [])
    found = [i for i in items if i["metadata"]["name"] == pod]
    entry: dict[str, Any] = found[0].get("status", {}) if found else {}
    return entry


def test_api_watch_and_status_report(cluster: Cluster, namespace: str, tmp_path: Path) -> None:
    cluster.apply_crd(REPO / "crds")
    sha = {s: ck.save(tiny.weights(s), tmp_path / f"v{s}.safetensors") for s in (1, 2)}
    uri = {s: f"file://{tmp_path}/v{s}.safetensors" for s in (1, 2)}
    cluster.kubectl("apply", "-f", "-", input=deployment(namespace, uri[1], sha[1]))
    first = ck.config(1, ck.revision(1, uri[1], sha[1]), name=NAME)
    cluster.kubectl("apply", "-f", "-", input=configmap(namespace, first))
    env = {
        "HOTSWAP_MODEL_NAME": NAME,
        "POD_NAME": POD,
        "POD_NAMESPACE": namespace,
        "KUBECONFIG": str(cluster.kubeconfig),
        "HOTSWAP_CONFIGMAP": f"{NAME}-model",
    }
    with running(tmp_path, env, model=NAME) as runtime:  # ready only through the API watch
        report = wait_for(
            lambda: (s := pod_status(cluster, namespace)).get("revision") == 1 and s,
            30,
            "the pod report of revision 1",
        )
        assert report["state"] == "Serving" and report["sha256"] == sha[1]
        second = ck.config(2, ck.revision(2, uri[2], sha[2]), name=NAME)
        cluster.kubectl("apply", "-f", "-", input=configmap(namespace, second))
        runtime.wait_version(2, timeout=30)
        report = wait_for(
            lambda: (s := pod_status(cluster, namespace)).get("revision") == 2 and s,
            30,
            "the pod report of revision 2",
        )
    assert report["state"] == "Serving"
    assert report["sha256"] == sha[2] and report["targetSha256"] == sha[2]
    assert report["configGeneration"] == 2
    assert set(report["swapSeconds"]) == {"fetch", "parse", "load", "validate", "activate"}
    assert report["device"] == "cpu" and "torch" in report["env"]
    assert report["loadedAt"].endswith("Z")


def test_a_second_runtime_takes_the_checkpoint_from_the_first(
    cluster: Cluster, namespace: str, tmp_path: Path
) -> None:
    """Two runtime processes of one ModelDeployment, each with an address of its own (as
    pods have), the credential file and the peer list in ConfigMap tiny-peers: the origin
    reads the http:// store, the other takes the file from the origin's peer port, and
    their ModelReplicas say where the bytes came from."""
    cluster.apply_crd(REPO / "crds")
    root = tmp_path / "store"
    root.mkdir()
    sha = ck.save(tiny.weights(1), root / "v1.safetensors")
    size = (root / "v1.safetensors").stat().st_size
    pods = {"tiny-origin": "127.0.0.2", "tiny-second": "127.0.0.3"}
    peers = Peers(
        name=NAME,
        generation=1,
        originConcurrency=1,
        peers=tuple(Peer(name=name, ip=ip) for name, ip in pods.items()),
    )
    token = tmp_path / "token"
    token.write_text("a-token-for-tiny\n")
    with serve(root) as files:
        uri = f"{files.url}/v1.safetensors"
        cluster.kubectl("apply", "-f", "-", input=deployment(namespace, uri, sha))
        first = ck.config(1, ck.revision(1, uri, sha), name=NAME)
        cluster.kubectl("apply", "-f", "-", input=configmap(namespace, first))
        listing = {"apiVersion": "v1", "kind": "ConfigMap", "data": {PEERS_KEY: peers.dumps()}}
        listing["metadata"] = {"name": f"{NAME}-peers", "namespace": namespace}
        cluster.kubectl("apply", "-f", "-", input=json.dumps(listing))
        common = {
            "HOTSWAP_MODEL_NAME": NAME,
            "POD_NAMESPACE": namespace,
            "KUBECONFIG": str(cluster.kubeconfig),
            "HOTSWAP_CONFIGMAP": f"{NAME}-model",
            "HOTSWAP_PEER_TOKEN_FILE": str(token),
            "HOTSWAP_PEERS_CONFIGMAP": f"{NAME}-peers",
            "HOTSWAP_PEER_PORT": str(free_port()),
        }
        fetched = {}
        with contextlib.ExitStack() as stack:
            for name, ip in pods.items():  # the second starts once the first serves
                work = tmp_path / name
                work.mkdir()
                env = {**common, "POD_NAME": name, "HOTSWAP_HOST": ip}
                stack.enter_context(running(work, env, model=NAME))
                report = wait_for(
                    lambda n=name: (s := pod_status(cluster, namespace, n)).get("fetched") and s,
                    30,
                    f"the report of {name} with where its bytes came from",
                )
                fetched[name] = report["fetched"]
    assert files.gets == {"/v1.safetensors": 1}  # the file left the store once
    assert fetched["tiny-origin"] == {
        "storeBytes": size,
        "peerBytes": 0,
        "cachedBytes": 0,
        "peers": 0,
        "peerFailures": 0,
    }
    assert fetched["tiny-second"] == {
        "storeBytes": 0,
        "peerBytes": size,
        "cachedBytes": 0,
        "peers": 1,
        "peerFailures": 0,
    }
