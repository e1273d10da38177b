"""The request memory budget (budget.py): claims charged as memory is held, granted by
the banker's rule in arrival order, waits bounded, exhaustion for readiness."""

from __future__ import annotations

import asyncio

import pytest

from hotswap_runtime.budget import RECEIVE_FIXED, SMALLEST_CLAIM, MemoryBudget
from hotswap_runtime.errors import BodyTooSlow, Overloaded, RequestTooLarge
from hotswap_runtime.serving.body import BodyClock, BodyLimits
from hotswap_runtime.settings import load_settings

MiB = 1 << 20


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_claim_holds_only_what_it_was_charged() -> None:
    """Two claims of 600 MiB each on 1 GiB that have received little leave room for
    everyone else: what a client declared is not held until its bytes arrive."""

    async def scenario() -> None:
        budget = MemoryBudget(1024 * MiB)
        slow = [budget.claim(600 * MiB, "slow") for _ in range(2)]
        for claim in slow:
            assert claim.take_now(1)
        for _ in range(50):
            async with budget.hold(4 * MiB):
                pass
        async with budget.hold(400 * MiB):
            assert budget.used == 400 * MiB + 2
        for claim in slow:
            claim.close()
        assert budget.used == 0

    asyncio.run(scenario())


def test_younger_claims_get_only_the_room_an_older_one_leaves() -> None:
    """A large request that came first is not starved by small ones after it: they are
    granted only what leaves it able to finish, and it gets its bytes as soon as the
    request before it is done."""

    async def scenario() -> list[str]:
        budget = MemoryBudget(100)
        first = budget.claim(60)
        await first.take_rest()
        big = budget.claim(80)
        order: list[str] = []
        big_task = asyncio.create_task(big.take_rest())
        await asyncio.sleep(0)  # a scheduling step: let it ask
        small = budget.claim(30)
        assert small.take_now(20), "room the big one does not need"
        assert not small.take_now(1), "the big one could no longer finish"
        assert not big_task.done()
        first.close()
        await big_task
        order.append("big")
        assert budget.used == 100
        big.close()
        await small.take_rest()
        order.append("small")
        small.close()
        return order

    assert asyncio.run(scenario()) == ["big", "small"]


def test_two_bodies_arriving_together_never_wait_on_each_other() -> None:
    """Two claims of 80 on 100 charged chunk by chunk in turn: the younger one stops
    where the older could no longer finish, the older finishes, then the younger."""

    async def scenario() -> None:
        budget = MemoryBudget(100, wait=5.0)
        a, b = budget.claim(80, "a"), budget.claim(80, "b")
        taken = {"a": 0, "b": 0}

        async def receive(claim: object, name: str) -> None:
            for _ in range(8):
                await claim.take(10)  # type: ignore[attr-defined]
                taken[name] += 10
                await asyncio.sleep(0)
            claim.close()  # type: ignore[attr-defined]

        await asyncio.wait_for(asyncio.gather(receive(a, "a"), receive(b, "b")), 5)
        assert taken == {"a": 80, "b": 80} and budget.used == 0

    asyncio.run(scenario())


def test_a_request_that_waits_past_the_bound_is_refused_and_holds_nothing() -> None:
    async def scenario() -> None:
        budget = MemoryBudget(100, wait=0.05)
        hog = budget.claim(100)
        await hog.take_rest()
        late = budget.claim(10, "request")
        with pytest.raises(Overloaded, match=r"waited 0.05s for 10 bytes .* retry later"):
            await late.take(10)
        assert late.waited >= 0.05 and budget.refused == 1
        with pytest.raises(Overloaded):  # the bound is for the whole request
            await late.take(1)
        late.close()
        hog.close()
        assert budget.used == 0 and not budget._waiting

    asyncio.run(scenario())


def test_a_claim_over_the_whole_budget_is_refused_at_once() -> None:
    budget = MemoryBudget(100)
    with pytest.raises(RequestTooLarge, match="over this runtime's request memory"):
        budget.claim(101)
    assert budget.used == 0


def test_a_waiter_cancelled_leaves_nothing_charged() -> None:
    async def scenario() -> None:
        budget = MemoryBudget(100)
        hog = budget.claim(100)
        await hog.take_rest()
        claim = budget.claim(50)
        waiter = asyncio.create_task(claim.take(50))
        await asyncio.sleep(0)
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter
        claim.close()
        hog.close()
        assert budget.used == 0 and not budget._waiting

    asyncio.run(scenario())


