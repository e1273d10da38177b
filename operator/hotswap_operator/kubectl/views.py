"""What `status`, `history` and `list` show (pure): one document, printed as JSON, YAML or text.

The document is what `-o json|yaml` prints; the text is a rendering of it. Checkpoint
URIs are always shown through `redact.redact_uri` (no userinfo, query or fragment: a
presigned URL's signature never reaches a terminal or a log), and every message is one
clipped line.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

from hotswap_contract.redact import clip, redact_uri
from hotswap_contract.wire import KIND, SWAP_PHASES, PodReport, PodState, short_sha
from hotswap_operator.canary import cause
from hotswap_operator.reasons import ConditionType, Phase
from hotswap_operator.status import CheckResult, ModelDeploymentStatus, RevisionRecord

JSON = dict[str, Any]


# ---- documents ----------------------------------------------------------------------


def status_document(
    deployment: Mapping[str, Any], reports: Mapping[str, PodReport | str], digest: str | None
) -> JSON:
    """Phase, conditions, revisions (latest, stable, served), rollout state, each pod."""
    meta, spec = deployment.get("metadata") or {}, deployment.get("spec") or {}
    status = ModelDeploymentStatus.from_raw(deployment.get("status"))
    served = Counter(r.revision for r in reports.values() if isinstance(r, PodReport))
    return {
        "name": meta.get("name"),
        "namespace": meta.get("namespace"),
        "generation": meta.get("generation"),
        "observedGeneration": status.observed_generation,
        "phase": status.phase.value if status.phase else None,
        "error": status.error,
        "url": status.url,
        # what holds the rollout back: a failing pod, or the scheduler's or kubelet's
        # reason a pod does not run (pods without a report have no row below)
        "message": clip(status.message, 1024) if status.message else None,
        "strategy": (spec.get("rollout") or {}).get("strategy", "AllAtOnce"),
        "paused": bool((spec.get("rollout") or {}).get("paused", False)),
        "replicas": {
            "desired": spec.get("replicas", 1),
            "ready": status.ready_replicas,
            "updated": status.updated_replicas,
        },
        "revisions": {
            "latest": latest_revision(status),
            "stable": status.stable.revision if status.stable else None,
            "candidate": status.candidate.revision if status.candidate else None,
            "served": {str(k): v for k, v in sorted(served.items(), key=_revision_key)},
            "specApplied": _spec_revision(status, digest),
        },
        "stable": _record(status.stable),
        "candidate": _record(status.candidate),
        "canary": _canary(status),
        "rollback": _rollback(status),
        "analysis": (
            status.analysis.model_dump(mode="json", by_alias=True, exclude_none=True)
            if status.analysis is not None
            else None
        ),
        "conditions": [
            {
                "type": c.type.value,
                "status": c.status,
                "reason": c.reason,
                "message": clip(c.message),
                "lastTransitionTime": c.last_transition_time,
            }
            for c in status.conditions
        ],
        "pods": [_pod(name, report) for name, report in reports.items()],
    }


def history_document(
    deployment: Mapping[str, Any],
    reports: Mapping[str, PodReport | str],
    digest: str | None,
) -> JSON:
    """Each revision of status.history (oldest first) and what became of it."""
    meta = deployment.get("metadata") or {}
    status = ModelDeploymentStatus.from_raw(deployment.get("status"))
    counts = _pods_on(reports)
    history = list(status.history or ())
    rows = []
    for i, ref in enumerate(history):
        earlier = [h.revision for h in history[:i] if ref.digest and h.digest == ref.digest]
        rows.append(
            {
                **(_record(ref) or {}),
                "outcome": outcome(status, ref, counts),
                "sameContentAs": earlier[-1] if earlier else None,
                "inSpec": bool(digest) and ref.digest == digest,
                "checks": _judged(status, ref),
            }
        )
    return {"name": meta.get("name"), "namespace": meta.get("namespace"), "revisions": rows}


def list_document(deployments: Sequence[Mapping[str, Any]]) -> JSON:
    """One row per ModelDeployment (namespace, then name): the columns of `kubectl get
    modeldeployments -o wide`, read from the status the operator wrote."""
    rows = []
    for md in deployments:
        meta, status = md.get("metadata") or {}, md.get("status") or {}
        history = status.get("history") or [{}]
        rows.append(
            {
                "namespace": meta.get("namespace"),
                "name": meta.get("name"),
                "serving": status.get("serving") or None,
                "latest": history[-1].get("revision"),
                "updated": status.get("updated"),
                "ready": status.get("ready"),
                "phase": status.get("phase"),
                "checkpoint": status.get("checkpoint"),
            }
        )
    rows.sort(key=lambda r: (str(r["namespace"]), str(r["name"])))
    return {"items": rows}


def list_text(doc: Mapping[str, Any], namespace: str | None) -> str:
    """The table of one namespace, or of all (namespace None: a NAMESPACE column)."""
    if not doc["items"]:
        return f"No {KIND}s found " + (f"in namespace {namespace}." if namespace else "at all.")
    keys = ["name", "serving", "latest", "updated", "ready", "phase", "checkpoint"]
    keys = keys if namespace else ["namespace", *keys]
    rows = [[_n(item[k]) for k in keys] for item in doc["items"]]
    return "\n".join(table([k.upper() for k in keys], rows))


def version_text(doc: Mapping[str, Any]) -> str:
    """`version`: the plugin's, then (without --client) what the cluster serves."""
    lines = [f"Client:        {doc['client']['plugin']} {doc['client']['version']}"]
    server = doc.get("server")
    if server is not None:
        served = server["servedVersions"]
        group = (
            f"{server['apiGroup']} {', '.join(served)} (preferred {server['preferredVersion']})"
            if served
            else f"{server['apiGroup']} not served: the CRDs are not installed "
            "(helm upgrade --install hotswap-crds charts/hotswap-crds)"
        )
        lines += [f"Kubernetes:    {_n(server['kubernetes'])}", f"API group:     {group}"]
    operator = doc.get("operator")
    if operator is not None:
        lines += _operator_lines(operator)
    return "\n".join(lines)


