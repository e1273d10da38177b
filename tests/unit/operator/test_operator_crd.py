"""The CRD is the one schema: it must agree with contract.py and the chart's copy."""

import re
from pathlib import Path

import pytest
import yaml

from hotswap_contract import schemes
from hotswap_contract import wire as contract

REPO = Path(__file__).resolve().parents[3]
CRD_PATH = REPO / "crds" / "modeldeployment.yaml"
REPLICA_CRD = REPO / "crds" / "modelreplica.yaml"


@pytest.fixture(scope="module")
def crd():
    return yaml.safe_load(CRD_PATH.read_text())


@pytest.fixture(scope="module")
def version(crd):
    (only,) = crd["spec"]["versions"]
    return only


def props(schema, *path):
    for key in path:
        schema = schema["properties"][key]
    return schema


@pytest.mark.parametrize("crd_path", [CRD_PATH, REPLICA_CRD], ids=lambda p: p.name)
def test_chart_carries_a_byte_identical_copy(crd_path):
    chart_copy = REPO / "charts" / "hotswap" / "crds" / crd_path.name
    assert chart_copy.read_bytes() == crd_path.read_bytes(), (
        f"charts/hotswap/crds/{crd_path.name} differs from crds/{crd_path.name}: "
        f"cp crds/{crd_path.name} charts/hotswap/crds/"
    )


def test_names_match_the_contract(crd, version):
    assert crd["spec"]["group"] == contract.API_GROUP
    assert crd["spec"]["names"]["kind"] == contract.KIND
    assert crd["spec"]["names"]["plural"] == contract.PLURAL
    assert "md" in crd["spec"]["names"]["shortNames"]
    assert version["name"] == contract.API_VERSION
    assert crd["metadata"]["name"] == f"{contract.PLURAL}.{contract.API_GROUP}"


def test_patterns_match_the_contract(version):
    spec = props(version["schema"]["openAPIV3Schema"], "spec")
    assert props(spec, "checkpoint", "sha256")["pattern"] == contract.SHA256_PATTERN
    assert props(spec, "checkpoint", "uri")["pattern"] == contract.URI_PATTERN
    assert props(spec, "model", "architecture")["pattern"] == contract.ARCHITECTURE_PATTERN
    assert props(spec, "replicas")["minimum"] == 0
    assert props(spec, "rollout", "strategy")["enum"] == ["AllAtOnce", "Canary"]
    assert props(spec, "runtime", "device")["enum"] == ["auto", "cuda", "cpu"]


def test_every_uri_pattern_accepts_exactly_the_checkpoint_schemes(version):
    spec = props(version["schema"]["openAPIV3Schema"], "spec")
    uris = [
        props(spec, "checkpoint", "uri"),
        props(spec, "validation", "input", "uri"),
        props(spec, "validation", "expected", "uri"),
    ]
    assert {uri["pattern"] for uri in uris} == {contract.URI_PATTERN}
    others = ["ftp", "gcs", "wasbs", "hdfs", "httpss", "files", "s3a", "HTTP", "ocis", "hff", ""]
    accepted = [
        s for s in [*schemes.SCHEMES, *others] if re.match(contract.URI_PATTERN, f"{s}://m/x")
    ]
    assert (
        accepted
        == list(schemes.SCHEMES)
        == [
            "file",
            "http",
            "https",
            "s3",
            "oci",
            "hf",
            "gs",
            "az",
        ]
    )


def walk(schema, path=""):
    yield path, schema
    for key, child in (schema.get("properties") or {}).items():
        yield from walk(child, f"{path}.{key}")
    extra = schema.get("additionalProperties")
    if isinstance(extra, dict):
        yield from walk(extra, f"{path}.*")
    if isinstance(schema.get("items"), dict):
        yield from walk(schema["items"], f"{path}[]")


