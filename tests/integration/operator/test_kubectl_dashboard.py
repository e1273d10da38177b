"""`kubectl hotswap dashboard` in a real browser, against the real API server.

Headless Chromium (Debian's package, driven by Selenium through /usr/bin/chromedriver)
opens the page that the plugin, run as user `alice` with only
examples/kubectl-hotswap-rbac.yaml, serves. 300 pods' reports are written the way
runtime pods write them (their ModelReplicas) and the ModelDeployment's status is made
by the operator's real sync: the page's grid follows a Canary rollout as the pods swap,
its pause button pauses the rollout, its abort and retry buttons write the annotations
`kubectl hotswap abort|retry` write, and a user whose RBAC forbids patch gets no
buttons and a 403 for each edit. Screenshots are kept under .cache/artifacts/browser/.
"""

from __future__ import annotations

import http.client
import json
import shutil
import uuid
from urllib.parse import urlsplit

import pytest
from replicas import replica_reports, report

from devcluster import browser
from devcluster.cluster import REPO
from devcluster.rest import MERGE_PATCH
from devcluster.waiting import wait_for
from hotswap_operator import commands, resources
from hotswap_operator.config import RuntimeDefaults
from hotswap_operator.context import PodInfo
from hotswap_operator.events import EventRecorder
from hotswap_operator.kube import Kube
from hotswap_operator.sync import Syncer

MD = "/apis/hotswap.dev/v1alpha1/namespaces/{ns}/modeldeployments"
NAME = "fleet"
PODS = 300
SHA1, SHA2 = "1" * 64, "2" * 64
URI = "https://svc:pa55word@store.example/m/v{n}.safetensors?X-Amz-Signature=s3cr3t{n}"
SPEC = {
    "replicas": PODS,
    "model": {"architecture": "torchvision/resnet18", "inputShape": [3, 32, 32]},
    "checkpoint": {"uri": URI.format(n=1), "sha256": SHA1},
    "runtime": {"device": "cpu"},
    "rollout": {"strategy": "Canary", "steps": ["10%", "50%", "100%"]},
}
CPU = RuntimeDefaults.model_validate({"gpu": {"enabled": False}})
SWAP = {"fetch": 0.8, "parse": 0.05, "load": 0.4, "validate": 0.12, "activate": 0.002}
DOCS = REPO / "docs" / "dashboard-canary-300.png"
# HOTSWAP_DOCS_SCREENSHOT=1: the canary screenshot also goes to docs/ (how DOCS was made)
pytestmark = pytest.mark.skipif(browser.missing() is not None, reason=str(browser.missing()))


@pytest.fixture
def reader(crd, namespace):
    """User `reader`: may read and watch, not patch."""
    crd.kubectl(
        "create", "role", "hotswap-reader", "-n", namespace, "--resource=modeldeployments,"
        "modelreplicas", "--verb=get,list,watch",
    )  # fmt: skip
    crd.kubectl(
        "create", "rolebinding", "reader-hotswap", "-n", namespace,
        "--role=hotswap-reader", "--user=reader",
    )  # fmt: skip
    return crd.user_kubeconfig(f"reader-{uuid.uuid4().hex[:6]}", "reader")


class Fleet:
    """ModelDeployment `fleet` of `pods` pods, its status made by the operator's sync."""

    def __init__(self, cluster, namespace, pods=PODS):
        self.client, self.ns = cluster.rest(), namespace
        self.pods = [PodInfo(f"{NAME}-{i:04d}", True) for i in range(pods)]
        kube = Kube(cluster.api_client())
        self.syncer = Syncer(kube, CPU, EventRecorder(kube, resources.MANAGER))
        body = {"apiVersion": "hotswap.dev/v1alpha1", "kind": "ModelDeployment",
                "metadata": {"name": NAME}, "spec": {**SPEC, "replicas": pods}}  # fmt: skip
        self.client.post(MD.format(ns=namespace), body)
        for pod in self.pods:
            self.report(pod.name, {"revision": 1, "sha256": SHA1, "state": "Serving"})
        self.sync()

    @property
    def path(self):
        return f"{MD.format(ns=self.ns)}/{NAME}"

    def report(self, pod, status):
        report(self.client, self.ns, pod, status, NAME)

    def sync(self):
        self.syncer.sync(
            self.ns, NAME, self.pods, None, replica_reports(self.client, self.ns, NAME)
        )
        return self.client.get(self.path)


