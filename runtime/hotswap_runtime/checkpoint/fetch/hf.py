"""hf:// checkpoints: a file of a Hugging Face Hub repository, read over its resolve URL.

``hf://org/repo@revision/path/in/repo`` (``@revision`` optional: ``main``) names the file
the Hub serves at ``{endpoint}/org/repo/resolve/{revision}/path/in/repo`` (the grammar:
``hotswap_contract/hub.py``); the endpoint
is ``https://huggingface.co`` or the Secret's ``HF_ENDPOINT`` (a private mirror), the
token the Secret's ``HF_TOKEN``, sent as ``Authorization: Bearer`` to the endpoint's
origin only. The download is ``open_http``'s: every hop's address checked, the Hub's
redirect to its storage followed and checked like any, ranged parts, resume. A commit
hash as the revision pins the repository; the spec's sha256 pins the file either way.

A sharded repository is read through its ``model.safetensors.index.json``
(``manifest.py``). With a ``shards`` table the manifest pins each shard itself; a stock
index, at a commit id only, gets each shard's sha256 and size from the Hub's LFS
metadata for that commit (``lfs_pins``): a HEAD of the resolve URL, which the Hub answers
with ``X-Linked-Etag: "<sha256>"``, ``X-Linked-Size`` and ``X-Repo-Commit`` before it
redirects to its storage. Only that answer is read (the redirect is not followed, so
the token goes to the endpoint's origin only); the headers are hostile: exactly one
etag of 64 lowercase hex, one size of at most 19 digits within the checkpoint limit,
the commit if given equal to the URI's, or the shard is refused.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Sequence
from contextlib import AbstractAsyncContextManager
from urllib.parse import urlsplit

import httpx

from hotswap_contract import hub
from hotswap_contract.hub import DEFAULT_ENDPOINT, HubFile
from hotswap_contract.redact import redact_uri
from hotswap_runtime.checkpoint.fetch.http import check_status, head, http_client, open_http
from hotswap_runtime.checkpoint.fetch.http import parse_url as parse_http_url
from hotswap_runtime.checkpoint.fetch.net import NetPolicy
from hotswap_runtime.checkpoint.fetch.stream import Body, too_large
from hotswap_runtime.errors import FetchError, ManifestError

LOOKUPS_IN_FLIGHT = 8  # HEADs to the Hub at once for a stock index's shards
_ETAG = re.compile(r'"(?P<q>[0-9a-f]{64})"|(?P<b>[0-9a-f]{64})')
_SIZE = re.compile(r"[0-9]{1,19}")
_REDIRECTS = frozenset({301, 302, 303, 307, 308})
Pin = tuple[str, int]  # sha256, size


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
    return open_http(
        hub_file.url(_endpoint(uri, secret)), _auth(secret), policy, shown=redact_uri(uri)
    )


async def lfs_pins(
    uris: Sequence[str], secret: dict[str, str], policy: NetPolicy, limit: int
) -> list[Pin]:
    """The sha256 and size of each file ``uris`` name (hf:// at a commit id), as the
    Hub's LFS metadata for that commit gives them, in order; ``LOOKUPS_IN_FLIGHT`` asked
    at once, the first failure raised once the others are stopped."""
    async with http_client(policy) as client:
        gate = asyncio.Semaphore(LOOKUPS_IN_FLIGHT)

        async def one(uri: str) -> Pin:
            async with gate:
                return await _lfs_pin(client, uri, secret, policy, limit)

        tasks = [asyncio.ensure_future(one(uri)) for uri in uris]
        try:
            return list(await asyncio.gather(*tasks))
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)


async def _lfs_pin(
    client: httpx.AsyncClient, uri: str, secret: dict[str, str], policy: NetPolicy, limit: int
) -> Pin:
    hub_file, shown = parse_hf(uri), redact_uri(uri)
    if hub_file.commit is None:
        raise ManifestError(f"shard {shown}: its revision is not a commit id")
    url, _ = parse_http_url(hub_file.url(_endpoint(uri, secret)), shown)
    response = await head(client, url, _auth(secret), policy, shown)
    try:
        if response.status_code not in _REDIRECTS:
            check_status(response.status_code, shown)
        return linked_pin(response.headers, hub_file.commit, shown, limit)
    finally:
        await response.aclose()


def linked_pin(headers: httpx.Headers, commit: str, shown: str, limit: int) -> Pin:
    """The sha256 and size the Hub's headers give for shard ``shown`` at ``commit``;
    never quotes them."""
    etags, sizes = headers.get_list("x-linked-etag"), headers.get_list("x-linked-size")
    etag = _ETAG.fullmatch(etags[0].strip()) if len(etags) == 1 else None
    if etag is None or len(sizes) != 1 or not _SIZE.fullmatch(sizes[0].strip()):
        raise ManifestError(
            f"shard {shown}: the Hub gave no LFS sha256 and size for it (one X-Linked-Etag "
            "of 64 lowercase hex and one X-Linked-Size): a file not stored with LFS, or a "
            'mirror that does not say; list the shards in a "shards" table '
            '({FILE: {"sha256": ..., "size": ...}}) of the manifest the spec pins'
        )
    commits = headers.get_list("x-repo-commit")
    if commits and commits != [commit]:
        raise ManifestError(
            f"shard {shown}: the Hub answered for another commit than {commit}; "
            "check HF_ENDPOINT of the Secret"
        )
    size = int(sizes[0].strip())
    if size > limit:
        raise too_large(shown, limit)
    return etag["q"] or etag["b"], size


def _endpoint(uri: str, secret: dict[str, str]) -> str:
    endpoint = secret.get("HF_ENDPOINT") or DEFAULT_ENDPOINT
    parts = urlsplit(endpoint)
    if parts.scheme not in ("http", "https") or not parts.netloc or parts.query or parts.fragment:
        raise FetchError(
            f"cannot fetch checkpoint {redact_uri(uri)}: HF_ENDPOINT of the Secret is not an "
            "http(s) URL; fix the Secret"
        )
    return endpoint


def _auth(secret: dict[str, str]) -> str | None:
    token = secret.get("HF_TOKEN")
    return f"Bearer {token}" if token else None
