"""Pure builders of the child objects of a ModelDeployment.

Every function here takes values and returns a manifest (a plain dict) ready for
server-side apply; each sets the owner reference, so deleting the ModelDeployment lets
the garbage collector remove its children. Nothing here talks to the API.

The runtime pod template depends only on the name, spec.runtime, the checkpoint's
secretRef and the operator's runtime defaults: never on the revision, so a checkpoint
change reaches pods through the ConfigMap alone and restarts nothing.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from hotswap_contract.policy import MODELS_DIR
from hotswap_contract.wire import (
    API_GROUP,
    API_VERSION,
    CONFIG_KEY,
    DEPLOYMENT_LABEL,
    GRPC_PORT,
    HTTP_PORT,
    KIND,
    PEER_PORT,
    PEERS_KEY,
    REPLICA_PLURAL,
    ModelConfig,
    Peers,
    configmap_name,
    peers_configmap_name,
)
from hotswap_operator.config import Policy, RuntimeDefaults
from hotswap_operator.spec import DeploymentSpec, DisruptionBudget, SpecError, is_gpu_resource

Manifest = dict[str, Any]

LABEL_NAME = "app.kubernetes.io/name"
LABEL_INSTANCE = "app.kubernetes.io/instance"
LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
LABEL_DEPLOYMENT = DEPLOYMENT_LABEL
# On the pod template when the ServiceAccount has annotations: a digest of them, so a
# workload-identity change rolls the pods (they read credentials when they start).
ANNOTATION_ACCOUNT = f"{API_GROUP}/serviceaccount-annotations"
MANAGER = "hotswap-operator"
RUNTIME_APP = "hotswap-runtime"

PORT = HTTP_PORT
CONFIG_DIR = "/etc/hotswap/model"
CACHE_DIR = "/var/cache/hotswap"
SECRETS_DIR = "/var/run/hotswap/secrets"
PEER_DIR = "/var/run/hotswap/peer"  # Secret <name>-peer, read-only: the file `token`
PEER_TOKEN_KEY = "token"
RUNTIME_UID = 10001
TMP_SIZE_LIMIT = "512Mi"  # the runtime's /tmp emptyDir: nothing a spec names can fill a node


@dataclass(frozen=True)
class Owner:
    """The ModelDeployment that children belong to."""

    name: str
    namespace: str
    uid: str

    @property
    def runtime_name(self) -> str:
        """Name of the runtime Deployment, Service, ServiceAccount, Role and RoleBinding."""
        return self.name

    @property
    def account_name(self) -> str:
        return f"{self.name}-runtime"

    @property
    def peer_secret_name(self) -> str:
        """`<name>-peer-<uid>`: the operator creates it and never reads Secrets, so the
        name itself is what makes it this ModelDeployment's (docs/security.md)."""
        return f"{self.name}-peer-{self.uid}"


def service_url(owner: Owner) -> str:
    """The runtime Service's in-cluster URL (`status.url`): HTTP, port `http`."""
    return f"http://{owner.runtime_name}.{owner.namespace}.svc:{PORT}"


def selector_labels(name: str) -> dict[str, str]:
    return {LABEL_NAME: RUNTIME_APP, LABEL_DEPLOYMENT: name}


def labels(name: str) -> dict[str, str]:
    return {**selector_labels(name), LABEL_INSTANCE: name, LABEL_MANAGED_BY: MANAGER}


def owner_reference(owner: Owner) -> dict[str, Any]:
    return {
        "apiVersion": f"{API_GROUP}/{API_VERSION}",
        "kind": KIND,
        "name": owner.name,
        "uid": owner.uid,
        "controller": True,
    }


def holder(obj: Mapping[str, Any], owner: Owner) -> str | None:
    """None when ``owner`` controls ``obj``; otherwise who holds it, in words.

    The operator never adopts an object it did not create: a ModelDeployment named like
    an existing Service, Role or ConfigMap would otherwise take it over (and the
    garbage collector would delete it with the ModelDeployment)."""
    refs = (obj.get("metadata") or {}).get("ownerReferences") or []
    controller = next((r for r in refs if r.get("controller")), None)
    if controller is None:
        return "no owner (it was not created by hotswap)"
    if controller.get("uid") == owner.uid:
        return None
    return f"{controller.get('kind')} {controller.get('name')} (uid {controller.get('uid')})"


