"""Open Inference Protocol v2 over REST: every endpoint, on the FastAPI app.

Health: ``/v2/health/live``, ``/v2/health/ready``. Server metadata: ``GET /v2``. Model:
``/v2/models/<m>[/versions/<v>]`` (metadata), ``.../ready``, ``POST .../infer``. A
version route names the one version this pod serves or answers 404 (ready: 503 with
``ready: false``; infer: 409 when a swap got there first). Not ready answers 503, as
KServe does (the spec asks for a 4xx; clients test for 200).

An infer request claims its share of the request memory budget (``budget.py``) from its
headers before a byte of its body is read, and is charged as its body arrives
(``body.py``: a deadline and a minimum rate cut off slow senders, 408); a declared body
over ``HOTSWAP_MAX_REQUEST_BYTES`` answers 413 at once, an undeclared (chunked) one as
soon as it passes the limit. Once the body is in, the rest of the claim is charged and
decoding, inference and encoding run off the event loop (``inference.Engine``). A
request the budget cannot admit within ``HOTSWAP_REQUEST_WAIT_SECONDS`` answers 503.
An answer sent before the body was read whole closes the connection. Readiness is 503
while the budget is exhausted (``DataPlane.server_ready``).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from starlette.requests import ClientDisconnect

from hotswap_runtime.budget import decode_cost
from hotswap_runtime.errors import (
    BodyTooSlow,
    HotswapError,
    InvalidInput,
    Overloaded,
    RequestTooLarge,
    http_status,
)
from hotswap_runtime.serving.body import BodyClock, BodyLimits
from hotswap_runtime.serving.codec import InferRequest, decode_rest, encode_rest
from hotswap_runtime.serving.dataplane import DataPlane

if TYPE_CHECKING:
    import torch

VERSION_HEADER = "hotswap-model-version"
HEADER_LENGTH = "inference-header-content-length"

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]
# Refusals that may come before the body was read whole: the connection is closed, so
# the rest of the body is neither waited for nor read.
UNREAD = (BodyTooSlow, Overloaded, RequestTooLarge)


class VersionHeader:
    """ASGI middleware: every answer names the version serving when it is sent, unless
    the route already named the version that computed it."""

    def __init__(self, app: ASGIApp, plane: DataPlane) -> None:
        self.app = app
        self.plane = plane

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_version(message: Message) -> None:
            if message["type"] == "http.response.start":
                version = self.plane.serving_version()
                headers = list(message.get("headers", []))
                if version is not None and not any(
                    k.lower() == VERSION_HEADER.encode() for k, _ in headers
                ):
                    headers.append((VERSION_HEADER.encode(), version.encode()))
                    message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_version)


def add_routes(app: FastAPI, plane: DataPlane, limits: BodyLimits) -> None:
    """Register the OIP v2 endpoints and the error table's handler on ``app``."""
    bodies = BodyClock(limits)

    @app.exception_handler(HotswapError)
    async def _error(_: Request, exc: HotswapError) -> JSONResponse:
        headers = {"connection": "close"} if isinstance(exc, UNREAD) else None
        return JSONResponse({"error": str(exc)}, status_code=http_status(exc), headers=headers)

    @app.get("/v2")
    async def server_metadata() -> dict[str, Any]:
        return plane.server_metadata().to_json()

    @app.get("/v2/health/live")
    async def live() -> dict[str, Any]:
        return {"live": True}

    @app.get("/v2/health/ready")
    async def ready() -> dict[str, Any]:
        return {"ready": True, "model_version": plane.server_ready()}

    @app.get("/v2/models/{model}")
    async def metadata(model: str) -> dict[str, Any]:
        return plane.model_metadata(model).to_json()

    @app.get("/v2/models/{model}/versions/{version}")
    async def version_metadata(model: str, version: str) -> dict[str, Any]:
        return plane.model_metadata(model, version).to_json()

    @app.get("/v2/models/{model}/ready")
    async def model_ready(model: str) -> JSONResponse:
        return _ready(plane, model, None)

    @app.get("/v2/models/{model}/versions/{version}/ready")
    async def version_ready(model: str, version: str) -> JSONResponse:
        return _ready(plane, model, version)

    @app.post("/v2/models/{model}/infer")
    async def infer(model: str, request: Request) -> Response:
        plane.check_model(model)
        return await _infer(plane, request, None, bodies)

    @app.post("/v2/models/{model}/versions/{version}/infer")
    async def infer_version(model: str, version: str, request: Request) -> Response:
        plane.check_model(model)
        return await _infer(plane, request, version, bodies)


def _ready(plane: DataPlane, model: str, version: str | None) -> JSONResponse:
    answer = plane.model_ready(model, version)
    return JSONResponse(answer.to_json(), status_code=200 if answer.ready else 503)


async def _infer(
    plane: DataPlane, request: Request, version: str | None, bodies: BodyClock
) -> Response:
    headers, limits = request.headers, bodies.limits
    if headers.get("content-encoding", "identity").lower() != "identity":
        raise InvalidInput("compressed request bodies (Content-Encoding) are not supported")
    declared = _int_header(headers.get("content-length"), "Content-Length")
    if declared is not None and declared > limits.max_bytes:
        raise RequestTooLarge(
            f"the request body has {declared} bytes, over this runtime's limit of "
            f"{limits.max_bytes} (HOTSWAP_MAX_REQUEST_BYTES)"
        )
    json_length = _int_header(headers.get(HEADER_LENGTH), "Inference-Header-Content-Length")
    size = limits.max_bytes if declared is None else declared
    async with plane.claim(decode_cost(size, json_length)) as claim:
        try:
            body = await bodies.receive(request.receive, claim, declared, _client(request))
        except ClientDisconnect:
            return Response(status_code=400)
        await claim.take_rest()

        def decode() -> InferRequest:
            return decode_rest(body, json_length, version)

        def encode(
            answered: str, output: torch.Tensor, decoded: InferRequest
        ) -> tuple[bytes, int | None]:
            return encode_rest(plane.model_name, answered, output, decoded)

        (content, header_length), answered = await plane.infer(decode, encode)
    out_headers = {VERSION_HEADER: answered}
    if header_length is not None:
        out_headers["Inference-Header-Content-Length"] = str(header_length)
        media = "application/octet-stream"
    else:
        media = "application/json"
    return Response(content, media_type=media, headers=out_headers)


def _client(request: Request) -> str:
    client = request.client
    return "an unknown client" if client is None else f"{client.host}:{client.port}"


def _int_header(value: str | None, name: str) -> int | None:
    if value is None:
        return None
    text = value.strip()
    if not text.isdigit() or len(text) > 18:
        raise InvalidInput(f"header {name} must be a non-negative integer")
    return int(text)
