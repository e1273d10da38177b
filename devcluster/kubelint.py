"""kube-linter's default checks, for the chart's manifests and the operator's objects.

kube-linter itself cannot be installed here: the Go module proxy refuses both its
module paths (golang.stackrox.io/kube-linter, github.com/stackrox/kube-linter: 403)
and no other registry ships it. So this module implements the 31 checks that
kube-linter v0.8.3 enables by default, under their names and with their semantics
(one function each, from kube-linter's docs/generated/checks.md and its templates),
and reads exclusions from `.kube-linter.yaml` in kube-linter's own format, so the same
file works with the real binary. Objects may opt out of one check with kube-linter's
annotation `ignore-check.kube-linter.io/<check>: <reason>`.

    python -m devcluster.kubelint FILE...   # lint YAML files, exit 1 on findings
"""

from __future__ import annotations

import re
import sys
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / ".kube-linter.yaml"
IGNORE_PREFIX = "ignore-check.kube-linter.io/"

Obj = dict[str, Any]
POD_TEMPLATE_KINDS = {"Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job"}
SELECTOR_KINDS = POD_TEMPLATE_KINDS | {"ReplicationController"}


@dataclass(frozen=True)
class Finding:
    check: str
    kind: str
    namespace: str
    name: str
    message: str

    def __str__(self) -> str:
        where = f"{self.namespace}/{self.name}" if self.namespace else self.name
        return f"{self.kind} {where}: {self.message} ({self.check})"


# -- object access --------------------------------------------------------------------


def meta(obj: Obj) -> Obj:
    value: Obj = obj.get("metadata") or {}
    return value


def pod_template(obj: Obj) -> Obj | None:
    kind = obj.get("kind")
    spec = obj.get("spec") or {}
    if kind in POD_TEMPLATE_KINDS | {"ReplicationController"}:
        template: Obj | None = spec.get("template")
        return template
    if kind == "CronJob":
        job: Obj = (spec.get("jobTemplate") or {}).get("spec") or {}
        return job.get("template")
    return None


def pod_spec(obj: Obj) -> Obj | None:
    if obj.get("kind") == "Pod":
        spec: Obj = obj.get("spec") or {}
        return spec
    template = pod_template(obj)
    return None if template is None else (template.get("spec") or {})


def containers(spec: Obj, init: bool = True) -> list[Obj]:
    found = list(spec.get("containers") or [])
    return found + list(spec.get("initContainers") or []) if init else found


def replicas(obj: Obj) -> int | None:
    if obj.get("kind") not in {"Deployment", "StatefulSet", "ReplicaSet", "ReplicationController"}:
        return None
    return int((obj.get("spec") or {}).get("replicas", 1))


def selects(selector: Obj | None, labels: Obj) -> bool:
    """A LabelSelector (matchLabels and matchExpressions) against a label set."""
    if not selector:
        return False
    if any(labels.get(k) != v for k, v in (selector.get("matchLabels") or {}).items()):
        return False
    for expr in selector.get("matchExpressions") or []:
        key, op, values = expr["key"], expr["operator"], expr.get("values") or []
        ok = {
            "In": key in labels and labels[key] in values,
            "NotIn": key not in labels or labels[key] not in values,
            "Exists": key in labels,
            "DoesNotExist": key not in labels,
        }[op]
        if not ok:
            return False
    return True


def is_zero(quantity: Any) -> bool:
    """An unset or zero Kubernetes quantity."""
    if quantity is None:
        return True
    number = re.match(r"^[+-]?([0-9]*\.?[0-9]+|[0-9]+\.)", str(quantity))
    return number is None or float(number.group(0)) == 0


Diagnose = Callable[[Obj, list[Obj]], Iterator[str]]


def per_container(check: Callable[[Obj], Iterator[str]], init: bool = True) -> Diagnose:
    def run(obj: Obj, _: list[Obj]) -> Iterator[str]:
        spec = pod_spec(obj)
        for container in containers(spec, init) if spec is not None else []:
            yield from check(container)

    return run


