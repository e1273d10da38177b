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


def test_dockerfile_builds_both_images_non_root_from_a_base_arg():
    text = (REPO / "Dockerfile").read_text()
    found = stages()
    assert {"python", "pins", "operator-deps", "runtime-deps", "operator", "runtime"} <= set(found)
    assert re.search(r"^ARG BASE=\S*python:3\.11\S*bookworm", text, flags=re.M)
    assert re.match(r"\$\{BASE\} AS python", found["python"])
    for target in ("operator", "runtime"):
        user = re.findall(r"^USER\s+(\S+)", found[target], flags=re.M)
        assert user == ["10001:10001"], target


def test_dockerfile_pins_come_from_pyproject_and_precede_the_code():
    found = stages()
    assert "COPY pyproject.toml" in found["pins"] and "tomllib" in found["pins"]
    for extra in ("operator", "runtime"):
        deps = found[f"{extra}-deps"]
        # Only the pin list reaches the layer that installs packages: a code change
        # never reinstalls torch.
        assert re.findall(r"^COPY .*", deps, flags=re.M) == [
            f"COPY --from=pins /tmp/{extra}.txt /tmp/requirements.txt"
        ]
        # pip's cache is the cache mount (HOME is /tmp in the images, so name it).
        assert "--mount=type=cache,target=/root/.cache/pip" in deps
        assert "pip install --cache-dir /root/.cache/pip" in deps
        assert found[extra].startswith(f"{extra}-deps AS {extra}")


def test_operator_image_never_installs_torch():
    found = stages()
    for stage in ("operator-deps", "operator"):
        assert "runtime" not in found[stage] and "torch" not in found[stage], stage
    assert "torch" not in pyproject_pins("operator")


def test_the_operator_extra_carries_what_the_operator_imports():
    """/metrics needs prometheus-client in the operator image, not only the runtime's."""
    operator = pyproject_pins("operator")
    assert {"kopf", "kubernetes", "prometheus-client"} <= set(operator)
    env, _ = environment_pins()
    assert all(env[name] == version for name, version in operator.items())
