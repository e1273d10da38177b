"""tests/ is a leaf: the product, bench/, scripts/ and devcluster/ never import it; and
devcluster/ (dev tooling) is in no wheel and no image."""

import ast
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
NOT_TESTS = ("contract", "operator", "runtime", "bench", "scripts", "devcluster", "examples")


def imported_modules(path):
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            yield node.module


def test_nothing_outside_tests_imports_tests():
    offenders = [
        f"{path.relative_to(REPO)}: {module}"
        for folder in NOT_TESTS
        for path in sorted((REPO / folder).rglob("*.py"))
        for module in imported_modules(path)
        if module == "tests" or module.startswith("tests.")
    ]
    assert offenders == []


def test_devcluster_is_in_no_wheel_and_no_image():
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert pyproject["tool"]["setuptools"]["packages"]["find"]["where"] == [
        "contract",
        "operator",
        "runtime",
    ]
    allowed = [
        line for line in (REPO / ".dockerignore").read_text().splitlines() if line.startswith("!")
    ]
    assert not [line for line in allowed if "devcluster" in line or line in ("!.", "!*")]
