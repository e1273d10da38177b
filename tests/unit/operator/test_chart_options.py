"""The chart's optional parts: Prometheus Operator monitors, NetworkPolicies, and the
hotswap-crds chart that carries the CRD as a template."""

import subprocess
from pathlib import Path

import pytest
import yaml

from devcluster.helm import CHART, CRDS_CHART, template
from devcluster.prometheus import meta_name
from hotswap_contract.wire import DEPLOYMENT_LABEL, GRPC_PORT, HTTP_PORT, PEER_PORT
from hotswap_operator import resources
from hotswap_operator.config import RuntimeDefaults
from hotswap_operator.spec import parse_spec

REPO = Path(__file__).resolve().parents[3]
CRD = REPO / "crds" / "modeldeployment.yaml"
MONITORING_API = "monitoring.coreos.com/v1"
# Every runtime series gets `modeldeployment` from the pod's label (kubernetes_sd's meta
# label for it; devcluster/prometheus.py applies it in the e2e test).
OWNER_RELABELLING = {
    "sourceLabels": [f"__meta_kubernetes_pod_label_{meta_name(DEPLOYMENT_LABEL)}"],
    "targetLabel": "modeldeployment",
    "action": "replace",
}
POLICY = ("networkPolicy.enabled=true", "networkPolicy.apiServer.cidrs={10.0.0.10/32}")


def helm(helm_bin, *args, ok=True):
    done = subprocess.run([str(helm_bin), *args], capture_output=True, text=True, check=False)
    assert (done.returncode == 0) == ok, done.stderr or done.stdout
    return done


def render(helm_bin, *args, chart=CHART):
    return template(helm_bin, *args, chart=chart, namespace="ops")


def sets(*items):
    return [a for s in items for a in ("--set", s)]


def kinds(docs):
    return sorted(d["kind"] for d in docs)


def by_kind(docs, kind):
    return [d for d in docs if d["kind"] == kind]


def runtime_pod():
    """A runtime pod as the operator builds it."""
    spec = parse_spec(
        {
            "model": {"architecture": "torchvision/resnet18", "inputShape": [3, 8, 8]},
            "checkpoint": {"uri": "file:///models/v1.safetensors", "sha256": "1" * 64},
        }
    )
    return resources.pod_template(resources.Owner("m", "team-a", "uid"), spec, RuntimeDefaults())


def runtime_pod_labels():
    return runtime_pod()["metadata"]["labels"]


def runtime_ports():
    (container,) = runtime_pod()["spec"]["containers"]
    return {p["name"]: p["containerPort"] for p in container["ports"]}


def matches(selector, labels):
    return all(labels.get(k) == v for k, v in selector["matchLabels"].items())


def test_nothing_optional_is_rendered_by_default(helm_bin):
    everything = ["--api-versions", MONITORING_API]
    assert not {"ServiceMonitor", "PodMonitor", "NetworkPolicy", "Service"} & set(
        kinds(render(helm_bin, *everything))
    )


def test_monitors_are_rendered_only_where_the_api_is_served_unless_forced(helm_bin):
    on = sets("monitoring.serviceMonitor.enabled=true", "monitoring.podMonitor.enabled=true")
    assert "ServiceMonitor" not in kinds(render(helm_bin, *on))
    served = kinds(render(helm_bin, *on, "--api-versions", MONITORING_API))
    forced = kinds(render(helm_bin, *on, *sets("monitoring.force=true")))
    for found in (served, forced):
        assert {"ServiceMonitor", "PodMonitor", "Service"} <= set(found)


def test_the_service_monitor_scrapes_every_operator_pod(helm_bin):
    docs = render(
        helm_bin,
        *sets("monitoring.force=true", "monitoring.serviceMonitor.enabled=true"),
        *sets(
            "monitoring.serviceMonitor.labels.release=prom",
            "monitoring.serviceMonitor.interval=15s",
        ),
    )
    (service,) = by_kind(docs, "Service")
    (monitor,) = by_kind(docs, "ServiceMonitor")
    (operator,) = by_kind(docs, "Deployment")
    pod_labels = operator["spec"]["template"]["metadata"]["labels"]
    assert all(pod_labels[k] == v for k, v in service["spec"]["selector"].items())
    assert service["spec"]["clusterIP"] == "None"
    (port,) = service["spec"]["ports"]
    (container,) = operator["spec"]["template"]["spec"]["containers"]
    assert {"name": "metrics", "containerPort": port["port"], "protocol": "TCP"} in container[
        "ports"
    ]
    assert matches(monitor["spec"]["selector"], service["metadata"]["labels"])
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": ["ops"]}
    assert monitor["spec"]["endpoints"] == [
        {"port": "metrics", "path": "/metrics", "interval": "15s", "honorLabels": True}
    ]
    assert monitor["metadata"]["labels"]["release"] == "prom"


