"""An in-memory stand-in for the API server behind `Kube.request`, for unit tests that
assert the exact API writes a sync makes.

It keeps objects by (plural, namespace, name) with resourceVersions and uids, and does
what the real server does with the operator's requests: GET (None for 404), server-side
apply (create or update; a `metadata.uid` precondition), JSON merge patch (of the
status subresource too; a `metadata.resourceVersion` precondition -> 409), POST (409 if
the name is taken) and PUT (resourceVersion precondition). Every write is recorded in
`writes` as (method, "<plural>/<name>[/status]", body).
"""

from __future__ import annotations

import copy
import itertools
from collections.abc import Callable
from typing import Any

from hotswap_operator.kube import ConflictError, Kube, KubeError

JSON = dict[str, Any]


def merge(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = merge(out.get(key), value)
    return out


def parse(path: str) -> tuple[str, str, str | None, str]:
    """(plural, namespace, name or None, subresource) of an API path."""
    parts = path.strip("/").split("/")
    at = parts.index("namespaces")
    rest = parts[at + 1 :]
    namespace, plural = rest[0], rest[1]
    name = rest[2] if len(rest) > 2 else None
    sub = rest[3] if len(rest) > 3 else ""
    return plural, namespace, name, sub


class FakeApi(Kube):
    def __init__(self) -> None:
        super().__init__(api=None)
        self.objects: dict[tuple[str, str, str], JSON] = {}
        self.writes: list[tuple[str, str, Any]] = []
        self.replicas: dict[tuple[str, str], JSON] = {}  # ModelDeployment -> pod -> report
        self.reads: list[str] = []
        self._versions = itertools.count(100)
        self._uids = itertools.count(1)
        self.refuse: dict[str, int] = {}  # plural -> HTTP status for writes of that kind
        # Called before each write with (method, what); it may write itself (a race).
        # It stays installed while it returns True.
        self.before_write: Callable[[str, str], bool] | None = None

    # ---- test helpers ----------------------------------------------------------------

    def put_object(self, plural: str, obj: JSON) -> JSON:
        """Store `obj` as if someone created it (uid and resourceVersion set)."""
        meta = obj.setdefault("metadata", {})
        meta.setdefault("uid", f"uid-{next(self._uids)}")
        meta["resourceVersion"] = str(next(self._versions))
        meta.setdefault("generation", 1)
        self.objects[(plural, meta["namespace"], meta["name"])] = obj
        return copy.deepcopy(obj)

    def obj(self, plural: str, namespace: str, name: str) -> JSON | None:
        found = self.objects.get((plural, namespace, name))
        return copy.deepcopy(found) if found is not None else None

    def patch_spec(self, namespace: str, name: str, spec: JSON) -> JSON:
        """A user's merge patch of a ModelDeployment's spec (generation + 1)."""
        md = self.objects[("modeldeployments", namespace, name)]
        md["spec"] = merge(md["spec"], spec)
        md["metadata"]["generation"] += 1
        md["metadata"]["resourceVersion"] = str(next(self._versions))
        return copy.deepcopy(md)

    def report(self, namespace: str, name: str, pods: JSON) -> None:
        """Runtime pods' reports: each pod merge-patches its own ModelReplica's status
        (the ModelDeployment does not change). `reports` is what the controller's cache
        of them would hold."""
        held = self.replicas.setdefault((namespace, name), {})
        for pod, entry in pods.items():
            held[pod] = merge(held.get(pod) or {}, entry)

    def reports(self, namespace: str, name: str) -> JSON:
        return copy.deepcopy(self.replicas.get((namespace, name), {}))

    def written(self, *methods: str) -> list[tuple[str, str]]:
        """(method, what) of each write, optionally only of some methods."""
        return [(m, what) for m, what, _ in self.writes if not methods or m in methods]

    # ---- the API -----------------------------------------------------------------------

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        query: list[tuple[str, str]] | None = None,
        content_type: str = "application/json",
    ) -> JSON | None:
        plural, namespace, name, sub = parse(path)
        if method == "GET":
            self.reads.append(f"{plural}/{name}")
            assert name is not None
            return self.obj(plural, namespace, name)
        name = name or body["metadata"]["name"]
        what = f"{plural}/{name}" + (f"/{sub}" if sub else "")
        hook = self.before_write
        if hook is not None:
            self.before_write = None
            if hook(method, what) and self.before_write is None:
                self.before_write = hook
        if plural in self.refuse:
            raise KubeError(self.refuse[plural], f"{method} {path}: refused by the test")
        self.writes.append((method, what, copy.deepcopy(body)))
        key = (plural, namespace, name)
        current = self.objects.get(key)
        if method == "POST":
            if current is not None:
                raise ConflictError(409, f"{what} already exists")
            return self.put_object(plural, copy.deepcopy(body))
        if method == "PUT":
            self._precondition(current, body, what)
            assert current is not None
            return self._store(key, {**copy.deepcopy(body), "metadata": current["metadata"]})
        if content_type == "application/apply-patch+yaml":
            return self._apply(key, current, body, what)
        if current is None:
            return None
        self._precondition(current, body, what)
        patch = {k: v for k, v in body.items() if k != "metadata"}
        if sub == "status":
            patch = {"status": patch.get("status")}
        return self._store(key, merge(current, patch))

    def _precondition(self, current: JSON | None, body: JSON, what: str) -> None:
        wanted = (body.get("metadata") or {}).get("resourceVersion")
        if current is not None and wanted and wanted != current["metadata"]["resourceVersion"]:
            raise ConflictError(409, f"{what}: the object has been modified")

    def _apply(
        self, key: tuple[str, str, str], current: JSON | None, body: JSON, what: str
    ) -> JSON:
        uid = (body.get("metadata") or {}).get("uid")
        if uid is not None and (current is None or current["metadata"]["uid"] != uid):
            raise ConflictError(409, f"{what}: uid precondition failed")
        if current is None:
            return self.put_object(key[0], copy.deepcopy(body))
        meta = {**current["metadata"], **{k: v for k, v in body["metadata"].items() if k != "uid"}}
        return self._store(key, {**current, **copy.deepcopy(body), "metadata": meta})

    def _store(self, key: tuple[str, str, str], new: JSON) -> JSON:
        old = self.objects[key]
        if {k: v for k, v in new.items() if k != "metadata"} != {
            k: v for k, v in old.items() if k != "metadata"
        } or new["metadata"] != old["metadata"]:
            new["metadata"] = {**new["metadata"], "resourceVersion": str(next(self._versions))}
        self.objects[key] = new
        return copy.deepcopy(new)
