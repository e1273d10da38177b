"""peers.py: the peers.json the operator builds from Pod objects (pure)."""

from hotswap_contract.wire import MAX_PEERS, Peers, parse_peers
from hotswap_operator.context import PodInfo
from hotswap_operator.peers import listed, wanted

T0, T1, T2 = "2026-01-01T00:00:00Z", "2026-01-01T00:00:05Z", "2026-01-01T00:01:00Z"


def pod(name, ip, created=T0, **kwargs):
    return PodInfo(name, True, ip=ip, created=created, **kwargs)


def test_pods_from_the_pod_objects_are_listed_oldest_first_then_by_name():
    pods = [
        pod("m-new", "10.0.0.9", T2),
        pod("m-b", "10.0.0.2", T1),
        pod("m-a", "10.0.0.3", T1),
        pod("m-first", "fd00::1", T0),
    ]
    assert [(p.name, p.ip) for p in listed(pods)] == [
        ("m-first", "fd00::1"),
        ("m-a", "10.0.0.3"),
        ("m-b", "10.0.0.2"),
        ("m-new", "10.0.0.9"),
    ]


def test_pods_that_cannot_serve_are_left_out():
    pods = [
        pod("m-serving", "10.0.0.1"),
        pod("m-no-address", ""),
        pod("m-deleting", "10.0.0.2", terminating=True),
        pod("m-finished", "10.0.0.3", finished=True),
        pod("m-odd", "not-an-address"),
    ]
    assert [p.name for p in listed(pods)] == ["m-serving"]


def test_the_list_is_bounded():
    pods = [pod(f"m-{i:05d}", f"10.{i // 65536}.{i // 256 % 256}.{i % 256}") for i in range(2050)]
    assert len(listed(pods)) == MAX_PEERS


def test_a_pod_object_gives_its_age_and_whether_it_finished():
    raw = {
        "metadata": {"name": "m-a", "creationTimestamp": T1, "deletionTimestamp": T2},
        "status": {"podIP": "10.0.0.1", "phase": "Failed"},
    }
    info = PodInfo.from_pod(raw)
    assert (info.ip, info.created, info.finished, info.terminating) == ("10.0.0.1", T1, True, True)
    running = PodInfo.from_pod({"metadata": {"name": "m-b"}, "status": {"phase": "Running"}})
    assert (running.ip, running.created, running.finished) == ("", "", False)


def test_the_generation_moves_only_when_the_content_changes():
    pods = [pod("m-b", "10.0.0.2", T1), pod("m-a", "10.0.0.1", T0)]
    first = wanted("m", pods, 2, None)
    assert first is not None and first.generation == 1
    assert first.origins == ("m-a", "m-b")
    stored = parse_peers(first.dumps())
    assert wanted("m", list(reversed(pods)), 2, stored) is None  # same pods, any order
    assert wanted("m", [*pods, pod("m-c", "", T2)], 2, stored) is None  # no address yet
    grown = wanted("m", [*pods, pod("m-c", "10.0.0.3", T2)], 2, stored)
    assert grown is not None and grown.generation == 2
    assert [p.name for p in grown.peers] == ["m-a", "m-b", "m-c"] and grown.origins == first.origins
    fewer_origins = wanted("m", pods, 1, stored)
    assert fewer_origins is not None and fewer_origins.generation == 2
    assert fewer_origins.origins == ("m-a",)


def test_no_pods_is_an_empty_list():
    empty = wanted("m", [], 2, None)
    assert empty == Peers(name="m", generation=1, originConcurrency=2, peers=())
