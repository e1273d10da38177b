"""Canary rollouts end to end: steps, automatic rollback, pause, rollback from the cache.

One helm install and one 4-replica Canary ModelDeployment of the tiny test model serve
the whole module (lean: a few milliseconds per swap on 2 cores). Tests run in file
order, each starting from the stable revision the last one left. A recorder watches the
CR the whole time, so every status version the operator wrote can be checked, not only
the ones a poll happened to catch.
"""

from __future__ import annotations

import copy
import shutil
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import torch

from devcluster import checkpoints, tiny
from devcluster.cluster import Cluster
from devcluster.fleet import MD_API, Fleet, Load, cpu_deployment, summary
from devcluster.waiting import wait_for
from examples.checkpoints import host_path, pod_uri

NAME = "canary"
REPLICAS = 4
SHAPE = (tiny.FEATURES,)
JSON = dict[str, Any]


@pytest.fixture(scope="module")
def files() -> Iterator[dict[str, JSON]]:
    """Checkpoints v1..v3, one with NaN weights, and a validation probe: name -> ref."""
    folder = checkpoints.local_folder("canary")
    out: dict[str, JSON] = {}
    for seed in (1, 2, 3):
        path = folder / f"v{seed}.safetensors"
        out[f"v{seed}"] = {
            "uri": pod_uri(path),
            "sha256": checkpoints.save(tiny.weights(seed), path),
        }
    broken = tiny.weights(4)
    broken["fc.weight"][0, 0] = float("nan")
    path = folder / "nan.safetensors"
    out["nan"] = {"uri": pod_uri(path), "sha256": checkpoints.save(broken, path)}
    x = torch.arange(8, dtype=torch.float32).reshape(2, tiny.FEATURES)
    for name, tensor in (("probe", x), ("expect-v2", tiny.expected(tiny.weights(2), x))):
        path = folder / f"{name}.safetensors"
        out[name] = {"uri": pod_uri(path), "sha256": checkpoints.save({"t": tensor}, path)}
    yield out
    shutil.rmtree(folder, ignore_errors=True)


def manifest(files: dict[str, JSON]) -> JSON:
    """A 4-replica Canary ModelDeployment of the tiny test model on CPU."""
    canary = rollout()["rollout"] | {"stepTimeoutSeconds": 120}
    return cpu_deployment(NAME, REPLICAS, tiny.ARCHITECTURE, SHAPE, files["v1"], rollout=canary)


class Recorder:
    """Every version of one ModelDeployment's status and of its pods' reports
    (ModelReplicas), from two watches on threads, as one timeline ordered by
    resourceVersion (etcd's revision, one sequence for every object): each entry is the
    status then in force with, under "pods", each pod's report then in force."""

    def __init__(self, cluster: Cluster, namespace: str, name: str) -> None:
        self.client = cluster.rest()
        self.watches = {
            "md": (
                f"{MD_API}/namespaces/{namespace}/modeldeployments",
                {"fieldSelector": f"metadata.name={name}"},
            ),
            "report": (
                f"{MD_API}/namespaces/{namespace}/modelreplicas",
                {"labelSelector": f"hotswap.dev/model-deployment={name}"},
            ),
        }
        self.events: list[tuple[int, str, str, JSON | None]] = []  # (rv, kind, name, status)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._resps: list[Any] = []
        self._threads = [
            threading.Thread(target=self._run, args=(kind,), daemon=True) for kind in self.watches
        ]

    def __enter__(self) -> Recorder:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for resp in self._resps:
            resp.shutdown()
        for thread in self._threads:
            thread.join(timeout=10)

    def mark(self) -> int:
        with self._lock:
            return max((rv for rv, *_ in self.events), default=0)

    def since(self, mark: int) -> list[JSON]:
        """The timeline after resourceVersion `mark` (Recorder.mark)."""
        with self._lock:
            events = sorted(self.events, key=lambda e: e[0])
        status: JSON = {}
        reports: dict[str, JSON] = {}
        out = []
        for rv, kind, name, body in events:
            if kind == "md":
                status = body or {}
            elif body is None:
                reports.pop(name, None)
            else:
                reports[name] = body
            if rv > mark:
                out.append({**copy.deepcopy(status), "pods": copy.deepcopy(reports)})
        return out

    def _run(self, kind: str) -> None:
        path, selector = self.watches[kind]
        params = {**selector, "timeoutSeconds": 600}
        while not self._stop.is_set():
            try:
                for event in self.client.watch(path, params, self._resps.append):
                    obj = event.get("object") or {}
                    meta = obj.get("metadata") or {}
                    if event.get("type") not in ("ADDED", "MODIFIED", "DELETED"):
                        continue
                    body = None if event["type"] == "DELETED" else (obj.get("status") or {})
                    entry = (int(meta["resourceVersion"]), kind, meta["name"], body)
                    with self._lock:
                        self.events.append(copy.deepcopy(entry))
            except Exception:  # a closed stream: reopen unless stopping
                if self._stop.wait(0.2):
                    return