def _operator_lines(operator: Mapping[str, Any]) -> list[str]:
    """The operator Deployments found, or why none could be read."""
    if "error" in operator:
        return [f"Operator:      unknown: {operator['error']}"]
    if not operator["deployments"]:
        install = "helm upgrade --install hotswap charts/hotswap"
        return [f"Operator:      none found in {operator['scope']} ({install})"]
    return [
        f"Operator:      {d['version'] or '?'} ({d['namespace']}/{d['name']}, "
        f"image {d['image']}, {d['ready']} ready)"
        for d in operator["deployments"]
    ]


def verdict(deployment: Mapping[str, Any]) -> tuple[bool, str | None]:
    """(settled, problem): settled once the operator has taken the current spec and the
    phase is Ready (no problem) or Degraded, Failed or RolledBack (the problem, with the
    condition's message)."""
    meta = deployment.get("metadata") or {}
    status = ModelDeploymentStatus.from_raw(deployment.get("status"))
    if status.observed_generation != meta.get("generation") or status.phase is None:
        return False, None
    if status.phase is Phase.READY:
        return True, None
    if status.phase not in (Phase.DEGRADED, Phase.FAILED, Phase.ROLLED_BACK):
        return False, None
    order = (ConditionType.DEGRADED, ConditionType.PROGRESSING, ConditionType.READY)
    found = [status.condition(kind) for kind in order]
    why = status.error or next((c.message for c in found if c is not None and c.message), "")
    where = f"{KIND} {meta.get('namespace')}/{meta.get('name')}"
    return True, f"{where} is {status.phase.value}: {clip(why) or 'no reason given'}"


def latest_revision(status: ModelDeploymentStatus) -> int | None:
    refs = [status.stable, status.candidate, *(status.history or ())]
    return max((r.revision for r in refs if r is not None), default=None)


