"""The example's sha256 values are what examples.checkpoints writes."""

from pathlib import Path

import yaml

from examples import checkpoints

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
