"""The one sync path, with fake inputs: the exact API writes a sync makes, in order.

FakeApi (fake_api.py) answers Kube's requests like the API server would (resource
versions, merge patches, preconditions) and records every write.
"""

from __future__ import annotations

import base64
import copy
import dataclasses
import json

import pytest
from fake_api import FakeApi
from operator_samples import SHA_A, SHA_B, SPEC, report

from hotswap_operator.config import RuntimeDefaults
from hotswap_operator.context import PodInfo, SyncContext
from hotswap_operator.events import EventRecorder
from hotswap_operator.kube import ChildConflictError, ConflictError
from hotswap_operator.spec import SpecError
from hotswap_operator.sync import Syncer, decide

NS, NAME = "ml", "resnet"
NOW = "2026-01-01T00:00:00Z"
CPU = RuntimeDefaults.model_validate({"gpu": {"enabled": False}})
PODS = [PodInfo("resnet-a", True), PodInfo("resnet-b", True), PodInfo("resnet-c", True)]
V2 = {"uri": "file:///models/v2.safetensors", "sha256": SHA_B}
CHILDREN_FIRST = [
    ("PATCH", "serviceaccounts/resnet-runtime"),
    ("PATCH", "roles/resnet-runtime"),
    ("PATCH", "rolebindings/resnet-runtime"),
    ("PATCH", "services/resnet"),
]
STATUS = ("PATCH", "modeldeployments/resnet/status")
CONFIG = ("PATCH", "configmaps/resnet-model")
DEPLOYMENT = ("PATCH", "deployments/resnet")
# A new revision: access first, then status names it, then the pods' config, then pods.
NEW_REVISION = [*CHILDREN_FIRST, STATUS, CONFIG, DEPLOYMENT, ("POST", "events RevisionCreated")]


def token_post(md: dict) -> tuple[str, str]:
    """The peer token's create, whenever children are written (409 once it exists)."""
    return ("POST", f"secrets/{NAME}-peer-{md['metadata']['uid']}")


def create(api: FakeApi, spec=SPEC) -> dict:
    return api.put_object(
        "modeldeployments",
        {
            "apiVersion": "hotswap.dev/v1alpha1",
            "kind": "ModelDeployment",
            "metadata": {"name": NAME, "namespace": NS},
            "spec": copy.deepcopy(spec),
        },
    )


class CachedSyncer(Syncer):
    """Syncer.sync with the pods' reports from FakeApi, as the controller passes its cache."""

    def __init__(self, api: FakeApi, *args, **kwargs) -> None:
        super().__init__(api, *args, **kwargs)
        self.fake = api

    def sync(self, namespace, name, pods, applied=None, reports=None):
        if reports is None:
            reports = self.fake.reports(namespace, name)
        return super().sync(namespace, name, pods, applied, reports)


def syncer(api: FakeApi, outcomes: list | None = None) -> Syncer:
    recorder = EventRecorder(
        api, "hotswap-operator", (outcomes if outcomes is not None else []).append
    )
    return CachedSyncer(api, CPU, recorder, clock=lambda: NOW)


def writes(api: FakeApi) -> list[tuple[str, str]]:
    """Writes in order; Events (random names) as ("POST", "events <reason>")."""
    out = []
    for method, what, body in api.writes:
        if what.startswith("events/"):
            out.append((method, f"events {body.get('reason', 'count')}"))
        else:
            out.append((method, what))
    return out


def status_patches(api: FakeApi) -> list[dict]:
    return [body for method, what, body in api.writes if what.endswith("/status")]


def status(api: FakeApi) -> dict:
    return api.obj("modeldeployments", NS, NAME)["status"]


def model_json(api: FakeApi) -> dict:
    return json.loads(api.obj("configmaps", NS, f"{NAME}-model")["data"]["model.json"])


def serving(revision: int, sha: str, pods=PODS) -> dict:
    return {p.name: report(revision, sha) for p in pods}


@pytest.fixture
def api() -> FakeApi:
    return FakeApi()


