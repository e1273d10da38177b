"""The plugin's connection and API calls, each declaring the RBAC permission it needs.

Connection settings follow kubectl: `--kubeconfig`, else `$KUBECONFIG` (a list of files
is merged), else `~/.kube/config`, else the in-cluster ServiceAccount; `--context`, else
the current context; `--namespace`, else the context's namespace, else `default`.
`PERMISSIONS` is everything the plugin may call; docs and a test grant a user exactly
these and run every subcommand.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import yaml

from hotswap_contract.redact import clip
from hotswap_contract.wire import (
    API_GROUP,
    API_VERSION,
    DEPLOYMENT_LABEL,
    KIND,
    PLURAL,
    REPLICA_PLURAL,
)
from hotswap_operator.kube import ConflictError, Kube, KubeError

Permission = tuple[str, str, str]  # (apiGroup, resource, verb)
PERMISSIONS: set[Permission] = set()
MANAGER = "kubectl-hotswap"  # the field manager of the plugin's writes

F = TypeVar("F", bound=Callable[..., Any])


def requires(*permissions: Permission) -> Callable[[F], F]:
    """Record the permissions a call needs; returns the function unchanged."""
    PERMISSIONS.update(permissions)
    return lambda fn: fn


class PluginError(RuntimeError):
    """What the user sees on stderr (exit code 1): what failed, on which object, the fix."""


class NotFoundError(PluginError):
    pass


class ConfigError(PluginError):
    """No usable kubeconfig or context."""


class TransientError(PluginError):
    """No answer, 429 or a 5xx: the same call may well succeed soon (`status --wait`
    calls again, with backoff, until its timeout)."""


TRANSIENT = {0, 429}  # and every 5xx: see `transient`


def transient(status: int) -> bool:
    """An HTTP status worth calling again for (0: no answer came back)."""
    return status in TRANSIENT or 500 <= status < 600


@dataclass(frozen=True)
class Session:
    """A connection to one cluster, and the namespace the command works in."""

    kube: Kube
    namespace: str

    def path(self, name: str) -> str:
        return f"/apis/{API_GROUP}/{API_VERSION}/namespaces/{self.namespace}/{PLURAL}/{name}"

    def where(self, name: str) -> str:
        return f"{KIND} {self.namespace}/{name}"


def connect(
    kubeconfig: str | None = None,
    context: str | None = None,
    namespace: str | None = None,
    timeout: float = 30,
) -> Session:
    """A Session from kubectl's settings (see the module docstring)."""
    from kubernetes import client, config
    from kubernetes.config.config_exception import ConfigException

    files = kubeconfig or os.environ.get("KUBECONFIG") or str(Path("~/.kube/config"))
    if kubeconfig or _any_exists(files):
        try:
            context = context or _current_context(files)
            api = config.new_client_from_config(  # type: ignore[no-untyped-call]
                config_file=files, context=context, persist_config=False
            )
            default = _context_namespace(config, files, context)
        except (ConfigException, OSError, ValueError, AttributeError, yaml.YAMLError) as exc:
            raise ConfigError(f"kubeconfig {files}: {clip(str(exc))}") from None
    elif context is None and os.environ.get("KUBERNETES_SERVICE_HOST"):
        configuration = client.Configuration()
        try:
            config.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
        except ConfigException as exc:
            raise ConfigError(f"in-cluster config: {exc}") from None
        api, default = client.ApiClient(configuration), _pod_namespace()
    else:
        raise ConfigError(
            f"no kubeconfig at {files}: pass --kubeconfig or set KUBECONFIG, as for kubectl"
        )
    return Session(Kube(api, MANAGER, timeout), namespace or default or "default")


def _any_exists(files: str) -> bool:
    return any(Path(f).expanduser().is_file() for f in files.split(os.pathsep) if f)


def _current_context(files: str) -> str | None:
    """kubectl's rule: the first file of the list that sets current-context wins (the
    kubernetes client would take the last)."""
    for name in files.split(os.pathsep):
        path = Path(name).expanduser()
        if name and path.is_file():
            current = (yaml.safe_load(path.read_text()) or {}).get("current-context")
            if current:
                return str(current)
    return None


