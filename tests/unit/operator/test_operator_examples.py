"""The example's sha256 values are what examples.checkpoints writes."""

from pathlib import Path

import yaml

from examples import checkpoints
from hotswap_contract.policy import DEFAULT_FILE_ROOTS, EXAMPLES_DIR

REPO = Path(__file__).resolve().parents[3]


def test_example_checkpoints_match_the_yaml(tmp_path):
    example = yaml.safe_load((REPO / "examples" / "resnet18.yaml").read_text())
    patch = yaml.safe_load((REPO / "examples" / "resnet18-v2-patch.yaml").read_text())
    for version, checkpoint in (
        (1, example["spec"]["checkpoint"]),
        (2, patch["spec"]["checkpoint"]),
    ):
        path, sha = checkpoints.make(version, tmp_path)
        assert sha == checkpoint["sha256"], f"v{version}"
        assert checkpoint["uri"] == checkpoints.pod_uri(checkpoints.checkpoint_path(version))
        assert path.name == checkpoints.checkpoint_path(version).name


def test_quickstart_names_the_image_checkpoints_by_their_sha256(tmp_path):
    """examples/quickstart.yaml names v1 in its spec and v2 in both swap commands of its
    comments; the runtime image's /opt/hotswap-examples holds what checkpoints.make writes
    (the Dockerfile runs it), so each pair must be the file's name and its sha256."""
    text = (REPO / "examples" / "quickstart.yaml").read_text()
    spec = yaml.safe_load(text)["spec"]["checkpoint"]
    _, v1 = checkpoints.make(1, tmp_path)
    _, v2 = checkpoints.make(2, tmp_path)
    assert spec == {"uri": f"file://{EXAMPLES_DIR}/resnet18-v1.safetensors", "sha256": v1}
    v2_uri = f"file://{EXAMPLES_DIR}/resnet18-v2.safetensors"
    assert f"set checkpoint quickstart {v2_uri} \\\n#     --sha256 {v2}\n" in text
    assert f'"uri":"{v2_uri}","sha256":"{v2}"' in text
    assert EXAMPLES_DIR in DEFAULT_FILE_ROOTS