def started(api: FakeApi, spec=SPEC):
    """A ModelDeployment synced once (children applied), the writes log cleared."""
    md = create(api, spec)
    s = syncer(api)
    result = s.sync(NS, NAME, PODS, None)
    api.writes.clear()
    api.reads.clear()
    return s, result.applied, md


def test_first_sync_writes_access_then_status_once_then_config_then_pods(api):
    md = create(api)
    result = syncer(api).sync(NS, NAME, [], None)
    assert writes(api) == [
        token_post(md),
        *NEW_REVISION[:-1],
        ("PATCH", "configmaps/resnet-peers"),  # who to fetch from: once the pods can start
        NEW_REVISION[-1],
    ]
    (patch,) = status_patches(api)
    assert patch["metadata"] == {"resourceVersion": md["metadata"]["resourceVersion"]}
    assert patch["status"]["revision"] == 1 and patch["status"]["observedGeneration"] == 1
    assert patch["status"]["phase"] == "Pending"
    assert model_json(api)["stable"]["revision"] == 1
    assert result.applied == (md["metadata"]["uid"], 1)
    assert result.requeue_after == 601  # the progress deadline (600 s), then a second


def test_a_sync_with_nothing_new_reads_twice_and_writes_nothing(api):
    s, applied, _ = started(api)
    s.sync(NS, NAME, PODS, applied)
    assert api.writes == []
    assert api.reads == ["modeldeployments/resnet", "configmaps/resnet-model"]


def test_pod_reports_move_status_counts_only_and_gone_pods_are_ignored(api):
    s, applied, _ = started(api)
    api.report(NS, NAME, {**serving(1, SHA_A), "resnet-gone": report(1, SHA_A)})
    result = s.sync(NS, NAME, PODS, applied)
    assert writes(api) == [
        STATUS,
        ("POST", "events RolloutComplete"),
        *[("POST", "events Loaded")] * 3,  # each pod's first model
    ]
    (patch,) = status_patches(api)
    assert "pods" not in patch["status"]  # reports stay in their ModelReplicas
    assert (patch["status"]["phase"], patch["status"]["updated"]) == ("Ready", "3/3")
    assert [e.reason for e in result.events] == ["RolloutComplete", *["Loaded"] * 3]


def test_swaps_are_announced_once_per_pod_and_change(api):
    s, applied, _ = started(api)
    api.report(NS, NAME, serving(1, SHA_A))
    s.sync(NS, NAME, PODS, applied)  # first sight: the baseline, no per-pod Events
    api.patch_spec(NS, NAME, {"checkpoint": V2})
    applied = s.sync(NS, NAME, PODS, applied).applied
    api.writes.clear()
    api.report(NS, NAME, serving(2, SHA_B))
    s.sync(NS, NAME, PODS, applied)
    s.sync(NS, NAME, PODS, applied)
    reasons = [w for w in writes(api) if w[1].startswith("events")]
    assert reasons == [("POST", "events RolloutComplete")] + [("POST", "events Swapped")] * 3


def test_a_checkpoint_change_writes_status_before_the_config_map(api):
    s, applied, md = started(api)
    changed = api.patch_spec(NS, NAME, {"checkpoint": V2})
    s.sync(NS, NAME, PODS, applied)
    assert writes(api) == [token_post(md), *NEW_REVISION]
    (patch,) = status_patches(api)
    assert patch["metadata"]["resourceVersion"] == changed["metadata"]["resourceVersion"]
    assert patch["status"]["revision"] == 2 and status(api)["updated"] == "0/3"
    assert model_json(api)["stable"]["checkpoint"]["sha256"] == SHA_B