def groups(driver):
    """(revision, state) -> the count the page shows, and the squares it draws."""
    return driver.execute_script(
        "const out = {};"
        "for (const g of document.querySelectorAll('#groups .group')) {"
        "  out[g.dataset.revision + '|' + g.dataset.state] = [Number(g.dataset.count),"
        "    g.querySelectorAll('.pod').length]; }"
        "return out;"
    )


def colours(driver, state, revision):
    """The distinct background colours of the squares in one group."""
    return set(
        driver.execute_script(
            "return [...document.querySelectorAll("
            f'\'.group[data-revision="{revision}"][data-state="{state}"] .pod\')]'
            ".map(c => getComputedStyle(c).backgroundColor);"
        )
    )


def shows(driver, expected, timeout=30):
    """Wait until the page's groups are `expected`; else fail with what it shows."""
    try:
        return wait_for(lambda: groups(driver) == expected, timeout, 0.2, what=f"{expected}")
    except TimeoutError:
        pytest.fail(f"the page shows {groups(driver)}, not {expected}")


def test_a_300_pod_canary_in_the_browser_and_its_pause_button(crd, namespace, alice, chrome):
    fleet = Fleet(crd, namespace)
    with browser.DashboardProcess(alice, namespace, NAME, "--edit") as board:
        chrome.get(board.url)
        assert urlsplit(chrome.current_url).query == ""  # the token went into a cookie
        shows(chrome, {"1|Serving": [PODS, PODS]})
        assert chrome.find_element("id", "total").get_attribute("data-count") == str(PODS)

        revision_2 = {"checkpoint": {"uri": URI.format(n=2), "sha256": SHA2}}
        fleet.client.patch(fleet.path, {"spec": revision_2}, MERGE_PATCH)
        canary = fleet.sync()["status"]["candidatePods"]
        assert len(canary) == 30  # step 1: 10%
        step(chrome, 1)
        for pod in canary[:10]:
            fleet.report(pod, {"revision": 1, "sha256": SHA1, "state": "Loading",
                               "targetRevision": 2})  # fmt: skip
        shows(chrome, {"1|Serving": [290, 290], "2|Loading": [10, 10]})
        for pod in canary:
            fleet.report(pod, {"revision": 2, "sha256": SHA2, "state": "Serving",
                               "targetRevision": 2, "swapSeconds": SWAP})  # fmt: skip
        shows(chrome, {"1|Serving": [270, 270], "2|Serving": [30, 30]})
        one, two = colours(chrome, "Serving", 1), colours(chrome, "Serving", 2)
        assert len(one) == 1 and len(two) == 1 and one != two  # one colour per revision
        wider = fleet.sync()["status"]["candidatePods"]  # step 2: 50%
        assert len(wider) == 150
        step(chrome, 2)
        for pod in sorted(set(wider) - set(canary))[:40]:
            fleet.report(pod, {"revision": 1, "sha256": SHA1, "state": "Loading",
                               "targetRevision": 2})  # fmt: skip
        shows(chrome, {"1|Serving": [230, 230], "2|Loading": [40, 40], "2|Serving": [30, 30]})

        chrome.find_element("css selector", f'.pod[data-pod="{canary[0]}"]').click()
        phases = wait_for(
            lambda: [r.get_attribute("data-phase") for r in chrome.find_elements(
                "css selector", "#detail-body .bar-row")],
            10, what="the picked pod's swap waterfall",
        )  # fmt: skip
        assert phases == ["fetch", "parse", "load", "validate", "activate"]
        history = chrome.find_element("id", "history").text
        assert "store.example/m/v2.safetensors" in history and "s3cr3t" not in history
        assert "pa55word" not in chrome.page_source
        shot = browser.screenshot(chrome, "dashboard-canary-300")
        if _docs_copy():
            shutil.copyfile(shot, DOCS)

        chrome.find_element("css selector", 'button[data-edit="pause"]').click()
        wait_for(lambda: fleet.client.get(fleet.path)["spec"]["rollout"].get("paused"),
                 30, what="spec.rollout.paused after the Pause button")  # fmt: skip
        wait_for(lambda: chrome.find_element("id", "rollout").get_attribute("data-paused")
                 == "true", 30, what="the page shows the rollout paused")  # fmt: skip
        assert "paused (revision 2 at step 2 of 3)" in chrome.find_element("id", "said").text
        browser.screenshot(chrome, "dashboard-canary-300-paused")


