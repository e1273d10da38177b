"""hf:// URIs: which file of a Hugging Face Hub repository one names, and its resolve URL.

``hf://org/repo@revision/path/in/repo`` (``@revision`` optional: ``main``) names the file
the Hub serves at ``{endpoint}/org/repo/resolve/{revision}/path/in/repo``. Each part is
plain names (letters, digits, ``._-``, not starting with a dot): no percent-encoding,
no ``..``, no query. The runtime fetches it (``fetch/hf.py``) and `kubectl hotswap set
checkpoint --resolve` hashes it on the user's machine, both through this grammar.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

DEFAULT_ENDPOINT = "https://huggingface.co"
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


def parse_hf(uri: str) -> HubFile | None:
    """The repository, revision and path ``uri`` names; None for anything else."""
    match = _URI.fullmatch(uri)
    if match is None:
        return None
    return HubFile(f"{match['org']}/{match['repo']}", match["revision"] or "main", match["path"])
