"""The chart's values: helm rejects a wrong value by the schema, the schema covers every
value, and the chart README lists every value (scripts/chart_docs.py)."""

import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from hotswap_contract.policy import ARCHITECTURE_ENTRY

REPO = Path(__file__).resolve().parents[3]
CHART = REPO / "charts" / "hotswap"
SCHEMA = json.loads((CHART / "values.schema.json").read_text())


def load_chart_docs():
    spec = importlib.util.spec_from_file_location("chart_docs", REPO / "scripts" / "chart_docs.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules["chart_docs"] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


chart_docs = load_chart_docs()


def template(helm_bin, *args):
    return subprocess.run(
        [str(helm_bin), "template", "hs", str(CHART), *args],
        capture_output=True,
        text=True,
        check=False,
    )


@pytest.mark.parametrize(
    ("sets", "message"),
    [
        (["replicaCount=0"], "at '/replicaCount': minimum: got 0, want 1"),
        (["replicaCount=two"], "at '/replicaCount': got string, want integer"),
        (["image.pullPolicy=Sometimes"], "value must be one of 'Always', 'IfNotPresent', 'Never'"),
        (["runtime.image.pullPolicy=always"], "at '/runtime/image/pullPolicy'"),
        (["metricsPort=70000"], "at '/metricsPort': maximum: got 70,000, want 65,535"),
        (["livenessPort=0"], "at '/livenessPort': minimum: got 0, want 1"),
        (["replicaCuont=3"], "additional properties 'replicaCuont' not allowed"),
        (["runtime.gpu.enabeld=false"], "additional properties 'enabeld' not allowed"),
        (["watchNamespaces={Team_A}"], "at '/watchNamespaces/0': 'Team_A' does not match"),
        (["policy.architectures={os.system}"], "at '/policy/architectures/0'"),
        (["policy.fileRoots={models}"], "at '/policy/fileRoots/0': 'models' does not match"),
        (["policy.fetchAllowedNetworks={10.0.0.1}"], "at '/policy/fetchAllowedNetworks/0'"),
        (["policy.maxCheckpointBytes=0"], "at '/policy/maxCheckpointBytes': minimum"),
        (["policy.forwardMemoryBytes=1000"], "at '/policy/forwardMemoryBytes': minimum"),
        (["policy.maxForwardBatch=0"], "at '/policy/maxForwardBatch': minimum"),
        (["statusIntegrity.enabled=yes"], "at '/statusIntegrity/enabled': got string"),
        (["monitoring.podMonitor.interval=5"], "at '/monitoring/podMonitor/interval': got number"),
        (["monitoring.serviceMonitor.interval=soon"], "'soon' does not match"),
        (
            ["networkPolicy.checkpointStores[0].cidr=10.0.0.0/8"],
            "at '/networkPolicy/checkpointStores/0': missing property 'ports'",
        ),
        (["networkPolicy.apiServer.cidrs={api.example}"], "at '/networkPolicy/apiServer/cidrs/0'"),
        (["imagePullSecrets[0].nmae=x"], "at '/imagePullSecrets/0': missing property 'name'"),
    ],
)
def test_helm_rejects_a_wrong_value_with_the_schema_message(helm_bin, sets, message):
    args = [a for s in sets for a in ("--set", s)]
    done = template(helm_bin, *args)
    assert done.returncode != 0, f"helm accepted {sets}"
    assert "values don't meet the specifications of the schema" in done.stderr
    assert message in done.stderr, done.stderr


def test_the_defaults_and_the_local_values_meet_the_schema(helm_bin):
    for args in ([], ["-f", str(REPO / "examples" / "values-local.yaml")]):
        done = template(helm_bin, *args)
        assert done.returncode == 0, done.stderr


def test_every_value_has_a_schema_entry():
    """A value added to values.yaml without a schema entry fails here, by name."""
    keys = [row.key for row in chart_docs.rows()]
    assert "networkPolicy.apiServer.cidrs" in keys


def test_a_value_without_a_schema_entry_is_named(tmp_path):
    chart = tmp_path / "hotswap"
    chart.mkdir()
    (chart / "values.schema.json").write_text((CHART / "values.schema.json").read_text())
    values = (CHART / "values.yaml").read_text()
    (chart / "values.yaml").write_text(values.replace("  gpu:\n", "  gpu:\n    count: 2\n", 1))
    with pytest.raises(chart_docs.SchemaGapError, match=r"value runtime\.gpu\.count \(values.yaml"):
        chart_docs.rows(chart)


def object_schemas(node, path="$"):
    if isinstance(node, dict):
        if "properties" in node:
            yield path, node
        for key, value in node.items():
            yield from object_schemas(value, f"{path}.{key}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from object_schemas(value, f"{path}[{i}]")


def test_every_described_object_refuses_unknown_keys():
    """A typo in a value's name is an error, not a value silently ignored."""
    schemas = object_schemas(SCHEMA)
    assert [path for path, node in schemas if node.get("additionalProperties") is not False] == []


def test_every_value_has_a_meaning():
    missing = [row.key for row in chart_docs.rows() if not row.description]
    assert missing == [], "add a comment above these keys in values.yaml, or a schema description"


def test_the_chart_readme_lists_every_value():
    readme = (CHART / "README.md").read_text()
    assert chart_docs.with_table(readme, chart_docs.rows()) == readme, (
        "charts/hotswap/README.md is out of date: python scripts/chart_docs.py"
    )
    listed = set(re.findall(r"^\| `([^`]+)` \|", readme, re.MULTILINE))
    assert {"replicaCount", "networkPolicy.checkpointStores", "monitoring.force"} <= listed


@pytest.mark.parametrize(
    "entry",
    [
        "torchvision",
        "torchvision/resnet18",
        "python/pkg",
        "python/pkg.sub:make",
        "python/pkg..sub",
        "python/pkg:",
        "torch",
        "python/1pkg",
        "python/pkg:make:more",
        "torchvision/res-net",
    ],
)
def test_the_architecture_pattern_is_the_policy_one(entry):
    pattern = SCHEMA["properties"]["policy"]["properties"]["architectures"]["items"]["pattern"]
    assert bool(re.search(pattern, entry)) == bool(ARCHITECTURE_ENTRY.match(entry))