def test_the_service_monitor_needs_the_metrics_port(helm_bin):
    done = helm(
        helm_bin,
        "template",
        "hs",
        str(CHART),
        *sets("monitoring.force=true", "monitoring.serviceMonitor.enabled=true", "metricsPort=0"),
        ok=False,
    )
    assert "monitoring.serviceMonitor.enabled needs metricsPort > 0" in done.stderr


@pytest.mark.parametrize(
    ("namespaces", "selector"),
    [([], {"any": True}), (["team-a", "team-b"], {"matchNames": ["team-a", "team-b"]})],
)
def test_the_pod_monitor_selects_the_runtime_pods_the_operator_builds(
    helm_bin, namespaces, selector
):
    extra = sets(f"watchNamespaces={{{','.join(namespaces)}}}") if namespaces else []
    docs = render(
        helm_bin, *sets("monitoring.force=true", "monitoring.podMonitor.enabled=true"), *extra
    )
    (monitor,) = by_kind(docs, "PodMonitor")
    assert matches(monitor["spec"]["selector"], runtime_pod_labels())
    assert monitor["spec"]["namespaceSelector"] == selector
    (endpoint,) = monitor["spec"]["podMetricsEndpoints"]
    assert endpoint == {"port": "http", "path": "/metrics", "relabelings": [OWNER_RELABELLING]}
    assert runtime_pod_labels()[DEPLOYMENT_LABEL] == "m"  # what the relabelling reads
    assert runtime_ports()["http"] == HTTP_PORT  # the runtime's /metrics
    (operator,) = by_kind(docs, "Deployment")
    assert not matches(
        monitor["spec"]["selector"], operator["spec"]["template"]["metadata"]["labels"]
    )


def test_network_policies_admit_inference_and_scrapes_and_reach_only_api_dns_and_stores(helm_bin):
    docs = render(
        helm_bin,
        *sets(*POLICY, "watchNamespaces={team-a,team-b}"),
        *sets("networkPolicy.checkpointStores[0].cidr=10.20.0.0/16"),
        *sets("networkPolicy.checkpointStores[0].ports={443,9000}"),
        *sets("networkPolicy.metricsFrom[0].namespaceSelector.matchLabels.name=monitoring"),
    )
    policies = by_kind(docs, "NetworkPolicy")
    assert sorted(p["metadata"]["namespace"] for p in policies) == ["ops", "team-a", "team-b"]
    runtime = next(p for p in policies if p["metadata"]["namespace"] == "team-a")["spec"]
    assert matches(runtime["podSelector"], runtime_pod_labels())
    assert runtime["policyTypes"] == ["Ingress", "Egress"]
    assert runtime_ports() == {"http": HTTP_PORT, "grpc": GRPC_PORT, "peer": PEER_PORT}
    inference, bake_reads, from_peers, scrape = runtime["ingress"]
    assert {p["port"] for p in inference["ports"]} == {"http", "grpc"}
    assert bake_reads["ports"] == [{"protocol": "TCP", "port": "http"}]  # Canary bake windows
    (reader,) = bake_reads["from"]
    assert reader["namespaceSelector"] == {"matchLabels": {"kubernetes.io/metadata.name": "ops"}}
    assert "from" not in inference  # any client may send inference requests
    assert scrape["from"] == [{"namespaceSelector": {"matchLabels": {"name": "monitoring"}}}]
    # peer transfers: only runtime pods, of this namespace (no namespaceSelector), on PEER_PORT
    assert from_peers["ports"] == [{"protocol": "TCP", "port": "peer"}]
    api, to_peers, dns, store = runtime["egress"]
    assert to_peers["ports"] == [{"protocol": "TCP", "port": PEER_PORT}]
    for (peers,) in (from_peers["from"], to_peers["to"]):
        assert list(peers) == ["podSelector"] and matches(
            peers["podSelector"], runtime_pod_labels()
        )
        assert not matches(peers["podSelector"], {})  # not every pod of the namespace
    assert api["to"] == [{"ipBlock": {"cidr": "10.0.0.10/32"}}]
    assert {p["port"] for p in api["ports"]} == {443, 6443}
    assert dns["to"][0]["namespaceSelector"]["matchLabels"] == {
        "kubernetes.io/metadata.name": "kube-system"
    }
    assert {(p["protocol"], p["port"]) for p in dns["ports"]} == {("UDP", 53), ("TCP", 53)}
    assert store == {
        "to": [{"ipBlock": {"cidr": "10.20.0.0/16"}}],
        "ports": [{"protocol": "TCP", "port": 443}, {"protocol": "TCP", "port": 9000}],
    }
    operator = next(p for p in policies if p["metadata"]["namespace"] == "ops")["spec"]
    (deployment,) = by_kind(docs, "Deployment")
    assert matches(operator["podSelector"], deployment["spec"]["template"]["metadata"]["labels"])
    assert matches(reader["podSelector"], deployment["spec"]["template"]["metadata"]["labels"])
    to_api, to_runtime = operator["egress"]
    assert to_api == api
    assert to_runtime["ports"] == [{"protocol": "TCP", "port": HTTP_PORT}]
    (pods,) = to_runtime["to"]
    assert pods["namespaceSelector"]["matchExpressions"] == [
        {"key": "kubernetes.io/metadata.name", "operator": "In", "values": ["team-a", "team-b"]}
    ]
    assert matches(pods["podSelector"], runtime_pod_labels())
    liveness, metrics = operator["ingress"]
    assert liveness["ports"] == [{"protocol": "TCP", "port": 8081}]
    assert metrics["ports"] == [{"protocol": "TCP", "port": 8082}]
    assert metrics["from"] == scrape["from"]


