"""The chart and the operator's objects against the real API server, with the real helm.

Manifest validation, two ways, on every manifest the chart renders (defaults, local
values, every optional part on) and every object the operator builds:
* `kubectl apply --dry-run=server --validate=strict`: the API server of the test control
  plane checks each object against exactly the schemas it serves (Kubernetes 1.37 plus
  our CRD), with defaulting and admission, unknown or duplicate fields refused. The
  strongest check: it is what a real apply does, short of storing.
* kubeconform -strict (built from its Go module, scripts/install-kubeconform.sh), with
  schemas generated from the same API server's OpenAPI v3 (devcluster/openapi_schemas.py):
  its default schemas live on GitHub, out of reach here, and these cannot drift from the
  version we test against. A static check, for files, as CI pipelines run it.

CRD upgrades: a changed CRD reaches the cluster by `helm upgrade` of the hotswap-crds
chart, and by `kubectl apply --server-side` of charts/hotswap/crds (charts/hotswap/README.md).
"""

import json
import shutil
import subprocess
import uuid
from pathlib import Path

import pytest
import yaml

from devcluster.helm import CHART, CRDS_CHART, template
from devcluster.openapi_schemas import LOCATION, write_schemas
from devcluster.rest import ApiError
from devcluster.waiting import wait_for
from hotswap_contract.wire import Peers
from hotswap_operator import resources, rollout
from hotswap_operator.config import RuntimeDefaults
from hotswap_operator.context import SyncContext
from hotswap_operator.spec import parse_spec

REPO = Path(__file__).resolve().parents[3]
CRD = REPO / "crds" / "modeldeployment.yaml"
CRD_NAME = "modeldeployments.hotswap.dev"
CRD_PATH = f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{CRD_NAME}"
# Served by the Prometheus Operator's CRDs, which this cluster does not have (see
# test_monitors_are_all_the_api_server_cannot_check).
MONITOR_KINDS = {"ServiceMonitor", "PodMonitor", "PrometheusRule"}


def helm(helm_bin, cluster, *args):
    done = subprocess.run(
        [str(helm_bin), *args, "--kubeconfig", str(cluster.kubeconfig)],
        capture_output=True,
        text=True,
        check=False,
        timeout=180,
    )
    assert done.returncode == 0, done.stderr or done.stdout
    return done.stdout


def render(helm_bin, namespace, *sets, values=()):
    args = [*values, *(a for s in sets for a in ("--set", s))]
    return template(
        helm_bin,
        *("--include-crds", "--api-versions", "monitoring.coreos.com/v1"),
        *("--api-versions", "admissionregistration.k8s.io/v1/ValidatingAdmissionPolicy"),
        *("--api-versions", "flowcontrol.apiserver.k8s.io/v1/FlowSchema"),
        *args,
        namespace=namespace,
    )


def server_dry_run(cluster, docs):
    """Every object through the API server's validation, admission included; nothing stored."""
    return cluster.kubectl(
        "apply",
        "--dry-run=server",
        "--validate=strict",
        "--server-side",
        "--force-conflicts",  # CRDs applied earlier by another manager: validation only
        "--field-manager=hotswap-validate",
        "-f",
        "-",
        input=yaml.safe_dump_all(docs),
        check=False,
    )


@pytest.fixture(scope="module")
def crd_installed(cluster):
    cluster.kubectl("apply", "--server-side", "-f", str(CRD))
    cluster.kubectl("wait", "--for=condition=Established", "--timeout=60s", f"crd/{CRD_NAME}")


def every_option(namespace):
    return (
        f"watchNamespaces={{{namespace}}}",
        "monitoring.serviceMonitor.enabled=true",
        "monitoring.podMonitor.enabled=true",
        "monitoring.prometheusRule.enabled=true",
        "monitoring.grafanaDashboard.enabled=true",
        "networkPolicy.enabled=true",
        "networkPolicy.apiServer.cidrs={10.0.0.10/32}",
        "networkPolicy.checkpointStores[0].cidr=10.20.0.0/16",
        "networkPolicy.checkpointStores[0].ports={443}",
        "networkPolicy.inferenceFrom[0].namespaceSelector.matchLabels.team=ml",
        "networkPolicy.metricsFrom[0].namespaceSelector.matchLabels.name=monitoring",
        "policy.maxCheckpointBytes=1073741824",
        "replicaCount=3",
        "test.modelDeployment=resnet18",
    )


