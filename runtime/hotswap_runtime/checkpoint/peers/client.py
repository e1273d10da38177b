"""Asking a peer (peers/server.py): what it holds, and one of its files as a ``Body``.

Peers are addressed by the IP the operator listed (from the Pod objects) and the peer
port; no name is resolved, no redirect followed, no proxy used, and every request
carries the ModelDeployment's peer credential. Answers are bounded (a listing at most
``MAX_LISTING_BYTES``), and a blob is a ``Body`` like any fetcher's: the store's sink
hashes it, and nothing is used before its sha256 matched.
"""

# ruff: noqa: N818  (named like the runtime's errors: Dropped, Superseded, ...)
from __future__ import annotations

import functools
import json
import ssl
from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import httpx

from hotswap_runtime.checkpoint.fetch.stream import Body
from hotswap_runtime.errors import FetchError

MAX_LISTING_BYTES = 1 << 20
CHUNK_BYTES = 1 << 20


class PeerBusy(FetchError):
    """The peer sends as many files as it may at once: ask another."""


class PeerSlow(PeerBusy):
    """The peer did not begin its answer within the idle bound."""


class NotHeld(FetchError):
    """The peer does not hold the file (any more)."""


class Unreachable(FetchError):
    """The peer did not answer: not listening, gone, or too slow."""


@dataclass(frozen=True)
class PeerAddress:
    name: str
    ip: str
    port: int

    @property
    def base(self) -> str:
        host = f"[{self.ip}]" if ":" in self.ip else self.ip
        return f"http://{host}:{self.port}"


@dataclass(frozen=True)
class Holdings:
    """What a peer listed: the files it verified, and those it is downloading; or that
    it is alive but ``busy`` (answered 503, or too slow to answer this time)."""

    have: frozenset[str]
    fetching: frozenset[str]
    busy: bool = False


BUSY = Holdings(frozenset(), frozenset(), busy=True)
# Before any answer: the peer is alive but loaded (or starved of CPU). Only a refused
# connection says that nothing listens there.
_NOT_YET = (httpx.TimeoutException, httpx.RemoteProtocolError, httpx.ReadError)


def client(idle_seconds: float) -> httpx.AsyncClient:
    """The client for peer requests: no environment, no redirects, short waits."""
    timeout = httpx.Timeout(
        connect=min(2.0, idle_seconds), read=idle_seconds, write=idle_seconds, pool=idle_seconds
    )
    return httpx.AsyncClient(
        trust_env=False, follow_redirects=False, timeout=timeout, verify=_unused_tls()
    )


@functools.cache
def _unused_tls() -> ssl.SSLContext:
    """Peers speak plain HTTP, but httpx builds a TLS context for every client (loading
    the CA bundle: tens of milliseconds of CPU, per file fetched); one is built once."""
    return httpx.create_ssl_context(trust_env=False)


def _auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def holdings(http: httpx.AsyncClient, peer: PeerAddress, token: str) -> Holdings:
    """``GET /v1/have`` of ``peer``; BUSY when it is alive but does not say this time;
    Unreachable (nothing listens) or FetchError (a wrong answer) otherwise."""
    try:
        async with http.stream("GET", f"{peer.base}/v1/have", headers=_auth(token)) as response:
            if response.status_code == 503:
                return BUSY
            if response.status_code != 200:
                raise FetchError(
                    f"peer {peer.name} answered /v1/have with HTTP {response.status_code}"
                )
            raw = bytearray()
            async for chunk in response.aiter_raw():
                raw += chunk
                if len(raw) > MAX_LISTING_BYTES:
                    raise FetchError(
                        f"peer {peer.name}: its listing is over {MAX_LISTING_BYTES} bytes"
                    )
    except _NOT_YET:
        return BUSY
    except httpx.HTTPError as exc:
        raise Unreachable(f"peer {peer.name} did not answer ({type(exc).__name__})") from None
    return _parse_holdings(bytes(raw), peer)


def _parse_holdings(raw: bytes, peer: PeerAddress) -> Holdings:
    try:
        doc = json.loads(raw)
        have, fetching = doc["have"], doc["fetching"]
        if not all(isinstance(x, str) for x in [*have, *fetching]):
            raise TypeError
    except (ValueError, KeyError, TypeError):
        raise FetchError(f"peer {peer.name}: its listing is not the expected JSON") from None
    return Holdings(frozenset(have), frozenset(fetching))


@asynccontextmanager
async def open_blob(
    http: httpx.AsyncClient, peer: PeerAddress, sha256: str, token: str
) -> AsyncIterator[Body]:
    """The file ``sha256`` of ``peer`` as a Body (its declared size, its chunks).
    PeerBusy when it answers 503 or nothing at all before its answer began (ask
    another); once its answer began, any failure is its own (Unreachable, FetchError)."""
    url = f"{peer.base}/v1/blobs/{sha256}"
    try:
        async with http.stream("GET", url, headers=_auth(token)) as response:
            if response.status_code == 503:
                raise PeerBusy(f"peer {peer.name} is busy")
            if response.status_code == 404:
                raise NotHeld(f"peer {peer.name} does not hold {sha256[:12]}")
            if response.status_code != 200:
                raise FetchError(f"peer {peer.name} answered HTTP {response.status_code}")
            size = _size(response, peer)
            yield Body(size, _chunks(response, peer))
    except httpx.TimeoutException as exc:
        raise PeerSlow(f"peer {peer.name} did not answer ({type(exc).__name__})") from None
    except (*_NOT_YET, httpx.ConnectError) as exc:
        raise PeerBusy(f"peer {peer.name} did not answer ({type(exc).__name__})") from None
    except httpx.HTTPError as exc:
        raise Unreachable(f"peer {peer.name} broke off ({type(exc).__name__})") from None


def _size(response: httpx.Response, peer: PeerAddress) -> int:
    try:
        size = int(response.headers.get("content-length", ""))
    except ValueError:
        raise FetchError(f"peer {peer.name} sent no Content-Length") from None
    if size < 0:
        raise FetchError(f"peer {peer.name} sent a negative Content-Length")
    return size


async def _chunks(response: httpx.Response, peer: PeerAddress) -> AsyncGenerator[bytes, None]:
    try:
        async for chunk in response.aiter_raw(CHUNK_BYTES):
            yield chunk
    except httpx.HTTPError as exc:
        raise Unreachable(f"peer {peer.name} broke off ({type(exc).__name__})") from None
