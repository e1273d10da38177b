"""leader.py against an in-memory Lease API and a fake clock: one leader at a time,
takeover after the lease runs out (by the taker's clock), step down before that."""

import asyncio

import pytest
from fake_api import FakeApi

from hotswap_operator.leader import LeaderElector, Timing

NS, LEASE = "hotswap-system", "hs-hotswap-leader"


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


@pytest.fixture
def world():
    api, clock = FakeApi(), Clock()
    log: list[str] = []

    def elector(name):
        return LeaderElector(
            api,
            NS,
            LEASE,
            name,
            lambda: log.append(f"{name} started"),
            lambda: log.append(f"{name} stopped"),
            Timing(lease=8, renew_deadline=5, retry=1),
            clock,
        )

    return api, clock, log, elector("a"), elector("b")


def step(*electors):
    for elector in electors:
        asyncio.run(elector.step())


def holder(api):
    return api.obj("leases", NS, LEASE)["spec"]["holderIdentity"]


def test_one_replica_leads_and_renews(world):
    api, clock, log, a, b = world
    step(a, b)
    assert (a.leading, b.leading, holder(api)) == (True, False, "a")
    for _ in range(20):  # 20 s of renewals: b never takes over
        clock.now += 1
        step(a, b)
    assert log == ["a started"] and holder(api) == "a"


def test_the_standby_takes_over_once_the_lease_ran_out_by_its_own_clock(world):
    api, clock, log, a, b = world
    step(a, b)
    for _ in range(8):  # a is gone (killed): nothing renews the Lease
        clock.now += 1
        step(b)
    assert not b.leading  # 8 s after the last change seen: not expired yet
    clock.now += 1
    step(b)
    assert b.leading and holder(api) == "b"
    assert api.obj("leases", NS, LEASE)["spec"]["leaseTransitions"] == 1
    step(a)  # the old leader, back: sees b holding it and stops at once
    assert not a.leading and log == ["a started", "b started", "a stopped"]


def test_a_leader_that_cannot_renew_stops_before_the_lease_runs_out(world):
    api, clock, log, a, b = world
    step(a, b)
    api.refuse["leases"] = 503
    for _ in range(5):
        clock.now += 1
        step(a)
        assert a.leading
    clock.now += 1
    step(a)  # 6 s without renewing: past renew_deadline (5 s), before lease (8 s)
    assert not a.leading and log[-1] == "a stopped"
    del api.refuse["leases"]
    clock.now += 3
    step(b)  # b saw the last renewal 9 s ago: free
    assert b.leading


def test_a_clean_shutdown_releases_the_lease_for_the_next_retry(world):
    api, clock, log, a, b = world
    step(a, b)
    a.release()
    assert holder(api) == ""
    clock.now += 1
    step(b)
    assert b.leading and log == ["a started", "b started"]


def test_two_replicas_racing_for_a_free_lease_never_both_win(world):
    api, clock, _log, a, b = world
    step(a)
    a.release()
    clock.now += 1

    # b reads the free Lease, then a takes it before b writes: b's update is refused
    def a_first(method, what):
        if method == "PUT":
            asyncio.run(a.step())
        return False

    api.before_write = a_first
    step(b)
    assert a.leading and not b.leading and holder(api) == "a"


def test_a_blind_leader_gives_the_lease_up_and_no_blind_replica_takes_it(world):
    """A replica whose watches failed too long (watchhealth.py) does not lead: the leader
    stops and releases the Lease at its next step, a blind standby never takes it, and
    each may lead again once it sees."""
    api, clock, log, a, b = world
    blind = {"a": "watches failing", "b": None}
    a.blind, b.blind = (lambda: blind["a"]), (lambda: blind["b"])
    blind["a"] = None
    step(a, b)
    assert a.leading
    blind["a"] = blind["b"] = "watches failing"
    step(a)
    assert not a.leading and holder(api) == "" and log == ["a started", "a stopped"]
    assert a.blind_reason == "watches failing"
    for _ in range(20):  # the Lease is free, but nobody who cannot see takes it
        clock.now += 1
        step(a, b)
    assert holder(api) == "" and not (a.leading or b.leading)
    blind["b"] = None
    clock.now += 1
    step(a, b)
    assert b.leading and not a.leading and holder(api) == "b" and b.blind_reason is None
