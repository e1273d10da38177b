"""environment.yml, pyproject.toml and the Dockerfile agree."""

import re
import tomllib
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[3]


def pins(lines):
    out = {}
    for line in lines:
        name, sep, version = line.partition("==")
        if sep:
            out[re.sub(r"\[.*\]", "", name).strip().lower()] = version.strip()
    return out


def pyproject_pins(*extras):
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    lines = list(project["dependencies"])
    for extra in extras:
        lines += project["optional-dependencies"][extra]
    return pins(lines)


def environment_pins():
    env = yaml.safe_load((REPO / "environment.yml").read_text())
    (pip_section,) = [d for d in env["dependencies"] if isinstance(d, dict)]
    conda = [d for d in env["dependencies"] if isinstance(d, str)]
    return pins(pip_section["pip"]), conda


def test_environment_pins_equal_pyproject_pins():
    env, _ = environment_pins()
    assert env == pyproject_pins("operator", "runtime")


def test_environment_pins_python_like_pyproject():
    _, conda = environment_pins()
    requires = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["requires-python"]
    (python,) = [d for d in conda if d.startswith("python=")]
    assert requires == f">={python.removeprefix('python=')}"
    assert all("=" in d for d in conda), f"unpinned conda dependency in {conda}"


def stages():
    text = (REPO / "Dockerfile").read_text()
    parts = re.split(r"^FROM\s+", text, flags=re.M)[1:]
    return {p.split()[2] if " AS " in p.splitlines()[0] else p.split()[0]: p for p in parts}


def test_dockerfile_builds_both_images_non_root_from_miniforge():
    found = stages()
    assert {"conda", "operator", "runtime"} <= set(found)
    assert re.search(r"ARG MINIFORGE=condaforge/miniforge3:\d", (REPO / "Dockerfile").read_text())
    assert "environment.yml" in found["conda"]
    for target in ("operator", "runtime"):
        user = re.findall(r"^USER\s+(\S+)", found[target], flags=re.M)
        assert user and not user[-1].startswith(("0", "root")), target


def test_operator_image_never_installs_torch():
    operator = stages()["operator"]
    assert '".[operator]"' in operator
    assert "runtime]" not in operator and "torch" not in operator
    assert "torch" not in pyproject_pins("operator")


def test_the_operator_extra_carries_what_the_operator_imports():
    """/metrics needs prometheus-client in the operator image, not only the runtime's."""
    operator = pyproject_pins("operator")
    assert {"kopf", "kubernetes", "prometheus-client"} <= set(operator)
    env, _ = environment_pins()
    assert all(env[name] == version for name, version in operator.items())