def left_by_predecessor(obj: Mapping[str, Any], owner: Owner) -> bool:
    """``obj`` belongs to an earlier ModelDeployment of the same name, deleted and
    created again: the garbage collector is about to remove it."""
    refs = (obj.get("metadata") or {}).get("ownerReferences") or []
    return any(
        r.get("controller")
        and r.get("kind") == KIND
        and r.get("name") == owner.name
        and r.get("uid") != owner.uid
        for r in refs
    )


def _metadata(owner: Owner, name: str) -> dict[str, Any]:
    return {
        "name": name,
        "namespace": owner.namespace,
        "labels": labels(owner.name),
        "ownerReferences": [owner_reference(owner)],
    }


def config_map(owner: Owner, config: ModelConfig) -> Manifest:
    """ConfigMap `<name>-model` carrying model.json."""
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": _metadata(owner, configmap_name(owner.name)),
        "data": {CONFIG_KEY: config.dumps()},
    }


def peers_config_map(owner: Owner, peers: Peers) -> Manifest:
    """ConfigMap `<name>-peers` carrying peers.json (peers.py), which runtime pods read
    through the API (their Role allows get, list and watch of it)."""
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": _metadata(owner, peers_configmap_name(owner.name)),
        "data": {PEERS_KEY: peers.dumps()},
    }


def peer_secret(owner: Owner, token: str | None = None) -> Manifest:
    """Secret `<name>-peer-<uid>`: the token every request between this
    ModelDeployment's pods carries (docs/security.md). Created with a random token
    (``token``: the create's body; without it, the object the sync creates) and never
    written or read again."""
    manifest: Manifest = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": _metadata(owner, owner.peer_secret_name),
        "type": "Opaque",
    }
    if token is not None:
        manifest["stringData"] = {PEER_TOKEN_KEY: token}
    return manifest


def account_annotations(spec: DeploymentSpec, defaults: RuntimeDefaults) -> dict[str, str]:
    """The chart's ServiceAccount annotations with the spec's over them, key by key."""
    return {**defaults.service_account.annotations, **spec.runtime.service_account.annotations}


def service_account(owner: Owner, annotations: Mapping[str, str] | None = None) -> Manifest:
    metadata = _metadata(owner, owner.account_name)
    if annotations:
        metadata["annotations"] = dict(annotations)
    return {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": metadata}


def runtime_role_rules(owner: Owner) -> list[dict[str, Any]]:
    """Runtime pods may read their two ConfigMaps (model.json, peers.json) and write
    their own ModelReplica report.

    RBAC cannot name an object before it exists, so "their own" (named after the pod,
    owned by it, labelled with this ModelDeployment) is the chart's admission policy."""
    return [
        {
            "apiGroups": [""],
            "resources": ["configmaps"],
            "resourceNames": [configmap_name(owner.name), peers_configmap_name(owner.name)],
            "verbs": ["get", "list", "watch"],
        },
        {
            "apiGroups": [API_GROUP],
            "resources": [REPLICA_PLURAL],
            "verbs": ["create", "patch"],
        },
    ]


def role(owner: Owner) -> Manifest:
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "Role",
        "metadata": _metadata(owner, owner.account_name),
        "rules": runtime_role_rules(owner),
    }


def role_binding(owner: Owner) -> Manifest:
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "RoleBinding",
        "metadata": _metadata(owner, owner.account_name),
        "roleRef": {
            "apiGroup": "rbac.authorization.k8s.io",
            "kind": "Role",
            "name": owner.account_name,
        },
        "subjects": [
            {"kind": "ServiceAccount", "name": owner.account_name, "namespace": owner.namespace}
        ],
    }


