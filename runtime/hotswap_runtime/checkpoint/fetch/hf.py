"""hf:// checkpoints: a file of a Hugging Face Hub repository, read over its resolve URL.

``hf://org/repo@revision/path/in/repo`` (``@revision`` optional: ``main``) names the file
the Hub serves at ``{endpoint}/org/repo/resolve/{revision}/path/in/repo`` (the grammar:
``hotswap_contract/hub.py``); the endpoint
is ``https://huggingface.co`` or the Secret's ``HF_ENDPOINT`` (a private mirror), the
token the Secret's ``HF_TOKEN``, sent as ``Authorization: Bearer`` to the endpoint's
origin only. The download is ``open_http``'s: every hop's address checked, the Hub's
redirect to its storage followed and checked like any, ranged parts, resume. A commit
hash as the revision pins the repository; the spec's sha256 pins the file either way.
A sharded repository is read through a manifest in it (``manifest.py``: the Hub's
``model.safetensors.index.json`` plus a ``shards`` table pinning each shard's sha256).
"""

from __future__ import annotations

from contextlib import AbstractAsyncContextManager
from urllib.parse import urlsplit

from hotswap_contract import hub
from hotswap_contract.hub import DEFAULT_ENDPOINT, HubFile
from hotswap_contract.redact import redact_uri
from hotswap_runtime.checkpoint.fetch.http import open_http
from hotswap_runtime.checkpoint.fetch.net import NetPolicy
from hotswap_runtime.checkpoint.fetch.stream import Body
from hotswap_runtime.errors import FetchError


def parse_hf(uri: str) -> HubFile:
    """The repository, revision and path ``uri`` names (``hub.py``); FetchError for
    anything else."""
    hub_file = hub.parse_hf(uri)
    if hub_file is None:
        raise FetchError(
            f"checkpoint URI {redact_uri(uri)} is not hf://ORG/REPO[@REVISION]/PATH of plain "
            "names (letters, digits, '._-', not starting with a dot)"
        )
    return hub_file


def open_hf(
    uri: str, secret: dict[str, str], policy: NetPolicy
) -> AbstractAsyncContextManager[Body]:
    """The body of the file ``uri`` names, from the Hub or the Secret's mirror."""
    hub_file = parse_hf(uri)
    endpoint = secret.get("HF_ENDPOINT") or DEFAULT_ENDPOINT
    parts = urlsplit(endpoint)
    if parts.scheme not in ("http", "https") or not parts.netloc or parts.query or parts.fragment:
        raise FetchError(
            f"cannot fetch checkpoint {redact_uri(uri)}: HF_ENDPOINT of the Secret is not an "
            "http(s) URL; fix the Secret"
        )
    token = secret.get("HF_TOKEN")
    return open_http(
        hub_file.url(endpoint), f"Bearer {token}" if token else None, policy, shown=redact_uri(uri)
    )
