"""Runtime pod settings: spec.runtime over the chart's defaults, reaching the pod
template, the ServiceAccount and an optional PodDisruptionBudget (pure builders)."""

import json

import pytest
from operator_samples import SHA_B, SPEC, sync_context, with_checkpoint

from hotswap_operator import canary, resources, rollout
from hotswap_operator.config import ConfigurationError, RuntimeDefaults, runtime_defaults
from hotswap_operator.spec import SpecError, parse_spec

OWNER = resources.Owner(name="resnet", namespace="ml", uid="uid-1")
SPREAD = {
    "maxSkew": 1,
    "topologyKey": "kubernetes.io/hostname",
    "whenUnsatisfiable": "ScheduleAnyway",
}
AFFINITY = {
    "nodeAffinity": {
        "requiredDuringSchedulingIgnoredDuringExecution": {
            "nodeSelectorTerms": [
                {"matchExpressions": [{"key": "pool", "operator": "In", "values": ["gpu"]}]}
            ]
        }
    }
}
ROLE_ARN = {"eks.amazonaws.com/role-arn": "arn:aws:iam::111122223333:role/models"}


def defaults(**values):
    return RuntimeDefaults.model_validate({"gpu": {"enabled": False}, **values})


def children(runtime=None, chart=None, spec=SPEC, status=None):
    raw = {**spec, "runtime": {**spec.get("runtime", {}), **(runtime or {})}}
    parsed = parse_spec(raw)
    plan = rollout.plan(sync_context(status), parsed)
    return {
        c["kind"]: c for c in resources.children(OWNER, parsed, chart or defaults(), plan.config)
    }, plan


def pod(kids):
    return kids["Deployment"]["spec"]["template"]


def test_chart_defaults_spread_each_model_deployments_pods_over_nodes():
    template = pod(children(chart=RuntimeDefaults.model_validate({"gpu": {"enabled": False}}))[0])
    (constraint,) = template["spec"]["topologySpreadConstraints"]
    assert constraint == {
        **SPREAD,
        "labelSelector": {"matchLabels": resources.selector_labels("resnet")},
        "matchLabelKeys": ["pod-template-hash"],
    }


def test_spec_settings_reach_the_pod_template():
    runtime = {
        "imagePullSecrets": [{"name": "team-registry"}],
        "priorityClassName": "inference-high",
        "affinity": AFFINITY,
        "topologySpreadConstraints": [
            {
                **SPREAD,
                "topologyKey": "topology.kubernetes.io/zone",
                "labelSelector": {"matchLabels": {"x": "y"}},
            }
        ],
        "podMetadata": {"labels": {"team": "vision"}, "annotations": {"example.com/owner": "ml"}},
    }
    chart = defaults(imagePullSecrets=[{"name": "mirror"}, {"name": "team-registry"}])
    template = pod(children(runtime, chart)[0])
    spec = template["spec"]
    assert spec["imagePullSecrets"] == [{"name": "mirror"}, {"name": "team-registry"}]
    assert spec["priorityClassName"] == "inference-high"
    assert spec["affinity"] == AFFINITY
    (constraint,) = spec["topologySpreadConstraints"]  # the spec's replaces the default
    assert constraint["labelSelector"] == {"matchLabels": {"x": "y"}}
    assert "matchLabelKeys" not in constraint
    assert template["metadata"]["labels"]["team"] == "vision"
    assert template["metadata"]["annotations"] == {"example.com/owner": "ml"}


def test_maps_merge_key_by_key_and_the_operators_labels_win():
    chart = defaults(
        podMetadata={
            "labels": {"cost-center": "42", "team": "platform"},
            "annotations": {"a.io/x": "1"},
        },
        serviceAccount={"annotations": {**ROLE_ARN, "a.io/y": "chart"}},
        priorityClassName="default-inference",
        affinity=AFFINITY,
    )
    runtime = {
        "podMetadata": {"labels": {"team": "vision"}},
        "serviceAccount": {"annotations": {"a.io/y": "spec"}},
    }
    kids, _ = children(runtime, chart)
    meta = pod(kids)["metadata"]
    assert meta["labels"] == {"cost-center": "42", "team": "vision", **resources.labels("resnet")}
    assert meta["annotations"]["a.io/x"] == "1"
    assert kids["ServiceAccount"]["metadata"]["annotations"] == {**ROLE_ARN, "a.io/y": "spec"}
    assert pod(kids)["spec"]["priorityClassName"] == "default-inference"
    assert pod(kids)["spec"]["affinity"] == AFFINITY


def test_an_empty_spread_list_turns_the_default_off():
    template = pod(children({"topologySpreadConstraints": []}, RuntimeDefaults())[0])
    assert "topologySpreadConstraints" not in template["spec"]


@pytest.mark.parametrize(
    "runtime",
    [
        {"imagePullSecrets": [{"name": "other"}]},
        {"priorityClassName": "batch"},
        {"affinity": AFFINITY},
        {"topologySpreadConstraints": []},
        {"podMetadata": {"labels": {"team": "b"}}},
        {"podMetadata": {"annotations": {"a.io/b": "c"}}},
        {"serviceAccount": {"annotations": ROLE_ARN}},
    ],
)
def test_changing_a_pod_setting_rolls_the_pods(runtime):
    before = pod(children()[0])
    after = pod(children(runtime)[0])
    assert after != before


