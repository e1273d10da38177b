"""The Helm chart: lint-clean, least-privilege RBAC equal to what the code calls."""

import json
import re
import subprocess
from pathlib import Path

import pytest

from devcluster.helm import CHART, template
from hotswap_operator import handlers, leader, resources
from hotswap_operator.config import operator_settings, runtime_defaults
from hotswap_operator.kube import PERMISSIONS
from hotswap_operator.spec import parse_spec

REPO = Path(__file__).resolve().parents[3]


def helm(helm_bin, *args):
    done = subprocess.run([str(helm_bin), *args], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    return done.stdout


def render(helm_bin, *sets):
    return template(helm_bin, *sets, namespace="hotswap-system")


def flatten(rules):
    return {
        (group, resource, verb)
        for rule in rules
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    }


def granted_to_runtime_pods():
    return flatten(resources.runtime_role_rules(resources.Owner("x", "ns", "uid")))


@pytest.mark.parametrize(
    "values",
    [[], ["-f", str(REPO / "examples" / "values-local.yaml")], ["--set", "watchNamespaces={a,b}"]],
)
def test_helm_lint_is_clean(helm_bin, values):
    out = helm(helm_bin, "lint", "--strict", str(CHART), *values)
    assert "0 chart(s) failed" in out
    assert "[WARNING]" not in out and "[ERROR]" not in out


def test_cluster_role_grants_exactly_what_the_code_calls(helm_bin):
    docs = render(helm_bin)
    (role,) = [d for d in docs if d["kind"] == "ClusterRole"]
    needed = PERMISSIONS | handlers.KOPF_PERMISSIONS | granted_to_runtime_pods()
    assert flatten(role["rules"]) == needed
    (binding,) = [d for d in docs if d["kind"] == "ClusterRoleBinding"]
    (account,) = [d for d in docs if d["kind"] == "ServiceAccount"]
    assert binding["subjects"] == [
        {
            "kind": "ServiceAccount",
            "name": account["metadata"]["name"],
            "namespace": "hotswap-system",
        }
    ]
    assert [d["metadata"]["name"] for d in docs if d["kind"] in ("Role", "RoleBinding")] == [
        "hs-hotswap-leader",
        "hs-hotswap-leader",
    ]


def test_the_leader_role_grants_the_lease_only_in_the_release_namespace(helm_bin):
    docs = render(helm_bin)
    (role,) = [d for d in docs if d["kind"] == "Role"]
    assert role["metadata"]["namespace"] == "hotswap-system"
    assert flatten(role["rules"]) == leader.PERMISSIONS
    named = [r for r in role["rules"] if "get" in r["verbs"]]
    assert named and all(r["resourceNames"] == ["hs-hotswap-leader"] for r in named)
    (binding,) = [d for d in docs if d["kind"] == "RoleBinding"]
    assert binding["roleRef"]["name"] == role["metadata"]["name"]


def test_watched_namespaces_get_roles_instead(helm_bin):
    docs = render(helm_bin, "--set", "watchNamespaces={team-a,team-b}")
    roles = [d for d in docs if d["kind"] == "Role" and d["rules"] != render_leader(docs)]
    assert sorted(r["metadata"]["namespace"] for r in roles) == ["team-a", "team-b"]
    assert not [d for d in docs if d["kind"].startswith("Cluster")]
    (deployment,) = [d for d in docs if d["kind"] == "Deployment"]
    env = {
        e["name"]: e.get("value")
        for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"]
    }
    assert env["HOTSWAP_NAMESPACES"] == "team-a,team-b"


def render_leader(docs):
    (role,) = [d for d in docs if d["kind"] == "Role" and d["metadata"]["name"].endswith("-leader")]
    return role["rules"]


def operator_pod(docs):
    (deployment,) = [d for d in docs if d["kind"] == "Deployment"]
    return deployment["spec"]["template"]["spec"]


def test_operator_runs_non_root_read_only_under_its_account(helm_bin):
    pod = operator_pod(render(helm_bin))
    (container,) = pod["containers"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != 0
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert container["image"] == "ghcr.io/hotswap-dev/hotswap-operator:0.1.0"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert pod["serviceAccountName"] == "hs-hotswap"
    env = {e["name"]: e for e in container["env"]}
    assert env["POD_IP"]["valueFrom"] == {"fieldRef": {"fieldPath": "status.podIP"}}


def test_runtime_gpu_defaults_reach_the_operator(helm_bin):
    local = ["-f", str(REPO / "examples" / "values-local.yaml")]
    for sets, gpu, image in (
        ([], True, "ghcr.io/hotswap-dev/hotswap-runtime:0.1.0"),
        (local, False, "localhost/hotswap-runtime:dev"),  # what `make images` builds
    ):
        (container,) = operator_pod(render(helm_bin, *sets))["containers"]
        raw = next(e["value"] for e in container["env"] if e["name"] == "HOTSWAP_RUNTIME_DEFAULTS")
        defaults = runtime_defaults({"HOTSWAP_RUNTIME_DEFAULTS": raw})
        assert defaults.image == image
        assert defaults.gpu.enabled is gpu
        if gpu:
            assert json.loads(raw)["gpu"]["limits"] == {"nvidia.com/gpu": 1}
            assert not defaults.gpu.runtime_class_name  # no RuntimeClass unless set
            assert defaults.gpu.tolerations[0]["key"] == "nvidia.com/gpu"


VAP_API = "admissionregistration.k8s.io/v1/ValidatingAdmissionPolicy"


def test_the_policy_values_reach_the_operator(helm_bin):
    (container,) = operator_pod(
        render(
            helm_bin,
            "--set",
            "policy.images={registry.corp/ml/*}",
            "--set",
            "runtime.modelVolume.persistentVolumeClaim.claimName=models",
        )
    )["containers"]
    raw = next(e["value"] for e in container["env"] if e["name"] == "HOTSWAP_RUNTIME_DEFAULTS")
    defaults = runtime_defaults({"HOTSWAP_RUNTIME_DEFAULTS": raw})
    assert defaults.policy.architectures == ("torchvision", "python/hotswap_runtime.examples")
    assert defaults.policy.images == ("registry.corp/ml/*",)
    assert defaults.policy.file_roots == ("/models", "/opt/hotswap-examples")
    assert "LD_PRELOAD" not in defaults.policy.runtime_env
    assert defaults.model_volume == {"persistentVolumeClaim": {"claimName": "models"}}
    assert runtime_defaults({"HOTSWAP_RUNTIME_DEFAULTS": render_defaults(helm_bin)}).policy


def render_defaults(helm_bin, *sets):
    (container,) = operator_pod(render(helm_bin, *sets))["containers"]
    return next(e["value"] for e in container["env"] if e["name"] == "HOTSWAP_RUNTIME_DEFAULTS")


def policies(docs):
    """{kind: sorted names} of the admission policies and their bindings."""
    kinds = ("ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding")
    return {k: sorted(d["metadata"]["name"] for d in docs if d["kind"] == k) for k in kinds}


REPORTS = "hotswap-system-hs-hotswap-pod-reports"
WRITES = "hotswap-system-hs-hotswap-operator-writes"


@pytest.mark.parametrize(
    ("sets", "names"),
    [
        ((), [WRITES, REPORTS]),
        (("--set", "statusIntegrity.enabled=false"), [WRITES]),
        (("--set", "childIntegrity.enabled=false"), [REPORTS]),
    ],
)
def test_admission_policies_are_rendered_where_the_api_exists(helm_bin, sets, names):
    rendered = policies(render(helm_bin, "--api-versions", VAP_API, *sets))
    assert rendered == {
        "ValidatingAdmissionPolicy": names,
        "ValidatingAdmissionPolicyBinding": names,
    }
    assert policies(render(helm_bin, *sets)) == {
        "ValidatingAdmissionPolicy": [],
        "ValidatingAdmissionPolicyBinding": [],
    }


def operator_writes(helm_bin, *sets):
    docs = render(helm_bin, "--api-versions", VAP_API, *sets)
    (policy,) = [d for d in docs if d["metadata"]["name"] == WRITES and "Binding" not in d["kind"]]
    return policy["spec"]


@pytest.mark.parametrize(
    ("sets", "account"), [((), "hs-hotswap"), (("--set", "serviceAccount.name=op"), "op")]
)
def test_child_integrity_matches_the_operators_account_only(helm_bin, sets, account):
    (condition,) = operator_writes(helm_bin, *sets)["matchConditions"]
    user = f"system:serviceaccount:hotswap-system:{account}"
    assert condition["expression"] == f"request.userInfo.username == {json.dumps(user)}"


def test_child_integrity_knows_every_variable_the_operator_sets(helm_bin):
    """The policy pins the runtime's interface variables by name: a variable the operator
    starts to set must be added there (or its Deployments would be refused), and one it
    stops setting removed."""
    spec = operator_writes(helm_bin)
    named = set(re.findall(r"'((?:HOTSWAP|POD)_[A-Z_]+)'", json.dumps(spec)))
    full = parse_spec(
        {
            "model": {"architecture": "torchvision/resnet18", "inputShape": [3, 8, 8]},
            "checkpoint": {"uri": "file:///models/v1.safetensors", "sha256": "1" * 64},
            "runtime": {
                "cacheMaxBytes": 1024,
                "batching": {"maxBatchSize": 8, "maxQueueDelayMicroseconds": 500},
            },
        }
    )
    defaults = runtime_defaults(
        {
            "HOTSWAP_RUNTIME_DEFAULTS": json.dumps(
                {
                    "policy": {
                        "maxCheckpointBytes": 1024,
                        "maxForwardBatch": 64,
                        "forwardMemoryBytes": 1 << 28,
                    },
                    "distribution": {"proxy": "http://127.0.0.1:65001"},
                }
            )
        }
    )
    owner = resources.Owner("m", "ns", "uid")
    assert named == {e["name"] for e in resources.runtime_env(owner, full, defaults)}
    env = {e["name"]: e.get("value") for e in resources.runtime_env(owner, full, defaults)}
    for name in ("HOTSWAP_PEER_PORT", "HOTSWAP_PEER_TOKEN_FILE"):  # pinned values
        (pinned,) = re.findall(rf"'{name}': '([^']*)'", json.dumps(spec))
        assert pinned == env[name], name


FLOW_API = "flowcontrol.apiserver.k8s.io/v1/FlowSchema"


def test_report_priority_level_is_rendered_where_the_api_exists(helm_bin):
    docs = {d["kind"]: d for d in render(helm_bin, "--api-versions", FLOW_API)}
    schema, level = docs["FlowSchema"], docs["PriorityLevelConfiguration"]
    assert schema["spec"]["priorityLevelConfiguration"]["name"] == level["metadata"]["name"]
    assert schema["spec"]["matchingPrecedence"] < 9000  # before service-accounts
    (rule,) = schema["spec"]["rules"]
    assert rule["resourceRules"] == [
        {
            "apiGroups": ["hotswap.dev"],
            "resources": ["modelreplicas", "modelreplicas/status"],
            "verbs": ["create", "patch", "update"],
            "namespaces": ["*"],
        }
    ]
    assert "nonResourceRules" not in rule  # reads and everything else: the defaults
    queuing = level["spec"]["limited"]["limitResponse"]["queuing"]
    assert queuing["handSize"] * queuing["queueLengthLimit"] >= 1000
    assert "FlowSchema" not in [d["kind"] for d in render(helm_bin)]
    off = render(helm_bin, "--api-versions", FLOW_API, "--set", "reportPriority.enabled=false")
    assert "FlowSchema" not in [d["kind"] for d in off]


def test_operator_tmp_is_size_limited(helm_bin):
    pod = operator_pod(render(helm_bin))
    (tmp,) = [v for v in pod["volumes"] if v["name"] == "tmp"]
    assert tmp["emptyDir"]["sizeLimit"]


def test_two_replicas_elect_a_leader_and_keep_one_through_disruptions(helm_bin):
    docs = render(helm_bin)
    (deployment,) = [d for d in docs if d["kind"] == "Deployment"]
    assert deployment["spec"]["replicas"] == 2
    assert deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    (pdb,) = [d for d in docs if d["kind"] == "PodDisruptionBudget"]
    assert pdb["spec"]["minAvailable"] == 1
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
    pod = deployment["spec"]["template"]["spec"]
    term = pod["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]
    assert (
        term[0]["podAffinityTerm"]["labelSelector"]["matchLabels"]
        == pdb["spec"]["selector"]["matchLabels"]
    )
    single = render(helm_bin, "--set", "replicaCount=1")
    assert "PodDisruptionBudget" not in [d["kind"] for d in single]


def test_operator_settings_reach_the_operator(helm_bin):
    (container,) = operator_pod(render(helm_bin))["containers"]
    env = {e["name"]: e for e in container["env"]}
    assert env["POD_NAMESPACE"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.namespace"}}
    values = {k: e["value"] for k, e in env.items() if "value" in e}
    settings = operator_settings({**values, "POD_NAMESPACE": "hotswap-system"})
    assert (
        settings.lease_name == "hs-hotswap-leader" and settings.lease_namespace == "hotswap-system"
    )
    assert (settings.lease_seconds, settings.renew_deadline_seconds) == (8, 5)
    assert settings.retry_seconds == 1 and settings.sync_workers == 4
    assert (settings.report_batch_seconds, settings.resync_seconds) == (0.25, 60)
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports["metrics"] == settings.metrics_port == 8082


def test_chart_and_operator_default_to_the_same_policy(helm_bin):
    from hotswap_operator.config import Policy

    chart = runtime_defaults({"HOTSWAP_RUNTIME_DEFAULTS": render_defaults(helm_bin)}).policy
    assert chart == Policy()


def test_chart_and_operator_default_to_the_same_pod_settings(helm_bin):
    from hotswap_operator.config import RuntimeDefaults

    chart = runtime_defaults({"HOTSWAP_RUNTIME_DEFAULTS": render_defaults(helm_bin)})
    builtin = RuntimeDefaults()
    for field in (
        "image_pull_secrets",
        "priority_class_name",
        "affinity",
        "topology_spread_constraints",
        "pod_metadata",
        "service_account",
        "pod_disruption_budget",
    ):
        assert getattr(chart, field) == getattr(builtin, field), field
    assert chart.topology_spread_constraints[0]["whenUnsatisfiable"] == "ScheduleAnyway"


def test_pod_setting_values_reach_the_operator(helm_bin):
    values = {
        "runtime": {
            "imagePullSecrets": [{"name": "mirror"}],
            "priorityClassName": "inference",
            "affinity": {"nodeAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": []}},
            "topologySpreadConstraints": [],
            "podMetadata": {"labels": {"team": "ml"}, "annotations": {"a.io/b": "c"}},
            "serviceAccount": {"annotations": {"iam.gke.io/gcp-service-account": "sa@p.iam"}},
            "podDisruptionBudget": {"enabled": True, "minAvailable": "50%"},
        }
    }
    path = REPO / ".cache" / "test-pod-values.json"
    path.parent.mkdir(exist_ok=True)
    path.write_text(json.dumps(values))
    try:
        raw = render_defaults(helm_bin, "-f", str(path))
    finally:
        path.unlink()
    defaults = runtime_defaults({"HOTSWAP_RUNTIME_DEFAULTS": raw})
    assert [s.name for s in defaults.image_pull_secrets] == ["mirror"]
    assert defaults.priority_class_name == "inference"
    assert defaults.affinity == values["runtime"]["affinity"]
    assert defaults.topology_spread_constraints == ()  # [] turns the default spread off
    assert defaults.pod_metadata.labels == {"team": "ml"}
    assert defaults.service_account.annotations == {"iam.gke.io/gcp-service-account": "sa@p.iam"}
    assert defaults.pod_disruption_budget.enabled
    assert defaults.pod_disruption_budget.min_available == "50%"


def test_distribution_values_reach_the_operator(helm_bin):
    from hotswap_operator.config import DistributionDefaults

    chart = runtime_defaults({"HOTSWAP_RUNTIME_DEFAULTS": render_defaults(helm_bin)})
    assert chart.distribution == DistributionDefaults()
    assert chart.distribution.origin_concurrency == 2 and chart.distribution.proxy == ""
    sets = ("--set", "distribution.originConcurrency=5")
    proxy = ("--set", "distribution.proxy=http://127.0.0.1:65001")
    raw = render_defaults(helm_bin, *sets, *proxy)
    distribution = runtime_defaults({"HOTSWAP_RUNTIME_DEFAULTS": raw}).distribution
    assert distribution.origin_concurrency == 5
    assert distribution.proxy == "http://127.0.0.1:65001"
    schema = json.loads((CHART / "values.schema.json").read_text())
    chart_proxy = schema["properties"]["distribution"]["properties"]["proxy"]
    operator_proxy = DistributionDefaults.model_json_schema(by_alias=True)["properties"]["proxy"]
    assert chart_proxy["pattern"] == operator_proxy["pattern"]  # no quote reaches the CEL


@pytest.mark.parametrize(
    "value",
    [
        "distribution.originConcurrency=0",
        "distribution.originConcurrency=65",
        "distribution.proxy=ftp://x",
    ],
)
def test_the_schema_refuses_distribution_values_out_of_range(helm_bin, value):
    done = subprocess.run(
        [str(helm_bin), "template", "hs", str(CHART), "--set", value],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode != 0 and "distribution" in done.stderr
