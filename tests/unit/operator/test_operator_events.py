"""events.py: best effort, and a repeat is count + 1 on the Event posted before."""

import pytest
from fake_api import FakeApi

from hotswap_operator.events import REPEAT_SECONDS, EventRecorder
from hotswap_operator.reasons import Event, EventType, Reason

MD = {"metadata": {"name": "resnet", "namespace": "ml", "uid": "u-1", "resourceVersion": "7"}}
SWAP_FAILED = Event(EventType.WARNING, Reason.SWAP_FAILED, "pod p failed revision 2: NaN")


@pytest.fixture
def recorded():
    api, outcomes, clock = FakeApi(), [], [0.0]
    recorder = EventRecorder(api, "hotswap-operator", outcomes.append, lambda: clock[0])
    return api, recorder, outcomes, clock


def test_a_repeat_patches_the_count_instead_of_posting_again(recorded):
    api, recorder, outcomes, clock = recorded
    assert recorder.record(MD, SWAP_FAILED, "2026-01-01T00:00:00Z")
    clock[0] += 5
    assert recorder.record(MD, SWAP_FAILED, "2026-01-01T00:00:05Z")
    (first, repeat) = api.writes
    assert first[0] == "POST" and first[2]["count"] == 1
    assert first[2]["involvedObject"]["uid"] == "u-1"
    assert repeat[0] == "PATCH" and repeat[1] == first[1]
    assert repeat[2] == {"count": 2, "lastTimestamp": "2026-01-01T00:00:05Z"}
    assert outcomes == ["created", "aggregated"]


def test_a_different_message_or_an_old_repeat_is_a_new_event(recorded):
    api, recorder, _outcomes, clock = recorded
    recorder.record(MD, SWAP_FAILED, "t0")
    other = Event(EventType.WARNING, Reason.SWAP_FAILED, "pod q failed revision 2: NaN")
    recorder.record(MD, other, "t1")
    clock[0] += REPEAT_SECONDS + 1
    recorder.record(MD, SWAP_FAILED, "t2")
    assert [w[0] for w in api.writes] == ["POST", "POST", "POST"]


def test_a_deleted_event_is_posted_anew(recorded):
    api, recorder, outcomes, _clock = recorded
    recorder.record(MD, SWAP_FAILED, "t0")
    api.objects.clear()  # someone deleted it (or the API's TTL did)
    recorder.record(MD, SWAP_FAILED, "t1")
    assert [w[0] for w in api.writes] == ["POST", "PATCH", "POST"]
    assert outcomes == ["created", "created"]


def test_a_refused_event_returns_false_and_never_raises(recorded, caplog):
    api, recorder, outcomes, _ = recorded
    api.refuse["events"] = 422
    assert recorder.record(MD, SWAP_FAILED, "t0") is False
    assert outcomes == ["failed"] and "SwapFailed on ml/resnet not posted" in caplog.text
