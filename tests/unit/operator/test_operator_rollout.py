import pytest
from operator_samples import SHA_A, SHA_B, SPEC, sync_context, with_checkpoint

from hotswap_contract.wire import ModelConfig
from hotswap_operator import rollout
from hotswap_operator.spec import SpecError, parse_spec
from hotswap_operator.status import ModelDeploymentStatus

NOW = "2026-01-01T00:00:00Z"
LATER = "2026-01-02T00:00:00Z"


def step(spec_raw, status, current, now=NOW):
    """Plan once; returns the plan, the status it leaves (raw, as stored) and model.json."""
    typed = ModelDeploymentStatus.from_raw(status)
    plan = rollout.plan(sync_context(typed, current, now), parse_spec(spec_raw))
    return plan, plan.status.to_raw(), plan.config


def test_first_revision_is_one_and_is_announced():
    plan, status, config = step(SPEC, {}, None)
    assert config.stable.revision == 1 and config.generation == 1
    assert status["stable"]["sha256"] == SHA_A and status["revision"] == 1
    assert status["checkpoint"] == SHA_A[:12]
    assert [e.reason for e in plan.events] == ["RevisionCreated"]


def test_reconcile_twice_changes_nothing():
    _, status, config = step(SPEC, {}, None)
    plan2, status2, config2 = step(SPEC, status, config, now=LATER)
    assert config2 == config
    assert status2 == status
    assert plan2.events == []


def test_checkpoint_change_bumps_revision_and_generation():
    _, status, config = step(SPEC, {}, None)
    plan, status2, config2 = step(
        with_checkpoint("file:///m/v2.safetensors", SHA_B), status, config
    )
    assert config2.stable.revision == 2 and config2.generation == 2
    assert config2.stable.checkpoint.uri == "file:///m/v2.safetensors"
    assert [h["revision"] for h in status2["history"]] == [1, 2]
    assert plan.events[0].message.startswith("revision 2: file:///m/v2.safetensors")


def test_non_revision_changes_keep_the_revision():
    _, status, config = step(SPEC, {}, None)
    for change in (
        {"replicas": 5},
        {"runtime": {"device": "auto"}},
        {"rollout": {"strategy": "AllAtOnce", "paused": True}},
    ):
        _, status2, config2 = step({**SPEC, **change}, status, config)
        assert config2 == config, change
        assert status2 == status, change


def test_model_change_is_a_new_revision():
    _, status, config = step(SPEC, {}, None)
    spec = {**SPEC, "model": {**SPEC["model"], "args": {"num_classes": 100}}}
    _, _, config2 = step(spec, status, config)
    assert config2.stable.revision == 2
    assert config2.stable.model.args == {"num_classes": 100}


def test_model_dtype_passes_through_and_its_default_keeps_the_revision():
    _, status, config = step(SPEC, {}, None)
    default = {**SPEC, "model": {**SPEC["model"], "dtype": "float32"}}  # the CRD's default
    _, status2, config2 = step(default, status, config)
    assert config2 == config and status2 == status
    assert '"dtype"' not in config.dumps(), "model.json an older runtime cannot read"
    half = {**SPEC, "model": {**SPEC["model"], "dtype": "float16"}}
    _, _, config3 = step(half, status, config)
    assert config3.stable.revision == 2 and config3.stable.model.dtype == "float16"
    assert ModelConfig.model_validate_json(config3.dumps()).stable.model.dtype == "float16"


def test_returning_to_an_old_checkpoint_is_a_new_revision():
    _, s1, c1 = step(SPEC, {}, None)
    _, s2, c2 = step(with_checkpoint("file:///m/v2.safetensors", SHA_B), s1, c1)
    _, _s3, c3 = step(SPEC, s2, c2)
    assert c3.stable.revision == 3 and c3.stable.checkpoint.sha256 == SHA_A


def test_history_keeps_the_last_ten():
    status, config = {}, None
    for i in range(13):
        sha = f"{i:064x}"
        _, status, config = step(with_checkpoint(f"file:///m/{i}.safetensors", sha), status, config)
    assert [h["revision"] for h in status["history"]] == list(range(4, 14))


def test_crash_between_config_map_and_status_adopts_the_written_revision():
    _, status, config = step(SPEC, {}, None)
    spec2 = with_checkpoint("file:///m/v2.safetensors", SHA_B)
    _, _, written = step(spec2, status, config)  # ConfigMap written, status write lost
    _plan, status2, config2 = step(spec2, status, written)
    assert config2 == written
    assert status2["stable"]["revision"] == 2


def test_a_config_map_edited_by_hand_is_restored_with_a_higher_generation():
    _, status, config = step(SPEC, {}, None)
    tampered = ModelConfig(
        name="resnet", generation=7, stable=config.stable.model_copy(update={"revision": 9})
    )
    _, _, restored = step(SPEC, status, tampered)
    assert restored.stable == config.stable
    assert restored.generation == 8


def test_canary_is_a_registered_strategy():
    spec = {**SPEC, "rollout": {"strategy": "Canary", "steps": [1, "100%"]}}
    _, status, config = step(spec, {}, None)
    assert config.stable.revision == 1 and status["revision"] == 1


@pytest.mark.parametrize(
    "field,value",
    [
        ("replicas", -1),
        ("checkpoint", {"uri": "ftp://x", "sha256": SHA_A}),
        ("checkpoint", {"uri": "file:///x", "sha256": "ABC"}),
        ("model", {"architecture": "resnet18", "inputShape": [3]}),
    ],
)
def test_invalid_specs_name_the_field(field, value):
    with pytest.raises(SpecError, match=f"spec.{field}"):
        parse_spec({**SPEC, field: value}, name="resnet")
