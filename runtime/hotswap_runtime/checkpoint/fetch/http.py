"""http(s):// checkpoints with httpx: one streaming GET, redirects followed by hand.

Every hop resolves its host once (``fetch_net``), refuses addresses the policy forbids
(the spec's own URI: loopback, link-local, reserved; a redirect: private ranges too),
and connects to an allowed address itself, keeping the hostname for the ``Host`` header
and for TLS (SNI and certificate checks), so DNS cannot point the connection anywhere
else. At most ``MAX_REDIRECTS`` hops, http and https only. The ``Authorization`` header
(from the Secret, or the URI's userinfo) goes to the original origin only. No proxy or
netrc from the environment; bodies are read raw (``Accept-Encoding: identity``), so
the size limit counts what is stored. A server that announces ``Accept-Ranges: bytes``
is also read with ranged GETs (``fetch_stream``: parts in parallel, a broken connection
resumed), each following and checking redirects like the first request and accepted only
as a 206 with exactly the range asked for. Failures are described in the runtime's own words:
an HTTP status code or an exception type, never a reason phrase, body, header or URL
the server sent.
"""

from __future__ import annotations

import base64
import functools
import logging
import os
import ssl
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from urllib.parse import unquote, urlencode

import httpx

from hotswap_contract.redact import redact_uri
from hotswap_runtime.checkpoint.fetch.net import NetPolicy, allowed_addresses, stalled
from hotswap_runtime.checkpoint.fetch.stream import Body
from hotswap_runtime.checkpoint.fetch.transport import Transport
from hotswap_runtime.errors import CheckpointNotFound, Dropped, FetchError, FetchRefused, SwapError

MAX_REDIRECTS = 5
_REDIRECTS = frozenset({301, 302, 303, 307, 308})
_PORTS = {"http": 80, "https": 443}
Origin = tuple[str, str, int]
# The first response's headers -> what ranged requests add: query parameters and headers
# that pin them to the version the first response read (gs:// generation, az:// ETag).
Pin = Callable[[httpx.Headers], tuple[dict[str, str], dict[str, str]]]


@dataclass(frozen=True)
class Via:
    """How a cloud fetcher (gs://, az://) asks for an object over this client: the URI
    shown in reasons (its own, not the HTTPS URL), headers every request carries, the
    pin of ranged requests, and whether the store serves byte ranges whatever the first
    response announces."""

    shown: str
    headers: Mapping[str, str] = field(default_factory=dict)
    pin: Pin | None = None
    ranged: bool = False


def quiet_client_logs() -> None:
    """httpx logs each request's full URL (presigned signatures) and the server's reason
    phrase at INFO: keep its loggers at WARNING whatever the runtime's level."""
    for name in ("httpx", "httpcore"):
        logger = logging.getLogger(name)
        logger.setLevel(max(logger.getEffectiveLevel(), logging.WARNING))


@asynccontextmanager
async def http_client(policy: NetPolicy) -> AsyncIterator[httpx.AsyncClient]:
    """A client for ``follow``: the policy's timeouts and proxy, the pod's CAs, no
    redirects of its own, nothing from the environment; connections through
    ``transport.Transport``."""
    timeout = httpx.Timeout(
        connect=policy.connect_seconds,
        read=policy.idle_seconds,
        write=policy.idle_seconds,
        pool=policy.connect_seconds,
    )
    tls = tls_context(os.environ.get("SSL_CERT_FILE"), os.environ.get("SSL_CERT_DIR"))
    transport = Transport(tls, policy.proxy)
    async with httpx.AsyncClient(
        trust_env=False, follow_redirects=False, timeout=timeout, transport=transport
    ) as client:
        yield client


