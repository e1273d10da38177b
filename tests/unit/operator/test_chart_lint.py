"""kube-linter's default checks (devcluster/kubelint.py, exclusions in .kube-linter.yaml)
are clean on every manifest the chart renders and every object the operator builds."""

import copy
from pathlib import Path

import pytest
import yaml
from operator_samples import sync_context

from devcluster import kubelint
from devcluster.helm import template
from hotswap_operator import resources, rollout
from hotswap_operator.config import RuntimeDefaults
from hotswap_operator.spec import parse_spec
from hotswap_operator.status import ModelDeploymentStatus

REPO = Path(__file__).resolve().parents[3]
EVERY_OPTION = (
    "watchNamespaces={team-a}",
    "monitoring.serviceMonitor.enabled=true",
    "monitoring.podMonitor.enabled=true",
    "monitoring.prometheusRule.enabled=true",
    "monitoring.grafanaDashboard.enabled=true",
    "networkPolicy.enabled=true",
    "networkPolicy.apiServer.cidrs={10.0.0.10/32}",
    "replicaCount=3",
    "test.modelDeployment=resnet18",
)
VALUES = {
    "defaults": [],
    "local": ["-f", str(REPO / "examples" / "values-local.yaml")],
    "every-option": [a for s in EVERY_OPTION for a in ("--set", s)],
    "one-replica": ["--set", "replicaCount=1"],
}
# Findings that stand, each with its reason (kube-linter's config cannot exclude a check
# for one object; its annotation ignore-check.kube-linter.io/<check> can, on the object).
KNOWN = {
    # HOTSWAP_SECRETS_DIR is a folder path, not a secret: credentials reach runtime pods
    # only as files of the mounted Secret that checkpoint.secretRef names.
    ("env-var-secret", "Deployment", "environment variable HOTSWAP_SECRETS_DIR"),
    # Runtime replicas are not spread over nodes yet; spec.runtime affinity and a default
    # topologySpreadConstraints (issue 12, runtime pod settings) do that. kube-linter
    # does not count topology spread: the runtime Deployment then wants the annotation.
    ("no-anti-affinity", "Deployment", "object has 3 replicas"),
}


def known(finding):
    return any(
        finding.check == check and finding.kind == kind and finding.message.startswith(text)
        for check, kind, text in KNOWN
    )


def render(helm_bin, values):
    api = ("--api-versions", "monitoring.coreos.com/v1")
    return template(helm_bin, "--include-crds", *api, *values, namespace="ops")


def operator_children(replicas=1, gpu=True):
    raw = {
        "replicas": replicas,
        "model": {"architecture": "torchvision/resnet18", "inputShape": [3, 8, 8]},
        "checkpoint": {
            "uri": "s3://models/resnet/v1.safetensors",
            "sha256": "1" * 64,
            "secretRef": {"name": "s3"},
        },
        "runtime": {"env": [{"name": "HOTSWAP_LOG_LEVEL", "value": "debug"}]},
    }
    spec = parse_spec(raw)
    plan = rollout.plan(sync_context(ModelDeploymentStatus(), name="m"), spec)
    defaults = RuntimeDefaults.model_validate(
        {
            # the chart's defaults (values.yaml runtime.resources)
            "resources": {"requests": {"cpu": "1", "memory": "4Gi"}, "limits": {"memory": "16Gi"}},
            "gpu": {"enabled": gpu},
        }
    )
    children = resources.children(
        resources.Owner("m", "team-a", "uid"), spec, defaults, plan.config
    )
    for child in children:
        child["metadata"]["namespace"] = "team-a"
    return children


@pytest.mark.parametrize("values", sorted(VALUES))
def test_the_rendered_chart_passes_the_default_checks(helm_bin, values):
    docs = render(helm_bin, VALUES[values])
    assert kubelint.lint(docs) == []


@pytest.mark.parametrize(("replicas", "gpu"), [(1, True), (1, False), (3, True)])
def test_the_operators_objects_pass_the_default_checks(replicas, gpu):
    findings = kubelint.lint(operator_children(replicas, gpu), exclude=kubelint.excluded())
    assert [str(f) for f in findings if not known(f)] == []


def test_every_exclusion_says_why():
    lines = (REPO / ".kube-linter.yaml").read_text().splitlines()
    for check in kubelint.excluded():
        assert check in kubelint.CHECKS, f"{check} is no kube-linter default check"
        at = lines.index(f"    - {check}")
        assert lines[at - 1].strip().startswith("#"), f"exclusion {check} has no reason above it"


