"""The transports, built in one place: the FastAPI app (Open Inference Protocol v2 REST,
``serving/rest.py``, and /metrics) and the gRPC service (``serving/grpc_server.py``),
both over the runtime's one data plane.

The app's lifespan starts the runtime (inference workers, the reconciler and the
watchers), then the gRPC server on the same event loop, and stops them in the reverse
order. ``runtime.dataplane.draining`` is set on SIGTERM (``__main__.py``): readiness
turns false on REST and gRPC while requests are still served.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST

from hotswap_runtime.service import Runtime
from hotswap_runtime.serving.body import BodyLimits
from hotswap_runtime.serving.grpc_server import GrpcServer
from hotswap_runtime.serving.rest import VersionHeader, add_routes


def create_app(runtime: Runtime) -> FastAPI:
    """The HTTP app serving ``runtime``; its lifespan runs the runtime and gRPC."""
    settings = runtime.settings
    plane = runtime.dataplane

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await runtime.start()
        grpc = None
        try:
            if settings.grpc_port:
                grpc = GrpcServer(plane, settings)
                await grpc.start()
            yield
        finally:
            if grpc is not None:
                await grpc.stop()
            await runtime.stop()

    app = FastAPI(title="hotswap-runtime", lifespan=lifespan)
    app.state.runtime = runtime
    app.add_middleware(VersionHeader, plane=plane)
    limits = BodyLimits(
        settings.max_request_bytes,
        settings.body_seconds,
        settings.body_grace_seconds,
        settings.body_min_rate,
    )
    add_routes(app, plane, limits)

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(runtime.metrics.render(), media_type=CONTENT_TYPE_LATEST)

    return app
