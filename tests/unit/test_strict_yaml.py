"""No YAML file in the repository repeats a mapping key (strict parsers, such as Go's
yaml.v3, kubeconform -strict and the API server's strict decoding, refuse that); the
charts' rendered manifests are read with the same loader (devcluster/helm.py)."""

from __future__ import annotations

import subprocess

import pytest

from devcluster import strict_yaml
from devcluster.cluster import REPO


def shipped_yaml() -> list[str]:
    """Every tracked YAML file but the charts' Go templates (checked once rendered)."""
    listed = subprocess.run(
        ["git", "ls-files", "*.yaml", "*.yml"], capture_output=True, text=True, cwd=REPO, check=True
    ).stdout.split()
    return [path for path in listed if "/templates/" not in path]


def test_the_repository_has_yaml_files_to_check():
    files = shipped_yaml()
    assert "crds/modeldeployment.yaml" in files and "charts/hotswap/values.yaml" in files


@pytest.mark.parametrize("path", shipped_yaml())
def test_no_yaml_file_repeats_a_key(path):
    strict_yaml.load_all((REPO / path).read_text())


def test_a_repeated_key_is_refused_where_lenient_loaders_keep_the_last():
    text = "affinity:\n  type: object\n  description: x\n  type: object\n"
    with pytest.raises(strict_yaml.DuplicateKeyError, match="repeated key 'type'"):
        strict_yaml.load(text)
    nested = "a:\n- b: 1\n  c: 2\n  b: 3\n"
    with pytest.raises(strict_yaml.DuplicateKeyError, match="repeated key 'b'"):
        strict_yaml.load_all(nested)
    assert strict_yaml.load("a: 1\nb: {a: 2}\n") == {"a": 1, "b": {"a": 2}}
