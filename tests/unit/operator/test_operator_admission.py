"""The admin's policy: what a ModelDeployment may name (architectures, images, env,
files), and children the operator may write (never one it did not create)."""

import copy

import pytest
from operator_samples import SPEC

from hotswap_operator import resources
from hotswap_operator.admission import admit
from hotswap_operator.config import RuntimeDefaults
from hotswap_operator.spec import SpecError, parse_spec

OWNER = resources.Owner(name="resnet", namespace="ml", uid="uid-1")
DEFAULTS = RuntimeDefaults.model_validate({"gpu": {"enabled": False}})


def spec_with(**changes):
    raw = copy.deepcopy(SPEC)
    for path, value in changes.items():
        node = raw
        *parents, leaf = path.split("__")
        for key in parents:
            node = node.setdefault(key, {})
        node[leaf] = value
    return parse_spec(raw)


def refusal(spec, defaults=DEFAULTS) -> str:
    with pytest.raises(SpecError) as caught:
        admit(spec, defaults, "resnet")
    return str(caught.value)


def test_the_default_policy_admits_torchvision_the_examples_and_files_under_models():
    admit(spec_with(), DEFAULTS, "resnet")
    admit(spec_with(model__architecture="python/hotswap_runtime.examples:mlp"), DEFAULTS, "r")


@pytest.mark.parametrize(
    "architecture",
    [
        "python/os:system",
        "python/subprocess:run",
        "python/builtins:exit",
        "python/hotswap_runtime.examples_evil:mlp",
        "python/hotswap_runtime:examples",
    ],
)
def test_architectures_outside_the_allowlist_are_refused_with_the_fix(architecture):
    message = refusal(spec_with(model__architecture=architecture))
    assert f"architecture {architecture} is not allowed" in message
    assert "policy.architectures" in message and message.startswith("ModelDeployment resnet:")


def test_module_prefixes_and_exact_factories_extend_the_allowlist():
    policy = {"architectures": ["python/team.models", "python/other:build"]}
    defaults = RuntimeDefaults.model_validate({"policy": policy})
    admit(spec_with(model__architecture="python/team.models.vision:make"), defaults, "r")
    admit(spec_with(model__architecture="python/other:build"), defaults, "r")
    assert "not allowed" in refusal(spec_with(model__architecture="python/other:evil"), defaults)
    assert "not allowed" in refusal(spec_with(), defaults)  # torchvision no longer listed


def test_runtime_images_are_pinned_unless_the_admin_allows_more():
    own = spec_with(runtime__image=DEFAULTS.image)
    admit(own, DEFAULTS, "r")
    message = refusal(spec_with(runtime__image="evil.example/runtime:1"))
    assert "'evil.example/runtime:1' is not an allowed runtime image" in message
    assert "policy.images" in message
    prefix = RuntimeDefaults.model_validate({"policy": {"images": ["registry.corp/ml/*"]}})
    admit(spec_with(runtime__image="registry.corp/ml/runtime:2"), prefix, "r")
    assert "not an allowed" in refusal(spec_with(runtime__image="registry.corp/x:1"), prefix)
    anything = RuntimeDefaults.model_validate({"policy": {"images": ["*"]}})
    admit(spec_with(runtime__image="evil.example/runtime:1"), anything, "r")


@pytest.mark.parametrize(
    "name", ["LD_PRELOAD", "PYTHONPATH", "HOTSWAP_ALLOWED_ARCHITECTURES", "HOTSWAP_FILE_ROOTS"]
)
def test_env_that_changes_code_or_policy_is_refused(name):
    spec = spec_with(runtime__env=[{"name": name, "value": "/var/cache/hotswap/x"}])
    message = refusal(spec)
    assert f"spec.runtime.env: {name} may not be set" in message
    assert "policy.runtimeEnv" in message
    admit(spec_with(runtime__env=[{"name": "OMP_NUM_THREADS", "value": "2"}]), DEFAULTS, "r")


@pytest.mark.parametrize(
    "uri",
    [
        "file:///etc/passwd",
        "file:///var/run/secrets/kubernetes.io/serviceaccount/token",
        "file:///models/../proc/self/environ",
        "file:///models%2F..%2Fetc/passwd",
        "file:///modelsevil/v1.safetensors",
        "file://other-host/models/v1.safetensors",
    ],
)
def test_files_outside_the_roots_are_refused(uri):
    message = refusal(spec_with(checkpoint__uri=uri))
    assert message.startswith("ModelDeployment resnet: spec.checkpoint.uri:")