@asynccontextmanager
async def open_http(
    uri: str,
    authorization: str | None,
    policy: NetPolicy,
    shown: str | None = None,
    via: Via | None = None,
) -> AsyncIterator[Body]:
    """The body of the final response to GET ``uri`` (status 200); ``shown`` names the
    checkpoint in reasons (``uri`` redacted by default; ``via.shown`` for gs:// and az://)."""
    shown = (via.shown if via else shown) or redact_uri(uri)
    fixed = dict(via.headers) if via else {}
    url, userinfo = parse_url(uri, shown)
    auth = authorization or _basic(userinfo)
    async with http_client(policy) as client:
        response = await follow(client, url, auth, policy, shown, fixed)
        try:
            check_status(response.status_code, shown)
            size = _declared_size(response)
            ranged = response.headers.get("accept-ranges", "").strip().lower() == "bytes"
            ranged = ranged or bool(via and via.ranged)
            params, pinned = via.pin(response.headers) if via and via.pin else ({}, {})
            part_url = url.copy_merge_params(params) if params else url

            @asynccontextmanager
            async def ranges(start: int, end: int) -> AsyncIterator[Body]:
                assert size is not None
                span = (start, end, size)
                extra = {**fixed, **pinned}
                async with _range(client, part_url, auth, policy, shown, span, extra) as part:
                    yield part

            chunks = raw_chunks(response, shown, policy)
            opened = ranges if ranged and size is not None else None
            yield Body(size, chunks, opened, idle_bounded=True)
        finally:
            await response.aclose()


@asynccontextmanager
async def _range(
    client: httpx.AsyncClient,
    url: httpx.URL,
    auth: str | None,
    policy: NetPolicy,
    shown: str,
    span: tuple[int, int, int],
    headers: dict[str, str],
) -> AsyncIterator[Body]:
    """Bytes ``[start, end)`` of the ``size``-byte object at ``url``: a GET with
    ``Range`` (redirects followed and checked again), answered 206 with exactly that
    ``Content-Range``; anything else is a FetchError (a changed object fails its
    sha256 in any case)."""
    start, end, size = span
    extra = {**headers, "Range": f"bytes={start}-{end - 1}"}
    response = await follow(client, url, auth, policy, shown, extra)
    try:
        if response.status_code != 206:
            check_status(response.status_code, shown)
            raise FetchError(
                f"cannot fetch checkpoint {shown}: the server announced byte ranges but "
                f"answered a range request with HTTP {response.status_code}"
            )
        if response.headers.get("content-range", "") != f"bytes {start}-{end - 1}/{size}":
            raise FetchError(
                f"cannot fetch checkpoint {shown}: the server answered a range request with "
                "another range or size (the object changed?)"
            )
        yield Body(end - start, raw_chunks(response, shown, policy), idle_bounded=True)
    finally:
        await response.aclose()


async def follow(
    client: httpx.AsyncClient,
    url: httpx.URL,
    auth: str | None,
    policy: NetPolicy,
    shown: str,
    extra: dict[str, str] | None = None,
    chosen: bool = False,
) -> httpx.Response:
    """The response to GET ``url`` once redirects are followed, each hop checked: the
    ``Authorization`` ``auth`` goes to ``url``'s origin only. ``chosen``: the server
    chose ``url`` (a token realm), so it is checked like a redirect target."""
    origin = _origin(url)
    for hop in range(MAX_REDIRECTS + 1):
        same_origin = _origin(url) == origin
        key = auth if same_origin else None
        response = await _get(client, url, key, policy, chosen or hop > 0, shown, extra or {})
        if response.status_code not in _REDIRECTS:
            return response
        location = response.headers.get("location")
        await response.aclose()
        url = _redirect_target(url, location, shown)
    raise FetchError(f"cannot fetch checkpoint {shown}: more than {MAX_REDIRECTS} redirects")