def offered(driver):
    """The edit buttons the page shows now."""
    buttons = driver.find_elements("css selector", "#buttons button")
    return [b.get_attribute("data-edit") for b in buttons if b.is_displayed()]


def offers(driver, expected):
    try:
        return wait_for(lambda: offered(driver) == expected, 30, 0.2, what=f"{expected}")
    except TimeoutError:
        pytest.fail(f"the page offers {offered(driver)}, not {expected}")


def annotations(fleet):
    return fleet.client.get(fleet.path)["metadata"].get("annotations") or {}


def test_abort_asks_first_and_retry_follows_the_rollback_in_the_browser(
    crd, namespace, alice, chrome
):
    """Abort is offered while the candidate runs, asked again on the page, and writes
    hotswap.dev/abort; once the operator rolled back, Retry is offered instead and
    writes hotswap.dev/retry (clearing the abort), as the plugin's subcommands do."""
    fleet = Fleet(crd, namespace, pods=20)
    with browser.DashboardProcess(alice, namespace, NAME, "--edit") as board:
        chrome.get(board.url)
        shows(chrome, {"1|Serving": [20, 20]})
        offers(chrome, ["pause"])  # no candidate, no earlier revision, nothing rolled back
        revision_2 = {"checkpoint": {"uri": URI.format(n=2), "sha256": SHA2}}
        fleet.client.patch(fleet.path, {"spec": revision_2}, MERGE_PATCH)
        fleet.sync()
        step(chrome, 1)
        offers(chrome, ["pause", "promote", "undo", "abort"])

        button = chrome.find_element("css selector", 'button[data-edit="abort"]')
        button.click()
        confirm = chrome.find_element("id", "confirm")
        assert confirm.is_displayed()
        assert "Abort revision 2? Every pod returns to revision 1" in confirm.text
        browser.screenshot(chrome, "dashboard-abort-asked")
        chrome.find_element("id", "confirm-no").click()
        assert not confirm.is_displayed() and commands.ABORT not in annotations(fleet)
        button.click()
        chrome.find_element("id", "confirm-yes").click()
        wait_for(lambda: annotations(fleet).get(commands.ABORT) == "2", 30,
                 what="hotswap.dev/abort after the Abort button")  # fmt: skip
        offers(chrome, ["pause", "promote", "undo"])  # asked: no second abort
        assert "revision 2 aborted" in chrome.find_element("id", "said").text

        rollback = fleet.sync()["status"]["rollback"]  # the operator acts on it
        assert rollback["revision"] == 2
        offers(chrome, ["pause", "undo", "retry"])
        browser.screenshot(chrome, "dashboard-rolled-back")
        chrome.find_element("css selector", 'button[data-edit="retry"]').click()
        value = commands.retry_value(2, rollback["rolledBackAt"])
        wait_for(lambda: annotations(fleet).get(commands.RETRY) == value, 30,
                 what="hotswap.dev/retry after the Retry button")  # fmt: skip
        assert commands.ABORT not in annotations(fleet)  # the retry cleared it
        assert "revision 2 runs again from step 1" in chrome.find_element("id", "said").text
        assert fleet.sync()["status"]["candidate"]["revision"] == 2
        step(chrome, 1)
        offers(chrome, ["pause", "promote", "undo", "abort"])


