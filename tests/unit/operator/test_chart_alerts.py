"""The chart's PrometheusRule and Grafana dashboard: the rules as rendered pass
`promtool check rules` and the unit tests in alerts_test.yaml (`promtool test rules`,
a real Prometheus rule engine); the dashboard's JSON has the panels, the data source
variable and a query per target; both render only when asked."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import yaml

from devcluster import prometheus
from devcluster.helm import CHART, template

HERE = Path(__file__).resolve().parent
DASHBOARD = CHART / "files" / "grafana-dashboard.json"
MONITORING_API = "monitoring.coreos.com/v1"
KUBECONFIG = {
    "apiVersion": "v1",
    "kind": "Config",
    "clusters": [{"name": "c", "cluster": {"server": "https://127.0.0.1:6443"}}],
    "users": [{"name": "u", "user": {"token": "t"}}],
    "contexts": [{"name": "x", "context": {"cluster": "c", "user": "u"}}],
    "current-context": "x",
}
ON = (
    "--set",
    "monitoring.prometheusRule.enabled=true",
    "--set",
    "monitoring.grafanaDashboard.enabled=true",
)


def rule_groups(helm_bin: Path, *args: str) -> list[dict[str, Any]]:
    docs = template(helm_bin, *ON, "--api-versions", MONITORING_API, *args, namespace="ops")
    (rule,) = [d for d in docs if d["kind"] == "PrometheusRule"]
    groups: list[dict[str, Any]] = rule["spec"]["groups"]
    return groups


def promtool(promtool_bin: Path, *args: str, cwd: Path) -> str:
    done = subprocess.run(
        [str(promtool_bin), *args], capture_output=True, text=True, cwd=cwd, timeout=120
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def test_the_alert_rules_pass_promtool_and_their_unit_tests(
    helm_bin: Path, promtool_bin: Path, tmp_path: Path
) -> None:
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump({"groups": rule_groups(helm_bin)}))
    shutil.copy(HERE / "alerts_test.yaml", tmp_path)
    assert "4 rules found" in promtool(promtool_bin, "check", "rules", "rules.yaml", cwd=tmp_path)
    promtool(promtool_bin, "test", "rules", "alerts_test.yaml", cwd=tmp_path)
    tested = {
        t["alertname"]
        for case in yaml.safe_load((HERE / "alerts_test.yaml").read_text())["tests"]
        for t in case["alert_rule_test"]
        if t["exp_alerts"]
    }
    assert tested == {r["alert"] for g in rule_groups(helm_bin) for r in g["rules"]}


def test_the_thresholds_come_from_values(helm_bin: Path) -> None:
    (group,) = rule_groups(
        helm_bin,
        *("--set", "monitoring.prometheusRule.degradedFor=3m"),
        *("--set", "monitoring.prometheusRule.latencyRatio=2.5"),
        *("--set", "monitoring.prometheusRule.severity=page"),
    )
    rules = {r["alert"]: r for r in group["rules"]}
    assert rules["HotswapModelDeploymentUnhealthy"]["for"] == "3m"
    assert "2.5 * (" in rules["HotswapRevisionSlowerThanStable"]["expr"]
    assert {r["labels"]["severity"] for r in rules.values()} == {"page"}


def test_the_rule_renders_only_where_its_api_is_served(helm_bin: Path) -> None:
    kinds = [d["kind"] for d in template(helm_bin, *ON, namespace="ops")]
    assert "PrometheusRule" not in kinds and "ConfigMap" in kinds  # the dashboard needs no API
    assert "PrometheusRule" not in [d["kind"] for d in template(helm_bin, namespace="ops")]


def dashboard_config_map(helm_bin: Path, *args: str) -> dict[str, Any]:
    docs = template(helm_bin, *ON, *args, namespace="ops")
    (found,) = [d for d in docs if d["metadata"]["name"].endswith("-dashboard")]
    return found


def test_the_dashboard_config_map_carries_the_file_for_the_sidecar(helm_bin: Path) -> None:
    found = dashboard_config_map(
        helm_bin, "--set", "monitoring.grafanaDashboard.namespace=monitoring"
    )
    assert found["metadata"]["namespace"] == "monitoring"
    assert found["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(found["data"]["hotswap.json"]) == json.loads(DASHBOARD.read_text())


def test_the_dashboard_has_its_panels_variables_and_queries() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    panels = dashboard["panels"]
    assert {p["type"] for p in panels} == {"state-timeline", "heatmap", "timeseries", "table"}
    assert len({p["id"] for p in panels}) == len(panels)
    for panel in panels:
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["expr"].strip() and target["datasource"] == panel["datasource"]
    titles = {p["title"] for p in panels}
    assert {"Revision by pod", "Swap phase latency", "Swap results by reason"} <= titles
    assert {"p99 latency by revision", "Error ratio by revision"} <= titles
    assert {"Operator sync latency", "Operator queue depth"} <= titles


def test_the_monitors_translate_into_a_config_prometheus_accepts(
    helm_bin: Path, promtool_bin: Path, tmp_path: Path
) -> None:
    """devcluster/prometheus.py's jobs from the rendered monitors (the e2e test's
    Prometheus runs them against the real node's pods) pass `promtool check config`."""
    sets = ("podMonitor.enabled=true", "serviceMonitor.enabled=true", "force=true")
    args = [a for s in sets for a in ("--set", f"monitoring.{s}")]
    docs = template(helm_bin, *args, "--set", "watchNamespaces={ml}", namespace="ops")
    monitors = [d for d in docs if d["kind"] in ("PodMonitor", "ServiceMonitor")]
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(yaml.safe_dump(KUBECONFIG))
    jobs = [prometheus.scrape_job(m, kubeconfig, "2s") for m in monitors]
    (tmp_path / "prometheus.yaml").write_text(yaml.safe_dump({"scrape_configs": jobs}))
    promtool(promtool_bin, "check", "config", "prometheus.yaml", cwd=tmp_path)
    (runtime,) = [j for j in jobs if j["job_name"].startswith("PodMonitor/")]
    assert runtime["relabel_configs"][-1] == {
        "source_labels": ["__meta_kubernetes_pod_label_hotswap_dev_model_deployment"],
        "target_label": "modeldeployment",
        "action": "replace",
    }