def _pods_on(reports: Mapping[str, PodReport | str]) -> Counter[tuple[str, int, str]]:
    """(serving|failed, revision, sha256) -> pods, from the pods' reports."""
    counts: Counter[tuple[str, int, str]] = Counter()
    for r in reports.values():
        if not isinstance(r, PodReport):
            continue
        if r.state is PodState.SERVING and r.revision is not None:
            counts["serving", r.revision, r.sha256 or ""] += 1
        if r.state is PodState.FAILED and r.target_revision is not None:
            counts["failed", r.target_revision, r.target_sha256 or ""] += 1
    return counts


def _judged(status: ModelDeploymentStatus, ref: RevisionRecord) -> list[JSON]:
    """The checks of the last bake window judged for revision `ref` (if status keeps it)."""
    if status.rollback is not None and status.rollback.key == ref.key:
        return _checks(status.rollback.checks)
    running = status.candidate is not None and status.candidate.key == ref.key
    return _checks(status.canary.checks) if running and status.canary is not None else []


def outcome(
    status: ModelDeploymentStatus,
    ref: RevisionRecord,
    counts: Counter[tuple[str, int, str]] | None = None,
) -> str:
    """What became of revision `ref`, in a few words (with how many pods serve or failed
    it, for the revisions pods are meant to serve)."""
    state, candidate, rollback = status.canary, status.candidate, status.rollback
    pods = _pods_note(ref, counts or Counter())
    if candidate is not None and candidate.key == ref.key and state is not None:
        where = f"canary, step {state.step} of {len(state.steps)}{pods}"
        if state.halted:
            return f"halted at {where}: {clip(state.halted, 160)}"
        if state.bake_started_at and not state.paused:
            where += f", baking since {state.bake_started_at}"
        return f"{where}, paused" if state.paused else where
    if status.stable is not None and status.stable.key == ref.key:
        return f"stable{pods}"
    if rollback is not None and rollback.key == ref.key:
        return (
            f"rolled back to {rollback.stable}: {clip(cause(rollback.pod, rollback.reason), 160)}"
        )
    return "superseded"


def _pods_note(ref: RevisionRecord, counts: Counter[tuple[str, int, str]]) -> str:
    serving = counts["serving", ref.revision, ref.sha256]
    failed = sum(
        n for (kind, rev, _), n in counts.items() if kind == "failed" and rev == ref.revision
    )
    note = f", {serving} pods serve it" if serving != 1 else ", 1 pod serves it"
    return note + (f", {failed} failed it" if failed else "")


def _revision_key(item: tuple[int | None, int]) -> int:
    return -1 if item[0] is None else item[0]


def _spec_revision(status: ModelDeploymentStatus, digest: str | None) -> int | None:
    """The newest revision with the spec's content (None: the operator has not taken it)."""
    hits = [h.revision for h in status.history or () if digest and h.digest == digest]
    return hits[-1] if hits else None


def _record(ref: RevisionRecord | None) -> JSON | None:
    if ref is None:
        return None
    return {
        "revision": ref.revision,
        "uri": redact_uri(ref.uri),
        "sha256": ref.sha256,
        "createdAt": ref.created_at,
    }


def _canary(status: ModelDeploymentStatus) -> JSON | None:
    state = status.canary
    if state is None or status.candidate is None:
        return None
    return {
        "revision": state.revision,
        "step": state.step,
        "steps": list(state.steps),
        "pods": list(status.candidate_pods or ()),
        "paused": state.paused,
        "halted": clip(state.halted) or None,
        "stepStartedAt": state.step_started_at,
        "bakeStartedAt": state.bake_started_at or None,
        "windows": state.windows,
        "checkedStep": state.checked_step or None,
        "checks": _checks(state.checks),
    }


def _checks(results: Sequence[CheckResult]) -> list[JSON]:
    return [r.model_dump(mode="json", by_alias=True, exclude_none=True) for r in results]


