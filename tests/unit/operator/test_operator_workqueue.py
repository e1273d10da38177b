"""workqueue.py: a key waits once, one worker per key, delayed adds, backoff."""

import asyncio

import pytest

from hotswap_operator.workqueue import WorkQueue


def run(coro):
    return asyncio.run(coro)


def test_a_burst_of_adds_is_one_item():
    async def go():
        q = WorkQueue()
        for _ in range(5):
            q.add("a")
        q.add("b")
        assert len(q) == 2
        assert [await q.get(), await q.get()] == ["a", "b"]
        assert len(q) == 0

    run(go())


def test_a_key_added_while_being_synced_comes_back_after_done():
    async def go():
        q = WorkQueue()
        q.add("a")
        key = await q.get()
        q.add("a")  # a trigger during the sync
        assert len(q) == 0  # not handed to a second worker meanwhile
        q.done(key)
        assert len(q) == 1 and await q.get() == "a"
        q.done("a")
        assert len(q) == 0

    run(go())


def test_get_waits_for_an_add():
    async def go():
        q = WorkQueue()
        waiter = asyncio.create_task(q.get())
        await asyncio.sleep(0.01)
        assert not waiter.done()
        q.add("a")
        assert await asyncio.wait_for(waiter, 1) == "a"

    run(go())


def test_add_after_keeps_the_earliest_deadline():
    async def go():
        q = WorkQueue()
        q.add_after("a", 10)
        q.add_after("a", 0.05)  # sooner: replaces
        q.add_after("a", 5)  # later: ignored
        assert len(q) == 0
        assert await asyncio.wait_for(q.get(), 1) == "a"
        q.done("a")
        await asyncio.sleep(0.1)
        assert len(q) == 0  # the 10 s and 5 s timers are gone

    run(go())


def test_retry_backs_off_exponentially_until_forgotten():
    async def go():
        q = WorkQueue(base_delay=0.01, max_delay=0.04)
        assert [q.retry("a") for _ in range(4)] == pytest.approx([0.01, 0.02, 0.04, 0.04])
        q.forget("a")
        assert q.retry("a") == pytest.approx(0.01)

    run(go())


def test_drop_and_clear_remove_waiting_and_delayed_keys():
    async def go():
        q = WorkQueue()
        q.add("a")
        q.add_after("b", 0.02)
        q.drop("a")
        q.clear()
        await asyncio.sleep(0.05)
        assert len(q) == 0
        q.add("a")  # usable afterwards
        assert await q.get() == "a"

    run(go())
