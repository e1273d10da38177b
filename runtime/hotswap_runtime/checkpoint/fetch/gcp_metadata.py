"""A gs:// token from the GKE metadata server (Workload Identity), asked for explicitly.

Only when the checkpoint Secret holds ``GCS_USE_METADATA_SERVER: "true"``: the runtime
then GETs ``http://$GCE_METADATA_HOST/computeMetadata/v1/instance/service-accounts/default/token``
(``metadata.google.internal`` unless the pod's env names another host) with
``Metadata-Flavor: Google``, through ``http.open_http``: so the address policy applies,
and the metadata server's link-local address (169.254.169.254) is refused unless the
cluster admin allows it in ``policy.fetchAllowedNetworks``. The answer is read up to
``MAX_ANSWER_BYTES`` within the idle bound; only its ``access_token`` is kept, never
logged or shown.
"""

from __future__ import annotations

import json
import os

from hotswap_runtime.checkpoint.fetch.http import Via, open_http
from hotswap_runtime.checkpoint.fetch.net import NetPolicy
from hotswap_runtime.errors import FetchError

KEY = "GCS_USE_METADATA_SERVER"
HOST = "metadata.google.internal"
PATH = "/computeMetadata/v1/instance/service-accounts/default/token"
MAX_ANSWER_BYTES = 64 << 10


def wanted(secret: dict[str, str]) -> bool:
    return secret.get(KEY, "").lower() == "true"


async def metadata_token(shown: str, policy: NetPolicy) -> str:
    """The access token of the pod's Google service account."""
    host = os.environ.get("GCE_METADATA_HOST") or HOST
    where = f"{shown} (its token from the metadata server, {KEY} of the Secret)"
    via = Via(where, headers={"Metadata-Flavor": "Google"})
    answer = bytearray()
    async with open_http(f"http://{host}{PATH}", None, policy, via=via) as body:
        if body.size is not None and body.size > MAX_ANSWER_BYTES:
            raise _bad(where)
        async for chunk in body.chunks:
            answer += chunk
            if len(answer) > MAX_ANSWER_BYTES:
                raise _bad(where)
    try:
        token = json.loads(answer)["access_token"]
    except (ValueError, TypeError, KeyError):
        raise _bad(where) from None
    if not isinstance(token, str) or not token or not (token.isascii() and token.isprintable()):
        raise _bad(where)
    return token


def _bad(where: str) -> FetchError:
    return FetchError(
        f"cannot fetch checkpoint {where}: the metadata server's answer is not a token "
        f"(JSON with access_token, at most {MAX_ANSWER_BYTES} bytes)"
    )
