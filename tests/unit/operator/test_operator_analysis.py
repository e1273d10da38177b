"""spec.analysis reaches model.json without making a revision; status.analysis shows the
worst figures the pods report for the revision being judged."""

from operator_samples import SHA_A, SPEC, report, sync_context, typed, with_reports

from hotswap_operator import analysis, rollout
from hotswap_operator.spec import parse_spec
from hotswap_operator.status import ModelDeploymentStatus

NOW = "2026-01-01T00:00:00Z"
SHADOW = {"shadow": {"maxDisagreement": 0.02, "onTimeout": "Activate"}}


def step(spec_raw, status, current):
    plan = rollout.plan(
        sync_context(ModelDeploymentStatus.from_raw(status), current, NOW), parse_spec(spec_raw)
    )
    return plan.status.to_raw(), plan.config


def test_analysis_settings_reach_model_json_and_make_no_revision():
    status, config = step(SPEC, {}, None)
    assert config.analysis is None and "analysis" not in config.dumps()
    status2, config2 = step({**SPEC, "analysis": SHADOW}, status, config)
    assert config2.stable.revision == config.stable.revision == 1
    assert config2.generation == config.generation + 1  # model.json changed
    assert config2.analysis is not None and config2.analysis.shadow is not None
    assert config2.analysis.shadow.max_disagreement == 0.02
    revision = config2.revision_for("any-pod")
    assert revision.analysis == config2.analysis and revision.key == config.stable.key
    assert status2["stable"] == status["stable"]


def figures(revision, accuracy=None, decision=None, disagreements=0, samples=100):
    found = {}
    if accuracy is not None:
        found["evaluation"] = {
            "revision": revision,
            "samples": 64,
            "accuracy": accuracy,
            "servingRevision": revision - 1,
            "servingAccuracy": 0.9,
            "passed": accuracy >= 0.85,
        }
    if decision is not None:
        found["shadow"] = {
            "revision": revision,
            "metric": "top1",
            "decision": decision,
            "samples": samples,
            "disagreements": disagreements,
        }
    return found


def judged(reports):
    status = typed(
        {"stable": {"revision": 2, "uri": "file:///m/a", "sha256": SHA_A, "digest": "d"}}
    )
    return with_reports(status, reports)


def test_status_shows_the_worst_figures_for_the_judged_revision():
    reports = {
        "p-a": {**report(1, SHA_A, "Serving"), "analysis": figures(2, 0.95, "Passed")},
        "p-b": {**report(1, SHA_A, "Failed"), "analysis": figures(2, 0.80, "Failed", 9, 60)},
        "p-c": {**report(1, SHA_A, "Serving"), "analysis": figures(1, 0.10, "Failed", 50, 60)},
    }
    found = analysis.summarize(judged(reports))
    assert found is not None and found.revision == 2 and found.pods == 2
    assert found.evaluation_pod == "p-b" and found.evaluation.accuracy == 0.80
    assert found.shadow_pod == "p-b" and found.shadow.decision == "Failed"
    raw = found.model_dump(mode="json", by_alias=True, exclude_none=True)
    assert raw["evaluation"]["servingAccuracy"] == 0.9 and raw["shadowPod"] == "p-b"


def test_no_figures_no_analysis_status():
    assert analysis.summarize(judged({"p-a": report(2, SHA_A, "Serving")})) is None