def test_the_runtime_policy_goes_to_the_listed_namespaces(helm_bin):
    docs = render(helm_bin, *sets(*POLICY, "networkPolicy.runtimeNamespaces={serving}"))
    namespaces = sorted(p["metadata"]["namespace"] for p in by_kind(docs, "NetworkPolicy"))
    assert namespaces == ["ops", "serving"]


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (
            ["networkPolicy.enabled=true", "watchNamespaces={a}"],
            "networkPolicy.apiServer.cidrs is empty",
        ),
        (list(POLICY), "needs watchNamespaces or networkPolicy.runtimeNamespaces"),
    ],
)
def test_an_incomplete_network_policy_is_refused_with_the_fix(helm_bin, extra, message):
    done = helm(helm_bin, "template", "hs", str(CHART), *sets(*extra), ok=False)
    assert message in done.stderr


def test_every_copy_of_the_crds_is_byte_identical():
    sources = sorted(p.name for p in (REPO / "crds").glob("*.yaml"))
    assert sources == ["modeldeployment.yaml", "modelreplica.yaml"]
    for folder in (CHART / "crds", CRDS_CHART / "files"):
        assert sorted(p.name for p in folder.glob("*.yaml")) == sources, f"run make crds ({folder})"
        for name in sources:
            copy = folder / name
            source = (REPO / "crds" / name).read_bytes()
            assert copy.read_bytes() == source, f"{copy.relative_to(REPO)} differs: run make crds"


def test_the_crd_chart_renders_exactly_the_crds_and_keeps_them(helm_bin):
    rendered = render(helm_bin, chart=CRDS_CHART)
    expected = [yaml.safe_load(p.read_text()) for p in sorted((REPO / "crds").glob("*.yaml"))]
    for crd in rendered:
        annotations = crd["metadata"].pop("annotations")
        assert annotations == {"helm.sh/resource-policy": "keep"}
    assert sorted(rendered, key=lambda c: c["metadata"]["name"]) == sorted(
        expected, key=lambda c: c["metadata"]["name"]
    )
    dropped = render(helm_bin, "--set", "keep=false", chart=CRDS_CHART)
    assert len(dropped) == 2 and all("annotations" not in c["metadata"] for c in dropped)


def test_the_crd_chart_is_lint_clean(helm_bin):
    out = helm(helm_bin, "lint", "--strict", str(CRDS_CHART)).stdout
    assert "0 chart(s) failed" in out and "[WARNING]" not in out


def test_every_option_on_is_lint_clean(helm_bin):
    every = sets(
        "watchNamespaces={team-a}",
        "monitoring.force=true",
        "monitoring.serviceMonitor.enabled=true",
        "monitoring.podMonitor.enabled=true",
        *POLICY,
        "networkPolicy.checkpointStores[0].cidr=10.20.0.0/16",
        "networkPolicy.checkpointStores[0].ports={443}",
    )
    out = helm(helm_bin, "lint", "--strict", str(CHART), *every).stdout
    assert "0 chart(s) failed" in out and "[WARNING]" not in out and "[ERROR]" not in out
