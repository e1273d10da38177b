"""The import rules of docs/architecture.md ("Import rules"), read from the code itself.

Every import counts, also those inside functions and under TYPE_CHECKING: a type-only
import is still an edge a reader has to follow.
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterator
from functools import cache
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
ROOTS = {
    "hotswap_contract": REPO / "contract",
    "hotswap_operator": REPO / "operator",
    "hotswap_runtime": REPO / "runtime",
}
PRODUCT = tuple(ROOTS)
DEV_ONLY = ("tests", "devcluster", "bench", "scripts")
TORCH = ("torch", "torchvision")

# The runtime's folders, bottom up, and which others each may import (a folder may
# always import itself and hotswap_contract). Top-level modules are split in two: the
# shared bottom layer ("base") and the composition root ("root").
ROOT_MODULES = {"hotswap_runtime.__main__", "hotswap_runtime.service", "hotswap_runtime.server"}
FOLDERS: dict[str, set[str]] = {
    "base": set(),
    "checkpoint.fetch": {"base"},
    "checkpoint.peers": {"base", "checkpoint.fetch"},
    "checkpoint": {"base", "checkpoint.fetch", "checkpoint.peers"},
    "control": {"base"},
    "swap": {"base", "checkpoint", "checkpoint.fetch", "control"},
    "serving": {"base", "swap", "control"},
    "root": {
        "base",
        "checkpoint",
        "checkpoint.fetch",
        "checkpoint.peers",
        "control",
        "swap",
        "serving",
    },
}
# Folders that must not reach torch, through any chain of imports.
TORCH_FREE = ("hotswap_contract", "hotswap_operator", "hotswap_runtime.control")
CONTRACT_THIRD_PARTY = {"pydantic"}


@cache
def modules() -> dict[str, Path]:
    found = {}
    for package, root in ROOTS.items():
        for path in sorted((root / package).rglob("*.py")):
            parts = path.relative_to(root).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            found[name] = path
    return found


def _imported(node: ast.AST, module: str, is_package: bool) -> Iterator[str]:
    if isinstance(node, ast.Import):
        yield from (alias.name for alias in node.names)
    elif isinstance(node, ast.ImportFrom):
        base = node.module or ""
        if node.level:
            anchor = module.split(".")
            anchor = anchor if is_package else anchor[:-1]
            anchor = anchor[: len(anchor) - node.level + 1]
            base = ".".join([*anchor, base] if base else anchor)
        yield base
        yield from (f"{base}.{alias.name}" for alias in node.names)


@cache
def imports_of(module: str) -> frozenset[str]:
    """Every name ``module`` imports: modules, and ``module.attr`` for from-imports."""
    path = modules()[module]
    tree = ast.parse(path.read_text(), str(path))
    is_package = path.name == "__init__.py"
    return frozenset(n for node in ast.walk(tree) for n in _imported(node, module, is_package))


def project_edges(module: str) -> set[str]:
    """The project's modules that ``module`` imports."""
    known = modules()
    return {name for name in imports_of(module) if name in known and name != module}


def folder(module: str) -> str:
    """The runtime folder of a hotswap_runtime module (see FOLDERS)."""
    if module in ROOT_MODULES:
        return "root"
    parts = module.split(".")[1:]
    inside = parts if modules()[module].name == "__init__.py" else parts[:-1]
    if not inside:
        return "base"
    if inside[:2] in (["checkpoint", "fetch"], ["checkpoint", "peers"]):
        return ".".join(inside[:2])
    return inside[0]


def runtime_modules() -> list[str]:
    return [m for m in modules() if m.startswith("hotswap_runtime")]


def test_every_runtime_module_is_in_a_known_folder() -> None:
    unknown = {m: folder(m) for m in runtime_modules() if folder(m) not in FOLDERS}
    assert not unknown, f"modules outside the folders of FOLDERS: {unknown}"


def test_runtime_folders_import_only_the_folders_below_them() -> None:
    wrong = []
    for module in runtime_modules():
        allowed = FOLDERS[folder(module)] | {folder(module)}
        for target in project_edges(module):
            if target.startswith("hotswap_runtime") and folder(target) not in allowed:
                wrong.append(f"{module} ({folder(module)}) imports {target} ({folder(target)})")
    assert not wrong, "\n".join(wrong)


def test_the_folder_rules_form_a_dag() -> None:
    order: list[str] = []
    left = dict(FOLDERS)
    while left:
        ready = [f for f, below in left.items() if below <= set(order)]
        assert ready, f"a cycle among {sorted(left)}"
        order += sorted(ready)
        for f in ready:
            del left[f]
    assert order[0] == "base" and order[-1] == "root"


def test_no_module_import_cycle() -> None:
    graph = {m: project_edges(m) for m in modules()}
    cycles = [scc for scc in _components(graph) if len(scc) > 1]
    assert not cycles, f"import cycles: {cycles}"


def test_operator_imports_only_the_contract_of_the_runtime_side() -> None:
    wrong = [
        f"{m} imports {name}"
        for m in modules()
        if m.startswith("hotswap_operator")
        for name in imports_of(m)
        if name.split(".")[0] == "hotswap_runtime"
    ]
    assert not wrong, "\n".join(wrong)


def test_contract_imports_the_standard_library_and_pydantic_only() -> None:
    allowed = set(sys.stdlib_module_names) | CONTRACT_THIRD_PARTY | {"hotswap_contract"}
    wrong = [
        f"{m} imports {name}"
        for m in modules()
        if m.startswith("hotswap_contract")
        for name in imports_of(m)
        if name and name.split(".")[0] not in allowed
    ]
    assert not wrong, "\n".join(wrong)


def test_no_torch_under_control_the_contract_or_the_operator() -> None:
    wrong = []
    for module in modules():
        if not module.startswith(TORCH_FREE):
            continue
        for reached in _closure(module):
            torch = [n for n in imports_of(reached) if n.split(".")[0] in TORCH]
            if torch:
                wrong.append(f"{module} reaches {reached}, which imports {torch[0]}")
    assert not wrong, "\n".join(wrong)


def test_the_product_never_imports_dev_tooling() -> None:
    wrong = [
        f"{m} imports {name}"
        for m in modules()
        for name in imports_of(m)
        if name.split(".")[0] in DEV_ONLY
    ]
    assert not wrong, "\n".join(wrong)


def test_the_rules_can_fail() -> None:
    """The checks above see real edges: a known import is found where it is."""
    assert "hotswap_runtime.swap.swapper" in project_edges("hotswap_runtime.service")
    assert folder("hotswap_runtime.checkpoint.fetch.http") == "checkpoint.fetch"
    assert "torch" in {n.split(".")[0] for n in imports_of("hotswap_runtime.devices")}
    assert "hotswap_runtime.devices" in _closure("hotswap_runtime.service")


def _closure(module: str) -> set[str]:
    seen = {module}
    todo = [module]
    while todo:
        for target in project_edges(todo.pop()):
            if target not in seen:
                seen.add(target)
                todo.append(target)
    return seen


def _components(graph: dict[str, set[str]]) -> list[set[str]]:
    """Strongly connected components (Tarjan), iteratively."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[set[str]] = []
    for start in graph:
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                scc = set()
                while True:
                    top = stack.pop()
                    on_stack.discard(top)
                    scc.add(top)
                    if top == node:
                        break
                out.append(scc)
    return out
