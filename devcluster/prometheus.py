"""A real Prometheus scraping the dev cluster's pods the way the chart's monitors ask.

The Prometheus Operator turns a PodMonitor or ServiceMonitor into a scrape job with
kubernetes_sd; `scrape_job` does the same for one rendered monitor (no Prometheus
Operator runs here): `kubernetes_sd_configs` role `pod` against the test API server
(its admin kubeconfig), the monitor's `selector.matchLabels` and port name as `keep`
rules, the `namespace`, `pod` and `container` target labels the operator adds, then the
monitor's own `relabelings`, translated field by field, and its `honorLabels`. A
ServiceMonitor's Service selects the operator pods by the same labels as its own
selector (charts/hotswap/templates/monitoring.yaml), so its job discovers those pods
directly, not through the Service's EndpointSlices.
"""

from __future__ import annotations

import re
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import yaml

from devcluster import procs
from devcluster.cluster import free_port

JSON = dict[str, Any]
RELABEL_FIELDS = {
    "sourceLabels": "source_labels",
    "targetLabel": "target_label",
    "separator": "separator",
    "regex": "regex",
    "replacement": "replacement",
    "action": "action",
    "modulus": "modulus",
}


def meta_name(label: str) -> str:
    """A Kubernetes label key as kubernetes_sd's meta label suffix."""
    return re.sub(r"[^a-zA-Z0-9_]", "_", label)


def relabel(rule: Mapping[str, Any]) -> JSON:
    """One Prometheus Operator RelabelConfig (camelCase) as Prometheus' relabel_config."""
    unknown = set(rule) - set(RELABEL_FIELDS)
    if unknown:
        raise ValueError(f"relabelling fields this translation does not know: {sorted(unknown)}")
    return {RELABEL_FIELDS[k]: v for k, v in rule.items()}


def scrape_job(monitor: Mapping[str, Any], kubeconfig: Path, interval: str) -> JSON:
    """The scrape job of a rendered PodMonitor or ServiceMonitor (its first endpoint)."""
    spec = monitor["spec"]
    endpoint = (spec.get("podMetricsEndpoints") or spec.get("endpoints"))[0]
    keep = [
        {
            "source_labels": [f"__meta_kubernetes_pod_label_{meta_name(key)}"],
            "regex": value,
            "action": "keep",
        }
        for key, value in spec["selector"]["matchLabels"].items()
    ]
    port = {
        "source_labels": ["__meta_kubernetes_pod_container_port_name"],
        "regex": endpoint["port"],
        "action": "keep",
    }
    targets = [
        {"source_labels": [f"__meta_kubernetes_{meta}"], "target_label": label}
        for meta, label in (
            ("namespace", "namespace"),
            ("pod_name", "pod"),
            ("pod_container_name", "container"),
        )
    ]
    return {
        "job_name": f"{monitor['kind']}/{monitor['metadata']['name']}",
        "scrape_interval": interval,
        "metrics_path": endpoint.get("path", "/metrics"),
        "honor_labels": bool(endpoint.get("honorLabels", False)),
        "kubernetes_sd_configs": [
            {
                "role": "pod",
                "kubeconfig_file": str(kubeconfig),
                "namespaces": {"names": spec["namespaceSelector"]["matchNames"]},
            }
        ],
        "relabel_configs": [
            *keep,
            port,
            *targets,
            *(relabel(r) for r in endpoint.get("relabelings") or ()),
        ],
    }


class Prometheus:
    """The HTTP API of a running Prometheus."""

    def __init__(self, url: str) -> None:
        self.url = url

    def api(self, path: str, **params: Any) -> Any:
        response = httpx.get(f"{self.url}/api/v1/{path}", params=params, timeout=30)
        body = response.json()
        if body.get("status") != "success":
            raise PrometheusError(f"{path} {params}: {body.get('error') or body}")
        return body["data"]

    def query(self, expr: str) -> list[JSON]:
        data = self.api("query", query=expr)
        result: list[JSON] = data["result"]
        return result

    def names(self, prefix: str) -> set[str]:
        return {n for n in self.api("label/__name__/values") if n.startswith(prefix)}

    def targets(self) -> list[JSON]:
        active: list[JSON] = self.api("targets")["activeTargets"]
        return active


class PrometheusError(RuntimeError):
    """The Prometheus API refused a request (a query that does not parse, ...)."""


@contextmanager
def running(
    binary: Path, jobs: list[JSON], rules: list[JSON] | None = None, timeout: float = 60
) -> Iterator[Prometheus]:
    """Prometheus on a loopback port with `jobs` and the rule groups `rules`."""
    root = Path(tempfile.mkdtemp(prefix="hotswap-prometheus-"))
    config: JSON = {"global": {"evaluation_interval": "2s"}, "scrape_configs": jobs}
    if rules:
        (root / "rules.yaml").write_text(yaml.safe_dump({"groups": rules}))
        config["rule_files"] = [str(root / "rules.yaml")]
    (root / "prometheus.yaml").write_text(yaml.safe_dump(config))
    port = free_port()
    argv = [
        str(binary),
        f"--config.file={root / 'prometheus.yaml'}",
        f"--storage.tsdb.path={root / 'data'}",
        f"--web.listen-address=127.0.0.1:{port}",
        "--storage.tsdb.retention.time=1h",
    ]
    url = f"http://127.0.0.1:{port}"

    def ready() -> bool:
        return httpx.get(f"{url}/-/ready", timeout=2).is_success

    try:
        with procs.serving(
            "prometheus", argv, ready, logs=root, timeout=timeout, error=PrometheusError
        ):
            yield Prometheus(url)
    finally:
        shutil.rmtree(root, ignore_errors=True)
