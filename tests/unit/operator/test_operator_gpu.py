"""GPUs: the chart's defaults as the operator turns them into runtime pods (no
RuntimeClass unless one is set: GKE's and EKS's GPU nodes have none called nvidia), and
a MIG slice wherever a whole GPU may be named (chart values, the spec, device cpu)."""

import subprocess

import pytest
import yaml

from devcluster.helm import CHART, template
from hotswap_operator import resources
from hotswap_operator.config import runtime_defaults
from hotswap_operator.spec import SpecError, is_gpu_resource, parse_spec

MIG = "nvidia.com/mig-1g.10gb"
SPEC = {
    "model": {"architecture": "torchvision/resnet18", "inputShape": [3, 8, 8]},
    "checkpoint": {"uri": "file:///models/v1.safetensors", "sha256": "1" * 64},
}


def defaults_of(helm_bin, *args):
    """The operator's runtime defaults from `helm template` with ``args``."""
    docs = template(helm_bin, *args, namespace="ops")
    (deployment,) = [d for d in docs if d["kind"] == "Deployment"]
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    raw = next(e["value"] for e in container["env"] if e["name"] == "HOTSWAP_RUNTIME_DEFAULTS")
    return runtime_defaults({"HOTSWAP_RUNTIME_DEFAULTS": raw})


def pod(defaults, device="auto"):
    spec = parse_spec({**SPEC, "runtime": {"device": device}})
    owner = resources.Owner("m", "team-a", "uid")
    return resources.pod_template(owner, spec, defaults)["spec"]


def values_file(tmp_path, values):
    path = tmp_path / "values.yaml"
    path.write_text(yaml.safe_dump(values))
    return ["-f", str(path)]


def test_gpu_pods_get_no_runtime_class_by_default(helm_bin):
    spec = pod(defaults_of(helm_bin))
    assert "runtimeClassName" not in spec
    assert spec["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == 1


def test_a_runtime_class_set_reaches_gpu_pods_only(helm_bin):
    defaults = defaults_of(helm_bin, "--set", "runtime.gpu.runtimeClassName=nvidia")
    assert pod(defaults)["runtimeClassName"] == "nvidia"
    assert "runtimeClassName" not in pod(defaults, device="cpu")


def test_a_mig_slice_replaces_the_whole_gpu(helm_bin, tmp_path):
    limits = {"nvidia.com/gpu": None, MIG: 1}
    defaults = defaults_of(
        helm_bin, *values_file(tmp_path, {"runtime": {"gpu": {"limits": limits}}})
    )
    got = pod(defaults)["containers"][0]["resources"]["limits"]
    assert got[MIG] == 1 and "nvidia.com/gpu" not in got
    cpu = pod(defaults, device="cpu")["containers"][0]["resources"]
    assert all(MIG not in values for values in cpu.values())


def test_a_mig_slice_merged_into_the_whole_gpu_is_refused_with_the_fix(helm_bin):
    done = subprocess.run(
        [
            str(helm_bin),
            "template",
            "hs",
            str(CHART),
            "--set-json",
            f'runtime.gpu.limits={{"{MIG}":1}}',
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode != 0
    assert f"asks for nvidia.com/gpu and {MIG} at once" in done.stderr
    assert "nvidia.com/gpu: null" in done.stderr


@pytest.mark.parametrize(
    ("name", "gpu"),
    [
        ("nvidia.com/gpu", True),
        (MIG, True),
        ("nvidia.com/mig-3g.40gb", True),
        ("nvidia.com/gpu.shared", False),
        ("nvidia.com/migrate", False),
        ("amd.com/gpu", False),
        ("cpu", False),
    ],
)
def test_gpu_resource_names(name, gpu):
    assert is_gpu_resource(name) is gpu


@pytest.mark.parametrize("kind", ["limits", "requests"])
@pytest.mark.parametrize("name", ["nvidia.com/gpu", MIG])
def test_a_cpu_spec_asking_for_a_gpu_or_a_slice_is_refused_with_the_fix(kind, name):
    runtime = {"device": "cpu", "resources": {kind: {name: 1, "cpu": "1"}}}
    with pytest.raises(SpecError, match=rf"device is cpu but resources asks for {name};"):
        parse_spec({**SPEC, "runtime": runtime})


def test_a_spec_may_ask_for_a_mig_slice():
    runtime = {"device": "cuda", "resources": {"limits": {MIG: 1}}}
    spec = parse_spec({**SPEC, "runtime": runtime})
    pod = resources.pod_template(resources.Owner("m", "team-a", "uid"), spec, defaults())
    assert pod["spec"]["containers"][0]["resources"] == {"limits": {MIG: 1}}
    assert parse_spec({**SPEC, "runtime": {"device": "cpu", "resources": {"limits": {"cpu": 1}}}})


def defaults():
    return runtime_defaults({})