@pytest.fixture(scope="module")
def fleet(cluster: Cluster, node: Any, installed: str, files: dict[str, JSON]) -> Fleet:
    return Fleet(cluster, installed, NAME).deploy(manifest(files), timeout=420)


@pytest.fixture
def recorder(cluster: Cluster, fleet: Fleet) -> Iterator[Recorder]:
    with Recorder(cluster, fleet.namespace, NAME) as rec:
        wait_for(lambda: rec.mark() > 0, timeout=30, what="watch of the ModelDeployment")
        yield rec


@pytest.fixture
def load(fleet: Fleet) -> Iterator[Load]:
    with fleet.load(SHAPE) as running:
        running.wait_answers(20)
        yield running


def rollout(**fields: Any) -> JSON:
    return {"rollout": {"strategy": "Canary", "steps": [1, "50%", "100%"], **fields}}


def serving(status: JSON, revision: int) -> list[str]:
    """Pods whose report says they serve `revision`."""
    return sorted(p for p, r in (status.get("pods") or {}).items() if r.get("revision") == revision)


def events(fleet: Fleet, reason: str) -> list[str]:
    items = fleet.client.get(f"/api/v1/namespaces/{fleet.namespace}/events")["items"]
    return [e["message"] for e in items if e.get("reason") == reason]


def wait_event(fleet: Fleet, reason: str, *words: str) -> str:
    """The first Event with `reason` whose message holds every one of `words`."""

    def found() -> str | None:
        hits = [m for m in events(fleet, reason) if all(w in m for w in words)]
        return hits[0] if hits else None

    return wait_for(found, timeout=30, what=f"Event {reason} mentioning {words}")


def settle(fleet: Fleet) -> int:
    """Point the spec back at the stable revision (a failed test may have left a
    candidate), wait for phase Ready; returns the stable revision."""
    stable = fleet.status()["stable"]
    back = {k: stable[k] for k in ("uri", "sha256")}
    fleet.patch_spec({"checkpoint": back, "validation": None, "replicas": REPLICAS, **rollout()})
    fleet.wait_serving(stable["revision"], REPLICAS, timeout=120)
    return int(stable["revision"])


def wait_phase(fleet: Fleet, phase: str, revision: int, timeout: float = 180) -> JSON:
    return fleet.wait(
        lambda st: st.get("phase") == phase and st.get("revision") == revision,
        f"phase {phase} on revision {revision}",
        timeout,
    )