def step(driver, number):
    """Wait until the page shows the canary at step `number` of 3."""
    text = f"canary 2 at step {number} of 3"
    wait_for(lambda: text in driver.find_element("id", "rollout").text, 30, what=text)


def _docs_copy():
    import os

    return os.environ.get("HOTSWAP_DOCS_SCREENSHOT") == "1"


def request(url, method="GET", path="/", headers=None):
    """One HTTP request to the dashboard (status, JSON body or None)."""
    where = urlsplit(url)
    conn = http.client.HTTPConnection(where.hostname, where.port, timeout=10)
    conn.request(method, path, headers=headers or {})
    answer = conn.getresponse()
    body = answer.read()
    conn.close()
    try:
        return answer.status, json.loads(body)
    except ValueError:
        return answer.status, None


def test_token_host_origin_and_rbac_guard_the_dashboard(crd, namespace, alice, reader, chrome):
    fleet = Fleet(crd, namespace)
    with browser.DashboardProcess(alice, namespace, NAME, "--edit") as board:
        where = urlsplit(board.url)
        token = where.query.removeprefix("token=")
        host = where.netloc
        own = {"Host": host, "Cookie": f"hotswap_dashboard={token}"}
        assert request(board.url, path="/state")[0] == 401  # no cookie
        assert request(board.url, path="/?token=wrong")[0] == 401
        assert request(board.url, path="/state", headers={**own, "Host": "evil.example"})[0] == 403

        def state():
            status, doc = request(board.url, path="/state", headers=own)
            assert status == 200, doc
            return doc if doc["status"] and len(doc["status"]["pods"]) == PODS else None

        assert wait_for(state, 30, 0.2, what=f"{PODS} pods in /state")["editable"] is True
        post = {**own, "Origin": f"http://{host}", "X-Hotswap-Token": token}
        for bad in ({"Origin": "http://evil.example"}, {"X-Hotswap-Token": "x"},
                    {"Cookie": "hotswap_dashboard=x"}):  # fmt: skip
            status, body = request(board.url, "POST", "/edit/pause", {**post, **bad})
            assert status == 403, body
        assert request(board.url, "POST", "/edit/pause", post)[0] == 200
    revision_2 = {"checkpoint": {"uri": URI.format(n=2), "sha256": SHA2}}
    fleet.client.patch(fleet.path, {"spec": revision_2}, MERGE_PATCH)
    fleet.sync()  # a candidate runs: abort would apply, were patch allowed
    with browser.DashboardProcess(reader, namespace, NAME, "--edit") as board:
        chrome.get(board.url)
        total = chrome.find_element("id", "total")
        wait_for(lambda: total.get_attribute("data-count") == str(PODS), 30, what="the pods")
        assert not chrome.find_element("id", "buttons").is_displayed()  # RBAC: no patch
        assert chrome.find_element("id", "readonly").is_displayed()
        token = urlsplit(board.url).query.removeprefix("token=")
        host = urlsplit(board.url).netloc
        post = {"Host": host, "Cookie": f"hotswap_dashboard={token}",
                "Origin": f"http://{host}", "X-Hotswap-Token": token}  # fmt: skip
        for action in ("resume", "abort", "retry"):
            status, body = request(board.url, "POST", f"/edit/{action}", post)
            assert status == 403 and "edits are off" in body["error"], action
        assert not {commands.ABORT, commands.RETRY} & set(annotations(fleet))