def service(owner: Owner) -> Manifest:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _metadata(owner, owner.runtime_name),
        "spec": {
            "type": "ClusterIP",
            "selector": selector_labels(owner.name),
            "ports": [
                {"name": "http", "port": PORT, "targetPort": "http", "protocol": "TCP"},
                {
                    "name": "grpc",
                    "port": GRPC_PORT,
                    "targetPort": "grpc",
                    "protocol": "TCP",
                    "appProtocol": "grpc",
                },
            ],
        },
    }


@dataclass(frozen=True)
class Scheduling:
    """The runtime container's image, resources and placement after defaults apply."""

    image: str
    image_pull_policy: str
    resources: dict[str, dict[str, str | int]]
    tolerations: list[dict[str, Any]]
    node_selector: dict[str, str]
    runtime_class_name: str | None
    image_pull_secrets: list[dict[str, str]]
    priority_class_name: str | None
    affinity: dict[str, Any] | None
    topology_spread_constraints: list[dict[str, Any]]


def scheduling(spec: DeploymentSpec, defaults: RuntimeDefaults) -> Scheduling:
    """spec.runtime over the chart's defaults; GPU defaults unless the device is cpu.

    A field the spec sets replaces the default as a whole (as a Pod's own field would);
    imagePullSecrets are the union of both lists (the chart's first, by name)."""
    rt = spec.runtime
    gpu = defaults.gpu if defaults.gpu.enabled and rt.device != "cpu" else None
    resources = {kind: dict(values) for kind, values in defaults.resources.items()}
    if gpu is not None and gpu.limits:
        resources["limits"] = {**resources.get("limits", {}), **gpu.limits}
    if rt.device == "cpu":  # no whole GPU, no MIG slice
        resources = {
            kind: {name: n for name, n in values.items() if not is_gpu_resource(name)}
            for kind, values in resources.items()
        }
    return Scheduling(
        image=rt.image or defaults.image,
        image_pull_policy=rt.image_pull_policy or defaults.image_pull_policy,
        resources=rt.resources if rt.resources is not None else resources,
        tolerations=list(
            rt.tolerations if rt.tolerations is not None else (gpu.tolerations if gpu else ())
        ),
        node_selector=(
            rt.node_selector
            if rt.node_selector is not None
            else (dict(gpu.node_selector) if gpu else {})
        ),
        runtime_class_name=rt.runtime_class_name or (gpu.runtime_class_name if gpu else None),
        image_pull_secrets=_pull_secrets(defaults, spec),
        priority_class_name=rt.priority_class_name or defaults.priority_class_name,
        affinity=rt.affinity if rt.affinity is not None else defaults.affinity,
        topology_spread_constraints=list(
            rt.topology_spread_constraints
            if rt.topology_spread_constraints is not None
            else defaults.topology_spread_constraints
        ),
    )


def _pull_secrets(defaults: RuntimeDefaults, spec: DeploymentSpec) -> list[dict[str, str]]:
    names = [
        s.name for s in (*defaults.image_pull_secrets, *(spec.runtime.image_pull_secrets or ()))
    ]
    return [{"name": name} for name in dict.fromkeys(names)]


