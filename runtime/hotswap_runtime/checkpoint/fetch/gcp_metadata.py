"""A gs:// token from the GKE metadata server (Workload Identity), asked for explicitly.

Only when the checkpoint Secret holds ``GCS_USE_METADATA_SERVER: "true"``: the runtime
then GETs ``http://$GCE_METADATA_HOST/computeMetadata/v1/instance/service-accounts/default/token``
(``metadata.google.internal`` unless the pod's env names another host) with
``Metadata-Flavor: Google``, through ``http.open_http``: so the address policy applies,
and the metadata server's link-local address (169.254.169.254) is refused unless the
cluster admin allows it in ``policy.fetchAllowedNetworks``. The answer is read up to
``MAX_ANSWER_BYTES`` within the idle bound; only its ``access_token`` and ``expires_in``
are kept, the token never logged or shown. A token is kept per metadata URL until
``kept_tokens.REFRESH_SECONDS`` before it expires (as ``azure_identity`` keeps AAD tokens), so the
shards of a checkpoint, and the next checkpoints, ask the metadata server once an hour
rather than once a file.
"""

from __future__ import annotations

import json
import os

from hotswap_runtime.checkpoint.fetch.http import Via, open_http
from hotswap_runtime.checkpoint.fetch.kept_tokens import KeptTokens
from hotswap_runtime.checkpoint.fetch.net import NetPolicy
from hotswap_runtime.errors import FetchError

KEY = "GCS_USE_METADATA_SERVER"
HOST = "metadata.google.internal"
PATH = "/computeMetadata/v1/instance/service-accounts/default/token"
MAX_ANSWER_BYTES = 64 << 10
MAX_LIFETIME_SECONDS = 3600.0  # Google access tokens live an hour: a longer claim is cut
KEPT = 4
_kept: KeptTokens[str] = KeptTokens(KEPT)  # by metadata URL


def wanted(secret: dict[str, str]) -> bool:
    return secret.get(KEY, "").lower() == "true"


async def metadata_token(shown: str, policy: NetPolicy) -> str:
    """The access token of the pod's Google service account."""
    url = f"http://{os.environ.get('GCE_METADATA_HOST') or HOST}{PATH}"
    kept = _kept.get(url)
    if kept is not None:
        return kept
    where = f"{shown} (its token from the metadata server, {KEY} of the Secret)"
    via = Via(where, headers={"Metadata-Flavor": "Google"})
    answer = bytearray()
    async with open_http(url, None, policy, via=via) as body:
        if body.size is not None and body.size > MAX_ANSWER_BYTES:
            raise _bad(where)
        async for chunk in body.chunks:
            answer += chunk
            if len(answer) > MAX_ANSWER_BYTES:
                raise _bad(where)
    token, lifetime = _answer(answer, where)
    _kept.keep(url, token, lifetime)
    return token


def _answer(answer: bytes | bytearray, where: str) -> tuple[str, float]:
    """The token and its lifetime in seconds (0: unknown) from the server's answer."""
    try:
        document = json.loads(answer)
        token, lifetime = document["access_token"], document.get("expires_in", 0)
    except (ValueError, TypeError, KeyError, AttributeError, RecursionError):
        raise _bad(where) from None
    if not isinstance(token, str) or not token or not (token.isascii() and token.isprintable()):
        raise _bad(where)
    if type(lifetime) is not int or lifetime <= 0:
        return token, 0.0
    return token, min(float(lifetime), MAX_LIFETIME_SECONDS)


def _bad(where: str) -> FetchError:
    return FetchError(
        f"cannot fetch checkpoint {where}: the metadata server's answer is not a token "
        f"(JSON with access_token, at most {MAX_ANSWER_BYTES} bytes)"
    )