def test_only_model_args_preserve_unknown_fields(version):
    preserving = [
        path
        for path, node in walk(version["schema"]["openAPIV3Schema"])
        if node.get("x-kubernetes-preserve-unknown-fields")
    ]
    assert preserving == [".spec.model.args"]


def test_a_modelreplica_holds_every_pod_report_field_and_describes_each():
    crd = yaml.safe_load(REPLICA_CRD.read_text())
    assert crd["spec"]["group"] == contract.API_GROUP
    assert crd["spec"]["names"]["kind"] == contract.REPLICA_KIND
    assert crd["spec"]["names"]["plural"] == contract.REPLICA_PLURAL
    (version,) = crd["spec"]["versions"]
    schema = version["schema"]["openAPIV3Schema"]
    entry = props(schema, "status")
    aliases = {f.alias or name for name, f in contract.PodReport.model_fields.items()}
    assert set(entry["properties"]) == aliases
    assert entry["properties"]["swapSeconds"]["additionalProperties"] == {"type": "number"}
    assert entry["properties"]["env"]["additionalProperties"]["type"] == "string"
    states = [s.value for s in contract.PodState]
    assert entry["properties"]["state"]["enum"] == states
    undescribed = [
        path
        for path, node in walk(schema)
        if path not in ("", ".metadata") and not path.endswith(".*") and not node.get("description")
    ]
    assert undescribed == []
    columns = {c["name"]: c["jsonPath"] for c in version["additionalPrinterColumns"]}
    label = contract.DEPLOYMENT_LABEL.replace(".", "\\.")
    assert columns["Model"] == f".metadata.labels.{label}"
    assert (columns["Revision"], columns["State"]) == (".status.revision", ".status.state")


def test_status_has_no_per_pod_map_and_a_bounded_failure_list(version):
    from hotswap_operator.status import MAX_FAILURES, PodFailure

    status = props(version["schema"]["openAPIV3Schema"], "status")
    assert "pods" not in status["properties"]
    failures = status["properties"]["failures"]
    assert failures["maxItems"] == MAX_FAILURES
    assert set(failures["items"]["properties"]) == aliases(PodFailure)


def test_status_and_scale_subresources(version):
    assert version["subresources"]["status"] == {}
    assert version["subresources"]["scale"]["specReplicasPath"] == ".spec.replicas"
    assert version["subresources"]["scale"]["statusReplicasPath"] == ".status.replicas"


def test_printer_columns_read_printable_status_fields(version):
    columns = {c["name"]: c["jsonPath"] for c in version["additionalPrinterColumns"]}
    assert columns == {
        "Serving": ".status.serving",
        "Latest": ".status.history[-1:].revision",
        "Updated": ".status.updated",
        "Ready": ".status.ready",
        "Phase": ".status.phase",
        "Checkpoint": ".status.checkpoint",
        "URL": ".status.url",
        "Message": ".status.message",
        "Age": ".metadata.creationTimestamp",
    }
    assert all(c.get("description") for c in version["additionalPrinterColumns"][:-1])


def undescribed(schema, path=""):
    """Every field under `schema` (properties, map values, list items) without a
    description, as a `kubectl explain` path."""
    for key, child in (schema.get("properties") or {}).items():
        where = f"{path}.{key}"
        if not child.get("description") and where != ".metadata":
            yield where
        yield from undescribed(child, where)
    for nested in ("additionalProperties", "items"):
        child = schema.get(nested)
        if isinstance(child, dict):
            where = f"{path}{'.*' if nested == 'additionalProperties' else '[]'}"
            if not child.get("description") and child.get("type") in ("object", "array"):
                yield where
            yield from undescribed(child, where)


def test_every_field_has_a_description_for_kubectl_explain(version):
    schema = version["schema"]["openAPIV3Schema"]
    assert schema.get("description")
    missing = list(undescribed(schema))
    assert missing == [], f"fields without a description: {missing}"