def test_canary_advances_step_by_step(fleet: Fleet, recorder: Recorder, load: Load, files):
    rev = settle(fleet)
    mark = recorder.mark()
    fleet.patch_spec({"checkpoint": files["v2"], **rollout()})
    final = fleet.wait_serving(rev + 1, REPLICAS, timeout=180)
    load.all_answer(str(rev + 1))
    statuses = recorder.since(mark)
    steps: dict[int, int] = {}
    named_before: set[str] = set()
    for st in statuses:
        if (st.get("candidate") or {}).get("revision") != rev + 1:
            continue
        named = set(st.get("candidatePods") or ())
        steps.setdefault(st["canary"]["step"], len(named))
        assert named_before <= named, summary(st)  # a step never takes a pod back
        named_before = named
        # no pod serves the candidate before status names it
        assert set(serving(st, rev + 1)) <= named, summary(st)
    assert steps == {1: 1, 2: 2, 3: 4}, steps
    first_two = [st for st in statuses if (st.get("canary") or {}).get("step") == 2]
    assert len(serving(first_two[0], rev + 1)) >= 1  # step 2 began after the canary served
    assert final["history"][-1]["revision"] == rev + 1, final["history"]
    wait_event(fleet, "CanaryStep", f"revision {rev + 1}", "step 3 of 3")
    wait_event(fleet, "Promoted", f"revision {rev + 1}")
    assert not load.failures, load.summary()


@pytest.mark.parametrize("bad", ["nan", "wrong-outputs"])
def test_a_bad_candidate_stops_at_the_canary_and_rolls_back(
    fleet: Fleet, recorder: Recorder, load: Load, files, bad: str
):
    stable = settle(fleet)
    mark = recorder.mark()
    if bad == "nan":
        change = {"checkpoint": files["nan"], **rollout()}
    else:  # v3's weights, checked against v2's outputs
        change = {
            "checkpoint": files["v3"],
            "validation": {
                "input": files["probe"],
                "expected": files["expect-v2"],
                "tolerance": 1e-4,
            },
            **rollout(),
        }
    fleet.patch_spec(change)
    st = wait_phase(fleet, "RolledBack", stable)
    rollback = st["rollback"]
    assert rollback["stable"] == stable and rollback["revision"] > stable
    cause = "NaN" if bad == "nan" else "validation output differs"
    assert cause in rollback["reason"], rollback
    progressing = next(c for c in st["conditions"] if c["type"] == "Progressing")
    assert progressing["reason"] == "RolledBack" and rollback["pod"] in progressing["message"]
    wait_event(fleet, "RolledBack", f"revision {rollback['revision']}", rollback["pod"], cause)
    named = {tuple(s.get("candidatePods") or ()) for s in recorder.since(mark)} - {()}
    assert named == {(rollback["pod"],)}, named  # it never went past the canary
    load.wait_answers(20)
    assert str(rollback["revision"]) not in load.versions
    assert not load.failures, load.summary()
    assert settle(fleet) == stable  # the spec names stable again: phase Ready