def per_pod(check: Callable[[Obj, Obj], Iterator[str]]) -> Diagnose:
    def run(obj: Obj, _: list[Obj]) -> Iterator[str]:
        spec = pod_spec(obj)
        if spec is not None:
            yield from check(obj, spec)

    return run


# -- the checks -----------------------------------------------------------------------


def dangling_service(obj: Obj, objects: list[Obj]) -> Iterator[str]:
    spec = obj.get("spec") or {}
    if obj.get("kind") != "Service" or spec.get("type") == "ExternalName":
        return
    selector = spec.get("selector") or {}
    if not selector:
        yield "service has no selector specified"
        return
    namespace = meta(obj).get("namespace")
    for other in objects:
        template = pod_template(other)
        if template is None or meta(other).get("namespace") != namespace:
            continue
        if selects({"matchLabels": selector}, (template.get("metadata") or {}).get("labels") or {}):
            return
    yield f"no pods found matching service labels ({selector})"


def deprecated_service_account_field(_: Obj, spec: Obj) -> Iterator[str]:
    account, name = spec.get("serviceAccount", ""), spec.get("serviceAccountName", "")
    if account and account != name:
        yield f"serviceAccount ({account}) is deprecated; use serviceAccountName"


def host_mounts(patterns: Iterable[str]) -> Callable[[Obj, Obj], Iterator[str]]:
    compiled = [re.compile(p) for p in patterns]

    def check(_: Obj, spec: Obj) -> Iterator[str]:
        for volume in spec.get("volumes") or []:
            path = (volume.get("hostPath") or {}).get("path")
            if path is None or not any(p.search(path) for p in compiled):
                continue
            for container in containers(spec):
                for mount in container.get("volumeMounts") or []:
                    if mount.get("name") == volume.get("name"):
                        where = container["name"]
                        yield f"host system directory {path!r} is mounted on container {where!r}"

    return check


def drop_net_raw_capability(container: Obj) -> Iterator[str]:
    caps = (container.get("securityContext") or {}).get("capabilities")
    if caps is None:
        return
    drop = [str(c) for c in caps.get("drop") or []]
    if not any(c in {"NET_RAW", "ALL", "all"} for c in drop):
        yield f"container {container['name']!r} does not drop NET_RAW (drop: {drop})"
    if any(str(c) == "NET_RAW" for c in caps.get("add") or []):
        yield f"container {container['name']!r} adds NET_RAW"


def duplicate_env_var(container: Obj) -> Iterator[str]:
    seen: dict[str, int] = {}
    for env in container.get("env") or []:
        seen[env["name"]] = seen.get(env["name"], 0) + 1
        if seen[env["name"]] == 2:
            yield f"duplicate environment variable {env['name']} in container {container['name']!r}"


def env_var_secret(container: Obj) -> Iterator[str]:
    for env in container.get("env") or []:
        if re.search(r"(?i)secret", env["name"]) and env.get("value"):
            yield f"environment variable {env['name']} in container {container['name']!r} found"


def host_namespace(field: str) -> Callable[[Obj, Obj], Iterator[str]]:
    def check(_: Obj, spec: Obj) -> Iterator[str]:
        if spec.get(field):
            yield f"resource shares host's {field.removeprefix('host')} namespace ({field}: true)"

    return check


def invalid_target_ports(obj: Obj, _: list[Obj]) -> Iterator[str]:
    name_ok = re.compile(r"^(?=.*[a-z])[a-z0-9]([a-z0-9-]*[a-z0-9])?$")
    spec = pod_spec(obj)
    for container in containers(spec) if spec is not None else []:
        for port in container.get("ports") or []:
            name = port.get("name", "")
            if name and (len(name) > 15 or not name_ok.match(name) or "--" in name):
                where = container["name"]
                yield f"port name {name!r} in container {where!r} is not a valid port name"
    if obj.get("kind") == "Service":
        for port in (obj.get("spec") or {}).get("ports") or []:
            target = port.get("targetPort", 0)
            if isinstance(target, int):
                if target != 0 and not 1 <= target <= 65535:
                    yield f"port targetPort {target} is not between 1 and 65535"
            elif len(target) > 15 or not name_ok.match(target) or "--" in target:
                yield f"port targetPort {target!r} is not a valid port name"


