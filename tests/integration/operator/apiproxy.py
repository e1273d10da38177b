"""A plain-HTTP proxy to the API server that a test can blind.

The operator, given `kubeconfig()`, reaches the API server only through it. Blinded,
it drops the connection of every watch and list without an answer and ends the watch
streams it carries, as when the address the watches use stops working (a DNS name
that no longer resolves, a dead route), while every other request (the Lease, the
operator's reads and writes) still passes: a replica that renews its Lease but sees
nothing. Requests go on with the cluster admin's client certificate.
"""

from __future__ import annotations

import asyncio
import ssl
import threading
import urllib.parse
from pathlib import Path

import aiohttp
import aiohttp.web
import yaml

from devcluster.cluster import Cluster

WATCHED = {"pods", "configmaps", "deployments", "modeldeployments", "modelreplicas"}
FORWARDED_HEADERS = ("Accept", "Content-Type", "User-Agent")


class ApiProxy:
    """`with ApiProxy(cluster) as proxy:` serves on 127.0.0.1:`proxy.port`."""

    def __init__(self, cluster: Cluster) -> None:
        config = yaml.safe_load(cluster.kubeconfig.read_text())
        user = config["users"][0]["user"]
        base = cluster.kubeconfig.parent
        self.upstream = config["clusters"][0]["cluster"]["server"].rstrip("/")
        self.ssl = ssl.create_default_context(cafile=str(cluster.ca_cert))
        self.ssl.load_cert_chain(
            str(base / user["client-certificate"]), str(base / user["client-key"])
        )
        self.blinded = False
        self.refused = 0  # watches and lists refused while blinded
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._streams: set[aiohttp.ClientResponse] = set()
        self._started = threading.Event()
        self._thread = threading.Thread(target=self._run, name="api-proxy", daemon=True)

    def __enter__(self) -> ApiProxy:
        self._thread.start()
        if not self._started.wait(30):
            raise RuntimeError("the API proxy did not start within 30 s")
        return self

    def __exit__(self, *exc: object) -> None:
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(30)

    def kubeconfig(self, folder: Path) -> Path:
        """A kubeconfig naming the proxy (plain HTTP, no credentials)."""
        path = folder / "proxy.kubeconfig"
        server = f"http://127.0.0.1:{self.port}"
        path.write_text(
            yaml.safe_dump(
                {
                    "apiVersion": "v1",
                    "kind": "Config",
                    "clusters": [{"name": "proxy", "cluster": {"server": server}}],
                    "users": [{"name": "anyone", "user": {}}],
                    "contexts": [
                        {"name": "proxy", "context": {"cluster": "proxy", "user": "anyone"}}
                    ],
                    "current-context": "proxy",
                }
            )
        )
        return path

    def blind(self) -> None:
        """From now on refuse watches and lists, and end the watch streams open now."""
        self._loop.call_soon_threadsafe(self._set_blind, True)

    def see(self) -> None:
        self._loop.call_soon_threadsafe(self._set_blind, False)

    def _set_blind(self, blinded: bool) -> None:
        self.blinded = blinded
        if blinded:
            for stream in list(self._streams):
                stream.close()

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_until_complete(self._serve())

    async def _serve(self) -> None:
        self._stop = asyncio.Event()
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=10)
        connector = aiohttp.TCPConnector(ssl=self.ssl)
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
            self._session = session
            app = aiohttp.web.Application()
            app.router.add_route("*", "/{tail:.*}", self._forward)
            runner = aiohttp.web.AppRunner(app, handle_signals=False, shutdown_timeout=1.0)
            await runner.setup()
            site = aiohttp.web.TCPSite(runner, "127.0.0.1", 0)
            await site.start()
            self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
            self._started.set()
            try:
                await self._stop.wait()
            finally:
                for stream in list(self._streams):
                    stream.close()
                await runner.cleanup()

    async def _forward(self, request: aiohttp.web.Request) -> aiohttp.web.StreamResponse:
        if self.blinded and _watch_or_list(request):
            self.refused += 1
            if request.transport is not None:
                request.transport.abort()  # no answer: a connection error for the client
            raise aiohttp.web.HTTPServiceUnavailable()  # never written
        headers = {h: request.headers[h] for h in FORWARDED_HEADERS if h in request.headers}
        body = await request.read()
        url = f"{self.upstream}{request.path_qs}"
        async with self._session.request(
            request.method, url, headers=headers, data=body or None
        ) as upstream:
            response = aiohttp.web.StreamResponse(status=upstream.status)
            if "Content-Type" in upstream.headers:
                response.content_type = upstream.headers["Content-Type"].split(";")[0]
            await response.prepare(request)
            self._streams.add(upstream)
            try:
                async for chunk in upstream.content.iter_any():
                    await response.write(chunk)
            except (aiohttp.ClientError, ConnectionError):
                pass  # ended by blind(): the client sees its stream end
            finally:
                self._streams.discard(upstream)
            await response.write_eof()
            return response


def _watch_or_list(request: aiohttp.web.Request) -> bool:
    if request.method != "GET":
        return False
    last = urllib.parse.urlsplit(request.path).path.rstrip("/").rsplit("/", 1)[-1]
    return request.query.get("watch") in ("true", "1") or last in WATCHED
