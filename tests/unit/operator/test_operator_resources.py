import json

import pytest
from operator_samples import SHA_B, SPEC, body, sync_context, with_checkpoint

from hotswap_contract.wire import CONFIG_KEY, PEER_PORT, parse_config
from hotswap_operator import resources, rollout
from hotswap_operator.config import RuntimeDefaults, runtime_defaults
from hotswap_operator.context import SyncContext
from hotswap_operator.spec import SpecError, parse_spec

OWNER = resources.Owner(name="resnet", namespace="ml", uid="uid-1")
GPU = RuntimeDefaults()  # built-in defaults: GPU on


def build(spec_raw, status=None, defaults=GPU):
    spec = parse_spec(spec_raw)
    plan = rollout.plan(sync_context(status), spec)
    return resources.children(OWNER, spec, defaults, plan.config), plan


def by_kind(children):
    return {c["kind"]: c for c in children}


def test_every_child_is_owned_by_the_model_deployment():
    children, _ = build(SPEC)
    # The ConfigMap first (a checkpoint change reaches pods one round trip after the
    # spec), access before the pods, the Deployment last.
    assert [c["kind"] for c in children] == [
        "ConfigMap",
        "Secret",
        "ServiceAccount",
        "Role",
        "RoleBinding",
        "Service",
        "Deployment",
    ]
    for child in children:
        (ref,) = child["metadata"]["ownerReferences"]
        assert ref == {
            "apiVersion": "hotswap.dev/v1alpha1",
            "kind": "ModelDeployment",
            "name": "resnet",
            "uid": "uid-1",
            "controller": True,
        }
        assert child["metadata"]["namespace"] == "ml"


def test_config_map_carries_the_stable_revision():
    children, plan = build(SPEC)
    cm = by_kind(children)["ConfigMap"]
    assert cm["metadata"]["name"] == "resnet-model"
    config = parse_config(cm["data"][CONFIG_KEY])
    assert config == plan.config
    assert config.stable.revision == 1
    assert config.stable.checkpoint.sha256 == SPEC["checkpoint"]["sha256"]
    assert config.candidate is None and config.generation == 1


def test_checkpoint_change_leaves_pod_template_byte_identical():
    first, plan1 = build(SPEC)
    changed = with_checkpoint("s3://models/v2.safetensors", SHA_B)
    second, plan2 = build(changed, status=plan1.status)
    assert plan2.config.stable.revision == 2
    for kind in ("Deployment", "Service", "ServiceAccount", "Role", "RoleBinding"):
        before = json.dumps(by_kind(first)[kind], sort_keys=True)
        assert json.dumps(by_kind(second)[kind], sort_keys=True) == before, kind
    assert by_kind(first)["ConfigMap"] != by_kind(second)["ConfigMap"]


def env_of(deployment):
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container["env"]}


