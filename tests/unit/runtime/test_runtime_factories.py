"""The architecture allowlist admits factories defined in an allowed module, never a
callable the module merely imports: ``subprocess.run`` or ``torch.hub.load`` imported
by an allowed module are refused before they are called, while torchvision's own
re-exports and the chart's default entries build as before."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from hotswap_contract.policy import DEFAULT_ARCHITECTURES, factory_allowed
from hotswap_contract.wire import ModelSpec
from hotswap_runtime.errors import ArchitectureError
from hotswap_runtime.swap.models import build_model, size_model
from tests.fixtures_runtime import hostile

MODULE = "python/tests.fixtures_runtime.reexports"
META = torch.device("meta")


def spec(architecture: str, args: dict[str, Any] | None = None, shape: Any = (4,)) -> ModelSpec:
    return ModelSpec(architecture=architecture, args=args or {}, inputShape=shape)


def hub_repo(folder: Path, marker: Path) -> Path:
    """A local torch.hub repository whose hubconf.py leaves ``marker`` when imported."""
    folder.mkdir()
    (folder / "hubconf.py").write_text(
        f"import pathlib\npathlib.Path({str(marker)!r}).touch()\n\n"
        "def make(**kwargs):\n    return None\n"
    )
    return folder


def test_a_subprocess_run_imported_by_an_allowed_module_is_never_called(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    run = spec(f"{MODULE}:run", {"args": ["touch", str(marker)]})
    with pytest.raises(ArchitectureError, match=r"'run' is defined in 'subprocess', not in an"):
        build_model(run, "cpu", hostile.ALLOWED)
    with pytest.raises(ArchitectureError, match="only imports it"):
        size_model(run, hostile.ALLOWED, 1 << 20)
    assert not marker.exists(), "subprocess.run ran"


def test_a_torch_hub_load_imported_by_an_allowed_module_is_never_called(tmp_path: Path) -> None:
    marker = tmp_path / "imported"
    repo = hub_repo(tmp_path / "hub", marker)
    args = {"repo_or_dir": str(repo), "model": "make", "source": "local"}
    with pytest.raises(ArchitectureError, match=r"'load' is defined in 'torch\.hub'"):
        build_model(spec(f"{MODULE}:load", args), "cpu", hostile.ALLOWED)
    assert not marker.exists(), "torch.hub.load imported a hubconf.py"


@pytest.mark.parametrize(
    ("name", "defined_in"),
    [("shell", "subprocess"), ("Linear", "torch.nn.modules.linear"), ("functools", "")],
)
def test_imported_classes_and_partials_of_imported_names_are_refused(
    name: str, defined_in: str
) -> None:
    with pytest.raises(ArchitectureError, match=f"is defined in|no callable '{name}'"):
        build_model(spec(f"{MODULE}:{name}"), META, hostile.ALLOWED)
    assert not factory_allowed(f"{MODULE}:{name}", defined_in, hostile.ALLOWED)


@pytest.mark.parametrize("name", ["make", "Net", "small"])
def test_functions_classes_and_partials_defined_in_the_module_build(name: str) -> None:
    model = build_model(spec(f"{MODULE}:{name}"), "cpu", hostile.ALLOWED)
    assert isinstance(model, torch.nn.Module)


def test_an_entry_naming_the_callable_itself_allows_it() -> None:
    allowed = (f"{MODULE}:Linear",)
    args = {"in_features": 4, "out_features": 3}
    assert isinstance(build_model(spec(f"{MODULE}:Linear", args), META, allowed), torch.nn.Linear)


def test_torchvision_factories_and_the_default_entries_still_build() -> None:
    shape = (3, 32, 32)
    resnet = spec("python/torchvision.models:resnet18", {"num_classes": 3}, shape)
    for allowed in (("python/torchvision.models",), ("python/torchvision",)):
        build_model(resnet, META, allowed)  # defined in torchvision.models.resnet
    build_model(resnet, META, ("python/torchvision.models:resnet18",))
    build_model(
        spec("torchvision/resnet18", {"num_classes": 3}, shape), META, DEFAULT_ARCHITECTURES
    )
    mlp = spec("python/hotswap_runtime.examples:mlp", {}, (4,))
    assert build_model(mlp, META, DEFAULT_ARCHITECTURES) is not None


def test_torchvision_s_own_import_of_a_download_function_is_refused(tmp_path: Path) -> None:
    """torchvision.models._api imports torch.hub.load_state_dict_from_url, which fetches
    any URL into the hub folder: a ``python/torchvision`` entry does not reach it."""
    fetch = spec(
        "python/torchvision.models._api:load_state_dict_from_url",
        {"url": "http://127.0.0.1:9/x.pt", "model_dir": str(tmp_path)},
    )
    with pytest.raises(ArchitectureError, match=r"defined in 'torch\.hub'"):
        build_model(fetch, META, ("python/torchvision",))


def test_factory_allowed_matches_whole_module_names() -> None:
    allowed = ("python/pkg", "python/other:make")
    assert factory_allowed("python/pkg:f", "pkg", allowed)
    assert factory_allowed("python/pkg:f", "pkg.sub", allowed)
    assert factory_allowed("python/other:make", "subprocess", allowed)  # named by the admin
    assert not factory_allowed("python/pkg:f", "pkg_evil", allowed)
    assert not factory_allowed("python/pkg:f", "other", allowed)
    assert not factory_allowed("python/pkg:f", "", allowed)