def _context_namespace(config: Any, files: str, context: str | None) -> str | None:
    contexts, active = config.list_kube_config_contexts(config_file=files)
    chosen = next((c for c in contexts or () if c.get("name") == context), active)
    ns = ((chosen or {}).get("context") or {}).get("namespace")
    return str(ns) if ns else None


def _pod_namespace() -> str | None:
    path = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
    return path.read_text().strip() if path.is_file() else None


def _failed(session: Session, name: str, what: str, err: KubeError) -> PluginError:
    where = session.where(name)
    if err.status == 403:
        return PluginError(
            f"{what} {where}: forbidden; the plugin needs get and patch on "
            f"{PLURAL}.{API_GROUP} and list on {REPLICA_PLURAL}.{API_GROUP} in namespace "
            f"{session.namespace} (examples/kubectl-hotswap-rbac.yaml). "
            f"The API server said: {err}"
        )
    if err.status == 0:  # no answer: connection refused, TLS, timeout
        return TransientError(
            f"{what} {where}: cannot reach the API server at {_host(session)} (check "
            f"--context and --kubeconfig): {clip(str(err.__cause__ or err), 240)}"
        )
    error = TransientError if transient(err.status) else PluginError
    return error(f"{what} {where}: {err}")


def _host(session: Session) -> str:
    return str(getattr(getattr(session.kube.api, "configuration", None), "host", "?"))


@requires((API_GROUP, PLURAL, "get"))
def get_deployment(session: Session, name: str) -> dict[str, Any]:
    """The ModelDeployment as stored (spec and status)."""
    try:
        found = session.kube.request("GET", session.path(name))
    except KubeError as err:
        raise _failed(session, name, "reading", err) from None
    if found is None:
        raise NotFoundError(
            f"{session.where(name)} not found (kubectl get {PLURAL} -n {session.namespace} "
            "lists those there)"
        )
    return found


@requires((API_GROUP, PLURAL, "list"))
def list_deployments(session: Session, all_namespaces: bool = False) -> list[dict[str, Any]]:
    """The ModelDeployments of the session's namespace, or of every namespace."""
    scope = "" if all_namespaces else f"/namespaces/{session.namespace}"
    path = f"/apis/{API_GROUP}/{API_VERSION}{scope}/{PLURAL}"
    where = "in every namespace" if all_namespaces else f"in namespace {session.namespace}"
    try:
        found = session.kube.request("GET", path, None, [("limit", "5000")])
    except KubeError as err:
        if err.status == 403:
            raise PluginError(
                f"listing {PLURAL}.{API_GROUP} {where}: {_list_fix(all_namespaces)}. "
                f"The API server said: {err}"
            ) from None
        error = TransientError if transient(err.status) else PluginError
        raise error(f"listing {PLURAL}.{API_GROUP} {where} at {_host(session)}: {err}") from None
    if found is None:
        raise NotFoundError(
            f"the API server at {_host(session)} does not serve {PLURAL}.{API_GROUP}/"
            f"{API_VERSION}: install the CRDs (helm upgrade --install hotswap-crds "
            "charts/hotswap-crds; README.md, On your own cluster)"
        )
    items: list[dict[str, Any]] = found.get("items") or []
    return items


def _list_fix(all_namespaces: bool) -> str:
    if all_namespaces:
        return (
            f"forbidden; -A needs list on {PLURAL}.{API_GROUP} in every namespace (a "
            "ClusterRoleBinding to the ClusterRole of examples/kubectl-hotswap-rbac.yaml); "
            "without one, list a namespace you may read: -n NAMESPACE"
        )
    return (
        f"forbidden; `list` needs list on {PLURAL}.{API_GROUP} in that namespace (a "
        "RoleBinding to the ClusterRole of examples/kubectl-hotswap-rbac.yaml)"
    )


