"""controller.py: which triggers become syncs, and what follows a sync's outcome.

The Syncer is a fake that returns (or raises) scripted outcomes; the queue, workers
and leadership are the real ones, on a real event loop.
"""

import asyncio
from collections import deque
from types import SimpleNamespace

from hotswap_operator.context import PodInfo
from hotswap_operator.controller import Controller
from hotswap_operator.kube import ChildConflictError, ConflictError, KubeError
from hotswap_operator.metrics import Metrics
from hotswap_operator.reasons import Event, EventType, Phase, Reason
from hotswap_operator.spec import SpecError
from hotswap_operator.status import ModelDeploymentStatus, RevisionRecord
from hotswap_operator.sync import SyncResult

KEY = ("ml", "resnet")
MD = {"metadata": {"namespace": "ml", "name": "resnet", "uid": "u-1", "resourceVersion": "1"}}
POD = {
    "metadata": {
        "namespace": "ml",
        "name": "resnet-a",
        "labels": {"hotswap.dev/model-deployment": "resnet"},
    }
}


class FakeSyncer:
    def __init__(self, *outcomes):
        self.outcomes = deque(outcomes)
        self.calls = []
        self.memory = {}
        self.forgotten = []
        self.peer_events = []
        self.creating = []
        self.recorder = SimpleNamespace(forget=self.forgotten.append)
        self.decided = {}
        self.statuses = deque()  # what each sync decides, in turn (Syncer.decided)

    def sync(self, namespace, name, pods, applied, reports=None, creating=""):
        self.calls.append(((namespace, name), tuple(pods), applied))
        if self.statuses:
            self.decided[(namespace, name)] = self.statuses.popleft()
        self.creating.append(creating)
        outcome = self.outcomes.popleft() if self.outcomes else SyncResult()
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    def forget(self, namespace, name):
        self.forgotten.append((namespace, name))
        self.decided.pop((namespace, name), None)

    def peers_changed(self, key, version):  # Syncer's: its own write is "mine" here
        self.peer_events.append((key, version))
        return version != "mine"


def md(rv="1"):
    return {"metadata": {**MD["metadata"], "resourceVersion": rv}}