def _rollback(status: ModelDeploymentStatus) -> JSON | None:
    rb = status.rollback
    if rb is None:
        return None
    return {
        "revision": rb.revision,
        "to": rb.stable,
        "pod": rb.pod,
        "reason": clip(rb.reason),
        "rolledBackAt": rb.rolled_back_at,
        "checks": _checks(rb.checks),
    }


def _pod(name: str, report: PodReport | str) -> JSON:
    if isinstance(report, str):
        return {"name": name, "state": "Unreadable", "message": clip(report)}
    return {
        "name": name,
        "revision": report.revision,
        "sha256": report.sha256,
        "state": report.state.value,
        "targetRevision": report.target_revision,
        "loadedAt": report.loaded_at,
        "device": report.device,
        "swapSeconds": dict(report.swap_seconds),
        "message": clip(report.message),
    }


# ---- text ---------------------------------------------------------------------------


def status_text(doc: Mapping[str, Any]) -> str:
    revs, reps = doc["revisions"], doc["replicas"]
    served = ", ".join(
        f"{rev} ({n} pod{'s' if n != 1 else ''})" for rev, n in revs["served"].items()
    )
    lines = [
        f"Name:          {doc['name']}",
        f"Namespace:     {doc['namespace']}",
        f"Phase:         {doc['phase'] or 'Unknown'}"
        + (f" ({doc['error']})" if doc.get("error") else ""),
        f"Strategy:      {doc['strategy']}" + (" (paused)" if doc["paused"] else ""),
        f"Replicas:      {reps['desired']} desired, {_n(reps['ready'])} ready, "
        f"{_n(reps['updated'])} serving the stable revision",
        f"Revision:      latest {_n(revs['latest'])}, stable {_n(revs['stable'])}; "
        f"pods serve {served or 'nothing yet'}",
    ]
    if doc["generation"] != doc["observedGeneration"]:
        lines.append(
            f"               the operator has not seen the latest spec yet (generation "
            f"{doc['generation']}, observed {_n(doc['observedGeneration'])})"
        )
    if stable := doc["stable"]:
        lines.append(f"Checkpoint:    {stable['uri']} (sha256 {short_sha(stable['sha256'])})")
    if doc.get("url"):
        lines.append(f"URL:           {doc['url']}")
    if doc.get("message"):
        lines.append(f"Held back by:  {doc['message']}")
    if canary := doc["canary"]:
        state = " (paused)" if canary["paused"] else ""
        state = f" (halted: {canary['halted']})" if canary["halted"] else state
        lines.append(
            f"Canary:        revision {canary['revision']} at step {canary['step']} of "
            f"{len(canary['steps'])}, on {', '.join(canary['pods']) or 'no pod yet'}{state}"
        )
        if canary.get("bakeStartedAt"):
            lines.append(f"Baking:        since {canary['bakeStartedAt']}")
        lines += _check_lines(canary.get("checks"), canary.get("checkedStep"))
    if rb := doc["rollback"]:
        lines.append(
            f"Rolled back:   revision {rb['revision']} to {rb['to']}: "
            f"{cause(rb['pod'], rb['reason'])}"
        )
        lines += _check_lines(rb.get("checks"), None)
    lines += _analysis(doc.get("analysis"))
    lines += ["Conditions:", *_indent(_conditions(doc["conditions"]))]
    lines += ["Pods:", *_indent(_pods(doc["pods"]))]
    return "\n".join(lines)


def _check_lines(found: Sequence[Mapping[str, Any]] | None, step: int | None) -> list[str]:
    """The last judged bake window's checks, a line each."""
    where = f" (step {step})" if step else ""
    return [f"Check{where}:".ljust(15) + f"{c['result']}: {c['message']}" for c in found or ()]