@pytest.mark.parametrize("options", ["defaults", "local", "every-option"])
def test_every_rendered_manifest_passes_the_api_servers_validation(
    cluster, helm_bin, crd_installed, namespace, options
):
    sets = {
        "defaults": (),
        "local": (f"watchNamespaces={{{namespace}}}",),
        "every-option": every_option(namespace),
    }[options]
    local = ("-f", str(REPO / "examples" / "values-local.yaml")) if options == "local" else ()
    docs = render(helm_bin, namespace, *sets, values=local)
    checked = [d for d in docs if d["kind"] not in MONITOR_KINDS]
    done = server_dry_run(cluster, checked)
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("(server dry run)") == len(checked)
    assert {"Deployment", "CustomResourceDefinition", "ValidatingAdmissionPolicy"} <= {
        d["kind"] for d in checked
    }
    if options == "every-option":
        assert {"NetworkPolicy", "Service", "Pod"} <= {d["kind"] for d in checked}


def test_monitors_are_all_the_api_server_cannot_check(cluster, helm_bin, namespace):
    """The Prometheus Operator's CRDs are not here: its kinds are the only ones left to
    the unit tests (tests/unit/operator/test_chart_options.py, test_chart_alerts.py)."""
    docs = render(helm_bin, namespace, *every_option(namespace))
    unknown = [d for d in docs if d["kind"] in MONITOR_KINDS]
    assert len(unknown) == 3
    done = server_dry_run(cluster, unknown)
    assert done.returncode != 0
    assert "no matches for kind" in done.stderr


def test_a_broken_manifest_fails_the_validation(cluster, helm_bin, crd_installed, namespace):
    """The check can fail: an unknown field, a wrong type, a bad port name are refused."""
    docs = render(helm_bin, namespace, *every_option(namespace))
    checked = [d for d in docs if d["kind"] not in MONITOR_KINDS]
    deployment = next(d for d in checked if d["kind"] == "Deployment")
    deployment["spec"]["template"]["spec"]["containers"][0]["livenessProbe"]["httpGets"] = {}
    done = server_dry_run(cluster, checked)
    assert done.returncode != 0
    assert "livenessProbe.httpGets: field not declared in schema" in done.stderr
    del deployment["spec"]["template"]["spec"]["containers"][0]["livenessProbe"]["httpGets"]
    deployment["spec"]["replicas"] = "three"
    done = server_dry_run(cluster, checked)
    assert done.returncode != 0 and "replicas" in done.stderr
    deployment["spec"]["replicas"] = 3
    policy = next(d for d in checked if d["kind"] == "NetworkPolicy")
    policy["spec"]["egress"][0]["to"][0]["ipBlock"]["cidr"] = "10.0.0.300/32"
    done = server_dry_run(cluster, checked)
    assert done.returncode != 0 and "cidr" in done.stderr


def new_object() -> SyncContext:
    """What the first sync of ModelDeployment m reads: nothing written yet."""
    body = {"metadata": {"name": "m", "namespace": "team-a", "uid": "uid", "resourceVersion": "1"}}
    return SyncContext.build(body, None, (), RuntimeDefaults(), "2026-01-01T00:00:00Z", None)


def spec_variants():
    base = {
        "model": {"architecture": "torchvision/resnet18", "inputShape": [3, 8, 8]},
        "checkpoint": {"uri": "file:///models/v1.safetensors", "sha256": "1" * 64},
    }
    full = {
        **base,
        "replicas": 3,
        "checkpoint": {
            "uri": "s3://models/resnet/v1.safetensors",
            "sha256": "2" * 64,
            "secretRef": {"name": "s3-credentials"},
        },
        "runtime": {
            "device": "cuda",
            "imagePullPolicy": "Always",
            "cacheMaxBytes": 8589934592,
            "nodeSelector": {"gpu": "a100"},
            "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "ml"}],
            "runtimeClassName": "nvidia",
            "resources": {"limits": {"nvidia.com/gpu": 1, "memory": "8Gi"}},
            "env": [{"name": "HOTSWAP_LOG_LEVEL", "value": "debug"}],
            "batching": {"maxBatchSize": 8, "maxQueueDelayMicroseconds": 500},
        },
        "distribution": {"peers": True, "originConcurrency": 3},
    }
    return {"minimal": base, "everything": full}


@pytest.mark.parametrize("variant", ["minimal", "everything"])
@pytest.mark.parametrize("gpu", [True, False])
def test_every_object_the_operator_builds_passes_the_api_servers_validation(
    cluster, crd_installed, namespace, variant, gpu
):
    raw = spec_variants()[variant]
    spec = parse_spec(raw)
    plan = rollout.plan(new_object(), spec)
    defaults = RuntimeDefaults.model_validate(
        {
            "gpu": {"enabled": gpu},
            "modelVolume": {"persistentVolumeClaim": {"claimName": "models", "readOnly": True}},
            "resources": {"requests": {"cpu": "1", "memory": "4Gi"}},
            "distribution": {"proxy": "http://127.0.0.1:65001"},
        }
    )
    owner = resources.Owner("m", namespace, str(uuid.uuid4()))
    listing = Peers(
        name="m", generation=1, originConcurrency=3, peers=[{"name": "m-a", "ip": "10.0.0.1"}]
    )
    children = [
        *resources.children(owner, spec, defaults, plan.config),
        resources.peer_secret(owner, "t" * 43),  # as created
        resources.peers_config_map(owner, listing),
    ]
    for child in children:
        child.setdefault("metadata", {})["namespace"] = namespace
    model_deployment = {
        "apiVersion": "hotswap.dev/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": {"name": "m", "namespace": namespace},
        "spec": raw,
    }
    done = server_dry_run(cluster, [model_deployment, *children])
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("(server dry run)") == len(children) + 1
    assert {c["kind"] for c in children} >= {"Deployment", "Service", "Role", "ConfigMap"}