def test_a_checkpoint_change_never_changes_the_pod_template_with_every_setting_set():
    runtime = {
        "imagePullSecrets": [{"name": "r"}],
        "priorityClassName": "p",
        "affinity": AFFINITY,
        "podMetadata": {"labels": {"team": "b"}, "annotations": {"a.io/b": "c"}},
        "serviceAccount": {"annotations": ROLE_ARN},
        "podDisruptionBudget": {"enabled": True},
    }
    first, plan = children(runtime)
    spec = with_checkpoint("s3://models/v2.safetensors", SHA_B)
    second, plan2 = children(runtime, spec=spec, status=plan.status)
    assert plan2.config.stable.revision == 2
    for kind in ("Deployment", "ServiceAccount", "PodDisruptionBudget"):
        assert json.dumps(first[kind], sort_keys=True) == json.dumps(second[kind], sort_keys=True)


def test_the_service_account_annotations_are_on_the_account_and_digested_on_the_pods():
    kids, _ = children({"serviceAccount": {"annotations": ROLE_ARN}})
    assert kids["ServiceAccount"]["metadata"]["annotations"] == ROLE_ARN
    digest = pod(kids)["metadata"]["annotations"][resources.ANNOTATION_ACCOUNT]
    assert len(digest) == 16 and "arn:aws" not in digest
    plain, _ = children()
    assert "annotations" not in plain["ServiceAccount"]["metadata"]


def test_the_disruption_budget_is_an_owned_child_only_when_enabled():
    kids, _ = children()
    assert "PodDisruptionBudget" not in kids
    parsed = parse_spec(SPEC)
    (gone,) = resources.retired(OWNER, parsed, defaults())
    assert (gone["kind"], gone["metadata"]["name"]) == ("PodDisruptionBudget", "resnet")
    kids, _ = children({"podDisruptionBudget": {"enabled": True, "minAvailable": "50%"}})
    pdb = kids["PodDisruptionBudget"]
    assert pdb["apiVersion"] == "policy/v1"
    assert pdb["metadata"]["ownerReferences"][0]["uid"] == "uid-1"
    assert pdb["spec"] == {
        "selector": {"matchLabels": resources.selector_labels("resnet")},
        "unhealthyPodEvictionPolicy": "AlwaysAllow",
        "minAvailable": "50%",
    }
    order = list(kids)
    assert order.index("PodDisruptionBudget") < order.index("Deployment")
    chart = defaults(podDisruptionBudget={"enabled": True})
    kids, _ = children(chart=chart)
    assert kids["PodDisruptionBudget"]["spec"]["maxUnavailable"] == 1
    assert resources.retired(OWNER, parsed, chart) == []
    kids, _ = children({"podDisruptionBudget": {"enabled": False}}, chart)
    assert "PodDisruptionBudget" not in kids  # the spec's replaces the chart's


@pytest.mark.parametrize(
    "runtime,why",
    [
        ({"podMetadata": {"labels": {"app.kubernetes.io/name": "x"}}}, "operator's"),
        ({"podMetadata": {"labels": {"hotswap.dev/model-deployment": "other"}}}, "operator's"),
        ({"podMetadata": {"labels": {"pod-template-hash": "1"}}}, "operator's"),
        ({"podMetadata": {"labels": {"bad key": "x"}}}, "not a valid key"),
        ({"podMetadata": {"labels": {"a": "x" * 64}}}, "not a valid label value"),
        ({"podMetadata": {"labels": {f"k{i}": "v" for i in range(33)}}}, "at most 32"),
        ({"podMetadata": {"annotations": {"hotswap.dev/x": "1"}}}, "operator's"),
        ({"podMetadata": {"annotations": {"a.io/x": "v" * 4097}}}, "4096"),
        ({"serviceAccount": {"annotations": {"/x": "1"}}}, "not a valid key"),
        (
            {"podDisruptionBudget": {"enabled": True, "minAvailable": 1, "maxUnavailable": 1}},
            "both",
        ),
        ({"podDisruptionBudget": {"enabled": True, "minAvailable": "half"}}, "N%"),
        ({"imagePullSecrets": [{"name": f"s{i}"} for i in range(17)]}, "imagePullSecrets"),
    ],
)
def test_hostile_pod_settings_are_refused_naming_the_field(runtime, why):
    with pytest.raises(SpecError) as refused:
        parse_spec({**SPEC, "runtime": runtime}, name="resnet")
    assert why in str(refused.value) and "ModelDeployment resnet" in str(refused.value)


def test_chart_defaults_that_take_the_operators_labels_stop_the_operator():
    raw = json.dumps({"podMetadata": {"labels": {"app.kubernetes.io/managed-by": "me"}}})
    with pytest.raises(ConfigurationError, match="operator's"):
        runtime_defaults({"HOTSWAP_RUNTIME_DEFAULTS": raw})


@pytest.mark.parametrize(
    "steps,ok",
    [
        ([1, "50%", "100%"], True),
        ([1, 2, "10%", "100%"], True),
        (["150%", 0], False),
        ([0], False),
        (["0%"], False),
        ([2, 1], False),
        (["50%", 1], False),
        ([1, 1], False),
        (["50%", "50%"], False),
        (["5"], False),
        ([10001], False),
    ],
)
def test_canary_steps_increase_within_1_to_100_percent(steps, ok):
    raw = {**SPEC, "rollout": {"strategy": "Canary", "steps": steps}}
    if ok:
        assert parse_spec(raw).rollout.steps == tuple(steps)
    else:
        with pytest.raises(SpecError, match=r"spec\.rollout\.steps"):
            parse_spec(raw, name="resnet")


def test_count_steps_above_replicas_are_capped_after_a_scale_down():
    assert canary.step_counts([1, 3, 5], 4) == (1, 3, 4)