def test_the_description_walk_finds_a_field_without_one():
    schema = {"properties": {"a": {"description": "A", "properties": {"b": {"type": "string"}}}}}
    assert list(undescribed(schema)) == [".a.b"]


def test_every_list_and_map_in_spec_is_bounded(version):
    """Hostile input: no list or map under spec grows without a bound (model.args is
    bounded by the operator: 16 KiB as JSON)."""
    spec = props(version["schema"]["openAPIV3Schema"], "spec")
    unbounded = [
        path
        for path, node in walk(spec, ".spec")
        if (node.get("type") == "array" and "maxItems" not in node)
        or (isinstance(node.get("additionalProperties"), dict) and "maxProperties" not in node)
        or (
            node.get("type") == "string"
            and not {"maxLength", "enum", "format"} & set(node)
            and "pattern" not in node
        )
    ]
    assert unbounded == []


def test_the_typed_runtime_spec_is_the_runtime_schema(version):
    from hotswap_operator.spec import RuntimeSpec

    runtime = props(version["schema"]["openAPIV3Schema"], "spec", "runtime")
    assert aliases(RuntimeSpec) == set(runtime["properties"])


def aliases(model):
    return {f.alias or name for name, f in model.model_fields.items()}


def test_the_typed_status_is_the_status_schema(version):
    """status.py's models and the CRD's status schema name the same fields."""
    from hotswap_operator import reasons
    from hotswap_operator.status import (
        CanaryState,
        Condition,
        ModelDeploymentStatus,
        RevisionRecord,
        Rollback,
    )

    status = props(version["schema"]["openAPIV3Schema"], "status")
    # `pods` holds the live pods' reports during a sync (from their ModelReplicas): never stored
    assert aliases(ModelDeploymentStatus) - {"pods"} == set(status["properties"])
    for field, model in (
        ("stable", RevisionRecord),
        ("candidate", RevisionRecord),
        ("canary", CanaryState),
        ("rollback", Rollback),
    ):
        assert aliases(model) == set(props(status, field)["properties"]), field
    assert aliases(RevisionRecord) == set(status["properties"]["history"]["items"]["properties"])
    assert aliases(Condition) == set(status["properties"]["conditions"]["items"]["properties"])
    assert props(status, "phase")["enum"] == [p.value for p in reasons.Phase]
    assert status["properties"]["history"]["maxItems"] == 10


def test_bounds_match_the_contract(version):
    spec = props(version["schema"]["openAPIV3Schema"], "spec")
    model = props(spec, "model")
    aliases = {f.alias or name for name, f in contract.ModelSpec.model_fields.items()}
    assert set(model["properties"]) == aliases
    assert model["properties"]["inputShape"]["maxItems"] == contract.MAX_INPUT_DIMS
    assert model["properties"]["castWeights"]["default"] is False
    assert model["properties"]["dtype"]["enum"] == list(contract.DTYPES)
    assert model["properties"]["dtype"]["default"] == contract.DEFAULT_DTYPE
    for artifact in (
        props(spec, "checkpoint"),
        props(spec, "validation", "input"),
        props(spec, "validation", "expected"),
    ):
        assert artifact["properties"]["uri"]["maxLength"] == contract.MAX_URI_LENGTH
        secret = artifact["properties"]["secretRef"]["properties"]["name"]
        assert secret["pattern"] == contract.SECRET_NAME_PATTERN


def test_batching_schema_matches_the_spec_model(version):
    from hotswap_operator.spec import BatchingSpec

    batching = props(props(version["schema"]["openAPIV3Schema"], "spec"), "runtime", "batching")
    fields = BatchingSpec.model_fields
    assert set(batching["properties"]) == {f.alias for f in fields.values()}
    size = batching["properties"]["maxBatchSize"]
    delay = batching["properties"]["maxQueueDelayMicroseconds"]
    assert (size["minimum"], size["maximum"]) == (1, contract.MAX_BATCH_SIZE)
    assert (delay["minimum"], delay["maximum"]) == (0, contract.MAX_QUEUE_DELAY_US)
    assert size["default"] == fields["max_batch_size"].default
    assert delay["default"] == fields["max_queue_delay_microseconds"].default