def test_a_stale_read_never_overwrites_newer_state(api):
    """The race the separate aggregator lost: it read the object (the last pod just
    reported revision 1: "3/3 Ready"), a spec change made revision 2 stable meanwhile,
    and its merge patch then wrote "3/3 Ready" next to revision 2, which no pod served.
    Here that write carries the resourceVersion read: refused, and the sync that
    follows reads again and says what is true."""
    s, applied, _ = started(api)
    api.report(NS, NAME, {**serving(1, SHA_A, PODS[:2])})
    s.sync(NS, NAME, PODS, applied)
    api.report(NS, NAME, serving(1, SHA_A))  # the third pod serves revision 1 too
    other = syncer(api)  # another writer: the spec change's sync

    def spec_change_meanwhile(method: str, what: str) -> bool:
        if what != "modeldeployments/resnet/status":
            return True
        api.patch_spec(NS, NAME, {"checkpoint": V2})
        other.sync(NS, NAME, PODS, applied)
        return False

    stale = SyncContext.build(
        api.obj("modeldeployments", NS, NAME),
        api.obj("configmaps", NS, f"{NAME}-model"),
        PODS,
        CPU,
        NOW,
        applied,
        api.reports(NS, NAME),
    )
    api.before_write = spec_change_meanwhile
    with pytest.raises(ConflictError):
        s.sync(NS, NAME, PODS, applied)
    assert status(api)["revision"] == 2 and status(api)["updated"] == "0/3"
    assert ("PATCH", "configmaps/resnet-model") not in writes(api)[-1:]
    # What the stale patch would have made of it without the precondition:
    lost = decide(stale).patch
    assert (lost["phase"], lost["updated"]) == ("Ready", "3/3")
    api.patch_status(NS, NAME, lost)  # (today's aggregator: no resourceVersion)
    broken = status(api)
    assert (broken["revision"], broken["updated"], broken["phase"]) == (2, "3/3", "Ready")
    # The next sync (the conflict re-syncs) puts it right.
    s.sync(NS, NAME, PODS, None)
    fixed = status(api)
    assert (fixed["revision"], fixed["updated"], fixed["phase"]) == (2, "0/3", "Progressing")


def test_no_spec_change_is_lost_whatever_failed_before_it(api):
    """v1 -> v2 -> v1 again with every Event refused: the change back is applied (a
    diff base that still held v1 once saw no difference and the fleet stayed on v2)."""
    outcomes: list[str] = []
    md = create(api)
    s = syncer(api, outcomes)
    api.refuse["events"] = 422
    applied = s.sync(NS, NAME, PODS, None).applied
    api.patch_spec(NS, NAME, {"checkpoint": V2})
    applied = s.sync(NS, NAME, PODS, applied).applied
    assert model_json(api)["stable"]["checkpoint"]["sha256"] == SHA_B
    api.patch_spec(NS, NAME, {"checkpoint": {"uri": SPEC["checkpoint"]["uri"], "sha256": SHA_A}})
    s.sync(NS, NAME, PODS, applied)
    config = model_json(api)
    assert (config["stable"]["revision"], config["stable"]["checkpoint"]["sha256"]) == (3, SHA_A)
    st = status(api)
    assert st["observedGeneration"] == 3 and [h["sha256"] for h in st["history"]] == [
        SHA_A,
        SHA_B,
        SHA_A,
    ]
    assert outcomes == ["failed"] * 3 and md


def test_a_refused_event_is_logged_and_the_sync_goes_on(api, caplog):
    outcomes: list[str] = []
    create(api)
    api.refuse["events"] = 422
    result = syncer(api, outcomes).sync(NS, NAME, PODS, None)
    assert [e.reason for e in result.events] == ["RevisionCreated"]
    assert outcomes == ["failed"]
    assert status(api)["revision"] == 1 and model_json(api)["stable"]["revision"] == 1
    assert "RevisionCreated on ml/resnet not posted" in caplog.text


def test_a_child_held_by_another_object_is_refused_in_status_and_nothing_else(api):
    md = create(api)
    api.put_object(
        "services",
        {"apiVersion": "v1", "kind": "Service", "metadata": {"name": NAME, "namespace": NS}},
    )
    with pytest.raises(ChildConflictError, match="never takes over"):
        syncer(api).sync(NS, NAME, PODS, None)
    assert writes(api) == [STATUS, ("POST", "events InvalidSpec")]
    st = status(api)
    assert st["phase"] == "Failed" and f"Service {NS}/{NAME} already exists" in st["error"]
    assert st["observedGeneration"] == md["metadata"]["generation"]