def spread(owner: Owner, constraints: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each constraint as given; one without labelSelector counts this ModelDeployment's
    pods of the same ReplicaSet (pod-template-hash: a rolling update spreads the new
    pods, not old and new together)."""
    out = []
    for constraint in constraints:
        if "labelSelector" not in constraint:
            constraint = {
                **constraint,
                "labelSelector": {"matchLabels": selector_labels(owner.name)},
                "matchLabelKeys": ["pod-template-hash"],
            }
        out.append(constraint)
    return out


def pod_metadata(owner: Owner, spec: DeploymentSpec, defaults: RuntimeDefaults) -> Manifest:
    """The chart's pod labels and annotations, the spec's over them key by key, and the
    operator's own labels over both (spec.py refuses a spec that names one)."""
    theirs, ours = defaults.pod_metadata, spec.runtime.pod_metadata
    meta: Manifest = {"labels": {**theirs.labels, **ours.labels, **labels(owner.name)}}
    annotations = {**theirs.annotations, **ours.annotations}
    account = account_annotations(spec, defaults)
    if account:
        canonical = json.dumps(account, sort_keys=True, separators=(",", ":"))
        annotations[ANNOTATION_ACCOUNT] = hashlib.sha256(canonical.encode()).hexdigest()[:16]
    if annotations:
        meta["annotations"] = annotations
    return meta


def _field_env(name: str, path: str) -> dict[str, Any]:
    return {"name": name, "valueFrom": {"fieldRef": {"fieldPath": path}}}


def runtime_env(
    owner: Owner, spec: DeploymentSpec, defaults: RuntimeDefaults
) -> list[dict[str, Any]]:
    """The runtime's environment (docs/architecture.md, "Runtime pod interface"): the
    interface variables, the admin's policy, then what spec.runtime.env may add."""
    policy = defaults.policy
    env: list[dict[str, Any]] = [
        {"name": "HOTSWAP_MODEL_NAME", "value": owner.name},
        {"name": "HOTSWAP_CONFIG_DIR", "value": CONFIG_DIR},
        {"name": "HOTSWAP_CONFIGMAP", "value": configmap_name(owner.name)},
        {"name": "HOTSWAP_CACHE_DIR", "value": CACHE_DIR},
        {"name": "HOTSWAP_DEVICE", "value": spec.runtime.device},
        _field_env("HOTSWAP_HOST", "status.podIP"),
        {"name": "HOTSWAP_PORT", "value": str(PORT)},
        {"name": "HOTSWAP_GRPC_PORT", "value": str(GRPC_PORT)},
        {"name": "HOTSWAP_SECRETS_DIR", "value": SECRETS_DIR},
        _field_env("POD_NAME", "metadata.name"),
        _field_env("POD_NAMESPACE", "metadata.namespace"),
        _field_env("POD_UID", "metadata.uid"),
        {"name": "HOTSWAP_ALLOWED_ARCHITECTURES", "value": ",".join(policy.architectures)},
        {"name": "HOTSWAP_FILE_ROOTS", "value": ",".join(policy.file_roots)},
        {"name": "HOTSWAP_FETCH_ALLOWED_NETWORKS", "value": ",".join(policy.fetch_networks)},
    ]
    if policy.max_checkpoint_bytes is not None:
        limit = str(policy.max_checkpoint_bytes)
        env += [
            {"name": "HOTSWAP_MAX_CHECKPOINT_BYTES", "value": limit},
            {"name": "HOTSWAP_MAX_MODEL_BYTES", "value": limit},
        ]
    env += _forward_env(policy)
    batching = spec.runtime.batching
    if batching is not None:
        env += [
            {"name": "HOTSWAP_MAX_BATCH_SIZE", "value": str(batching.max_batch_size)},
            {
                "name": "HOTSWAP_MAX_QUEUE_DELAY_US",
                "value": str(batching.max_queue_delay_microseconds),
            },
        ]
    if spec.runtime.cache_max_bytes is not None:
        env.append({"name": "HOTSWAP_CACHE_MAX_BYTES", "value": str(spec.runtime.cache_max_bytes)})
    env += _distribution_env(owner, spec, defaults)
    ours = {e["name"] for e in env}
    clash = sorted(ours & {e.name for e in spec.runtime.env})
    if clash:
        raise SpecError(
            f"ModelDeployment {owner.name}: spec.runtime.env sets {', '.join(clash)}, which the "
            "operator sets itself; use the matching spec field or remove the entry"
        )
    env.extend({"name": e.name, "value": e.value} for e in spec.runtime.env)
    return env


def _distribution_env(
    owner: Owner, spec: DeploymentSpec, defaults: RuntimeDefaults
) -> list[dict[str, Any]]:
    """Peer transfer (its token, port and peers.json) when spec.distribution.peers is
    on; the chart's download proxy when it sets one."""
    env = []
    if spec.distribution.peers:
        env += [
            {"name": "HOTSWAP_PEER_TOKEN_FILE", "value": f"{PEER_DIR}/{PEER_TOKEN_KEY}"},
            {"name": "HOTSWAP_PEER_PORT", "value": str(PEER_PORT)},
            {"name": "HOTSWAP_PEERS_CONFIGMAP", "value": peers_configmap_name(owner.name)},
        ]
    if defaults.distribution.proxy:
        env.append({"name": "HOTSWAP_FETCH_PROXY", "value": defaults.distribution.proxy})
    return env


def _forward_env(policy: Policy) -> list[dict[str, Any]]:
    """The admin's bounds on forward passes, where the chart sets them."""
    env = []
    if policy.max_forward_batch is not None:
        env.append({"name": "HOTSWAP_MAX_FORWARD_BATCH", "value": str(policy.max_forward_batch)})
    if policy.forward_memory_bytes is not None:
        memory = str(policy.forward_memory_bytes)
        env.append({"name": "HOTSWAP_FORWARD_MEMORY_BYTES", "value": memory})
    return env


def _volumes(
    owner: Owner, spec: DeploymentSpec, defaults: RuntimeDefaults
) -> tuple[list[Manifest], list[Manifest]]:
    volumes: list[Manifest] = [
        {"name": "model", "configMap": {"name": configmap_name(owner.name)}},
        {"name": "cache", "emptyDir": {}},
        {"name": "tmp", "emptyDir": {"sizeLimit": TMP_SIZE_LIMIT}},
    ]
    mounts: list[Manifest] = [
        {"name": "model", "mountPath": CONFIG_DIR, "readOnly": True},
        {"name": "cache", "mountPath": CACHE_DIR},
        {"name": "tmp", "mountPath": "/tmp"},
    ]
    if defaults.model_volume:
        volumes.append({"name": "models", **defaults.model_volume})
        mounts.append({"name": "models", "mountPath": MODELS_DIR, "readOnly": True})
    if spec.distribution.peers:  # 0440, group fsGroup: readable by the runtime user only
        # optional: a pod started while the Secret is missing (deleted by hand) starts
        # without a credential and reads the store, instead of waiting to mount it
        secret_source = {
            "secretName": owner.peer_secret_name,
            "defaultMode": 0o440,
            "optional": True,
        }
        volumes.append({"name": "peer-token", "secret": secret_source})
        mounts.append({"name": "peer-token", "mountPath": PEER_DIR, "readOnly": True})
    secret = spec.checkpoint.secret_ref
    if secret is not None:
        volumes.append({"name": "checkpoint-secret", "secret": {"secretName": secret.name}})
        mounts.append(
            {
                "name": "checkpoint-secret",
                "mountPath": f"{SECRETS_DIR}/{secret.name}",
                "readOnly": True,
            }
        )
    return volumes, mounts


def _probe(path: str, period: int, failures: int) -> dict[str, Any]:
    return {
        "httpGet": {"path": path, "port": "http"},
        "periodSeconds": period,
        "failureThreshold": failures,
        "timeoutSeconds": 5,
    }


def runtime_container(
    owner: Owner, spec: DeploymentSpec, defaults: RuntimeDefaults, sched: Scheduling
) -> Manifest:
    _, mounts = _volumes(owner, spec, defaults)
    return {
        "name": "runtime",
        "image": sched.image,
        "imagePullPolicy": sched.image_pull_policy,
        "env": runtime_env(owner, spec, defaults),
        "ports": [
            {"name": "http", "containerPort": PORT, "protocol": "TCP"},
            {"name": "grpc", "containerPort": GRPC_PORT, "protocol": "TCP"},
            *(
                [{"name": "peer", "containerPort": PEER_PORT, "protocol": "TCP"}]
                if spec.distribution.peers
                else []
            ),
        ],
        "resources": sched.resources,
        "volumeMounts": mounts,
        # Loading torch and the first checkpoint can take minutes on a cold node.
        "startupProbe": _probe("/v2/health/live", 2, 300),
        "livenessProbe": _probe("/v2/health/live", 10, 6),
        "readinessProbe": _probe("/v2/health/ready", 2, 2),
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "capabilities": {"drop": ["ALL"]},
        },
    }