def server_versions(session: Session) -> dict[str, Any]:
    """What the cluster serves: Kubernetes' version and the API versions of hotswap.dev
    (None when the CRDs are not installed). Discovery: every user may read it, so it
    needs no permission of its own."""
    try:
        kubernetes = session.kube.request("GET", "/version") or {}
        group = session.kube.request("GET", f"/apis/{API_GROUP}")
    except KubeError as err:
        error = TransientError if transient(err.status) else PluginError
        raise error(
            f"reading the server's version at {_host(session)}: "
            f"{clip(str(err.__cause__ or err), 240)}"
        ) from None
    versions = [v.get("version") for v in (group or {}).get("versions") or ()]
    return {
        "kubernetes": kubernetes.get("gitVersion"),
        "apiGroup": API_GROUP,
        "servedVersions": versions if group is not None else None,
        "preferredVersion": ((group or {}).get("preferredVersion") or {}).get("version"),
    }


OPERATOR_SELECTOR = "app.kubernetes.io/name=hotswap-operator"  # the chart's labels
OPERATORS_FIX = f"kubectl get deployments -A -l {OPERATOR_SELECTOR} (with list on deployments)"


def operator_versions(session: Session) -> dict[str, Any]:
    """The operator Deployments the user may see, in every namespace or else in the
    session's: each one's version label, image and ready replicas. Optional, so not in
    PERMISSIONS: a user without list on Deployments gets `error`, not a failure."""
    found, scope = None, "every namespace"
    for path in (
        "/apis/apps/v1/deployments",
        f"/apis/apps/v1/namespaces/{session.namespace}/deployments",
    ):
        try:
            found = session.kube.request("GET", path, None, [("labelSelector", OPERATOR_SELECTOR)])
            break
        except KubeError as err:
            if err.status != 403:
                return {"error": f"listing the operator's Deployments: {clip(str(err), 240)}"}
            scope = f"namespace {session.namespace}"
    if found is None:
        return {
            "error": f"you may not list Deployments in {scope}; an admin can run {OPERATORS_FIX}"
        }
    return {"scope": scope, "deployments": [_operator(d) for d in found.get("items") or []]}


def _operator(deployment: Mapping[str, Any]) -> dict[str, Any]:
    meta, spec = deployment.get("metadata") or {}, deployment.get("spec") or {}
    containers = ((spec.get("template") or {}).get("spec") or {}).get("containers") or [{}]
    ready = (deployment.get("status") or {}).get("readyReplicas") or 0
    return {
        "namespace": meta.get("namespace"),
        "name": meta.get("name"),
        "version": (meta.get("labels") or {}).get("app.kubernetes.io/version"),
        "image": containers[0].get("image"),
        "ready": f"{ready}/{spec.get('replicas', 1)}",
    }


@requires((API_GROUP, REPLICA_PLURAL, "list"))
def list_replicas(session: Session, name: str) -> list[dict[str, Any]]:
    """The ModelReplicas (each runtime pod's own report) of ModelDeployment `name`."""
    path = f"/apis/{API_GROUP}/{API_VERSION}/namespaces/{session.namespace}/{REPLICA_PLURAL}"
    query = [("labelSelector", f"{DEPLOYMENT_LABEL}={name}"), ("limit", "5000")]
    try:
        found = session.kube.request("GET", path, None, query)
    except KubeError as err:
        raise _failed(session, name, "listing the pod reports (ModelReplicas) of", err) from None
    items: list[dict[str, Any]] = (found or {}).get("items") or []
    return items


class ChangedError(PluginError):
    """The object changed between our read and our write (HTTP 409)."""


@requires((API_GROUP, PLURAL, "patch"))
def patch_deployment(
    session: Session, name: str, patch: Mapping[str, Any], resource_version: str | None = None
) -> dict[str, Any]:
    """A JSON merge patch of the ModelDeployment; with `resource_version`, the object must
    still be at that version (else ChangedError: someone else's edit is never lost)."""
    body = dict(patch)
    if resource_version is not None:
        body["metadata"] = {**body.get("metadata", {}), "resourceVersion": resource_version}
    query = [("fieldManager", MANAGER)]
    try:
        written = session.kube.request(
            "PATCH", session.path(name), body, query, "application/merge-patch+json"
        )
    except ConflictError:
        raise ChangedError(
            f"{session.where(name)} changed after it was read (another edit came first); "
            "nothing was written: look at `kubectl hotswap history` and run the command again"
        ) from None
    except KubeError as err:
        raise _failed(session, name, "patching", err) from None
    if written is None:
        raise NotFoundError(f"{session.where(name)} is gone")
    return written
