"""watchhealth.py: since when each watched path has failed, the bound, and the two
places in kopf's API client it reads each request's outcome from."""

import asyncio
import inspect
import logging

import aiohttp
import aiohttp.web
import pytest
from kopf._cogs.clients import api, errors

from hotswap_operator import watchhealth
from hotswap_operator.watchhealth import WatchHealth

PODS = "https://10.96.0.1:443/api/v1/namespaces/ml/pods"


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def test_blind_once_a_path_failed_longer_than_the_bound_and_sees_on_its_next_success():
    clock = Clock()
    health = WatchHealth(30, clock)
    health.failed(f"{PODS}?watch=true&resourceVersion=7", "ClientConnectorDNSError()")
    clock.now += 20
    health.failed(f"{PODS}?labelSelector=a", "ClientConnectorDNSError()")  # the list: same
    clock.now += 10
    assert health.blind() is None  # 30 s: not longer than the bound
    clock.now += 1
    reason = health.blind()
    assert reason is not None
    assert "/api/v1/namespaces/ml/pods has failed for 31s" in reason
    assert "ClientConnectorDNSError()" in reason and "HOTSWAP_WATCH_FAILURE_SECONDS" in reason
    health.succeeded(f"{PODS}?watch=true&resourceVersion=9")
    assert health.blind() is None


def test_a_quiet_watch_is_never_blind_and_another_paths_success_does_not_clear_a_failure():
    clock = Clock()
    health = WatchHealth(5, clock)
    clock.now += 3600  # nothing at all for an hour: a quiet cluster, not a failure
    assert health.blind() is None
    health.failed(PODS, "503")
    health.succeeded("https://10.96.0.1:443/api/v1/namespaces/ml/configmaps?watch=true")
    clock.now += 6
    assert health.blind() is not None


def test_the_paths_remembered_are_bounded():
    health = WatchHealth(1, Clock())
    for i in range(watchhealth.MAX_PATHS * 4):
        health.failed(f"https://api/x{i}", "e" * 10_000)
    assert len(health._failing) == watchhealth.MAX_PATHS
    assert all(len(e) == watchhealth.MAX_ERROR_CHARS for _, e in health._failing.values())


def test_kopfs_failed_attempt_records_and_responses_reach_it():
    """The seams in kopf 1.45: every response passes errors.check_response (looked up on
    the module at each request, so replacing it takes effect), and each failed attempt
    is an ERROR record "Request attempt ... failed ...: GET <url> -> <error>" under
    kopf._cogs.clients."""
    source = inspect.getsource(api.request)
    assert "await errors.check_response(response)" in source
    assert 'logger.error(f"Request attempt {idx} failed; will retry: {what} -> {e!r}")' in source
    assert 'what = f"{method.upper()} {url}"' in source
    clock = Clock()
    health = WatchHealth(1, clock)
    original = errors.check_response
    uninstall = watchhealth.install(health)
    try:
        assert errors.check_response is not original
        logger = logging.getLogger("kopf._cogs.clients.watching")
        logger.error(f"Request attempt #1/9 failed; will retry: GET {PODS}?watch=true -> Boom()")
        logger.error("Request attempt #1/9 failed; will retry: POST https://api/events -> X()")
        logger.error("something else: GET https://api/other")
        clock.now += 2
        assert health._failing.keys() == {"/api/v1/namespaces/ml/pods"}
        assert "Boom()" in (health.blind() or "")
    finally:
        uninstall()
    assert errors.check_response is original


def test_each_real_response_of_a_get_counts_for_its_path():
    """kopf's check_response, wrapped, on real aiohttp responses of a local server: a
    503 fails the path (and still raises as kopf expects), the next 200 clears it."""
    statuses = [503, 200]

    async def pods(_request):
        return aiohttp.web.json_response({"kind": "Status"}, status=statuses.pop(0))

    async def run(health):
        app = aiohttp.web.Application()
        app.add_routes([aiohttp.web.get("/api/v1/namespaces/ml/pods", pods)])
        runner = aiohttp.web.AppRunner(app)
        await runner.setup()
        site = aiohttp.web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]
        url = f"http://127.0.0.1:{port}/api/v1/namespaces/ml/pods?watch=true"
        try:
            async with aiohttp.ClientSession() as session:
                async with session.get(url) as response:
                    with pytest.raises(errors.APIServerError):
                        await errors.check_response(response)
                failed = dict(health._failing)
                async with session.get(url) as response:
                    await errors.check_response(response)
                return failed, dict(health._failing)
        finally:
            await runner.cleanup()

    health = WatchHealth(1, Clock())
    uninstall = watchhealth.install(health)
    try:
        failed, after = asyncio.run(run(health))
    finally:
        uninstall()
    (path, (_, error)), *others = failed.items()
    assert (path, error[:3], others) == ("/api/v1/namespaces/ml/pods", "503", [])
    assert after == {}
