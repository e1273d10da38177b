"""FastAPI app: Open Inference Protocol v2 REST (``rest.py``) and /metrics.

The app's lifespan starts and stops the runtime (which starts the gRPC server, the
inference workers, the reconciler and the watchers). ``runtime.draining`` is set on
SIGTERM (``__main__.py``): readiness turns false on REST and gRPC while requests are
still served.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST

from hotswap_runtime.service import Runtime
from hotswap_runtime.serving.rest import VersionHeader, add_routes


def create_app(runtime: Runtime) -> FastAPI:
    """The HTTP app serving ``runtime``; its lifespan starts and stops the runtime."""

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await runtime.start()
        try:
            yield
        finally:
            await runtime.stop()

    app = FastAPI(title="hotswap-runtime", lifespan=lifespan)
    app.state.runtime = runtime
    app.add_middleware(VersionHeader, runtime=runtime)
    add_routes(app, runtime)

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(runtime.metrics.render(), media_type=CONTENT_TYPE_LATEST)

    return app
