"""Prometheus scrapes the e2e pods as the chart's monitors ask; the dashboard's queries,
the alert rules and the docs' metric names hold against what it stores.

One helm install, one 2-replica Canary ModelDeployment of the tiny model under traffic,
and a real Prometheus (devcluster/prometheus.py: kubernetes_sd against the test API
server, with the relabelling of the chart's PodMonitor and ServiceMonitor as rendered).
The Canary's first step bakes for 10 minutes, so every query below runs during a swap:
one pod serves the candidate, the other the stable revision, both answer traffic. The
last test draws the dashboard's panels from this scrape (devcluster/panels.py: Grafana
does not build here) into the artifacts, and into docs/ with HOTSWAP_DOCS_SCREENSHOT=1.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from devcluster import metric_docs, panels, prometheus, tiny
from devcluster.browser import ARTIFACTS
from devcluster.cluster import REPO, Cluster
from devcluster.fleet import RUNTIME_PORT, Fleet, cpu_deployment
from devcluster.helm import template
from devcluster.waiting import wait_for
from tests.e2e.conftest import RELEASE

NAME = "watched"
DASHBOARD = REPO / "charts" / "hotswap" / "files" / "grafana-dashboard.json"
PANELS_PNG = REPO / "docs" / "grafana-panels-e2e.png"
DOCS = [
    REPO / "docs" / n for n in ("observability.md", "architecture.md", "security.md", "analysis.md")
]
PACKAGES = {"hotswap_contract", "hotswap_operator", "hotswap_runtime"}
RATE_INTERVAL = "20s"  # Grafana's $__rate_interval for a 2s scrape
JSON = dict[str, Any]


def monitors(helm_bin: Path, namespace: str) -> list[JSON]:
    """The chart's monitors and alert rules as helm renders them for this install (its
    release name: the ServiceMonitor selects the operator pods by it)."""
    sets = [
        "monitoring.force=true",
        "monitoring.podMonitor.enabled=true",
        "monitoring.serviceMonitor.enabled=true",
        "monitoring.prometheusRule.enabled=true",
        f"watchNamespaces={{{namespace}}}",
    ]
    args = [a for s in sets for a in ("--set", s)]
    kinds = {"PodMonitor", "ServiceMonitor", "PrometheusRule"}
    docs = template(helm_bin, *args, namespace=namespace, release=RELEASE)
    return [d for d in docs if d["kind"] in kinds]


@pytest.fixture(scope="module")
def prom(
    cluster: Cluster, installed: str, helm_bin: Path, prometheus_bin: Path
) -> Iterator[prometheus.Prometheus]:
    rendered = monitors(helm_bin, installed)
    jobs = [
        prometheus.scrape_job(m, cluster.kubeconfig, "2s")
        for m in rendered
        if m["kind"] != "PrometheusRule"
    ]
    (rule,) = [m for m in rendered if m["kind"] == "PrometheusRule"]
    with prometheus.running(prometheus_bin, jobs, rule["spec"]["groups"]) as running:
        yield running


@pytest.fixture(scope="module")
def fleet(cluster: Cluster, installed: str, files: dict[str, JSON]) -> Iterator[Fleet]:
    """Two pods on revision 1, then a Canary of revision 2 whose first step bakes."""
    rollout = {"strategy": "Canary", "steps": [1, "100%"], "bakeSeconds": 600}
    manifest = cpu_deployment(
        NAME, 2, tiny.ARCHITECTURE, (tiny.FEATURES,), files["v1"], rollout=rollout
    )
    fleet = Fleet(cluster, installed, NAME).deploy(manifest, timeout=300)
    with fleet.load((tiny.FEATURES,), clients=2) as load:
        load.wait_answers(20)
        fleet.patch_spec({"checkpoint": files["v2"]})
        fleet.wait(
            lambda st: bool((st.get("canary") or {}).get("bakeStartedAt")),
            "step 1 baking",
            timeout=120,
        )
        yield fleet
    assert not load.failures, load.summary()


def expand(expr: str, namespace: str) -> str:
    """A dashboard query as Grafana sends it with these variable values."""
    return (
        expr.replace("$__rate_interval", RATE_INTERVAL)
        .replace("$namespace", namespace)
        .replace("$modeldeployment", NAME)
    )


def returns_series(prom: prometheus.Prometheus, expr: str, timeout: float = 60) -> list[JSON]:
    return wait_for(lambda: prom.query(expr), timeout=timeout, interval=2, what=f"series of {expr}")


def test_prometheus_scrapes_every_pod_with_its_modeldeployment(prom, fleet, installed) -> None:
    pods = {p["metadata"]["name"] for p in fleet.pods()}
    revision = f'hotswap_model_revision{{namespace="{installed}"}}'

    def every_pod() -> list[JSON] | None:
        found = prom.query(revision)
        return found if {s["metric"]["pod"] for s in found} == pods else None

    by_pod = wait_for(every_pod, timeout=60, interval=2, what=f"{revision} of {sorted(pods)}")
    assert {s["metric"].get("modeldeployment") for s in by_pod} == {NAME}
    operators = {p["metadata"]["name"] for p in fleet.operators()}
    leading = returns_series(prom, "hotswap_operator_leader == 1")
    assert [s["metric"]["pod"] for s in leading] == [fleet.leader()] and fleet.leader() in operators
    info = f'hotswap_modeldeployment_info{{namespace="{installed}",name="{NAME}"}}'
    # the scrape before the Canary began holds latest="1": wait for the one after it
    returns_series(prom, info.replace("}", ',stable="1",latest="2"}'))
    assert [(s["metric"]["stable"], s["metric"]["latest"]) for s in prom.query(info)] == [
        ("1", "2")
    ]


def test_every_dashboard_query_returns_series_during_the_swap(prom, fleet, installed) -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    empty = []
    for panel in dashboard["panels"]:
        for target in panel["targets"]:
            expr = expand(target["expr"], installed)
            try:
                returns_series(prom, expr, timeout=45)
            except TimeoutError:
                empty.append(f"{panel['title']}: {expr}")
    assert not empty, "queries with no series:\n" + "\n".join(empty)
    p99 = next(p for p in dashboard["panels"] if p["title"] == "p99 latency by revision")
    p99_expr = expand(p99["targets"][0]["expr"], installed)

    def both_revisions() -> set[str] | None:
        revisions = {s["metric"]["revision"] for s in prom.query(p99_expr)}
        return revisions if revisions == {"1", "2"} else None

    # stable against candidate, both answering
    wait_for(both_revisions, timeout=45, interval=2, what=f"revisions 1 and 2 in {p99_expr}")
    for variable in dashboard["templating"]["list"][1:]:
        match = re.fullmatch(
            r"label_values\((.*), (\w+)\)", expand(variable["definition"], installed)
        )
        assert match, variable["definition"]
        values = prom.api(f"label/{match[2]}/values", **{"match[]": match[1]})
        assert (installed if match[2] == "namespace" else NAME) in values, (
            variable["name"],
            values,
        )


def test_the_alert_rules_load_and_their_series_exist(prom, fleet, installed) -> None:
    groups = wait_for(
        lambda: [
            g
            for g in prom.api("rules")["groups"]
            if g["rules"]
            and all(
                r.get("lastEvaluation", "").startswith("2") and r["health"] == "ok"
                for r in g["rules"]
            )
        ],
        timeout=30,
        interval=2,
        what="the rules evaluated",
    )
    rules = [r for g in groups for r in g["rules"]]
    assert len(rules) == 4, rules
    for rule in rules:
        prom.query(rule["query"])  # parses and runs (PrometheusError otherwise)
        for name in set(re.findall(r"hotswap_[a-z0-9_]+", rule["query"])):
            returns_series(prom, f'{name}{{namespace="{installed}"}}', timeout=45)


def scraped(url: str) -> dict[str, str]:
    return metric_docs.families(httpx.get(url, timeout=10).text)


def test_the_docs_name_every_series_as_prometheus_stores_it(prom, fleet, installed) -> None:
    """What the e2e pods expose, as Prometheus stores it, against every name the docs
    mention (devcluster/metric_docs.py)."""
    pod = fleet.pods()[0]
    leader = next(p for p in fleet.operators() if p["metadata"]["name"] == fleet.leader())
    exposed = {
        **scraped(f"http://{pod['status']['podIP']}:{RUNTIME_PORT}/metrics"),
        **scraped(f"http://{leader['status']['podIP']}:8082/metrics"),
    }
    assert metric_docs.misnamed(exposed) == {}
    assert metric_docs.unlisted(exposed) == []
    names = {n for name, kind in exposed.items() for n in metric_docs.stored(name, kind)}
    in_tsdb = {n for n in prom.names("hotswap_") if not n.endswith("_created")}
    assert in_tsdb <= names, f"stored, not exposed as expected: {sorted(in_tsdb - names)}"
    assert {
        "hotswap_swaps_total",
        "hotswap_requests_total",
        "hotswap_modeldeployment_info",
    } <= in_tsdb


def test_the_dashboard_draws_every_panel_from_the_scrape(prom, fleet, installed) -> None:
    """Every panel's queries over the whole scrape, drawn by panel type: each draws at
    least one series (a panel whose labels or names do not match draws "no data")."""
    dashboard = json.loads(DASHBOARD.read_text())
    started = prom.api("status/runtimeinfo")["startTime"]
    p99 = next(p for p in dashboard["panels"] if p["title"] == "p99 latency by revision")
    p99_expr = expand(p99["targets"][0]["expr"], installed)

    def both_drawn() -> bool:
        """Both revisions' p99 over ten scrapes: enough of the swap to draw lines."""
        now = time.time()
        found = prom.api("query_range", query=p99_expr, start=now - 60, end=now, step=2)
        points = {r["metric"]["revision"]: len(r["values"]) for r in found["result"]}
        return min(points.get("1", 0), points.get("2", 0)) >= 10

    wait_for(both_drawn, timeout=90, interval=2, what=f"ten points of each revision in {p99_expr}")
    window = panels.Window(
        start=datetime.fromisoformat(started).timestamp(), end=time.time(), step=2
    )
    out = ARTIFACTS / "grafana-panels-e2e.png"
    drawn = panels.render(dashboard, prom, lambda e: expand(e, installed), window, out)
    print(f"panels: {out} {drawn}")
    assert {title: n for title, n in drawn.items() if n == 0} == {}
    assert len(drawn) == len(dashboard["panels"])
    if os.environ.get("HOTSWAP_DOCS_SCREENSHOT") == "1":
        shutil.copyfile(out, PANELS_PNG)
