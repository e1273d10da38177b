"""FastAPI app: Open Inference Protocol v2 REST, model metadata and /metrics."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST

from .desired import Failure
from .errors import HotswapError, ModelNotFound, ModelNotReady, VersionConflict, http_status
from .service import Runtime

VERSION_HEADER = "hotswap-model-version"


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
    app.state.draining = False  # set on SIGTERM (__main__.py): not ready, still serving
    name = runtime.settings.model_name

    @app.exception_handler(HotswapError)
    async def _error(_: Request, exc: HotswapError) -> JSONResponse:
        return JSONResponse({"error": str(exc)}, status_code=http_status(exc))

    @app.middleware("http")
    async def _version_header(request: Request, call_next: Any) -> Response:
        response: Response = await call_next(request)
        current = runtime.swapper.current()
        if current is not None and VERSION_HEADER not in response.headers:
            response.headers[VERSION_HEADER] = str(current.revision.revision)
        return response

    def known(model: str) -> None:
        if model != name:
            raise ModelNotFound(f"model {model!r} is not served here; this runtime serves {name!r}")

    def version() -> str | None:
        current = runtime.swapper.current()
        return None if current is None else str(current.revision.revision)

    @app.get("/v2/health/live")
    async def live() -> dict[str, Any]:
        return {"live": True}

    @app.get("/v2/health/ready")
    async def ready() -> dict[str, Any]:
        if app.state.draining:
            raise ModelNotReady(f"model {name!r} is shutting down (draining)")
        if version() is None:
            raise ModelNotReady(f"model {name!r} is not loaded yet")
        return {"ready": True, "model_version": version()}

    @app.get("/v2/models/{model}/ready")
    async def model_ready(model: str) -> dict[str, Any]:
        known(model)
        return await ready()

    @app.get("/v2/models/{model}")
    async def metadata(model: str) -> dict[str, Any]:
        known(model)
        return _metadata(runtime)

    @app.post("/v2/models/{model}/infer")
    async def infer(model: str, request: Request) -> dict[str, Any]:
        known(model)
        body = await request.json()
        return await run_in_threadpool(runtime.infer, body)

    @app.post("/v2/models/{model}/versions/{wanted}/infer")
    async def infer_version(model: str, wanted: str, request: Request) -> dict[str, Any]:
        known(model)
        body = await request.json()
        result = await run_in_threadpool(runtime.infer, body)
        if result["model_version"] != wanted:
            raise VersionConflict(
                f"model {name!r} version {wanted} is not serving; version "
                f"{result['model_version']} is"
            )
        return result

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(runtime.metrics.render(), media_type=CONTENT_TYPE_LATEST)

    return app


def _metadata(runtime: Runtime) -> dict[str, Any]:
    status = runtime.reconciler.status()
    serving = status.serving
    spec = serving.revision.model if serving else (status.target.model if status.target else None)
    body: dict[str, Any] = {
        "name": runtime.settings.model_name,
        "versions": [str(serving.revision.revision)] if serving else [],
        "platform": "pytorch",
        "model_version": str(serving.revision.revision) if serving else None,
        "sha256": serving.revision.checkpoint.sha256 if serving else None,
        "loaded_at": serving.loaded_at if serving else None,
        "state": status.state.value,
        "target_revision": status.target.revision if status.target else None,
        "device": str(runtime.device),
        "last_swap": None,
        "last_failure": _failure(status.last_failure),
    }
    if spec is not None:
        body["architecture"] = spec.architecture
        body["inputs"] = [{"name": "input", "datatype": "FP32", "shape": [-1, *spec.input_shape]}]
    if serving is not None:
        body["outputs"] = [
            {"name": "output", "datatype": "FP32", "shape": [-1, *serving.output_shape[1:]]}
        ]
    if status.last_swap is not None:
        swap = status.last_swap
        body["last_swap"] = {
            "revision": swap.revision.revision,
            "result": swap.result,
            "mode": swap.kind,
            "phases": swap.phases,
        }
    return body


def _failure(failure: Failure | None) -> dict[str, Any] | None:
    if failure is None:
        return None
    return {
        "revision": failure.revision,
        "sha256": failure.sha256,
        "code": failure.code,
        "reason": failure.reason,
        "at": failure.at,
    }
