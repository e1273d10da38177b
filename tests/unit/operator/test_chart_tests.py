"""The chart's `helm test` Pod (templates/tests/inference.yaml) and the requests
NOTES.txt shows; tests/integration/runtime/test_runtime_chart_requests.py runs both
against a real runtime."""

import subprocess

import pytest

from devcluster.helm import CHART, template

SCRIPT = CHART / "files" / "inference-test.py"
OPERATOR_SELECTOR = {
    "app.kubernetes.io/name": "hotswap-operator",
    "app.kubernetes.io/instance": "hs",
}


def hook_pods(helm_bin, *sets):
    docs = template(helm_bin, *(a for s in sets for a in ("--set", s)), namespace="ops")
    return [d for d in docs if d["kind"] == "Pod"]


def notes(helm_bin, *sets):
    args = [a for s in sets for a in ("--set", s)]
    cmd = [str(helm_bin), "install", "hs", str(CHART), "-n", "ops", "--dry-run=client", *args]
    done = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return done.stdout[done.stdout.index("NOTES:") :]


def test_no_model_deployment_named_no_test_and_the_notes_say_how(helm_bin):
    assert hook_pods(helm_bin) == []
    text = notes(helm_bin)
    assert "helm test runs nothing until you name a ModelDeployment" in text
    assert "--set test.modelDeployment=quickstart" in text


def test_the_test_pod_asks_the_named_model_through_its_service(helm_bin):
    (pod,) = hook_pods(helm_bin, "test.modelDeployment=resnet18", "test.namespace=ml")
    assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    assert pod["metadata"]["namespace"] == "ops"
    (container,) = pod["spec"]["containers"]
    python, flag, script, url, model = container["command"]
    assert (python, flag) == ("python", "-c")
    assert script == SCRIPT.read_text()
    assert (url, model) == ("http://resnet18.ml.svc:8080", "resnet18")
    assert container["image"] == "ghcr.io/hotswap-dev/hotswap-operator:0.1.0"
    assert pod["spec"]["restartPolicy"] == "Never"
    assert "helm test hs -n ops sends one request to ModelDeployment\nresnet18 in ml" in notes(
        helm_bin, "test.modelDeployment=resnet18", "test.namespace=ml"
    )


def test_the_model_deployment_defaults_to_the_release_namespace(helm_bin):
    (pod,) = hook_pods(helm_bin, "test.modelDeployment=resnet18")
    assert pod["spec"]["containers"][0]["command"][3] == "http://resnet18.ops.svc:8080"


def test_the_test_pod_is_restricted_and_bounded(helm_bin):
    (pod,) = hook_pods(helm_bin, "test.modelDeployment=resnet18")
    spec = pod["spec"]
    (container,) = spec["containers"]
    assert spec["automountServiceAccountToken"] is False
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert container["securityContext"] == {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
    }
    assert container["resources"]["limits"]["memory"] and container["resources"]["requests"]


def test_nothing_of_the_operators_selects_the_test_pod(helm_bin):
    """Not the operator's Deployment, PodDisruptionBudget or NetworkPolicy."""
    (pod,) = hook_pods(helm_bin, "test.modelDeployment=resnet18")
    labels = pod["metadata"]["labels"]
    assert not OPERATOR_SELECTOR.items() <= labels.items()


@pytest.mark.parametrize(
    "value",
    [
        "test.modelDeployment=Resnet18",
        "test.modelDeployment=a.b",
        "test.modelDeployment=x;rm -rf /",
        "test.namespace=ml/../kube-system",
        "test.namespace=" + "n" * 64,
    ],
)
def test_a_name_that_is_not_one_is_refused_by_the_schema(helm_bin, value):
    cmd = [str(helm_bin), "template", "hs", str(CHART), "--set", "test.modelDeployment=m"]
    done = subprocess.run([*cmd, "--set", value], capture_output=True, text=True, check=False)
    assert done.returncode != 0
    assert "values don't meet the specifications of the schema" in done.stderr