SCHEMA_KEYS = {
    "type",
    "description",
    "properties",
    "items",
    "additionalProperties",
    "required",
    "enum",
    "default",
    "format",
    "pattern",
    "minimum",
    "maximum",
    "exclusiveMinimum",
    "exclusiveMaximum",
    "minLength",
    "maxLength",
    "minItems",
    "maxItems",
    "minProperties",
    "maxProperties",
    "nullable",
    "anyOf",
    "oneOf",
    "allOf",
    "not",
    "example",
    "x-kubernetes-validations",
    "x-kubernetes-preserve-unknown-fields",
    "x-kubernetes-int-or-string",
    "x-kubernetes-list-type",
    "x-kubernetes-list-map-keys",
    "x-kubernetes-map-type",
    "x-kubernetes-embedded-resource",
    "uniqueItems",
    "multipleOf",
}


@pytest.mark.parametrize("path", [CRD_PATH, REPLICA_CRD], ids=lambda p: p.name)
def test_every_schema_node_holds_only_schema_keywords(path):
    """A flow mapping such as `{type: integer, description: a, b}` parses as extra keys
    (`b`): the API server refuses the CRD (field not declared in schema)."""
    crd = yaml.safe_load(path.read_text())
    odd = [
        (where, sorted(set(node) - SCHEMA_KEYS))
        for v in crd["spec"]["versions"]
        for where, node in walk(v["schema"]["openAPIV3Schema"])
        if set(node) - SCHEMA_KEYS
    ]
    assert odd == []


def test_distribution_schema_matches_the_spec_model(version):
    from hotswap_operator.spec import DistributionSpec, parse_spec

    distribution = props(props(version["schema"]["openAPIV3Schema"], "spec"), "distribution")
    assert set(distribution["properties"]) == aliases(DistributionSpec)
    concurrency = distribution["properties"]["originConcurrency"]
    assert (concurrency["minimum"], concurrency["maximum"]) == (1, contract.MAX_ORIGIN_CONCURRENCY)
    assert "default" not in concurrency  # the chart's distribution.originConcurrency
    assert distribution["properties"]["peers"]["default"] is DistributionSpec().peers is True
    base = {
        "model": {"architecture": "torchvision/resnet18", "inputShape": [3, 8, 8]},
        "checkpoint": {"uri": "file:///models/v1.safetensors", "sha256": "1" * 64},
    }
    assert parse_spec(base).distribution == DistributionSpec()
    for bad in (0, contract.MAX_ORIGIN_CONCURRENCY + 1):
        with pytest.raises(ValueError, match="originConcurrency"):
            parse_spec({**base, "distribution": {"originConcurrency": bad}})


def test_a_modelreplica_reports_its_fetch_as_the_contract_says():
    crd = yaml.safe_load(REPLICA_CRD.read_text())
    (version,) = crd["spec"]["versions"]
    fetched = props(version["schema"]["openAPIV3Schema"], "status", "fetched")
    assert set(fetched["properties"]) == aliases(contract.Fetched)
    for name, node in fetched["properties"].items():
        assert (node["type"], node["minimum"]) == ("integer", 0), name


def test_the_docs_name_every_checkpoint_scheme() -> None:
    """docs/architecture.md (its fetcher table) and docs/security.md cover each scheme the
    contract accepts: a scheme added to schemes.py fails here until it is documented."""
    for doc in ("architecture.md", "security.md"):
        text = (REPO / "docs" / doc).read_text()
        missing = [s for s in schemes.SCHEMES if not re.search(rf"\b{s}://", text)]
        assert not missing, f"docs/{doc} never names {missing}"