def job_ttl_seconds_after_finished(obj: Obj, _: list[Obj]) -> Iterator[str]:
    spec = obj.get("spec") or {}
    if obj.get("kind") == "Job" and "ttlSecondsAfterFinished" not in spec:
        yield "standalone Job does not specify ttlSecondsAfterFinished"
    job = (
        ((spec.get("jobTemplate") or {}).get("spec") or {}) if obj.get("kind") == "CronJob" else {}
    )
    if "ttlSecondsAfterFinished" in job:
        yield "managed Job specifies ttlSecondsAfterFinished"


LATEST_TAG = [re.compile(p) for p in (r".*:(latest)$", r"^[^:]*$", r"^(.*/[^:]+)$")]


def latest_tag(container: Obj) -> Iterator[str]:
    image = container.get("image", "")
    if any(p.search(image) for p in LATEST_TAG):
        yield f"container {container['name']!r} uses image {image!r} without a pinned tag"


def probe_port(field: str) -> Callable[[Obj], Iterator[str]]:
    def check(container: Obj) -> Iterator[str]:
        probe = container.get(field)
        if not probe:
            return
        exposed: set[int | str] = set()
        for port in container.get("ports") or []:
            if port.get("protocol", "TCP") == "TCP":
                exposed |= {port["containerPort"], port.get("name", "")}
        for handler in ("httpGet", "tcpSocket", "grpc"):
            if handler in probe and probe[handler]["port"] not in exposed:
                port = probe[handler]["port"]
                yield f"container {container['name']!r} does not expose port {port} for {handler}"

    return check


def mismatching_selector(obj: Obj, _: list[Obj]) -> Iterator[str]:
    if obj.get("kind") not in SELECTOR_KINDS:
        return
    selector = (obj.get("spec") or {}).get("selector")
    if not selector or not (selector.get("matchLabels") or selector.get("matchExpressions")):
        if obj.get("kind") != "Job":
            yield "object has no selector specified"
        return
    template = pod_template(obj) or {}
    labels = (template.get("metadata") or {}).get("labels") or {}
    if not selects(selector, labels):
        yield f"labels in pod spec ({labels}) do not match labels in selector ({selector})"


def no_anti_affinity(obj: Obj, _: list[Obj]) -> Iterator[str]:
    count, template = replicas(obj), pod_template(obj)
    if count is None or count < 2 or template is None:
        return
    anti = ((template.get("spec") or {}).get("affinity") or {}).get("podAntiAffinity") or {}
    terms = [
        t["podAffinityTerm"]
        for t in anti.get("preferredDuringSchedulingIgnoredDuringExecution") or []
    ]
    terms += anti.get("requiredDuringSchedulingIgnoredDuringExecution") or []
    labels = (template.get("metadata") or {}).get("labels") or {}
    namespace = meta(obj).get("namespace")
    for term in terms:
        if term.get("namespaces") and namespace not in term["namespaces"]:
            continue
        if term.get("topologyKey") == "kubernetes.io/hostname" and selects(
            term.get("labelSelector"), labels
        ):
            return
    yield (
        f"object has {count} replicas but does not specify inter pod anti-affinity "
        "that spreads them over nodes"
    )


def no_extensions_v1beta(obj: Obj, _: list[Obj]) -> Iterator[str]:
    if re.match(r"^extensions/v1beta.+$", str(obj.get("apiVersion", ""))):
        yield f"disallowed API object found: {obj.get('apiVersion')} {obj.get('kind')}"


def no_read_only_root_fs(container: Obj) -> Iterator[str]:
    if not (container.get("securityContext") or {}).get("readOnlyRootFilesystem"):
        yield f"container {container['name']!r} does not have a read-only root file system"


def non_existent_service_account(obj: Obj, objects: list[Obj]) -> Iterator[str]:
    spec = pod_spec(obj)
    if spec is None:
        return
    account = spec.get("serviceAccountName") or spec.get("serviceAccount") or ""
    if account in {"", "default"}:
        return
    namespace = meta(obj).get("namespace")
    if not any(
        o.get("kind") == "ServiceAccount"
        and meta(o).get("name") == account
        and meta(o).get("namespace") == namespace
        for o in objects
    ):
        yield f"serviceAccount {account!r} not found"