def test_runtime_env_follows_the_pod_interface():
    env = env_of(by_kind(build(SPEC)[0])["Deployment"])
    assert env["HOTSWAP_HOST"] == {"fieldRef": {"fieldPath": "status.podIP"}}
    assert env["POD_NAME"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    assert env["POD_NAMESPACE"] == {"fieldRef": {"fieldPath": "metadata.namespace"}}
    assert env["HOTSWAP_MODEL_NAME"] == "resnet"
    assert env["HOTSWAP_CONFIGMAP"] == "resnet-model"
    assert env["HOTSWAP_CONFIG_DIR"] == resources.CONFIG_DIR
    assert env["HOTSWAP_DEVICE"] == "cpu"
    assert "HOTSWAP_CACHE_MAX_BYTES" not in env


def test_config_and_cache_are_mounted_where_env_points():
    dep = by_kind(build(SPEC)[0])["Deployment"]
    (container,) = dep["spec"]["template"]["spec"]["containers"]
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    env = env_of(dep)
    assert mounts[env["HOTSWAP_CONFIG_DIR"]] == "model"
    assert mounts[env["HOTSWAP_CACHE_DIR"]] == "cache"
    volumes = {v["name"]: v for v in dep["spec"]["template"]["spec"]["volumes"]}
    assert volumes["model"]["configMap"]["name"] == "resnet-model"


def test_secret_ref_is_mounted_under_the_secrets_dir():
    spec = with_checkpoint("s3://b/v1.safetensors", SHA_B)
    spec["checkpoint"]["secretRef"] = {"name": "store"}
    dep = by_kind(build(spec)[0])["Deployment"]
    (container,) = dep["spec"]["template"]["spec"]["containers"]
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    assert mounts[f"{resources.SECRETS_DIR}/store"] == "checkpoint-secret"


def test_pods_run_non_root_with_a_read_only_root():
    pod = by_kind(build(SPEC)[0])["Deployment"]["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["containers"][0]["securityContext"]["readOnlyRootFilesystem"] is True
    assert pod["serviceAccountName"] == "resnet-runtime"


def test_role_allows_only_the_own_config_map_and_writing_reports():
    role = by_kind(build(SPEC)[0])["Role"]
    assert role["rules"] == [
        {
            "apiGroups": [""],
            "resources": ["configmaps"],
            "resourceNames": ["resnet-model", "resnet-peers"],
            "verbs": ["get", "list", "watch"],
        },
        {  # which ModelReplica: the chart's admission policy (named after the pod)
            "apiGroups": ["hotswap.dev"],
            "resources": ["modelreplicas"],
            "verbs": ["create", "patch"],
        },
    ]
    binding = by_kind(build(SPEC)[0])["RoleBinding"]
    assert binding["subjects"][0]["name"] == "resnet-runtime"
    assert binding["roleRef"]["name"] == role["metadata"]["name"]


def test_gpu_defaults_apply_unless_device_is_cpu():
    auto = dict(SPEC, runtime={"device": "auto"})
    defaults = runtime_defaults(
        {
            "HOTSWAP_RUNTIME_DEFAULTS": json.dumps(
                {
                    "resources": {"requests": {"cpu": "1"}},
                    "gpu": {
                        "enabled": True,
                        "limits": {"nvidia.com/gpu": 1},
                        "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists"}],
                        "nodeSelector": {"gpu": "a100"},
                        "runtimeClassName": "nvidia",
                    },
                }
            )
        }
    )
    gpu_pod = by_kind(build(auto, defaults=defaults)[0])["Deployment"]["spec"]["template"]["spec"]
    assert gpu_pod["containers"][0]["resources"] == {
        "requests": {"cpu": "1"},
        "limits": {"nvidia.com/gpu": 1},
    }
    assert gpu_pod["runtimeClassName"] == "nvidia"
    assert gpu_pod["nodeSelector"] == {"gpu": "a100"}
    assert gpu_pod["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists"}]
    cpu_pod = by_kind(build(SPEC, defaults=defaults)[0])["Deployment"]["spec"]["template"]["spec"]
    assert cpu_pod["containers"][0]["resources"] == {"requests": {"cpu": "1"}}
    assert "runtimeClassName" not in cpu_pod and "tolerations" not in cpu_pod


def test_spec_runtime_overrides_defaults():
    spec = dict(
        SPEC,
        runtime={
            "device": "cuda",
            "image": "reg/x/hotswap-runtime:dev",
            "resources": {"limits": {"nvidia.com/gpu": 2}},
            "nodeSelector": {},
            "runtimeClassName": "custom",
        },
    )
    pod = by_kind(build(spec)[0])["Deployment"]["spec"]["template"]["spec"]
    assert pod["containers"][0]["image"] == "reg/x/hotswap-runtime:dev"
    assert pod["containers"][0]["resources"] == {"limits": {"nvidia.com/gpu": 2}}
    assert pod["runtimeClassName"] == "custom"
    assert "nodeSelector" not in pod


def test_replicas_go_to_the_deployment():
    dep = by_kind(build(dict(SPEC, replicas=5))[0])["Deployment"]
    assert dep["spec"]["replicas"] == 5
    assert dep["spec"]["selector"]["matchLabels"] == resources.selector_labels("resnet")
    labels = dep["spec"]["template"]["metadata"]["labels"]
    assert resources.selector_labels("resnet").items() <= labels.items()


def test_the_sync_context_reads_the_owner_from_the_body():
    ctx = SyncContext.build(body(), None, [], GPU, "2026-01-01T00:00:00Z", None)
    assert ctx.owner == OWNER and ctx.children_due


@pytest.mark.parametrize("bad", ["{", json.dumps({"gpu": {"enabled": "maybe"}})])
def test_malformed_runtime_defaults_are_refused(bad):
    with pytest.raises(ValueError, match="HOTSWAP_RUNTIME_DEFAULTS"):
        runtime_defaults({"HOTSWAP_RUNTIME_DEFAULTS": bad})


def test_extra_env_is_appended_and_may_not_shadow_the_interface():
    spec = dict(
        SPEC, runtime={"device": "cpu", "env": [{"name": "HOTSWAP_TORCH_THREADS", "value": "1"}]}
    )
    assert env_of(by_kind(build(spec)[0])["Deployment"])["HOTSWAP_TORCH_THREADS"] == "1"
    clash = dict(SPEC, runtime={"env": [{"name": "HOTSWAP_HOST", "value": "0.0.0.0"}]})
    with pytest.raises(SpecError, match="HOTSWAP_HOST"):
        build(clash)