def crd_spec_schema(cluster):
    crd = cluster.rest().get(CRD_PATH)
    (version,) = crd["spec"]["versions"]
    return version["schema"]["openAPIV3Schema"]["properties"]["spec"]


def changed_crd(text, marker):
    """The CRD with a new optional field spec.upgradeProbe, described by `marker`."""
    crd = yaml.safe_load(text)
    (version,) = crd["spec"]["versions"]
    spec = version["schema"]["openAPIV3Schema"]["properties"]["spec"]
    spec["properties"]["upgradeProbe"] = {"type": "string", "description": marker}
    return yaml.safe_dump(crd, sort_keys=False)


def accepts_the_new_field(cluster, namespace):
    """Whether the API server, validating strictly, knows spec.upgradeProbe."""
    body = {
        "apiVersion": "hotswap.dev/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": {"name": "probe"},
        "spec": {**spec_variants()["minimal"], "upgradeProbe": "x"},
    }
    try:
        cluster.rest().request(
            "POST",
            f"/apis/hotswap.dev/v1alpha1/namespaces/{namespace}/modeldeployments",
            body,
            params={"dryRun": "All", "fieldValidation": "Strict"},
        )
    except ApiError as err:
        message = json.loads(err.body)["message"]
        assert 'unknown field "spec.upgradeProbe"' in message, message
        return False
    return True


def wait_for_field(cluster, namespace, present):
    """A CRD change is served once the API server has rebuilt its handler for it."""
    wait_for(
        lambda: accepts_the_new_field(cluster, namespace) == present,
        timeout=30,
        what=f"spec.upgradeProbe {'served' if present else 'gone'}",
    )


def test_helm_upgrade_of_the_crd_chart_brings_a_crd_change_to_the_cluster(
    cluster, helm_bin, crd_installed, namespace, tmp_path
):
    # The CRD exists already, as charts/hotswap's crds/ (or kubectl) left it: adopt it
    # into the release as the chart README says.
    cluster.kubectl("label", "crd", CRD_NAME, "app.kubernetes.io/managed-by=Helm", "--overwrite")
    cluster.kubectl(
        "annotate",
        "crd",
        CRD_NAME,
        "--overwrite",
        "meta.helm.sh/release-name=hotswap-crds",
        f"meta.helm.sh/release-namespace={namespace}",
    )
    chart = tmp_path / "hotswap-crds"
    shutil.copytree(CRDS_CHART, chart)
    # --force-conflicts: the chart owns the CRD; fields another client applied too
    # (kubectl apply --server-side, as crd_installed did) move to the release.
    release = ("hotswap-crds", str(chart), "--namespace", namespace, "--wait", "--force-conflicts")
    helm(helm_bin, cluster, "upgrade", "--install", *release)
    assert not accepts_the_new_field(cluster, namespace)
    assert cluster.rest().get(CRD_PATH)["metadata"]["annotations"]["helm.sh/resource-policy"] == (
        "keep"
    )

    marker = f"upgrade probe {uuid.uuid4().hex[:8]}"
    source = chart / "files" / "modeldeployment.yaml"
    source.write_text(changed_crd(CRD.read_text(), marker))
    helm(helm_bin, cluster, "upgrade", *release)
    assert crd_spec_schema(cluster)["properties"]["upgradeProbe"]["description"] == marker
    wait_for_field(cluster, namespace, present=True)

    shutil.copy(CRD, source)  # and back: the field leaves the cluster again
    helm(helm_bin, cluster, "upgrade", *release)
    assert "upgradeProbe" not in crd_spec_schema(cluster)["properties"]
    wait_for_field(cluster, namespace, present=False)
    helm(helm_bin, cluster, "uninstall", "hotswap-crds", "--namespace", namespace, "--wait")
    assert cluster.rest().get(CRD_PATH)["metadata"]["name"] == CRD_NAME  # kept


