"""`kubectl hotswap dashboard` in headless Chromium while HOLLOW runtime pods swap.

Hollow pods (devcluster/hollow.py) stand in for the model here, as in
`bench/dashboard.py --hollow`, to have 60 pods on two cores: real Pod objects made by the
Deployment and ReplicaSet controllers for the ModelDeployment, bound by the scheduler to
two hollow Nodes, each pod running the runtime's real control path (API watch of its
ConfigMap, desired state, reporter) with a token bound to itself, around a stand-in load
of LOAD_SECONDS. No kubelet: the operator runs as a process (devcluster/operator_process.py). The
plugin serves the page as `alice` (examples/kubectl-hotswap-rbac.yaml only).

One AllAtOnce swap from revision 1 to 2: the page must draw every pod on revision 2
within BOUND_SECONDS of the last report the test's own watch saw, and its groups, counts
and each square's revision, state and colour must be those of the ModelReplicas.
"""

from __future__ import annotations

import colorsys
import contextlib
import threading
import time
import uuid
from collections import Counter

import pytest

from devcluster import browser, procs
from devcluster.hollow import deployment, placeholder_checkpoint, spawn_nodes
from devcluster.operator_process import operator_process
from devcluster.rest import ApiError
from devcluster.waiting import wait_for

MD = "/apis/hotswap.dev/v1alpha1/namespaces/{ns}/modeldeployments"
REPLICAS = "/apis/hotswap.dev/v1alpha1/namespaces/{ns}/modelreplicas"
NAME = "hollow"
PODS = 60
NODES = 2
LOAD_SECONDS = 0.5
# The page draws at most 4 times a second (board.RENDER_HZ): 0.25 s of coalescing, the
# SSE hop and one animation frame; bench/dashboard.py --hollow measured 0.33 s at 1000
# pods. The rest is slack for this shared 2-core machine.
BOUND_SECONDS = 3.0
pytestmark = pytest.mark.skipif(browser.missing() is not None, reason=str(browser.missing()))


def checkpoint(revision):
    return placeholder_checkpoint(f"hollow-board-{revision}")


@pytest.fixture
def hollow_nodes(crd, tmp_path):
    """NODES hollow node processes; afterwards their Nodes and the pods bound to them
    are deleted (no kubelet is left to finish a graceful deletion)."""
    prefix = f"board-{uuid.uuid4().hex[:6]}"
    most = -(-PODS * 6 // (5 * NODES)) + 5  # a fifth to spare: the scheduler spreads them
    started = spawn_nodes(crd.kubeconfig, NODES, LOAD_SECONDS, most, tmp_path, prefix=prefix)
    names = [f"{prefix}-{i}" for i in range(NODES)]
    try:
        yield names
    finally:
        for proc in started:
            procs.stop_group(proc)
        client = crd.rest()
        for name in names:
            with contextlib.suppress(ApiError):
                client.delete(f"/api/v1/nodes/{name}")
            bound = client.get("/api/v1/pods", {"fieldSelector": f"spec.nodeName={name}"})
            for pod in bound["items"]:
                meta = pod["metadata"]
                with contextlib.suppress(ApiError):
                    client.delete(
                        f"/api/v1/namespaces/{meta['namespace']}/pods/{meta['name']}",
                        {"gracePeriodSeconds": 0},
                    )


class Reports:
    """The test's own watch of the ModelReplicas: when each pod first reported a
    revision Serving (time.time(), the page's clock too: one machine)."""

    def __init__(self, client, namespace):
        self.client, self.path = client, REPLICAS.format(ns=namespace)
        self.serving: dict[int, dict[str, float]] = {}
        self._stop = threading.Event()
        self._response = None
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self):
        while not self._stop.is_set():
            try:
                listed = self.client.get(self.path)
                for item in listed["items"]:
                    self._seen(item)
                params = {"resourceVersion": listed["metadata"]["resourceVersion"]}
                for event in self.client.watch(
                    self.path, {**params, "timeoutSeconds": 60}, self._opened
                ):
                    if event["type"] in ("ADDED", "MODIFIED"):
                        self._seen(event["object"])
            except Exception:  # a dropped watch, or stop(): list again (or end)
                self._stop.wait(0.2)

    def _opened(self, response):
        self._response = response

    def _seen(self, item):
        status = item.get("status") or {}
        if status.get("state") == "Serving" and isinstance(status.get("revision"), int):
            pods = self.serving.setdefault(status["revision"], {})
            pods.setdefault(item["metadata"]["name"], time.time())

    def last(self, revision, count):
        """When the last of `count` pods reported `revision` Serving (None: not yet)."""
        pods = self.serving.get(revision, {})
        return max(pods.values()) if len(pods) >= count else None

    def stop(self):
        self._stop.set()
        if self._response is not None:
            with contextlib.suppress(Exception):
                self._response.shutdown()


