"""`set checkpoint --resolve` of an hf:// URI: the revision pinned to the commit it names.

A branch or tag (``main``, ``v1``) moves; a commit id does not, and only at a commit id
does the runtime take a stock ``model.safetensors.index.json``'s shards from the Hub's
LFS metadata. So ``--resolve`` first asks which commit the revision names now: a HEAD of
the file's resolve URL (``HF_ENDPOINT``, default the Hub, with ``HF_TOKEN`` as an
unredirected header, as huggingface_hub reads them), whose answer carries
``X-Repo-Commit``; the redirect to the Hub's storage is not followed. ``checksum.py``
then hashes the file at that commit, so the sha256 and the pinned URI name the same
bytes even when the branch moves in between.
"""

from __future__ import annotations

import os
import urllib.error
import urllib.request
from email.message import Message
from typing import IO
from urllib.parse import urlsplit

from hotswap_contract.hub import COMMIT, DEFAULT_ENDPOINT, HubFile, parse_hf
from hotswap_contract.redact import redact_uri
from hotswap_operator.kubectl.api import PluginError

TIMEOUT = 30.0
COMMIT_HEADER = "X-Repo-Commit"
_REDIRECTS = frozenset({301, 302, 303, 307, 308})


def hub_file(uri: str) -> HubFile:
    parsed = parse_hf(uri)
    if parsed is None:
        raise PluginError(
            f"{redact_uri(uri)} is not hf://ORG/REPO[@REVISION]/PATH of plain names; fix the URI"
        )
    return parsed


def hub_request(uri: str, method: str = "GET") -> urllib.request.Request:
    """The request for the resolve URL of the file ``uri`` names, with the user's token
    for the endpoint only."""
    endpoint = os.environ.get("HF_ENDPOINT") or DEFAULT_ENDPOINT
    if urlsplit(endpoint).scheme not in ("http", "https"):
        raise PluginError("HF_ENDPOINT is not an http(s) URL; fix or unset it")
    request = urllib.request.Request(hub_file(uri).url(endpoint), method=method)
    if token := os.environ.get("HF_TOKEN"):  # unredirected: never sent on to the Hub's CDN
        request.add_unredirected_header("Authorization", f"Bearer {token}")
    return request


def pin(uri: str) -> str:
    """``uri`` with its revision replaced by the commit id the Hub says it names now
    (``uri`` itself when its revision is a commit id: nothing is asked)."""
    named = hub_file(uri)
    if named.commit is not None:
        return uri
    commits = _commits(uri)
    if len(commits) != 1 or not COMMIT.fullmatch(commits[0].strip()):
        raise PluginError(
            f"the Hub did not say which commit revision {named.revision!r} of "
            f"{redact_uri(uri)} is (one {COMMIT_HEADER} of 40 hex); give the URI as "
            "hf://ORG/REPO@COMMIT/PATH"
        )
    return f"hf://{named.repo}@{commits[0].strip()}/{named.path}"


def _commits(uri: str) -> list[str]:
    """The X-Repo-Commit values of the Hub's answer to HEAD of the resolve URL."""
    opener = urllib.request.build_opener(_Unfollowed)
    try:
        with opener.open(hub_request(uri, "HEAD"), timeout=TIMEOUT) as answer:
            return list(answer.headers.get_all(COMMIT_HEADER) or [])
    except urllib.error.HTTPError as err:
        err.close()
        if err.code not in _REDIRECTS:
            raise PluginError(f"{redact_uri(uri)} answered {err.code}; check the URI") from None
        return list(err.headers.get_all(COMMIT_HEADER) or [])
    except (urllib.error.URLError, OSError) as err:
        reason = getattr(err, "reason", None) or getattr(err, "strerror", None) or err
        raise PluginError(f"cannot read {redact_uri(uri)}: {reason}") from None


class _Unfollowed(urllib.request.HTTPRedirectHandler):
    """No redirect is followed: the Hub's own answer carries the commit."""

    def redirect_request(
        self,
        req: urllib.request.Request,
        fp: IO[bytes],
        code: int,
        msg: str,
        headers: Message,
        newurl: str,
    ) -> urllib.request.Request | None:
        return None