def test_server_side_apply_of_the_chart_crds_brings_a_crd_change_to_the_cluster(
    cluster, crd_installed, namespace, tmp_path
):
    changed = tmp_path / "modeldeployment.yaml"
    marker = f"upgrade probe {uuid.uuid4().hex[:8]}"
    changed.write_text(changed_crd((CHART / "crds" / "modeldeployment.yaml").read_text(), marker))
    apply = ("apply", "--server-side", "--force-conflicts", "-f")
    try:
        cluster.kubectl(*apply, str(changed))
        assert crd_spec_schema(cluster)["properties"]["upgradeProbe"]["description"] == marker
        wait_for_field(cluster, namespace, present=True)
    finally:
        cluster.kubectl(*apply, str(CHART / "crds"))
    assert "upgradeProbe" not in crd_spec_schema(cluster)["properties"]
    wait_for_field(cluster, namespace, present=False)


@pytest.fixture(scope="module")
def schemas(cluster, crd_installed, tmp_path_factory):
    folder = tmp_path_factory.mktemp("kubeconform-schemas")
    client = cluster.rest()
    wait_for(  # the OpenAPI document of a new CRD is published a moment after it
        lambda: "apis/hotswap.dev/v1alpha1" in client.get("/openapi/v3")["paths"],
        timeout=30,
        what="OpenAPI v3 of hotswap.dev/v1alpha1",
    )
    written = write_schemas(client, folder)
    assert {"deployment-apps-v1.json", "modeldeployment-hotswap-v1alpha1.json"} <= set(written)
    return folder


def kubeconform(binary, schemas, tmp_path, docs):
    manifests = tmp_path / "manifests.yaml"
    manifests.write_text(yaml.safe_dump_all(docs))
    return subprocess.run(
        [
            *(str(binary), "-strict", "-summary", "-output", "text"),
            *("-schema-location", f"{schemas}/{LOCATION}"),
            *("-skip", ",".join(sorted(MONITOR_KINDS))),
            str(manifests),
        ],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )


@pytest.mark.parametrize("options", ["defaults", "local", "every-option"])
def test_kubeconform_accepts_every_rendered_manifest(
    helm_bin, kubeconform_bin, schemas, tmp_path, options
):
    sets = {
        "defaults": (),
        "local": ("watchNamespaces={team-a}",),
        "every-option": every_option("team-a"),
    }[options]
    local = ("-f", str(REPO / "examples" / "values-local.yaml")) if options == "local" else ()
    docs = render(helm_bin, "ops", *sets, values=local)
    done = kubeconform(kubeconform_bin, schemas, tmp_path, docs)
    assert done.returncode == 0, done.stdout + done.stderr
    skipped = len([d for d in docs if d["kind"] in MONITOR_KINDS])
    valid = len(docs) - skipped
    assert f"Valid: {valid}, Invalid: 0, Errors: 0, Skipped: {skipped}" in done.stdout


@pytest.mark.parametrize("variant", ["minimal", "everything"])
def test_kubeconform_accepts_every_object_the_operator_builds(
    kubeconform_bin, schemas, tmp_path, variant
):
    raw = spec_variants()[variant]
    spec = parse_spec(raw)
    plan = rollout.plan(new_object(), spec)
    children = resources.children(
        resources.Owner("m", "team-a", "uid"), spec, RuntimeDefaults(), plan.config
    )
    model_deployment = {
        "apiVersion": "hotswap.dev/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": {"name": "m"},
        "spec": raw,
    }
    done = kubeconform(kubeconform_bin, schemas, tmp_path, [model_deployment, *children])
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"Valid: {len(children) + 1}, Invalid: 0" in done.stdout


def test_kubeconform_fails_a_broken_manifest(helm_bin, kubeconform_bin, schemas, tmp_path):
    docs = render(helm_bin, "ops", *every_option("team-a"))
    deployment = next(d for d in docs if d["kind"] == "Deployment")
    deployment["spec"]["template"]["spec"]["containers"][0]["livenessProbe"]["httpGets"] = {}
    deployment["spec"]["replicas"] = "three"
    policy = next(d for d in docs if d["kind"] == "NetworkPolicy")
    policy["spec"]["policyTypes"] = "Ingress"
    spec = {**spec_variants()["minimal"], "replicas": -1}
    bad_model = {"apiVersion": "hotswap.dev/v1alpha1", "kind": "ModelDeployment"}
    docs.append({**bad_model, "metadata": {"name": "m"}, "spec": spec})
    done = kubeconform(kubeconform_bin, schemas, tmp_path, docs)
    assert done.returncode == 1
    assert "additional properties 'httpGets' not allowed" in done.stdout
    assert "at '/spec/replicas': got string, want integer" in done.stdout
    assert "at '/spec/policyTypes': got string, want array" in done.stdout
    assert "ModelDeployment m is invalid" in done.stdout
    assert "Invalid: 3" in done.stdout
