"""The checkpoint schemes and Secret keys the runtime reads are the ones the CRD and the
docs name: each derived from the runtime's own tables (schemes.py, credentials.KEYS)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from hotswap_contract import schemes
from hotswap_runtime.checkpoint.fetch.credentials import KEYS

REPO = Path(__file__).resolve().parents[3]


def _checkpoint_schema() -> dict[str, Any]:
    crd = yaml.safe_load((REPO / "crds" / "modeldeployment.yaml").read_text())
    spec = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    return spec["properties"]["checkpoint"]["properties"]  # type: ignore[no-any-return]


def test_the_crd_describes_every_scheme_and_secret_key() -> None:
    checkpoint = _checkpoint_schema()
    uri = checkpoint["uri"]["description"]
    for scheme in schemes.SCHEMES:
        named = f"{scheme}://" in uri or (scheme in ("http", "https") and "http(s)://" in uri)
        assert named, (scheme, uri)
    secret = checkpoint["secretRef"]["description"]
    assert [key for key in KEYS if key not in secret] == []


def test_the_docs_name_every_scheme_and_secret_key() -> None:
    architecture = (REPO / "docs" / "architecture.md").read_text()
    assert [key for key in KEYS if f"`{key}`" not in architecture] == []
    row = next(line for line in architecture.splitlines() if line.startswith("| `schemes.py`"))
    assert f"({', '.join(schemes.SCHEMES)})" in row
    security = (REPO / "docs" / "security.md").read_text()
    assert f"the {len(KEYS)} known keys" in security
    for scheme in schemes.REMOTE:
        assert f"{scheme}://" in security or scheme in ("http", "https"), scheme
