"""The transport of http(s) downloads: httpcore's connection pool over asyncio's streams.

httpx's own transport reads through anyio, whose TLS stream hands over one TLS record
(16 KiB) per read, so a download over TLS took four trips through httpcore, h11 and the
event loop for each 64 KiB that a plain connection hands over at once. asyncio's TLS
transport decrypts every record that one socket read brought before it hands them over,
so a read over TLS returns as much as one over plain TCP. Everything else is httpcore's
and httpx's: HTTP/1.1, the pool and keep-alive, the admin's proxy (plain GETs forwarded,
CONNECT for https), the request and response types the fetchers use. This module only
connects, reads, writes and closes, and maps httpcore's exceptions to httpx's.

Closing a connection aborts it: no TLS close_notify is exchanged (as httpcore's own
backend does), so closing a response before its end stops the server's sending at once
instead of waiting for it to finish.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import AsyncIterator, Iterable, Iterator
from typing import Any

import httpcore
import httpx

# asyncio's stream buffer: the transport reads up to 256 KiB per socket read, and pauses
# reading while twice this much waits to be read.
BUFFER_BYTES = 256 << 10
MAX_CONNECTIONS = 100  # httpx's defaults
KEEPALIVE_CONNECTIONS = 20
KEEPALIVE_SECONDS = 5.0
# httpcore's exceptions -> httpx's, the most specific first.
_EXCEPTIONS: tuple[tuple[type[Exception], type[httpx.HTTPError]], ...] = (
    (httpcore.ConnectTimeout, httpx.ConnectTimeout),
    (httpcore.ReadTimeout, httpx.ReadTimeout),
    (httpcore.WriteTimeout, httpx.WriteTimeout),
    (httpcore.PoolTimeout, httpx.PoolTimeout),
    (httpcore.TimeoutException, httpx.TimeoutException),
    (httpcore.ConnectError, httpx.ConnectError),
    (httpcore.ReadError, httpx.ReadError),
    (httpcore.WriteError, httpx.WriteError),
    (httpcore.NetworkError, httpx.NetworkError),
    (httpcore.ProxyError, httpx.ProxyError),
    (httpcore.UnsupportedProtocol, httpx.UnsupportedProtocol),
    (httpcore.RemoteProtocolError, httpx.RemoteProtocolError),
    (httpcore.LocalProtocolError, httpx.LocalProtocolError),
    (httpcore.ProtocolError, httpx.ProtocolError),
)
SocketOption = (
    tuple[int, int, int] | tuple[int, int, bytes | bytearray] | tuple[int, int, None, int]
)


class Transport(httpx.AsyncBaseTransport):
    """An httpx transport over httpcore's pool (through ``proxy`` when given: an http(s)
    URL) that connects with asyncio's streams; ``tls`` verifies origins and the proxy."""

    def __init__(self, tls: ssl.SSLContext, proxy: str | None = None) -> None:
        self._pool: httpcore.AsyncConnectionPool
        if proxy is None:
            self._pool = httpcore.AsyncConnectionPool(
                ssl_context=tls,
                max_connections=MAX_CONNECTIONS,
                max_keepalive_connections=KEEPALIVE_CONNECTIONS,
                keepalive_expiry=KEEPALIVE_SECONDS,
                network_backend=_Backend(),
            )
        else:
            via = httpx.Proxy(proxy)
            self._pool = httpcore.AsyncHTTPProxy(
                proxy_url=_core_url(via.url),
                proxy_auth=via.raw_auth,
                proxy_headers=via.headers.raw,
                proxy_ssl_context=tls if via.url.scheme == "https" else None,
                ssl_context=tls,
                max_connections=MAX_CONNECTIONS,
                max_keepalive_connections=KEEPALIVE_CONNECTIONS,
                keepalive_expiry=KEEPALIVE_SECONDS,
                network_backend=_Backend(),
            )

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        assert isinstance(request.stream, httpx.AsyncByteStream)
        core = httpcore.Request(
            method=request.method,
            url=_core_url(request.url),
            headers=request.headers.raw,
            content=request.stream,
            extensions=request.extensions,
        )
        with _mapped():
            response = await self._pool.handle_async_request(core)
        return httpx.Response(
            status_code=response.status,
            headers=response.headers,
            stream=_Body(response.stream),
            extensions=response.extensions,
        )

    async def aclose(self) -> None:
        with _mapped():
            await self._pool.aclose()


class _Body(httpx.AsyncByteStream):
    """A response's body as httpcore reads it, its failures as httpx's."""

    def __init__(self, stream: Any) -> None:
        self._stream = stream

    async def __aiter__(self) -> AsyncIterator[bytes]:
        with _mapped():
            async for chunk in self._stream:
                yield chunk

    async def aclose(self) -> None:
        if hasattr(self._stream, "aclose"):
            with _mapped():
                await self._stream.aclose()


class _Backend(httpcore.AsyncNetworkBackend):
    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[SocketOption] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        local = (local_address, 0) if local_address else None
        with _raising(httpcore.ConnectTimeout, httpcore.ConnectError):
            async with asyncio.timeout(timeout):
                reader, writer = await asyncio.open_connection(
                    host, port, limit=BUFFER_BYTES, local_addr=local
                )
        sock = writer.get_extra_info("socket")
        for option in socket_options or ():
            sock.setsockopt(*option)
        return _Stream(reader, writer)

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,
        socket_options: Iterable[SocketOption] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        raise httpcore.UnsupportedProtocol("downloads do not use Unix sockets")

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


class _Stream(httpcore.AsyncNetworkStream):
    """One connection; each wait bounded by the ``timeout`` httpcore passes."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        with _raising(httpcore.ReadTimeout, httpcore.ReadError):
            async with asyncio.timeout(timeout):
                return await self._reader.read(max_bytes)

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:
        if not buffer:
            return
        with _raising(httpcore.WriteTimeout, httpcore.WriteError):
            async with asyncio.timeout(timeout):
                self._writer.write(buffer)
                await self._writer.drain()

    async def aclose(self) -> None:
        self._writer.transport.abort()

    async def start_tls(
        self,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,
    ) -> httpcore.AsyncNetworkStream:
        with _raising(httpcore.ConnectTimeout, httpcore.ConnectError):
            async with asyncio.timeout(timeout):
                await self._writer.start_tls(ssl_context, server_hostname=server_hostname)
        return self

    def get_extra_info(self, info: str) -> Any:
        if info == "is_readable":  # an idle kept-alive connection that the server closed
            return self._reader.at_eof() or self._writer.is_closing()
        names = {"client_addr": "sockname", "server_addr": "peername"}
        return self._writer.get_extra_info(names.get(info, info))


def _core_url(url: httpx.URL) -> httpcore.URL:
    return httpcore.URL(
        scheme=url.raw_scheme, host=url.raw_host, port=url.port, target=url.raw_path
    )


@contextlib.contextmanager
def _raising(timeout: type[Exception], error: type[Exception]) -> Iterator[None]:
    """A wait that ran out as ``timeout``, a failed socket or TLS call as ``error``
    (its type only: the text may quote the peer)."""
    try:
        yield
    except TimeoutError:
        raise timeout("timed out") from None
    except (OSError, EOFError) as exc:  # ssl.SSLError is an OSError
        raise error(type(exc).__name__) from None


@contextlib.contextmanager
def _mapped() -> Iterator[None]:
    try:
        yield
    except Exception as exc:
        for core, mapped in _EXCEPTIONS:
            if isinstance(exc, core):
                raise mapped(str(exc)) from exc
        raise