def test_the_implemented_checks_are_kube_linters_defaults():
    assert len(kubelint.CHECKS) == 31  # kube-linter v0.8.3: `kube-linter checks list`


def deployment(docs):
    return next(d for d in docs if d["kind"] == "Deployment")


def container(docs):
    return deployment(docs)["spec"]["template"]["spec"]["containers"][0]


BREAKS = {
    "latest-tag": lambda d: container(d).update(image="ghcr.io/hotswap-dev/op:latest"),
    "no-read-only-root-fs": lambda d: container(d)["securityContext"].pop("readOnlyRootFilesystem"),
    "run-as-non-root": lambda d: deployment(d)["spec"]["template"]["spec"].update(
        securityContext={"runAsUser": 0}
    ),
    "privilege-escalation-container": lambda d: container(d)["securityContext"].update(
        allowPrivilegeEscalation=True
    ),
    "privileged-container": lambda d: container(d)["securityContext"].update(privileged=True),
    "drop-net-raw-capability": lambda d: container(d)["securityContext"].update(
        capabilities={"drop": ["CHOWN"]}
    ),
    "host-network": lambda d: deployment(d)["spec"]["template"]["spec"].update(hostNetwork=True),
    "liveness-port": lambda d: container(d)["livenessProbe"]["httpGet"].update(port="health"),
    "mismatching-selector": lambda d: deployment(d)["spec"]["selector"]["matchLabels"].update(
        extra="x"
    ),
    "no-anti-affinity": lambda d: deployment(d)["spec"]["template"]["spec"].pop("affinity"),
    "non-existent-service-account": lambda d: deployment(d)["spec"]["template"]["spec"].update(
        serviceAccountName="nobody"
    ),
    "unset-memory-requirements": lambda d: container(d)["resources"].pop("limits"),
    "duplicate-env-var": lambda d: container(d)["env"].append(dict(container(d)["env"][0])),
    "ssh-port": lambda d: container(d)["ports"].append({"containerPort": 22, "name": "ssh"}),
    "invalid-target-ports": lambda d: container(d)["ports"].append(
        {"containerPort": 9, "name": "Not_A_Name"}
    ),
    "pdb-min-available": lambda d: next(x for x in d if x["kind"] == "PodDisruptionBudget")[
        "spec"
    ].update(minAvailable="100%"),
    "pdb-unhealthy-pod-eviction-policy": lambda d: next(
        x for x in d if x["kind"] == "PodDisruptionBudget"
    )["spec"].pop("unhealthyPodEvictionPolicy"),
    "sensitive-host-mounts": lambda d: (
        deployment(d)["spec"]["template"]["spec"]["volumes"].append(
            {"name": "etc", "hostPath": {"path": "/etc"}}
        ),
        container(d)["volumeMounts"].append({"name": "etc", "mountPath": "/host-etc"}),
    ),
    "env-var-secret": lambda d: container(d)["env"].append({"name": "DB_SECRET", "value": "x"}),
    "no-extensions-v1beta": lambda d: deployment(d).update(apiVersion="extensions/v1beta1"),
}


@pytest.mark.parametrize("check", sorted(BREAKS))
def test_a_broken_manifest_fails_its_check(helm_bin, check):
    """Each check can fail: one broken field in the rendered chart makes it report."""
    docs = copy.deepcopy(render(helm_bin, []))
    BREAKS[check](docs)
    findings = kubelint.lint(docs, exclude=())
    assert check in {f.check for f in findings}, [str(f) for f in findings]


def test_the_object_annotation_skips_one_check(helm_bin):
    docs = render(helm_bin, [])
    BREAKS["latest-tag"](docs)
    deployment(docs)["metadata"]["annotations"] = {
        f"{kubelint.IGNORE_PREFIX}latest-tag": "a test image"
    }
    assert "latest-tag" not in {f.check for f in kubelint.lint(docs)}


def test_the_command_line_fails_on_findings(tmp_path, helm_bin):
    docs = render(helm_bin, [])
    good = tmp_path / "good.yaml"
    good.write_text(yaml.safe_dump_all(docs))
    BREAKS["privileged-container"](docs)
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump_all(docs))
    assert kubelint.main([str(good)]) == 0
    assert kubelint.main([str(bad)]) == 1