def test_a_spec_the_policy_refuses_is_status_only(api):
    spec = {**SPEC, "runtime": {"env": [{"name": "LD_PRELOAD", "value": "/x.so"}]}}
    create(api, spec)
    with pytest.raises(SpecError, match="LD_PRELOAD"):
        syncer(api).sync(NS, NAME, PODS, None)
    assert writes(api) == [STATUS, ("POST", "events InvalidSpec")]
    assert status(api)["phase"] == "Failed"


def test_a_deleted_config_map_is_put_back_with_a_higher_generation(api):
    s, applied, _ = started(api)
    before = model_json(api)
    del api.objects[("configmaps", NS, f"{NAME}-model")]
    s.sync(NS, NAME, PODS, applied)
    assert writes(api) == [STATUS, CONFIG]
    after = model_json(api)
    assert after["stable"] == before["stable"] and after["generation"] == before["generation"] + 1


def test_a_config_map_edited_by_hand_is_restored(api):
    s, applied, _ = started(api)
    cm = api.objects[("configmaps", NS, f"{NAME}-model")]
    tampered = json.loads(cm["data"]["model.json"])
    tampered["stable"]["checkpoint"]["sha256"] = "f" * 64
    cm["data"]["model.json"] = json.dumps(tampered)
    s.sync(NS, NAME, PODS, applied)
    assert writes(api) == [STATUS, CONFIG]
    assert model_json(api)["stable"]["checkpoint"]["sha256"] == SHA_A


def test_a_status_conflict_writes_nothing_after_it(api):
    """Someone changes the object between the read and the status write: 409, and
    neither the ConfigMap nor the Deployment is written from that read."""
    s, applied, _ = started(api)
    api.patch_spec(NS, NAME, {"checkpoint": V2})

    def edit_meanwhile(method: str, what: str) -> bool:
        if what == "modeldeployments/resnet/status":
            md = api.objects[("modeldeployments", NS, NAME)]
            md["metadata"]["labels"] = {"team": "vision"}
            md["metadata"]["resourceVersion"] = str(next(api._versions))
            return False
        return True

    api.before_write = edit_meanwhile
    with pytest.raises(ConflictError):
        s.sync(NS, NAME, PODS, applied)
    assert CONFIG not in writes(api) and DEPLOYMENT not in writes(api)
    api.writes.clear()
    s.sync(NS, NAME, PODS, applied)
    assert writes(api)[-4:-1] == [STATUS, CONFIG, DEPLOYMENT]


def test_a_canary_step_asks_for_a_sync_at_its_deadline(api):
    spec = {
        **SPEC,
        "rollout": {"strategy": "Canary", "steps": [1, "100%"], "stepTimeoutSeconds": 60},
    }
    s, applied, _ = started(api, spec)
    api.report(NS, NAME, serving(1, SHA_A))
    assert s.sync(NS, NAME, PODS, applied).requeue_after is None
    api.patch_spec(NS, NAME, {"checkpoint": V2})
    result = s.sync(NS, NAME, PODS, applied)
    assert result.requeue_after == pytest.approx(61.0)
    assert model_json(api)["candidatePods"] == ["resnet-a"]
    assert [e.reason for e in result.events] == ["RevisionCreated"]


def test_a_deleted_model_deployment_is_gone_and_forgotten(api):
    s, applied, _ = started(api)
    del api.objects[("modeldeployments", NS, NAME)]
    assert s.sync(NS, NAME, PODS, applied).gone
    assert api.writes == [] and (NS, NAME) not in s.memory