def test_grpc_port_is_declared_on_the_container_and_exposed_by_the_service():
    children = by_kind(build(SPEC)[0])
    (container,) = children["Deployment"]["spec"]["template"]["spec"]["containers"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"http": 8080, "grpc": 8081, "peer": PEER_PORT}
    service = {
        p["name"]: (p["port"], p["targetPort"]) for p in children["Service"]["spec"]["ports"]
    }
    assert service == {"http": (8080, "http"), "grpc": (8081, "grpc")}
    assert env_of(children["Deployment"])["HOTSWAP_GRPC_PORT"] == "8081"


def test_batching_reaches_pods_as_env_and_is_off_by_default():
    assert "HOTSWAP_MAX_BATCH_SIZE" not in env_of(by_kind(build(SPEC)[0])["Deployment"])
    spec = dict(SPEC, runtime={"batching": {"maxBatchSize": 16}})
    env = env_of(by_kind(build(spec)[0])["Deployment"])
    assert (env["HOTSWAP_MAX_BATCH_SIZE"], env["HOTSWAP_MAX_QUEUE_DELAY_US"]) == ("16", "1000")
    with pytest.raises(SpecError, match="maxBatchSize"):
        parse_spec(dict(SPEC, runtime={"batching": {"maxBatchSize": 0}}))
    clash = dict(SPEC, runtime={"env": [{"name": "HOTSWAP_GRPC_PORT", "value": "9"}]})
    with pytest.raises(SpecError, match="HOTSWAP_GRPC_PORT"):
        build(clash)


def pod_of(children):
    return by_kind(children)["Deployment"]["spec"]["template"]["spec"]


def test_peers_get_their_token_port_and_peers_config_map():
    children, _ = build(SPEC)
    pod = pod_of(children)
    (container,) = pod["containers"]
    env = env_of(by_kind(children)["Deployment"])
    assert env["HOTSWAP_PEER_TOKEN_FILE"] == "/var/run/hotswap/peer/token"
    assert env["HOTSWAP_PEER_PORT"] == str(PEER_PORT)
    assert env["HOTSWAP_PEERS_CONFIGMAP"] == "resnet-peers"
    assert "HOTSWAP_FETCH_PROXY" not in env
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    token = mounts["/var/run/hotswap/peer"]
    assert token["readOnly"] is True
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes[token["name"]]["secret"] == {
        "secretName": "resnet-peer-uid-1",  # the uid: only this ModelDeployment's
        "defaultMode": 0o440,
        "optional": True,  # a missing Secret: no credential, the store; never stuck
    }
    # group-readable only, and the runtime user's group owns the files (fsGroup)
    assert pod["securityContext"]["fsGroup"] == pod["securityContext"]["runAsGroup"]
    assert {"name": "peer", "containerPort": PEER_PORT, "protocol": "TCP"} in container["ports"]
    assert [p["name"] for p in by_kind(children)["Service"]["spec"]["ports"]] == ["http", "grpc"]
    secret = by_kind(children)["Secret"]
    assert secret["metadata"]["name"] == "resnet-peer-uid-1" and secret["type"] == "Opaque"
    assert "data" not in secret and "stringData" not in secret  # the token: created once
    assert secret["metadata"]["labels"] == by_kind(children)["Service"]["metadata"]["labels"]


def test_peers_off_is_the_store_only_pod_of_before():
    off, _ = build(dict(SPEC, distribution={"peers": False}))
    pod = pod_of(off)
    (container,) = pod["containers"]
    env = env_of(by_kind(off)["Deployment"])
    assert not [name for name in env if name.startswith("HOTSWAP_PEER")]
    assert [p["name"] for p in container["ports"]] == ["http", "grpc"]
    assert not [v for v in pod["volumes"] if "secret" in v]
    assert "Secret" not in by_kind(off)
    # originConcurrency reaches the pods through peers.json only: no roll
    on, _ = build(dict(SPEC, distribution={"originConcurrency": 9}))
    assert by_kind(on)["Deployment"] == by_kind(build(SPEC)[0])["Deployment"]


def test_the_download_proxy_reaches_pods_when_the_chart_sets_one():
    proxy = runtime_defaults(
        {"HOTSWAP_RUNTIME_DEFAULTS": json.dumps({"distribution": {"proxy": "http://df:65001"}})}
    )
    children = resources.children(
        OWNER, parse_spec(SPEC), proxy, rollout.plan(sync_context(None), parse_spec(SPEC)).config
    )
    assert env_of(by_kind(children)["Deployment"])["HOTSWAP_FETCH_PROXY"] == "http://df:65001"
    with pytest.raises(ValueError, match="proxy"):
        runtime_defaults(
            {"HOTSWAP_RUNTIME_DEFAULTS": json.dumps({"distribution": {"proxy": "ftp://df"}})}
        )