def page_pods(driver):
    """pod -> (revision, state, background colour) as the page draws each square."""
    return {
        name: tuple(value)
        for name, value in driver.execute_script(
            "const out = {};"
            "for (const c of document.querySelectorAll('#groups .pod'))"
            "  out[c.dataset.pod] = [c.dataset.revision, c.dataset.state,"
            "    getComputedStyle(c).backgroundColor];"
            "return out;"
        ).items()
    }


def groups(driver):
    """(revision|state) -> [the count a group's heading shows, the squares in it]."""
    return driver.execute_script(
        "const out = {};"
        "for (const g of document.querySelectorAll('#groups .group'))"
        "  out[g.dataset.revision + '|' + g.dataset.state] = [Number(g.dataset.count),"
        "    g.querySelectorAll('.pod').length];"
        "return out;"
    )


def rgb(revision):
    """board.js's colour of a revision, hsl((revision * 137) % 360, 60%, 45%), in RGB."""
    r, g, b = colorsys.hls_to_rgb((revision * 137) % 360 / 360, 0.45, 0.60)
    return tuple(round(c * 255) for c in (r, g, b))


def channels(css):
    """'rgb(12, 34, 56)' -> (12, 34, 56)."""
    return tuple(int(c) for c in css[css.index("(") + 1 : css.index(")")].split(","))


def test_the_page_shows_every_hollow_pod_on_the_new_revision_soon_after_its_report(
    crd, namespace, alice, hollow_nodes, chrome, tmp_path
):
    client = crd.rest()
    path = f"{MD.format(ns=namespace)}/{NAME}"
    reports = Reports(client, namespace)
    try:
        with operator_process(crd, namespace, tmp_path / "operator.log"):
            client.post(MD.format(ns=namespace), deployment(NAME, PODS, checkpoint(1)))
            wait_for(lambda: reports.last(1, PODS), 300, 1.0, what=f"{PODS} pods serving 1")
            with browser.DashboardProcess(alice, namespace, NAME) as board:
                chrome.get(board.url)
                wait_for(lambda: groups(chrome) == {"1|Serving": [PODS, PODS]}, 60, 0.2,
                         what=f"{PODS} pods on revision 1 on the page")  # fmt: skip
                client.patch(path, {"spec": {"checkpoint": checkpoint(2)}})
                last = wait_for(lambda: reports.last(2, PODS), 300, 0.05,
                                what=f"{PODS} pods reporting revision 2")  # fmt: skip
                drawn = on_page(chrome, last)
                browser.screenshot(chrome, "dashboard-hollow-swapped")
                behind = drawn - last
                print(f"\npage drew the last of {PODS} hollow pods {behind:.2f}s after the "
                      "test's watch saw its report")  # fmt: skip
                assert behind <= BOUND_SECONDS, behind
                matches_the_replicas(chrome, client, namespace)
    finally:
        reports.stop()


def on_page(driver, last):
    """When the page drew the last pod on revision 2 (epoch seconds); fail when every pod
    is not drawn so within BOUND_SECONDS of `last`."""
    everyone = {"2|Serving": [PODS, PODS]}
    try:
        wait_for(lambda: groups(driver) == everyone, max(last + BOUND_SECONDS - time.time(), 0),
                 0.05, what="every pod on revision 2 on the page")  # fmt: skip
    except TimeoutError:
        late = time.time() - last
        pytest.fail(f"{late:.1f}s after the last report the page shows {groups(driver)}")
    shown = driver.execute_script("return hotswapBoard.shownAt")
    return max(float(at) for at in shown.values()) / 1000


def matches_the_replicas(driver, client, namespace):
    """The page's groups and each square are what the ModelReplicas say."""
    items = client.get(REPLICAS.format(ns=namespace))["items"]
    reported = {i["metadata"]["name"]: i["status"] for i in items}
    counts = Counter(f"{s['revision']}|{s['state']}" for s in reported.values())
    assert groups(driver) == {k: [n, n] for k, n in counts.items()}
    drawn = page_pods(driver)
    assert set(drawn) == set(reported)
    for pod, (revision, state, colour) in drawn.items():
        assert (revision, state) == (str(reported[pod]["revision"]), reported[pod]["state"])
        want, got = rgb(reported[pod]["revision"]), channels(colour)
        assert all(abs(a - b) <= 1 for a, b in zip(want, got, strict=True)), (pod, want, got)