async def head(
    client: httpx.AsyncClient, url: httpx.URL, auth: str | None, policy: NetPolicy, shown: str
) -> httpx.Response:
    """The answer to HEAD ``url``: redirects within ``url``'s origin followed (a renamed
    repository), each hop checked, ``auth`` sent on all; the first answer that is not
    one of those returned, a redirect to another origin included (not followed: its
    own headers are the answer)."""
    origin = _origin(url)
    for hop in range(MAX_REDIRECTS + 1):
        response = await _get(client, url, auth, policy, hop > 0, shown, {}, method="HEAD")
        if response.status_code not in _REDIRECTS:
            return response
        target = _redirect_target(url, response.headers.get("location"), shown)
        if _origin(target) != origin:
            return response
        await response.aclose()
        url = target
    raise FetchError(f"cannot fetch checkpoint {shown}: more than {MAX_REDIRECTS} redirects")


async def _get(
    client: httpx.AsyncClient,
    url: httpx.URL,
    auth: str | None,
    policy: NetPolicy,
    redirect: bool,
    shown: str,
    extra: dict[str, str],
    content: bytes | None = None,
    method: str = "GET",
) -> httpx.Response:
    """Send ``method`` ``url`` (with ``content`` as its body when given) to the first
    allowed address of its host that accepts it (through the admin's proxy, by name,
    when there is one: the proxy connects)."""
    host = url.raw_host.decode("ascii")
    port = url.port or _PORTS[url.scheme]
    addresses = await allowed_addresses(host, port, policy, redirect, shown)
    headers = {"Host": _host_header(host, url.port), "Accept-Encoding": "identity", **extra}
    if auth:
        headers["Authorization"] = auth
    extensions = {"sni_hostname": host} if url.scheme == "https" else {}
    client.cookies.clear()  # nothing one hop set travels to the next
    if policy.proxy:
        addresses = [host]
    failure: httpx.HTTPError | None = None
    for address in addresses:
        request = client.build_request(
            method,
            url.copy_with(host=address),
            headers=headers,
            content=content,
            extensions=extensions,
        )
        try:
            return await client.send(request, stream=True)
        except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
            failure = exc  # try the host's next address
        except httpx.HTTPError as exc:
            raise _failure(exc, shown, policy) from None
    assert failure is not None
    raise _failure(failure, shown, policy) from None


async def post_form(
    uri: str, form: Mapping[str, str], policy: NetPolicy, shown: str, limit: int
) -> tuple[int, bytes | None]:
    """The status of POST ``form`` (urlencoded) to ``uri`` and, for a 200, its body, or
    None when the body is over ``limit`` bytes. One hop: a redirect is not followed (its
    status is returned), the address policy as for the spec's own URI, the connect and
    idle bounds of ``policy``. Nothing the server sent but the status and the body."""
    url, _ = parse_url(uri, shown)
    kind = {"Content-Type": "application/x-www-form-urlencoded"}
    content = urlencode(form).encode()
    async with http_client(policy) as client:
        response = await _get(client, url, None, policy, False, shown, kind, content, "POST")
        try:
            if response.status_code != 200:
                return response.status_code, None
            if (_declared_size(response) or 0) > limit:
                return 200, None
            data = bytearray()
            async for chunk in raw_chunks(response, shown, policy):
                data += chunk
                if len(data) > limit:
                    return 200, None
            return 200, bytes(data)
        finally:
            await response.aclose()


async def raw_chunks(
    response: httpx.Response, shown: str, policy: NetPolicy
) -> AsyncGenerator[bytes, None]:
    try:
        async for chunk in response.aiter_raw():
            yield chunk
    except (httpx.RemoteProtocolError, httpx.ReadError):
        raise Dropped(
            f"cannot fetch checkpoint {shown}: the server broke off the response"
        ) from None
    except httpx.HTTPError as exc:
        raise _failure(exc, shown, policy) from None
    finally:
        await response.aclose()