def pod_template(owner: Owner, spec: DeploymentSpec, defaults: RuntimeDefaults) -> Manifest:
    sched = scheduling(spec, defaults)
    volumes, _ = _volumes(owner, spec, defaults)
    pod_spec: dict[str, Any] = {
        "serviceAccountName": owner.account_name,
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": RUNTIME_UID,
            "runAsGroup": RUNTIME_UID,
            "fsGroup": RUNTIME_UID,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "containers": [runtime_container(owner, spec, defaults, sched)],
        "volumes": volumes,
        "terminationGracePeriodSeconds": 30,
    }
    if sched.tolerations:
        pod_spec["tolerations"] = sched.tolerations
    if sched.node_selector:
        pod_spec["nodeSelector"] = sched.node_selector
    if sched.runtime_class_name:
        pod_spec["runtimeClassName"] = sched.runtime_class_name
    if sched.image_pull_secrets:
        pod_spec["imagePullSecrets"] = sched.image_pull_secrets
    if sched.priority_class_name:
        pod_spec["priorityClassName"] = sched.priority_class_name
    if sched.affinity:
        pod_spec["affinity"] = sched.affinity
    if sched.topology_spread_constraints:
        pod_spec["topologySpreadConstraints"] = spread(owner, sched.topology_spread_constraints)
    return {"metadata": pod_metadata(owner, spec, defaults), "spec": pod_spec}


