"""kubeconform's schema folder, generated from a live API server's OpenAPI v3.

kubeconform looks schemas up by kind and apiVersion (`deployment-apps-v1.json`), each a
standalone JSON schema. Its default location is on GitHub, out of reach here; the API
server of the test control plane serves the schemas of exactly the Kubernetes version
we test against, and of our CRD, at /openapi/v3. This writes one standalone schema per
group-version-kind: references inlined (a recursive one, as in the CRD type's own
schema, becomes "anything"), `nullable` made a JSON-schema type, and every object with
declared properties closed to others (kubeconform's "strict" schemas), unless it
preserves unknown fields.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from devcluster.rest import KubeClient

Schema = dict[str, Any]
LOCATION = "{{ .ResourceKind }}{{ .KindSuffix }}.json"  # kubeconform's -schema-location tail


def file_name(group: str, version: str, kind: str) -> str:
    """kubeconform's name: kind, first label of the group, version, lower case."""
    suffix = f"-{group.split('.')[0]}-{version}" if group else f"-{version}"
    return f"{kind.lower()}{suffix.lower()}.json"


SCHEMA_MAPS = {"properties", "patternProperties"}  # name -> schema
SCHEMA_LISTS = {"oneOf", "anyOf"}
SUBSCHEMAS = {"items", "additionalProperties", "not"}


def expand(node: Schema, schemas: dict[str, Schema], seen: tuple[str, ...] = ()) -> Schema:
    """`node` with every $ref inlined, closed where it declares properties."""
    if isinstance(node.get("$ref"), str):
        name = node["$ref"].rsplit("/", 1)[-1]
        return {} if name in seen else expand(schemas[name], schemas, (*seen, name))
    out: Schema = {}
    for key, value in node.items():
        if key in SCHEMA_MAPS:
            out[key] = {name: expand(sub, schemas, seen) for name, sub in value.items()}
        elif key in SCHEMA_LISTS:
            out[key] = [expand(sub, schemas, seen) for sub in value]
        elif key in SUBSCHEMAS and isinstance(value, dict):
            out[key] = expand(value, schemas, seen)
        elif key != "allOf":
            out[key] = value
    for part in node.get("allOf", []):  # the API server wraps every reference in allOf
        out = {**expand(part, schemas, seen), **out}
    if out.pop("nullable", False) and isinstance(out.get("type"), str):
        out["type"] = [out["type"], "null"]
    closed = "properties" in out and "additionalProperties" not in out
    if closed and not out.get("x-kubernetes-preserve-unknown-fields"):
        out["additionalProperties"] = False
    return out


def standalone(schemas: dict[str, Schema]) -> dict[str, Schema]:
    """File name -> standalone schema, for every kind these components define."""
    out = {}
    for name, schema in schemas.items():
        for gvk in schema.get("x-kubernetes-group-version-kind", []):
            out[file_name(gvk["group"], gvk["version"], gvk["kind"])] = expand(
                schema, schemas, (name,)
            )
    return out


def write_schemas(client: KubeClient, folder: Path) -> list[str]:
    """Write every kind the API server serves into `folder`; their file names."""
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for path, entry in client.get("/openapi/v3")["paths"].items():
        if not (path == "api/v1" or (path.startswith("apis/") and path.count("/") == 2)):
            continue
        document = client.get("/" + entry["serverRelativeURL"].lstrip("/").split("?")[0])
        for name, schema in standalone(document["components"]["schemas"]).items():
            (folder / name).write_text(json.dumps(schema))
            written.append(name)
    return written