def test_a_config_map_replaced_by_a_foreign_one_is_refused_before_any_write(api):
    s, applied, _ = started(api)
    del api.objects[("configmaps", NS, f"{NAME}-model")]
    api.put_object(
        "configmaps",
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": f"{NAME}-model", "namespace": NS},
        },
    )
    with pytest.raises(ChildConflictError, match=f"ConfigMap {NS}/{NAME}-model already exists"):
        s.sync(NS, NAME, PODS, applied)
    assert writes(api) == [STATUS, ("POST", "events InvalidSpec")]
    assert "data" not in api.obj("configmaps", NS, f"{NAME}-model")  # never taken over


def peer_secret_posts(api: FakeApi) -> list[dict]:
    return [body for method, what, body in api.writes if what.startswith("secrets/")]


def test_the_peer_token_is_created_and_never_read_or_rewritten(api):
    md = create(api)
    s = syncer(api)
    s.sync(NS, NAME, PODS, None)
    (posted,) = peer_secret_posts(api)
    uid = md["metadata"]["uid"]
    assert posted["metadata"]["name"] == f"{NAME}-peer-{uid}"
    token = posted["stringData"]["token"]
    assert len(base64.urlsafe_b64decode(token + "=")) == 32  # token_urlsafe(32)
    assert posted["type"] == "Opaque"
    assert posted["metadata"]["ownerReferences"][0]["uid"] == uid
    api.writes.clear()
    api.patch_spec(NS, NAME, {"replicas": 5})  # children due again
    s.sync(NS, NAME, PODS, None)  # its create answers 409: the Secret is there
    assert len(peer_secret_posts(api)) == 1
    assert not [r for r in api.reads if r.startswith("secrets/")]  # never read
    secret = api.obj("secrets", NS, f"{NAME}-peer-{uid}")
    assert secret["stringData"]["token"] == token
    assert api.obj("deployments", NS, NAME) is not None  # the 409 stopped nothing


def test_a_secret_of_another_name_is_left_alone_and_not_mounted(api):
    md = create(api)
    foreign = {"metadata": {"name": f"{NAME}-peer", "namespace": NS}, "type": "Opaque"}
    api.put_object("secrets", {"apiVersion": "v1", "kind": "Secret", **foreign})
    syncer(api).sync(NS, NAME, PODS, None)
    assert "ownerReferences" not in api.obj("secrets", NS, f"{NAME}-peer")["metadata"]
    volumes = api.obj("deployments", NS, NAME)["spec"]["template"]["spec"]["volumes"]
    (token,) = [v["secret"]["secretName"] for v in volumes if v["name"] == "peer-token"]
    assert token == f"{NAME}-peer-{md['metadata']['uid']}"


def test_without_peers_no_token_is_made(api):
    create(api, {**SPEC, "distribution": {"peers": False}})
    syncer(api).sync(NS, NAME, PODS, None)
    assert writes(api) == NEW_REVISION
    assert peer_secret_posts(api) == []


def peers_json(api: FakeApi) -> dict:
    return json.loads(api.obj("configmaps", NS, f"{NAME}-peers")["data"]["peers.json"])


PEERS = ("PATCH", "configmaps/resnet-peers")
T0, T1 = "2026-01-01T00:00:00Z", "2026-01-01T00:00:09Z"
ADDRESSED = [
    PodInfo("resnet-c", True, ip="10.0.0.3", created=T1),
    PodInfo("resnet-b", True, ip="10.0.0.2", created=T0),
    PodInfo("resnet-a", False, ip="10.0.0.1", created=T1),
]


