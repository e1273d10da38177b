"""YAML as strict parsers read it: a mapping that repeats a key is an error.

PyYAML's loaders keep the last value of a repeated key; Go's yaml.v3, sigs.k8s.io/yaml
(kubectl, the API server's strict decoding), kubeconform -strict and most linters refuse
the document. Every YAML file this repo ships, and every manifest the charts render, is
read with this loader in the tests, so a repeated key fails here first.
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import Any

import yaml


class DuplicateKeyError(yaml.constructor.ConstructorError):
    """A mapping repeats a key."""


class StrictLoader(yaml.SafeLoader):
    """yaml.SafeLoader that refuses a repeated mapping key."""


def _mapping(loader: StrictLoader, node: yaml.MappingNode, deep: bool = False) -> Any:
    seen: set[Hashable] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=True)
        if key in seen:
            raise DuplicateKeyError(
                "while constructing a mapping",
                node.start_mark,
                f"found a repeated key {key!r} (strict YAML parsers refuse it)",
                key_node.start_mark,
            )
        seen.add(key)
    return loader.construct_mapping(node, deep=deep)


StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping)


def load(text: str) -> Any:
    return yaml.load(text, Loader=StrictLoader)  # a SafeLoader subclass: no arbitrary objects


def load_all(text: str) -> list[Any]:
    return list(yaml.load_all(text, Loader=StrictLoader))