def deployment(owner: Owner, spec: DeploymentSpec, defaults: RuntimeDefaults) -> Manifest:
    """The runtime Deployment. Rolling updates (image, resources) never drop capacity."""
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _metadata(owner, owner.runtime_name),
        "spec": {
            "replicas": spec.replicas,
            "selector": {"matchLabels": selector_labels(owner.name)},
            "strategy": {
                "type": "RollingUpdate",
                "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1},
            },
            "template": pod_template(owner, spec, defaults),
        },
    }


def budget(spec: DeploymentSpec, defaults: RuntimeDefaults) -> DisruptionBudget:
    """spec.runtime.podDisruptionBudget, or the chart's when the spec has none."""
    return spec.runtime.pod_disruption_budget or defaults.pod_disruption_budget


def disruption_budget(owner: Owner, wanted: DisruptionBudget) -> Manifest:
    """PodDisruptionBudget `<name>` over the runtime pods: minAvailable if set, else
    maxUnavailable (1 when neither is). Pods that are not ready may always be evicted,
    so a broken rollout never blocks a node drain."""
    pdb_spec: dict[str, Any] = {
        "selector": {"matchLabels": selector_labels(owner.name)},
        "unhealthyPodEvictionPolicy": "AlwaysAllow",
    }
    if wanted.min_available is not None:
        pdb_spec["minAvailable"] = wanted.min_available
    else:
        pdb_spec["maxUnavailable"] = (
            wanted.max_unavailable if wanted.max_unavailable is not None else 1
        )
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": _metadata(owner, owner.runtime_name),
        "spec": pdb_spec,
    }


def children(
    owner: Owner, spec: DeploymentSpec, defaults: RuntimeDefaults, config: ModelConfig
) -> list[Manifest]:
    """Every child, in apply order: the config first (on a checkpoint change it is the
    one object that changes, so pods hear of it one round trip after the spec), then
    the pods' access (the peer token's Secret: created once, never applied), then the
    pods."""
    wanted = budget(spec, defaults)
    return [
        config_map(owner, config),
        *([peer_secret(owner)] if spec.distribution.peers else []),
        service_account(owner, account_annotations(spec, defaults)),
        role(owner),
        role_binding(owner),
        service(owner),
        *([disruption_budget(owner, wanted)] if wanted.enabled else []),
        deployment(owner, spec, defaults),
    ]


def retired(owner: Owner, spec: DeploymentSpec, defaults: RuntimeDefaults) -> list[Manifest]:
    """Children the spec turned off: deleted when (and only when) this ModelDeployment
    controls them."""
    if budget(spec, defaults).enabled:
        return []
    return [disruption_budget(owner, DisruptionBudget())]