async def refused(budget: MemoryBudget, nbytes: int) -> None:
    async with budget.claim(nbytes) as claim:
        with pytest.raises(Overloaded):
            await claim.take(nbytes)


def test_exhausted_after_refusing_for_a_while_and_ready_once_one_gets_through() -> None:
    async def scenario() -> None:
        clock = Clock()
        budget = MemoryBudget(SMALLEST_CLAIM * 2, wait=0.01, unready_after=10, clock=clock)
        hog = budget.claim(SMALLEST_CLAIM * 2)
        await hog.take_rest()
        assert not budget.exhausted()
        await refused(budget, SMALLEST_CLAIM)
        clock.now += 9
        assert not budget.exhausted(), "refusing, but not for long yet"
        clock.now += 1
        assert budget.exhausted() and budget.exhausted_for() == pytest.approx(10, abs=0.1)
        hog.close()
        assert not budget.exhausted(), "room for a small request again"
        hog = budget.claim(SMALLEST_CLAIM * 2)
        await hog.take_rest()
        assert not budget.exhausted(), "nothing refused since"
        await refused(budget, 1)
        clock.now += 20
        assert budget.exhausted()
        budget.got_through()
        assert not budget.exhausted()

    asyncio.run(scenario())


def test_exhaustion_never_turns_readiness_off_with_unready_after_zero() -> None:
    async def scenario() -> None:
        budget = MemoryBudget(10, wait=0.01, unready_after=0)
        await budget.claim(10).take(10)
        await refused(budget, 1)
        assert not budget.exhausted()

    asyncio.run(scenario())


def test_a_body_may_be_slow_for_the_grace_then_must_keep_the_rate() -> None:
    limits = BodyLimits(1 << 30, seconds=60, grace=5, min_rate=1000)
    assert limits.cutoff(0) == 5  # nothing yet: cut off when the grace ends
    assert limits.cutoff(2000) == 5
    assert limits.cutoff(20_000) == 20  # 20 kB carry it to 20 s at 1 kB/s
    assert limits.cutoff(10**9) == 60  # never past the deadline


def test_slow_sender_settings_come_from_the_environment_and_are_checked() -> None:
    env = {
        "HOTSWAP_MODEL_NAME": "m",
        "HOTSWAP_REQUEST_WAIT_SECONDS": "2",
        "HOTSWAP_BODY_SECONDS": "30",
        "HOTSWAP_BODY_GRACE_SECONDS": "1",
        "HOTSWAP_BODY_MIN_RATE": "1000",
        "HOTSWAP_OVERLOAD_UNREADY_SECONDS": "0",
    }
    settings = load_settings([], env)
    assert (
        settings.request_wait_seconds,
        settings.body_seconds,
        settings.body_grace_seconds,
        settings.body_min_rate,
        settings.overload_unready_seconds,
    ) == (2, 30, 1, 1000, 0)
    with pytest.raises(SystemExit, match="HOTSWAP_BODY_MIN_RATE must be positive"):
        load_settings(["--body-min-rate", "0"], env)
    with pytest.raises(SystemExit, match="must not be negative"):
        load_settings([], {**env, "HOTSWAP_BODY_GRACE_SECONDS": "-1"})


def test_a_silent_body_is_cut_off_but_not_while_it_waits_for_the_budget() -> None:
    limits = BodyLimits(1000, seconds=5, grace=0.05, min_rate=1e6)

    async def scenario() -> None:
        bodies = BodyClock(limits, tick=0.01)
        budget = MemoryBudget(RECEIVE_FIXED + 100, wait=5)
        silent = asyncio.Event()

        async def never() -> dict[str, object]:
            await silent.wait()
            return {}

        async with budget.claim(RECEIVE_FIXED + 100) as claim:
            with pytest.raises(BodyTooSlow, match=r"0 of 100 bytes in 0\.\d+s; after 0\.05s"):
                await bodies.receive(never, claim, 100, "test")
        hog = budget.claim(100)
        await hog.take_rest()

        async def whole() -> dict[str, object]:
            return {"type": "http.request", "body": b"x" * 100, "more_body": False}

        async with budget.claim(RECEIVE_FIXED + 100) as claim:
            receiving = asyncio.create_task(bodies.receive(whole, claim, 100, "test"))
            await asyncio.sleep(0.2)  # four graces spent waiting for the budget
            assert not receiving.done()
            hog.close()
            assert await receiving == b"x" * 100

    asyncio.run(scenario())