def _analysis(found: Mapping[str, Any] | None) -> list[str]:
    """The worst figures judging the newest revision (status.analysis), a line each."""
    if not found:
        return []
    lines = []
    if e := found.get("evaluation"):
        serving = e.get("servingAccuracy")
        against = (
            f" (serving revision {e.get('servingRevision')}: {serving:.4f})"
            if serving is not None
            else ""
        )
        verdict = "passed" if e["passed"] else "refused"
        lines.append(
            f"Evaluation:    revision {e['revision']} {verdict}: accuracy {e['accuracy']:.4f} on "
            f"{e['samples']} samples{against}, worst on pod {found.get('evaluationPod')}"
        )
    if sh := found.get("shadow"):
        lines.append(
            f"Shadow:        revision {sh['revision']} {sh['decision']}: "
            f"{sh.get('disagreements', 0)} of {sh.get('samples', 0)} samples disagree by "
            f"{sh['metric']} ({sh.get('skipped', 0)} skipped), "
            f"worst on pod {found.get('shadowPod')}"
        )
    return lines


def history_text(doc: Mapping[str, Any]) -> str:
    header = ("REVISION", "CREATED", "SHA256", "CHECKPOINT", "OUTCOME")
    rows = []
    for r in doc["revisions"]:
        same = f" (content of {r['sameContentAs']})" if r["sameContentAs"] else ""
        rows.append(
            (
                str(r["revision"]),
                r["createdAt"] or "-",
                short_sha(r["sha256"]),
                r["uri"],
                r["outcome"] + same,
            )
        )
    if not rows:
        return f"{doc['name']}: no revisions yet (the operator has not taken the spec)"
    checks = [
        f"revision {r['revision']} {c['result']}: {c['message']}"
        for r in doc["revisions"]
        for c in r.get("checks") or ()
    ]
    return "\n".join([*table(header, rows), *(["Checks:", *_indent(checks)] if checks else [])])


def _conditions(conditions: Sequence[Mapping[str, Any]]) -> list[str]:
    if not conditions:
        return ["none yet"]
    rows = [(c["type"], c["status"], c["reason"], c["message"]) for c in conditions]
    return table(("TYPE", "STATUS", "REASON", "MESSAGE"), rows)


def _pods(pods: Sequence[Mapping[str, Any]]) -> list[str]:
    if not pods:
        return ["no pod has reported yet"]
    header = (
        "NAME",
        "REVISION",
        "SHA256",
        "STATE",
        *(p.upper() for p in SWAP_PHASES),
        "LAST FAILURE",
    )
    rows = []
    for p in pods:
        seconds = p.get("swapSeconds") or {}
        rows.append(
            (
                p["name"],
                _n(p.get("revision")),
                short_sha(p.get("sha256") or "") or "-",
                _state(p),
                *(_seconds(seconds[k]) if k in seconds else "-" for k in SWAP_PHASES),
                (p.get("message") or "-") if p["state"] in ("Failed", "Unreadable") else "-",
            )
        )
    return table(header, rows)


def _seconds(value: float) -> str:
    """A phase's duration: 0.4ms, 25ms, 1.25s."""
    if value >= 1:
        return f"{value:.2f}s"
    ms = value * 1000
    return f"{ms:.1f}ms" if ms < 10 else f"{ms:.0f}ms"


def _state(pod: Mapping[str, Any]) -> str:
    """The state, with the revision a Loading pod takes or a Failed pod failed."""
    target = pod.get("targetRevision")
    if target is None or pod["state"] not in ("Loading", "Failed"):
        return str(pod["state"])
    return f"Loading -> {target}" if pod["state"] == "Loading" else f"Failed on {target}"


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    """Columns separated by three spaces, as kubectl prints them; the last one ragged."""
    widths = [max(len(r[i]) for r in (header, *rows)) for i in range(len(header) - 1)]
    return [
        "   ".join([*(c.ljust(w) for c, w in zip(r, widths, strict=False)), r[-1]]).rstrip()
        for r in (header, *rows)
    ]


def _indent(lines: Sequence[str]) -> list[str]:
    return [f"  {line}" for line in lines]


def _n(value: object) -> str:
    return "-" if value is None else str(value)