def test_the_pods_addresses_reach_peers_json_once_per_change(api):
    s, applied, md = started(api)
    assert peers_json(api) == {"name": NAME, "generation": 1, "originConcurrency": 2, "peers": []}
    s.sync(NS, NAME, ADDRESSED, applied)
    assert writes(api) == [STATUS, PEERS]  # status: the new pods' counts
    listing = peers_json(api)
    assert listing["generation"] == 2
    assert [p["name"] for p in listing["peers"]] == ["resnet-b", "resnet-a", "resnet-c"]
    assert listing["peers"][0] == {"name": "resnet-b", "ip": "10.0.0.2"}
    cm = api.obj("configmaps", NS, f"{NAME}-peers")
    assert cm["metadata"]["ownerReferences"][0]["uid"] == md["metadata"]["uid"]
    api.writes.clear()
    api.reads.clear()
    s.sync(NS, NAME, list(reversed(ADDRESSED)), applied)
    assert api.writes == []
    assert api.reads == ["modeldeployments/resnet", "configmaps/resnet-model"]  # remembered
    gone = [ADDRESSED[0], ADDRESSED[1], dataclasses.replace(ADDRESSED[2], terminating=True)]
    s.sync(NS, NAME, gone, applied)
    assert writes(api) == [STATUS, PEERS] and peers_json(api)["generation"] == 3
    assert [p["name"] for p in peers_json(api)["peers"]] == ["resnet-b", "resnet-c"]


def test_origin_concurrency_comes_from_the_spec_else_the_chart(api):
    create(api, {**SPEC, "distribution": {"originConcurrency": 7}})
    syncer(api).sync(NS, NAME, ADDRESSED, None)
    assert peers_json(api)["originConcurrency"] == 7
    api.patch_spec(NS, NAME, {"distribution": {"originConcurrency": None}})
    chart = RuntimeDefaults.model_validate(
        {"gpu": {"enabled": False}, "distribution": {"originConcurrency": 3}}
    )
    recorder = EventRecorder(api, "hotswap-operator", [].append)
    CachedSyncer(api, chart, recorder, clock=lambda: NOW).sync(NS, NAME, ADDRESSED, None)
    assert peers_json(api)["originConcurrency"] == 3 and peers_json(api)["generation"] == 2


def test_peers_json_edited_by_someone_else_is_restored_with_a_higher_generation(api):
    s, applied, _ = started(api)
    s.sync(NS, NAME, ADDRESSED, applied)
    mine = api.obj("configmaps", NS, f"{NAME}-peers")
    assert not s.peers_changed((NS, NAME), mine["metadata"]["resourceVersion"])  # own write
    cm = api.objects[("configmaps", NS, f"{NAME}-peers")]
    forged = json.loads(cm["data"]["peers.json"])
    forged["peers"] = [{"name": "resnet-b", "ip": "203.0.113.7"}]
    cm["data"]["peers.json"] = json.dumps(forged)
    cm["metadata"]["resourceVersion"] = "999"
    assert s.peers_changed((NS, NAME), "999")  # the watch event: forgotten, read again
    api.writes.clear()
    s.sync(NS, NAME, ADDRESSED, applied)
    assert writes(api) == [PEERS]
    assert "203.0.113.7" not in json.dumps(peers_json(api))
    assert peers_json(api)["generation"] == forged["generation"] + 1
    assert s.peers_changed((NS, NAME), None)  # deleted
    del api.objects[("configmaps", NS, f"{NAME}-peers")]
    s.sync(NS, NAME, ADDRESSED, applied)
    assert peers_json(api)["generation"] == 1 and len(peers_json(api)["peers"]) == 3


def test_a_peers_config_map_hotswap_did_not_create_is_never_taken(api):
    create(api)
    foreign = {"metadata": {"name": f"{NAME}-peers", "namespace": NS}, "data": {"x": "y"}}
    api.put_object("configmaps", {"apiVersion": "v1", "kind": "ConfigMap", **foreign})
    with pytest.raises(ChildConflictError, match=f"ConfigMap {NS}/{NAME}-peers already exists"):
        syncer(api).sync(NS, NAME, ADDRESSED, None)
    assert writes(api) == [STATUS, ("POST", "events InvalidSpec")]
    assert api.obj("configmaps", NS, f"{NAME}-peers")["data"] == {"x": "y"}


def test_without_peers_no_peers_json_is_written(api):
    create(api, {**SPEC, "distribution": {"peers": False}})
    s = syncer(api)
    s.sync(NS, NAME, ADDRESSED, None)
    assert api.obj("configmaps", NS, f"{NAME}-peers") is None