def parse_url(uri: str, shown: str) -> tuple[httpx.URL, str]:
    """``uri`` without userinfo and fragment, and its userinfo (percent-decoded)."""
    try:
        url = httpx.URL(uri)
        host = url.raw_host.decode("ascii")
    except (httpx.InvalidURL, ValueError, UnicodeError):
        raise FetchError(f"checkpoint URI {shown} is not a valid URL") from None
    if url.scheme not in _PORTS or not host:
        raise FetchError(f"checkpoint URI {shown} is not a valid http(s) URL")
    userinfo = unquote(url.userinfo.decode("ascii"))
    return url.copy_with(userinfo=b"", fragment=None), userinfo


@functools.cache
def tls_context(cert_file: str | None, cert_dir: str | None) -> ssl.SSLContext:
    """The TLS context of downloads, built once per CA setting (SSL_CERT_FILE /
    SSL_CERT_DIR of the pod): building one loads the CA bundle, tens of milliseconds
    of CPU, which httpx would spend again for every client."""
    return httpx.create_ssl_context(trust_env=True)


def _basic(userinfo: str) -> str | None:
    if not userinfo:
        return None
    return "Basic " + base64.b64encode(userinfo.encode()).decode("ascii")


def _origin(url: httpx.URL) -> Origin:
    return (url.scheme, url.raw_host.decode("ascii").lower(), url.port or _PORTS[url.scheme])


def _host_header(host: str, port: int | None) -> str:
    name = f"[{host}]" if ":" in host else host
    return name if port is None else f"{name}:{port}"


def _redirect_target(url: httpx.URL, location: str | None, shown: str) -> httpx.URL:
    """Where a redirect leads; its text is the server's, so no reason quotes it."""
    if not location:
        raise FetchError(f"cannot fetch checkpoint {shown}: a redirect without a Location")
    try:
        target = url.join(location)
        host = target.raw_host.decode("ascii")
    except (httpx.InvalidURL, ValueError, UnicodeError):
        raise FetchError(f"cannot fetch checkpoint {shown}: a redirect to an invalid URL") from None
    if target.scheme not in _PORTS:
        raise FetchRefused(
            f"cannot fetch checkpoint {shown}: a redirect to a scheme other than http or "
            "https is refused"
        )
    if not host:
        raise FetchError(f"cannot fetch checkpoint {shown}: a redirect to an invalid URL")
    return target.copy_with(userinfo=b"", fragment=None)


def check_status(status: int, shown: str) -> None:
    if status == 200:
        return
    if status in (404, 410):
        raise CheckpointNotFound(
            f"checkpoint {shown} does not exist (HTTP {status}); check spec.checkpoint.uri"
        )
    if status in (401, 403):
        raise FetchError(
            f"cannot fetch checkpoint {shown}: access denied (HTTP {status}); check the "
            "Secret named by checkpoint.secretRef"
        )
    raise FetchError(f"cannot fetch checkpoint {shown}: the server answered HTTP {status}")


def _declared_size(response: httpx.Response) -> int | None:
    length = response.headers.get("content-length", "")
    return int(length) if length.isascii() and length.isdigit() else None


def _failure(exc: httpx.HTTPError, shown: str, policy: NetPolicy) -> SwapError:
    """A reason for an httpx failure, from its type only (its text may quote the server)."""
    if isinstance(exc, httpx.ConnectTimeout):
        return FetchError(
            f"cannot fetch checkpoint {shown}: its host did not accept a connection within "
            f"{policy.connect_seconds:g} s"
        )
    if isinstance(exc, httpx.TimeoutException):
        return stalled(shown, policy)
    if isinstance(exc, httpx.ConnectError):
        return FetchError(
            f"cannot fetch checkpoint {shown}: cannot connect to its host (ConnectError: "
            "refused, unreachable, or TLS verification failed)"
        )
    if isinstance(exc, httpx.RemoteProtocolError):
        return FetchError(
            f"cannot fetch checkpoint {shown}: the server broke off or garbled the response "
            "(RemoteProtocolError)"
        )
    return FetchError(f"cannot fetch checkpoint {shown}: {type(exc).__name__}")
