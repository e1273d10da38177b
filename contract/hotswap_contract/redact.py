"""What a failure may show: URIs without credentials, short text without remote echoes.

Every reason the runtime reports (log, metrics, model metadata, the pod report) goes
through these two functions, so one rule holds everywhere: a URI is shown without its
userinfo, query and fragment (passwords, presigned-URL signatures, tokens), and text is
one short line. Text that a remote endpoint or a file sent is never put into a reason
at all; callers describe failures in their own words (status codes, exception types).
"""

from __future__ import annotations

import re
from urllib.parse import urlsplit, urlunsplit

MAX_REASON = 400  # characters of a reason, wherever it is shown
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]+")


def redact_uri(uri: str, limit: int = 160) -> str:
    """``uri`` without userinfo, query or fragment, clipped to ``limit`` characters."""
    try:
        parts = urlsplit(uri)
        host = parts.hostname or ""
        port = parts.port
    except ValueError:  # an unparsable authority: show only the scheme
        scheme = uri.partition(":")[0] if ":" in uri else ""
        return clip(f"{scheme}://<unparsable>" if scheme.isalnum() else "<unparsable uri>", limit)
    if ":" in host:  # IPv6 literal
        host = f"[{host}]"
    netloc = f"{host}:{port}" if port is not None else host
    return clip(urlunsplit((parts.scheme, netloc, parts.path, "", "")), limit)


def clip(text: str, limit: int = MAX_REASON) -> str:
    """One line of at most ``limit`` characters (control characters folded to a space)."""
    line = _CONTROL.sub(" ", text).strip()
    if len(line) <= limit:
        return line
    return line[: max(limit - 3, 0)] + "..."
