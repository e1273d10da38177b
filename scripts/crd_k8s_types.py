"""Copy Kubernetes' own schemas (Affinity, TopologySpreadConstraint, ...) into the CRD.

`spec.runtime.affinity` and `spec.runtime.topologySpreadConstraints` are passed to the
runtime pods as written, so their schema is the API server's own, with its
descriptions (what `kubectl explain` prints), as controller-gen embeds them for
Kubebuilder projects. This script reads them from a live API server's OpenAPI v3
(`/openapi/v3/api/v1`), resolves `$ref`s, keeps what a CRD schema may say, drops
`default`s (a CRD would apply them; the pod's own defaulting does that later) and bounds
every list and string (hostile input: nothing unbounded reaches the operator).

It rewrites the blocks between `# BEGIN k8s <type>` and `# END k8s <type>` in
crds/modeldeployment.yaml and its chart copy; a test regenerates them from the test
API server and compares (tests/integration/operator/test_operator_crd_api.py).

    KUBECONFIG=... python scripts/crd_k8s_types.py          # rewrite
    KUBECONFIG=... python scripts/crd_k8s_types.py --check  # exit 1 if stale
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
CRDS = (REPO / "crds" / "modeldeployment.yaml", REPO / "charts/hotswap/crds/modeldeployment.yaml")
CORE = "io.k8s.api.core.v1."
KEPT = {
    "type",
    "format",
    "description",
    "properties",
    "items",
    "required",
    "additionalProperties",
    "enum",
    "x-kubernetes-list-type",
    "x-kubernetes-list-map-keys",
    "x-kubernetes-map-type",
    "x-kubernetes-int-or-string",
}
MAX_ITEMS = 32  # any list inside these types (terms, expressions, values)
MAX_LENGTH = 512  # any string inside them (a label key is at most 317)
MAX_PROPERTIES = 32  # any map inside them (matchLabels)
BLOCK = re.compile(
    r"^(?P<indent> *)# BEGIN k8s (?P<type>\S+)\n.*?^(?P=indent)# END k8s (?P=type)\n", re.M | re.S
)


def resolve(schemas: dict[str, Any], node: dict[str, Any], top: bool = False) -> dict[str, Any]:
    """`node` with `$ref`s inlined, only the keys a CRD schema may hold, and bounds."""
    ref = node.get("$ref") or next((a["$ref"] for a in node.get("allOf", ()) if "$ref" in a), None)
    if ref is not None:
        target = schemas[ref.rsplit("/", 1)[-1]]
        merged = {**target, **{k: v for k, v in node.items() if k not in ("$ref", "allOf")}}
        return resolve(schemas, merged, top)
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key not in KEPT or (top and key == "description"):
            continue
        if key == "properties":
            out[key] = {name: resolve(schemas, child) for name, child in value.items()}
        elif key in ("items", "additionalProperties") and isinstance(value, dict):
            out[key] = resolve(schemas, value)
        else:
            out[key] = value
    kind = out.get("type")
    if kind == "array":
        out["maxItems"] = MAX_ITEMS
    elif kind == "string" and "enum" not in out and "format" not in out:
        out["maxLength"] = MAX_LENGTH
    elif kind == "object" and isinstance(out.get("additionalProperties"), dict):
        out["maxProperties"] = MAX_PROPERTIES
    return out


def block(schemas: dict[str, Any], type_name: str, indent: str) -> str:
    """The text between the markers for `type_name` (its description stays the CRD's)."""
    body = resolve(schemas, schemas[CORE + type_name], top=True)
    text = yaml.safe_dump(body, sort_keys=False, width=100, default_flow_style=False)
    lines = [f"{indent}{line}" if line else line for line in text.splitlines()]
    return (
        "\n".join([f"{indent}# BEGIN k8s {type_name}", *lines, f"{indent}# END k8s {type_name}"])
        + "\n"
    )


def render(crd_text: str, schemas: dict[str, Any]) -> str:
    return BLOCK.sub(lambda m: block(schemas, m["type"], m["indent"]), crd_text)


def fetch_schemas(kubectl: list[str]) -> dict[str, Any]:
    raw = subprocess.run(
        [*kubectl, "get", "--raw", "/openapi/v3/api/v1"], check=True, capture_output=True
    ).stdout
    schemas: dict[str, Any] = json.loads(raw)["components"]["schemas"]
    return schemas


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if the CRD is stale")
    args = parser.parse_args(argv)
    schemas = fetch_schemas([str(REPO / ".cache/bin/controlplane"), "kubectl"])
    current = CRDS[0].read_text()
    wanted = render(current, schemas)
    if args.check:
        stale = wanted != current
        print("stale: run scripts/crd_k8s_types.py" if stale else "up to date")
        return int(stale)
    for path in CRDS:
        path.write_text(wanted)
    return 0


if __name__ == "__main__":
    sys.exit(main())