def holds(check: Any, seconds: float) -> bool:
    """`check()` stays true for `seconds` (polled): an invariant over a window."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if not check():
            return False
        time.sleep(0.2)
    return True


def paused_with_canary_serving(st: JSON) -> bool:
    cand = (st.get("candidate") or {}).get("revision")
    reasons = {c["type"]: c["reason"] for c in st.get("conditions") or ()}
    return (
        cand is not None and len(serving(st, cand)) == 1 and reasons.get("Progressing") == "Paused"
    )


def test_pause_holds_the_step_and_resume_finishes(fleet: Fleet, recorder: Recorder, files):
    rev = settle(fleet)
    fleet.patch_spec({"checkpoint": files["v3"], **rollout(paused=True)})
    st = fleet.wait(paused_with_canary_serving, "paused, the canary pod serving", 120)
    cand = st["candidate"]["revision"]
    mark = recorder.mark()
    # three seconds paused (pod reports and readiness keep triggering syncs): one pod
    assert holds(lambda: len(fleet.status().get("candidatePods") or []) == 1, 3.0)
    assert all(len(s.get("candidatePods") or []) == 1 for s in recorder.since(mark))
    before = {p["metadata"]["name"] for p in fleet.pods()}
    fleet.patch_spec({"replicas": REPLICAS + 1})  # a new pod mid-rollout takes stable
    st = fleet.wait(
        lambda st: (
            len(set(st.get("pods") or {}) - before) == 1
            and all(r.get("state") == "Serving" for r in st["pods"].values())
        ),
        "the new pod serving",
        120,
    )
    (new,) = set(st["pods"]) - before
    assert st["pods"][new]["revision"] == rev and new not in st["candidatePods"]
    assert len(st["candidatePods"]) == 1
    fleet.patch_spec({"replicas": REPLICAS})
    fleet.patch_spec(rollout(paused=False))
    fleet.wait_serving(cand, REPLICAS, timeout=180)
    assert cand > rev and events(fleet, "Promoted")


def test_the_leader_killed_mid_canary_hands_over_and_the_rollout_completes(
    fleet: Fleet, load: Load, files
):
    """Two operator replicas. The leader is killed (pod deleted, grace 0) while the
    canary holds at step 1, and the rollout is resumed at once: only a new leader can
    act on that. The standby takes the Lease within 15 s, the rollout completes, no
    request fails, and each step is announced once."""
    settle(fleet)
    old = wait_for(fleet.leader, timeout=30, what="a leader")
    standby = {p["metadata"]["name"] for p in fleet.operators()} - {old}
    assert len(standby) == 1
    fleet.patch_spec({"checkpoint": files["v2"], **rollout(paused=True)})
    st = fleet.wait(paused_with_canary_serving, "paused, the canary pod serving", 120)
    cand = st["candidate"]["revision"]
    killed = time.monotonic()
    fleet.client.delete(
        f"/api/v1/namespaces/{fleet.namespace}/pods/{old}", {"gracePeriodSeconds": 0}
    )
    fleet.patch_spec(rollout(paused=False))
    new = wait_for(
        lambda: (name := fleet.leader()) not in ("", old) and name,
        timeout=30,
        interval=0.1,
        what="another operator replica holding the Lease",
    )
    handover = time.monotonic() - killed
    fleet.wait(
        lambda st: (st.get("canary") or {}).get("step", 1) >= 2 or st.get("revision") == cand,
        "step 2",
        60,
    )
    moved = time.monotonic() - killed
    fleet.wait_serving(cand, REPLICAS, timeout=180)
    load.all_answer(str(cand))
    done = time.monotonic() - killed
    print(
        f"\nleader {old} killed: {new} led {handover:.1f}s later, the canary moved on "
        f"{moved:.1f}s and completed {done:.1f}s after the kill; {load.total} requests, "
        f"{len(load.failures)} failed"
    )
    assert new in standby and handover < 15, (new, standby, handover)
    assert not load.failures, load.summary()
    for reason in ("Promoted", "CanaryStep"):
        hits = [e for e in fleet.events(reason) if f"revision {cand}" in e["message"]]
        assert hits and all(e.get("count", 1) == 1 for e in hits), hits
        messages = [e["message"] for e in hits]
        assert len(messages) == len(set(messages)), messages  # none posted twice


def test_rollback_to_a_cached_revision_downloads_nothing(fleet: Fleet, load: Load, files):
    rev = settle(fleet)
    old = files["v1"]  # every pod loaded it when it started
    host_path(old["uri"]).unlink()  # a fetch would now fail
    fleet.patch_spec({"checkpoint": old, **rollout()})
    st = fleet.wait_serving(rev + 1, REPLICAS, timeout=180)
    load.all_answer(str(rev + 1))
    assert {r["sha256"] for r in st["pods"].values()} == {old["sha256"]}, summary(st)
    assert all(r["state"] == "Serving" for r in st["pods"].values()), summary(st)
    assert len(st["history"]) <= 10 and st["history"][-1]["sha256"] == old["sha256"]
    assert not load.failures, load.summary()
