"""The CRD is the one schema: it must agree with contract.py and the chart's copy."""

from pathlib import Path

import pytest
import yaml
from hotswap_runtime import contract

REPO = Path(__file__).resolve().parents[3]
CRD_PATH = REPO / "crds" / "modeldeployment.yaml"


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


def test_chart_carries_a_byte_identical_copy():
    chart_copy = REPO / "charts" / "hotswap" / "crds" / "modeldeployment.yaml"
    assert chart_copy.read_bytes() == CRD_PATH.read_bytes(), (
        "charts/hotswap/crds/modeldeployment.yaml differs from crds/modeldeployment.yaml: "
        "cp crds/modeldeployment.yaml charts/hotswap/crds/"
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


def test_status_pod_entries_hold_every_pod_report_field(version):
    entry = props(version["schema"]["openAPIV3Schema"], "status", "pods")["additionalProperties"]
    aliases = {f.alias or name for name, f in contract.PodReport.model_fields.items()}
    assert set(entry["properties"]) == aliases
    assert entry["properties"]["swapSeconds"]["additionalProperties"] == {"type": "number"}
    assert entry["properties"]["env"]["additionalProperties"] == {"type": "string"}
    states = [s.value for s in contract.PodState]
    assert entry["properties"]["state"]["enum"] == states


def test_status_and_scale_subresources(version):
    assert version["subresources"]["status"] == {}
    assert version["subresources"]["scale"]["specReplicasPath"] == ".spec.replicas"
    assert version["subresources"]["scale"]["statusReplicasPath"] == ".status.replicas"


def test_printer_columns_read_printable_status_fields(version):
    columns = {c["name"]: c["jsonPath"] for c in version["additionalPrinterColumns"]}
    assert columns == {
        "Revision": ".status.revision",
        "Updated": ".status.updated",
        "Ready": ".status.ready",
        "Phase": ".status.phase",
        "Checkpoint": ".status.checkpoint",
        "Age": ".metadata.creationTimestamp",
    }


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
    assert aliases(ModelDeploymentStatus) == set(status["properties"])
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