async def settle(controller, calls, timeout=2.0):
    """Wait until the fake syncer has been called `calls` times and the queue is idle."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while len(controller.syncer.calls) < calls or len(controller.queue):
        assert loop.time() < deadline, controller.syncer.calls
        await asyncio.sleep(0.005)
    await asyncio.sleep(0.02)


def run(test, *outcomes, report_batch=0.0, resync=0.0):
    async def go():
        metrics = Metrics()
        controller = Controller(FakeSyncer(*outcomes), metrics, 2, report_batch, resync)
        controller.start()
        try:
            await test(controller, metrics)
        finally:
            await controller.stop()

    asyncio.run(go())


def value(metrics, metric, **labels):
    return metrics.registry.get_sample_value(metric, labels) or 0.0


def test_only_the_leader_syncs_and_a_new_leader_syncs_everything_it_knows():
    async def test(c, metrics):
        c.on_model_deployment(None, md())
        c.on_pod("ADDED", POD)
        await asyncio.sleep(0.05)
        assert c.syncer.calls == [] and value(metrics, "hotswap_operator_leader") == 0
        c.start_leading()
        await settle(c, 1)
        assert [call[0] for call in c.syncer.calls] == [KEY]
        assert value(metrics, "hotswap_operator_leader") == 1
        c.stop_leading()
        c.on_pod("MODIFIED", POD)
        await asyncio.sleep(0.05)
        assert len(c.syncer.calls) == 1

    run(test)


def test_a_burst_of_triggers_is_one_sync_with_the_pods_of_the_cache():
    async def test(c, metrics):
        c.pods = lambda key: [PodInfo("resnet-a", True)] if key == KEY else []
        c.start_leading()
        for rv in ("2", "3", "4"):
            c.on_model_deployment("MODIFIED", md(rv))
        c.on_pod("MODIFIED", POD)
        await settle(c, 1)
        assert c.syncer.calls == [(KEY, (PodInfo("resnet-a", True),), None)]
        assert value(metrics, "hotswap_operator_sync_seconds_count") == 1

    run(test)


def test_pod_reports_are_batched_the_first_at_once_the_rest_of_a_burst_together():
    async def test(c, metrics):
        loop = asyncio.get_running_loop()
        c.start_leading()
        c.on_pod("MODIFIED", POD)  # nothing synced lately: at once
        await settle(c, 1, timeout=0.15)
        first = loop.time()
        for _ in range(50):  # a burst of reports: one sync, a batch period after the first
            c.on_pod("MODIFIED", POD)
            await asyncio.sleep(0.002)
        assert len(c.syncer.calls) == 1
        await settle(c, 2)
        assert loop.time() - first >= 0.3 - 0.05
        await asyncio.sleep(0.4)
        assert len(c.syncer.calls) == 2
        c.on_model_deployment("MODIFIED", md("9"))  # a spec change is never batched
        await settle(c, 3, timeout=0.15)

    run(test, report_batch=0.3)


def test_the_leader_resyncs_every_known_model_deployment_without_a_trigger():
    other = {"metadata": {**MD["metadata"], "name": "bert", "uid": "u-2"}}

    async def test(c, metrics):
        c.on_model_deployment(None, md("1"))
        c.on_model_deployment(None, other)
        await asyncio.sleep(0.35)  # a follower: known, never synced
        assert c.syncer.calls == []
        c.start_leading()
        await settle(c, 2)
        await settle(c, 6, timeout=1.0)  # two periods later, with no event at all
        synced = [call[0] for call in c.syncer.calls]
        assert synced.count(KEY) >= 3 and synced.count(("ml", "bert")) >= 3
        c.on_model_deployment("DELETED", md("2"))  # forgotten: no longer resynced
        calls = len(c.syncer.calls)
        await asyncio.sleep(0.45)
        assert all(call[0] == ("ml", "bert") for call in c.syncer.calls[calls + 1 :])

    run(test, resync=0.15)


def test_its_own_status_write_is_no_trigger_but_anything_newer_is():
    async def test(c, metrics):
        c.start_leading()
        c.on_model_deployment(None, md("1"))
        await settle(c, 1)
        c.on_model_deployment("MODIFIED", md("5"))  # the watch event of its own write
        await asyncio.sleep(0.05)
        assert len(c.syncer.calls) == 1
        c.on_model_deployment("MODIFIED", md("6"))  # a pod report after it
        await settle(c, 2)

    run(test, SyncResult(resource_version="5", applied=("u-1", 1)))


def test_a_conflict_syncs_again_at_once_and_children_are_applied_once_per_generation():
    async def test(c, metrics):
        c.start_leading()
        c.on_model_deployment(None, md())
        await settle(c, 2)
        c.on_model_deployment("MODIFIED", md("9"))
        await settle(c, 3)
        assert [call[2] for call in c.syncer.calls] == [None, None, ("u-1", 1)]
        assert value(metrics, "hotswap_operator_sync_errors_total", reason="Conflict") == 1

    conflict = ConflictError(409, "the object has been modified")
    run(test, conflict, SyncResult(applied=("u-1", 1)))


def test_a_deleted_child_makes_the_next_sync_apply_every_child():
    async def test(c, metrics):
        c.start_leading()
        c.on_model_deployment(None, md())
        await settle(c, 1)
        cm = {"kind": "ConfigMap", **POD}
        c.on_child("DELETED", cm)
        await settle(c, 2)
        assert [call[2] for call in c.syncer.calls] == [None, None]
        c.on_child("MODIFIED", {"kind": "Deployment", **POD})  # Deployment status churn
        await asyncio.sleep(0.05)
        assert len(c.syncer.calls) == 2

    run(test, SyncResult(applied=("u-1", 1)), SyncResult(applied=("u-1", 1)))


def test_a_step_deadline_brings_the_key_back():
    async def test(c, metrics):
        c.start_leading()
        c.on_model_deployment(None, md())
        await settle(c, 2, timeout=1.0)

    run(test, SyncResult(requeue_after=0.1))


def test_failures_back_off_and_an_invalid_spec_waits_for_a_change():
    async def test(c, metrics):
        c.start_leading()
        c.on_model_deployment(None, md())
        await settle(c, 2)  # the API error is retried after a backoff
        await asyncio.sleep(0.1)
        assert len(c.syncer.calls) == 2  # ... and the invalid spec is not
        assert value(metrics, "hotswap_operator_sync_errors_total", reason="ApiError") == 1
        assert value(metrics, "hotswap_operator_sync_errors_total", reason="InvalidSpec") == 1

    run(test, KubeError(500, "etcd"), SpecError("bad"), SyncResult())


def test_each_objects_series_follow_what_its_syncs_decided_a_refused_spec_too():
    info = "hotswap_modeldeployment_info"

    async def test(c, metrics):
        c.syncer.statuses.extend(
            [
                ModelDeploymentStatus(
                    phase=Phase.READY, serving="1", stable=RevisionRecord(revision=1)
                ),
                ModelDeploymentStatus(
                    phase=Phase.FAILED, serving="1", stable=RevisionRecord(revision=1)
                ),
            ]
        )
        c.start_leading()
        c.on_model_deployment(None, md())
        await settle(c, 1)
        labels = dict(namespace="ml", name="resnet", serving="1", stable="1", latest="1")
        assert value(metrics, info, phase="Ready", **labels) == 1
        c.on_model_deployment(None, md("2"))
        await settle(c, 2)
        assert value(metrics, info, phase="Ready", **labels) == 0  # replaced, not kept
        assert value(metrics, info, phase="Failed", **labels) == 1
        c.stop_leading()  # a standby exports none
        assert value(metrics, info, phase="Failed", **labels) == 0

    run(test, SyncResult(), SpecError("bad"))


def test_a_child_conflict_is_retried_after_thirty_seconds():
    async def test(c, metrics):
        c.start_leading()
        c.on_model_deployment(None, md())
        await settle(c, 1)
        (due, _timer) = c.queue._timers[KEY]
        assert due - asyncio.get_running_loop().time() > 29

    run(test, ChildConflictError("Service ml/resnet is held by another"))


def test_a_deleted_model_deployment_is_forgotten():
    async def test(c, metrics):
        c.start_leading()
        c.on_model_deployment(None, md())
        await settle(c, 1)
        c.on_model_deployment("DELETED", md())
        assert KEY not in c.known and KEY not in c.applied
        assert c.syncer.forgotten == [KEY, "u-1"]

    run(test, SyncResult(applied=("u-1", 1)))


def test_rollout_outcomes_are_counted_from_the_events_of_a_sync():
    async def test(c, metrics):
        c.start_leading()
        c.on_model_deployment(None, md())
        await settle(c, 1)
        assert value(metrics, "hotswap_operator_rollouts_total", outcome="RolledBack") == 1
        assert value(metrics, "hotswap_operator_rollouts_total", outcome="Complete") == 0

    rolled = Event(EventType.WARNING, Reason.ROLLED_BACK, "revision 2 rolled back")
    run(test, SyncResult(events=[rolled]))


def test_peers_json_changed_by_someone_else_brings_a_sync_and_its_own_write_does_not():
    async def test(c, metrics):
        c.start_leading()
        peers = {"kind": "ConfigMap", **POD}
        peers["metadata"] = {**POD["metadata"], "name": "resnet-peers", "resourceVersion": "mine"}
        c.on_child("MODIFIED", peers)
        assert len(c.queue) == 0  # nothing to do: its own write
        c.applied[KEY] = ("u-1", 1)
        c.on_child("MODIFIED", {**peers, "metadata": {**peers["metadata"], "resourceVersion": "8"}})
        assert len(c.queue) == 1
        c.on_child("DELETED", peers)
        assert c.syncer.peer_events == [(KEY, "mine"), (KEY, "8"), (KEY, None)]
        assert c.applied[KEY] == ("u-1", 1)  # only peers.json is written again
        await settle(c, 1)

    run(test)


def test_a_deployment_that_cannot_create_pods_is_synced_with_the_reason():
    failing = {
        "kind": "Deployment",
        **POD,
        "status": {
            "conditions": [
                {
                    "type": "ReplicaFailure",
                    "status": "True",
                    "reason": "FailedCreate",
                    "message": 'pods "resnet-1" is forbidden: RuntimeClass "nvidia" not found',
                }
            ]
        },
    }

    async def test(c, metrics):
        c.start_leading()
        c.on_child("MODIFIED", failing)
        await settle(c, 1)
        c.on_child("MODIFIED", failing)  # unchanged: nothing new to say
        assert len(c.queue) == 0
        c.on_child("MODIFIED", {"kind": "Deployment", **POD})  # pods can be created again
        await settle(c, 2)
        assert c.syncer.creating == [
            'FailedCreate: pods "resnet-1" is forbidden: RuntimeClass "nvidia" not found',
            "",
        ]

    run(test)
