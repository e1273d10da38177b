"""hf:// URIs: which file of a Hugging Face Hub repository one names, and its resolve URL.

``hf://org/repo@revision/path/in/repo`` (``@revision`` optional: ``main``) names the file
the Hub serves at ``{endpoint}/org/repo/resolve/{revision}/path/in/repo``. Each part is
plain names (letters, digits, ``._-``, not starting with a dot): no percent-encoding,
no ``..``, no query. The runtime fetches it (``fetch/hf.py``) and `kubectl hotswap set
checkpoint --resolve` hashes it on the user's machine, both through this grammar. A
revision of 40 lowercase hex digits is a commit id: it names one tree for good, which is
what lets the runtime take a stock ``model.safetensors.index.json``'s shards from the
Hub's LFS metadata (``checkpoint/manifest.py``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

DEFAULT_ENDPOINT = "https://huggingface.co"
COMMIT = re.compile(r"[0-9a-f]{40}")
_NAME = r"[A-Za-z0-9][A-Za-z0-9._-]{0,95}"
_SEGMENT = r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,199}"
_URI = re.compile(
    rf"hf://(?P<org>{_NAME})/(?P<repo>{_NAME})(@(?P<revision>{_SEGMENT}))?"
    rf"/(?P<path>{_SEGMENT}(/{_SEGMENT}){{0,15}})"
)


@dataclass(frozen=True)
class HubFile:
    repo: str  # org/repo
    revision: str
    path: str

    def url(self, endpoint: str) -> str:
        return f"{endpoint.rstrip('/')}/{self.repo}/resolve/{self.revision}/{self.path}"

    @property
    def commit(self) -> str | None:
        """The revision when it is a commit id (immutable), else None (a branch or tag)."""
        return self.revision if COMMIT.fullmatch(self.revision) else None


def parse_hf(uri: str) -> HubFile | None:
    """The repository, revision and path ``uri`` names; None for anything else."""
    match = _URI.fullmatch(uri)
    if match is None:
        return None
    return HubFile(f"{match['org']}/{match['repo']}", match["revision"] or "main", match["path"])