def test_validation_files_are_checked_too_and_every_problem_is_named():
    artifact = {"uri": "file:///etc/shadow", "sha256": "c" * 64}
    spec = spec_with(
        model__architecture="python/os:system",
        validation={"input": artifact, "expected": artifact},
    )
    message = refusal(spec)
    assert "spec.model.architecture" in message
    assert "spec.validation.input.uri" in message and "spec.validation.expected.uri" in message


def test_policy_values_are_checked_when_the_operator_starts():
    for bad in (
        {"architectures": ["python/os;rm -rf"]},
        {"fileRoots": ["relative/path"]},
        {"fetchAllowedNetworks": ["not-a-cidr"]},
        {"unknown": 1},
    ):
        with pytest.raises(ValueError):
            RuntimeDefaults.model_validate({"policy": bad})


def test_the_policy_reaches_runtime_pods_and_the_model_volume_is_mounted_read_only():
    defaults = RuntimeDefaults.model_validate(
        {
            "gpu": {"enabled": False},
            "modelVolume": {"persistentVolumeClaim": {"claimName": "models", "readOnly": True}},
            "policy": {"fetchAllowedNetworks": ["10.0.0.0/8"], "maxCheckpointBytes": 1000},
        }
    )
    dep = resources.deployment(OWNER, spec_with(), defaults)
    pod = dep["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["HOTSWAP_ALLOWED_ARCHITECTURES"] == "torchvision,python/hotswap_runtime.examples"
    assert env["HOTSWAP_FILE_ROOTS"] == "/models,/opt/hotswap-examples"
    assert env["HOTSWAP_FETCH_ALLOWED_NETWORKS"] == "10.0.0.0/8"
    assert env["HOTSWAP_MAX_CHECKPOINT_BYTES"] == env["HOTSWAP_MAX_MODEL_BYTES"] == "1000"
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["models"]["persistentVolumeClaim"]["claimName"] == "models"
    assert volumes["tmp"]["emptyDir"]["sizeLimit"] == resources.TMP_SIZE_LIMIT
    mounts = {m["name"]: m for m in container["volumeMounts"]}
    assert mounts["models"] == {"name": "models", "mountPath": "/models", "readOnly": True}


def test_the_forward_limits_reach_runtime_pods_only_where_the_chart_sets_them():
    def env_of(policy):
        defaults = RuntimeDefaults.model_validate({"gpu": {"enabled": False}, "policy": policy})
        (container,) = resources.deployment(OWNER, spec_with(), defaults)["spec"]["template"][
            "spec"
        ]["containers"]
        return {e["name"]: e.get("value") for e in container["env"]}

    env = env_of({"maxForwardBatch": 64, "forwardMemoryBytes": 256 << 20})
    assert env["HOTSWAP_MAX_FORWARD_BATCH"] == "64"
    assert env["HOTSWAP_FORWARD_MEMORY_BYTES"] == str(256 << 20)
    assert not {"HOTSWAP_MAX_FORWARD_BATCH", "HOTSWAP_FORWARD_MEMORY_BYTES"} & set(env_of({}))
    for bad in ({"maxForwardBatch": 0}, {"maxForwardBatch": 1 << 17}, {"forwardMemoryBytes": 1000}):
        with pytest.raises(ValueError):
            RuntimeDefaults.model_validate({"policy": bad})


def controlled(uid, kind="ModelDeployment", name="resnet"):
    return {
        "metadata": {
            "ownerReferences": [{"kind": kind, "name": name, "uid": uid, "controller": True}]
        }
    }


def test_only_objects_this_model_deployment_controls_are_its_own():
    assert resources.holder(controlled("uid-1"), OWNER) is None
    assert "no owner" in resources.holder({"metadata": {}}, OWNER)
    assert "Deployment web" in resources.holder(controlled("u2", "Deployment", "web"), OWNER)
    not_controller = {"metadata": {"ownerReferences": [{"uid": "uid-1", "kind": "X"}]}}
    assert resources.holder(not_controller, OWNER) is not None
    assert resources.left_by_predecessor(controlled("uid-0"), OWNER)
    assert not resources.left_by_predecessor(controlled("uid-1"), OWNER)
    assert not resources.left_by_predecessor(controlled("uid-0", name="other"), OWNER)