def pdbs(obj: Obj) -> Obj | None:
    if obj.get("kind") != "PodDisruptionBudget":
        return None
    spec: Obj = obj.get("spec") or {}
    return spec


def percent(value: int | str) -> tuple[int, bool]:
    text = str(value)
    return (int(text[:-1]), True) if text.endswith("%") else (int(text), False)


def pdb_max_unavailable(obj: Obj, _: list[Obj]) -> Iterator[str]:
    spec = pdbs(obj)
    if spec is not None and "maxUnavailable" in spec and percent(spec["maxUnavailable"])[0] == 0:
        yield "maxUnavailable is set to 0"


def pdb_min_available(obj: Obj, objects: list[Obj]) -> Iterator[str]:
    spec = pdbs(obj)
    if spec is None or "minAvailable" not in spec:
        return
    value, is_percent = percent(spec["minAvailable"])
    if is_percent and value == 100:
        yield "PDB has minimum available replicas set to 100 percent of replicas"
        return
    for other in objects:
        count, template = replicas(other), pod_template(other)
        if (
            count is None
            or template is None
            or meta(other).get("namespace") != meta(obj).get("namespace")
        ):
            continue
        if not selects(spec.get("selector"), (template.get("metadata") or {}).get("labels") or {}):
            continue
        least = -(-count * value // 100) if is_percent else value
        if count <= least:
            name = meta(other).get("name")
            yield f"replicas of {name} ({count}) are at most the PDB's minAvailable"


def pdb_unhealthy_pod_eviction_policy(obj: Obj, _: list[Obj]) -> Iterator[str]:
    spec = pdbs(obj)
    if spec is not None and "unhealthyPodEvictionPolicy" not in spec:
        yield "unhealthyPodEvictionPolicy is not explicitly set"


def privilege_escalation_container(container: Obj) -> Iterator[str]:
    context = container.get("securityContext") or {}
    if context.get("allowPrivilegeEscalation") is True:
        yield f"container {container['name']!r} has allowPrivilegeEscalation set to true"
    elif context.get("privileged") is True:
        yield f"container {container['name']!r} is privileged hence allows privilege escalation"
    elif "SYS_ADMIN" in ((context.get("capabilities") or {}).get("add") or []):
        yield f"container {container['name']!r} adds SYS_ADMIN hence allows privilege escalation"


def privileged_container(container: Obj) -> Iterator[str]:
    if (container.get("securityContext") or {}).get("privileged") is True:
        yield f"container {container['name']!r} is privileged"


def run_as_non_root(_: Obj, spec: Obj) -> Iterator[str]:
    pod = spec.get("securityContext") or {}
    for container in containers(spec):
        own = container.get("securityContext") or {}

        def effective(field: str, own: Obj = own) -> Any:
            return own[field] if field in own else pod.get(field)

        name = container["name"]
        if effective("runAsGroup") == 0:
            yield f"container {name!r} is set to runAsGroup 0"
        user = effective("runAsUser")
        if user is not None and user > 0:
            continue
        if effective("runAsNonRoot"):
            if user == 0:
                yield f"container {name!r} is set to runAsNonRoot, but runAsUser set to 0"
            continue
        yield f"container {name!r} is not set to runAsNonRoot"


def ssh_port(container: Obj) -> Iterator[str]:
    for port in container.get("ports") or []:
        if port.get("containerPort") == 22 and port.get("protocol", "TCP") == "TCP":
            yield f"port 22 and protocol TCP in container {container['name']!r} found"


UNSAFE_SYSCTLS = ("kernel.msg", "kernel.sem", "kernel.shm", "fs.mqueue.", "net.")


def unsafe_sysctls(_: Obj, spec: Obj) -> Iterator[str]:
    for sysctl in (spec.get("securityContext") or {}).get("sysctls") or []:
        if sysctl["name"].startswith(UNSAFE_SYSCTLS):
            yield f"resource specifies unsafe sysctl {sysctl['name']!r}"


def unset_requirement(resource: str) -> Callable[[Obj], Iterator[str]]:
    def check(container: Obj) -> Iterator[str]:
        res = container.get("resources") or {}
        for kind, key in (("request", "requests"), ("limit", "limits")):
            if is_zero((res.get(key) or {}).get(resource)):
                yield f"container {container['name']!r} has {resource} {kind} 0"

    return check


CHECKS: dict[str, Diagnose] = {
    "dangling-service": dangling_service,
    "deprecated-service-account-field": per_pod(deprecated_service_account_field),
    "docker-sock": per_pod(host_mounts([r"docker.sock$"])),
    "drop-net-raw-capability": per_container(drop_net_raw_capability),
    "duplicate-env-var": per_container(duplicate_env_var),
    "env-var-secret": per_container(env_var_secret),
    "host-ipc": per_pod(host_namespace("hostIPC")),
    "host-network": per_pod(host_namespace("hostNetwork")),
    "host-pid": per_pod(host_namespace("hostPID")),
    "invalid-target-ports": invalid_target_ports,
    "job-ttl-seconds-after-finished": job_ttl_seconds_after_finished,
    "latest-tag": per_container(latest_tag),
    "liveness-port": per_container(probe_port("livenessProbe"), init=False),
    "mismatching-selector": mismatching_selector,
    "no-anti-affinity": no_anti_affinity,
    "no-extensions-v1beta": no_extensions_v1beta,
    "no-read-only-root-fs": per_container(no_read_only_root_fs),
    "non-existent-service-account": non_existent_service_account,
    "pdb-max-unavailable": pdb_max_unavailable,
    "pdb-min-available": pdb_min_available,
    "pdb-unhealthy-pod-eviction-policy": pdb_unhealthy_pod_eviction_policy,
    "privilege-escalation-container": per_container(privilege_escalation_container),
    "privileged-container": per_container(privileged_container),
    "readiness-port": per_container(probe_port("readinessProbe"), init=False),
    "run-as-non-root": per_pod(run_as_non_root),
    "sensitive-host-mounts": per_pod(
        host_mounts(
            [r"^/$", r"^/boot$", r"^/dev$", r"^/etc$", r"^/lib$", r"^/proc$", r"^/sys$", r"^/usr$"]
        )
    ),
    "ssh-port": per_container(ssh_port),
    "startup-port": per_container(probe_port("startupProbe"), init=False),
    "unsafe-sysctls": per_pod(unsafe_sysctls),
    "unset-cpu-requirements": per_container(unset_requirement("cpu")),
    "unset-memory-requirements": per_container(unset_requirement("memory")),
}


def excluded(config: Path = CONFIG) -> set[str]:
    """The checks `.kube-linter.yaml` excludes (kube-linter's `checks.exclude`)."""
    data = yaml.safe_load(config.read_text()) or {}
    return set((data.get("checks") or {}).get("exclude") or [])


def lint(objects: list[Obj], exclude: Iterable[str] | None = None) -> list[Finding]:
    """Every finding of the default checks not excluded, in object order."""
    skip = excluded() if exclude is None else set(exclude)
    findings = []
    for obj in objects:
        annotations = meta(obj).get("annotations") or {}
        for name, check in CHECKS.items():
            if name in skip or f"{IGNORE_PREFIX}{name}" in annotations:
                continue
            findings += [
                Finding(
                    name,
                    obj.get("kind", ""),
                    meta(obj).get("namespace", ""),
                    meta(obj).get("name", ""),
                    m,
                )
                for m in check(obj, objects)
            ]
    return findings


def main(argv: list[str] | None = None) -> int:
    paths = sys.argv[1:] if argv is None else argv
    objects = [d for p in paths for d in yaml.safe_load_all(Path(p).read_text()) if d]
    findings = lint(objects)
    for finding in findings:
        print(finding)
    print(
        f"{len(objects)} objects, {len(CHECKS) - len(excluded())} checks, {len(findings)} findings"
    )
    return 1 if findings else 0


if __name__ == "__main__":
    sys.exit(main())
