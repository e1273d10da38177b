"""The operator's few API calls, each declaring the RBAC permission it needs.

`PERMISSIONS` collects (apiGroup, resource, verb) from every call here; a test checks
the chart's ClusterRole against it (plus what kopf itself calls, in handlers.py), so
the chart grants no more and no less than the code uses.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from hotswap_contract.wire import (
    API_GROUP,
    API_VERSION,
    PLURAL,
    configmap_name,
    peers_configmap_name,
)
from hotswap_operator.errors import SyncError
from hotswap_operator.resources import (
    MANAGER,
    Manifest,
    Owner,
    holder,
    left_by_predecessor,
)

Permission = tuple[str, str, str]  # (apiGroup, resource, verb)
PERMISSIONS: set[Permission] = set()

# Server-side apply of children: kind -> (API path prefix, plural, apiGroup)
KINDS: dict[tuple[str, str], tuple[str, str, str]] = {
    ("v1", "ConfigMap"): ("/api/v1", "configmaps", ""),
    ("v1", "Service"): ("/api/v1", "services", ""),
    ("v1", "ServiceAccount"): ("/api/v1", "serviceaccounts", ""),
    ("apps/v1", "Deployment"): ("/apis/apps/v1", "deployments", "apps"),
    ("rbac.authorization.k8s.io/v1", "Role"): (
        "/apis/rbac.authorization.k8s.io/v1",
        "roles",
        "rbac.authorization.k8s.io",
    ),
    ("rbac.authorization.k8s.io/v1", "RoleBinding"): (
        "/apis/rbac.authorization.k8s.io/v1",
        "rolebindings",
        "rbac.authorization.k8s.io",
    ),
    ("policy/v1", "PodDisruptionBudget"): ("/apis/policy/v1", "poddisruptionbudgets", "policy"),
}
# Children created once and never written again (no patch): the peer token's Secret.
CREATED: dict[tuple[str, str], tuple[str, str, str]] = {
    ("v1", "Secret"): ("/api/v1", "secrets", ""),
}
MD_PATH = f"/apis/{API_GROUP}/{API_VERSION}"

F = TypeVar("F", bound=Callable[..., Any])


def requires(*permissions: Permission) -> Callable[[F], F]:
    """Record the permissions a method needs; returns the method unchanged."""
    PERMISSIONS.update(permissions)
    return lambda fn: fn


class KubeError(SyncError, RuntimeError):
    """An API call failed; `status` is the HTTP code (0 when none came back)."""

    reason = "ApiError"

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class ConflictError(KubeError):
    """A write's precondition failed (HTTP 409): the object changed since it was read
    (the sync reads it again)."""

    reason = "Conflict"


class ChildConflictError(SyncError):
    """A child's name is taken by an object this ModelDeployment does not own (recorded
    in status); it may clear up when that object goes."""

    reason = "ChildConflict"
    delay = 30.0


def load_api_client() -> Any:
    """A kubernetes ApiClient: $KUBECONFIG when set, in-cluster config otherwise."""
    from kubernetes import client, config

    if os.environ.get("KUBECONFIG"):
        return config.new_client_from_config(config_file=os.environ["KUBECONFIG"])  # type: ignore[no-untyped-call]
    configuration = client.Configuration()
    config.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
    return client.ApiClient(configuration)


class Kube:
    """Typed calls to the API server through a kubernetes ApiClient."""

    def __init__(self, api: Any, field_manager: str = MANAGER, timeout: float = 30) -> None:
        self.api = api
        self.field_manager = field_manager
        self.timeout = timeout  # seconds one request may take

    @classmethod
    def from_env(cls) -> Kube:
        return cls(load_api_client())

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        query: list[tuple[str, str]] | None = None,
        content_type: str = "application/json",
    ) -> dict[str, Any] | None:
        """One API request; None for 404, ConflictError for 409, KubeError for any other
        failure."""
        headers = {"Accept": "application/json", "Content-Type": content_type}
        req = self.api.param_serialize(
            method,
            path,
            query_params=query or [],
            header_params=headers,
            body=body,
            auth_settings=["BearerToken"],
        )
        try:
            resp = self.api.call_api(*req, _request_timeout=self.timeout)
            data = resp.read()
        except Exception as exc:  # urllib3 errors: connection refused, timeouts
            raise KubeError(0, f"{method} {path}: {exc}") from exc
        if resp.status == 404:
            return None
        if not 200 <= resp.status < 300:
            detail = _api_message(data)
            error = ConflictError if resp.status == 409 else KubeError
            raise error(resp.status, f"{method} {path}: {resp.status} {detail}")
        return json.loads(data) if data else {}

    @requires(
        *(
            (group, plural, verb)
            for _, plural, group in KINDS.values()
            for verb in ("patch", "create")
        )
    )
    def apply(self, manifest: Manifest, uid: str | None = None) -> dict[str, Any]:
        """Server-side apply: creates or updates, and is a no-op when nothing changed.

        The API server authorizes an apply that creates the object as `create` too.
        With ``uid``, the object must still be that one (a precondition: an object
        deleted and created again by someone else meanwhile is refused, not taken).
        """
        if (manifest["apiVersion"], manifest["kind"]) not in KINDS:
            raise ValueError(f"{manifest['kind']} children are created once, never applied")
        path, plural = _path(manifest)
        if uid is not None:
            manifest = {**manifest, "metadata": {**manifest["metadata"], "uid": uid}}
        query = [("fieldManager", self.field_manager), ("force", "true")]
        result = self.request("PATCH", path, manifest, query, "application/apply-patch+yaml")
        if result is None:
            name = manifest["metadata"]["name"]
            raise KubeError(404, f"apply {plural}/{name}: namespace not found")
        return result

    @requires(*((group, plural, "create") for _, plural, group in CREATED.values()))
    def create(self, manifest: Manifest) -> dict[str, Any]:
        """Create the child ``manifest`` (ConflictError if the name was taken meanwhile:
        the sync looks again, and never takes it over)."""
        path, plural = _path(manifest)
        created = self.request("POST", path.rsplit("/", 1)[0], manifest)
        if created is None:
            name = manifest["metadata"]["name"]
            raise KubeError(404, f"create {plural}/{name}: namespace not found")
        return created

    @requires(*((group, plural, "get") for _, plural, group in KINDS.values()))
    def get(self, manifest: Manifest) -> dict[str, Any] | None:
        """The live object that ``manifest`` would be applied to, or None. Never a
        Secret: the operator creates the peer token's and may not read any."""
        if (manifest["apiVersion"], manifest["kind"]) not in KINDS:
            raise ValueError(f"{manifest['kind']} children are created, never read")
        return self.request("GET", _path(manifest)[0])

    def claim(self, manifests: list[Manifest], owner: Owner) -> list[str | None]:
        """The uid of each child that exists (None where it does not yet).

        Raises ChildConflictError naming every name taken by an object ``owner`` does
        not control (never adopted), and KubeError 409 while an earlier ModelDeployment
        of the same name still holds one (the garbage collector is at work; retry soon).
        """
        uids: list[str | None] = []
        taken: list[str] = []
        for manifest in manifests:
            live = self.get(manifest)
            if live is not None and (problem := _held_by_other(live, manifest, owner)):
                taken.append(problem)
            uids.append(None if live is None else live["metadata"]["uid"])
        if taken:
            raise ChildConflictError(
                f"ModelDeployment {owner.name}: {'; '.join(taken)}; hotswap never takes over "
                "an object it did not create: rename the ModelDeployment, or delete those "
                "objects if they are not needed"
            )
        return uids

    @requires(("policy", "poddisruptionbudgets", "delete"))
    def retire(self, manifest: Manifest, owner: Owner) -> bool:
        """Delete the child ``manifest`` names if (and only if) ``owner`` controls it
        (a uid precondition: never an object created again meanwhile). True if deleted.
        Only PodDisruptionBudgets are ever deleted (the one child a spec turns off)."""
        if manifest["kind"] != "PodDisruptionBudget":
            raise ValueError(f"{manifest['kind']} children are never deleted")
        live = self.get(manifest)
        if live is None or holder(live, owner) is not None:
            return False
        body = {"preconditions": {"uid": live["metadata"]["uid"]}}
        try:
            return self.request("DELETE", _path(manifest)[0], body) is not None
        except ConflictError:  # replaced meanwhile: not ours to delete
            return False

    @requires(("", "configmaps", "get"))
    def config_map(self, namespace: str, name: str) -> dict[str, Any] | None:
        """ConfigMap `<name>-model` of ModelDeployment `name` as stored, or None."""
        return self.request(
            "GET", f"/api/v1/namespaces/{namespace}/configmaps/{configmap_name(name)}"
        )

    @requires(("", "configmaps", "get"))
    def peers_config_map(self, namespace: str, name: str) -> dict[str, Any] | None:
        """ConfigMap `<name>-peers` of ModelDeployment `name` as stored, or None."""
        path = f"/api/v1/namespaces/{namespace}/configmaps/{peers_configmap_name(name)}"
        return self.request("GET", path)

    @requires((API_GROUP, PLURAL, "get"))
    def model_deployment(self, namespace: str, name: str) -> dict[str, Any] | None:
        return self.request("GET", f"{MD_PATH}/namespaces/{namespace}/{PLURAL}/{name}")

    @requires((API_GROUP, f"{PLURAL}/status", "patch"))
    def patch_status(
        self,
        namespace: str,
        name: str,
        status: Mapping[str, Any],
        resource_version: str | None = None,
    ) -> dict[str, Any]:
        """JSON merge patch of the status subresource (never a replace); returns the
        object as written. With `resource_version`, the object must still be at that
        version (else ConflictError): a status planned from a stale read is never written."""
        path = f"{MD_PATH}/namespaces/{namespace}/{PLURAL}/{name}/status"
        body: dict[str, Any] = {"status": dict(status)}
        if resource_version is not None:
            body["metadata"] = {"resourceVersion": resource_version}
        written = self.request("PATCH", path, body, None, "application/merge-patch+json")
        if written is None:
            raise KubeError(404, f"ModelDeployment {namespace}/{name} is gone")
        return written

    @requires(("", "events", "create"))
    def create_event(self, namespace: str, record: Mapping[str, Any]) -> dict[str, Any]:
        created = self.request("POST", f"/api/v1/namespaces/{namespace}/events", dict(record))
        if created is None:
            raise KubeError(404, f"namespace {namespace} is gone")
        return created

    @requires(("", "events", "patch"))
    def patch_event(
        self, namespace: str, name: str, patch: Mapping[str, Any]
    ) -> dict[str, Any] | None:
        """Merge patch of Event `name` (a repeat: count and lastTimestamp); None if gone."""
        path = f"/api/v1/namespaces/{namespace}/events/{name}"
        return self.request("PATCH", path, dict(patch), None, "application/merge-patch+json")


def _path(manifest: Manifest) -> tuple[str, str]:
    """(API path, plural) of the object ``manifest`` describes."""
    kind = (manifest["apiVersion"], manifest["kind"])
    prefix, plural, _ = KINDS[kind] if kind in KINDS else CREATED[kind]
    meta = manifest["metadata"]
    return f"{prefix}/namespaces/{meta['namespace']}/{plural}/{meta['name']}", plural


def _held_by_other(live: Mapping[str, Any], manifest: Manifest, owner: Owner) -> str | None:
    where = f"{manifest['kind']} {owner.namespace}/{manifest['metadata']['name']}"
    if left_by_predecessor(live, owner):
        raise KubeError(
            409,
            f"{where} still belongs to an earlier ModelDeployment {owner.name} "
            "(being garbage collected); retrying",
        )
    who = holder(live, owner)
    return None if who is None else f"{where} already exists and is held by {who}"


def _api_message(data: bytes | None) -> str:
    try:
        return str(json.loads(data or b"{}").get("message") or data)
    except ValueError:
        return str(data)
