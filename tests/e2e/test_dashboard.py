"""`kubectl hotswap dashboard` in headless Chromium during a Canary rollout on the real
node: 3 pods of the tiny model, the plugin run as `alice` (examples/kubectl-hotswap-rbac.yaml
only, with --edit). The page's grid follows the canary pod's real swap, its waterfall
shows that swap's phases, and its Pause button pauses the rollout. Screenshots are kept
under .cache/artifacts/browser/.
"""

from __future__ import annotations

import pytest

from devcluster import browser, tiny
from devcluster.fleet import Fleet, cpu_deployment
from devcluster.waiting import wait_for

NAME = "board"
REPLICAS = 3
SHAPE = (tiny.FEATURES,)
CANARY = {"strategy": "Canary", "steps": [1, "100%"], "bakeSeconds": 600}
pytestmark = pytest.mark.skipif(browser.missing() is not None, reason=str(browser.missing()))


@pytest.fixture(scope="module")
def fleet(cluster, node, installed, files):
    md = cpu_deployment(NAME, REPLICAS, tiny.ARCHITECTURE, SHAPE, files["v1"], rollout=CANARY)
    return Fleet(cluster, installed, NAME).deploy(md, timeout=420)


def groups(driver):
    return driver.execute_script(
        "const out = {};"
        "for (const g of document.querySelectorAll('#groups .group'))"
        "  out[g.dataset.revision + '|' + g.dataset.state] = Number(g.dataset.count);"
        "return out;"
    )


def shows(driver, expected, timeout):
    """Wait until the page's groups are `expected`; else fail with what it shows."""
    try:
        wait_for(lambda: groups(driver) == expected, timeout, 0.2, what=f"{expected}")
    except TimeoutError:
        pytest.fail(f"the page shows {groups(driver)}, not {expected}")


def test_the_page_follows_a_canary_on_the_real_node_and_pauses_it(fleet, files, alice):
    with (
        browser.DashboardProcess(alice, fleet.namespace, NAME, "--edit") as board,
        browser.chromium() as chrome,
    ):
        chrome.get(board.url)
        shows(chrome, {"1|Serving": REPLICAS}, 60)
        fleet.patch_spec({"checkpoint": files["v2"]})
        shows(chrome, {"1|Serving": 2, "2|Serving": 1}, 180)  # the canary pod swapped
        canary = chrome.find_element("css selector", '.pod[data-revision="2"]')
        canary.click()
        phases = wait_for(
            lambda: [r.get_attribute("data-phase") for r in chrome.find_elements(
                "css selector", "#detail-body .bar-row")],
            30, what="the canary pod's swap waterfall",
        )  # fmt: skip
        assert {"fetch", "load", "activate"} <= set(phases), phases
        wait_for(lambda: "step 1 of 2" in chrome.find_element("id", "rollout").text, 60,
                 what="the canary's step on the page")  # fmt: skip
        browser.screenshot(chrome, "dashboard-e2e-canary")
        chrome.find_element("css selector", 'button[data-edit="pause"]').click()
        wait_for(lambda: (fleet.status().get("canary") or {}).get("paused"), 60,
                 what="status.canary.paused after the Pause button")  # fmt: skip
        wait_for(lambda: chrome.find_element("id", "rollout").get_attribute("data-paused")
                 == "true", 30, what="the page shows the rollout paused")  # fmt: skip
        assert groups(chrome) == {"1|Serving": 2, "2|Serving": 1}  # the step holds
        browser.screenshot(chrome, "dashboard-e2e-paused")
