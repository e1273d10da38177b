"""The KServe v2 ``inference.GRPCInferenceService`` on its own port (grpc.aio).

It runs on the event loop the REST server runs on and serves requests through the same
``inference.Engine``: ModelInfer messages reach the handler as bytes and are parsed in a
codec thread, answers are serialized there too. Errors map through the one table in
``errors.py`` to gRPC status codes. Every ModelInferResponse carries ``model_version``,
the revision that computed it, and every answer the ``hotswap-model-version`` trailing
metadata.

gRPC reads a whole message before the handler sees it, so the request memory budget is
charged once a message has arrived; ``grpc.max_receive_message_length`` is
``HOTSWAP_MAX_REQUEST_BYTES``.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import grpc
from grpc import aio

from hotswap_runtime.budget import decode_cost
from hotswap_runtime.errors import HotswapError, grpc_status
from hotswap_runtime.serving.codec import InferRequest, decode_grpc, encode_grpc
from hotswap_runtime.serving.dataplane import DataPlane, TensorMetadata
from hotswap_runtime.serving.grpc_v2 import inference_pb2 as pb

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)
SERVICE = "inference.GRPCInferenceService"
VERSION_KEY = "hotswap-model-version"


class GrpcServer:
    """GRPCInferenceService over ``plane`` on ``host:port``; built on the event loop
    that serves it."""

    def __init__(self, plane: DataPlane, host: str, port: int, max_request_bytes: int) -> None:
        self.plane = plane
        self.server = aio.server(
            options=[
                ("grpc.max_receive_message_length", max_request_bytes),
                ("grpc.max_send_message_length", -1),
                ("grpc.so_reuseport", 0),
            ]
        )
        self.server.add_generic_rpc_handlers((self._handlers(),))
        self.port = self.server.add_insecure_port(f"{host}:{port}")

    async def start(self) -> None:
        await self.server.start()
        log.info("gRPC GRPCInferenceService on port %d", self.port)

    async def stop(self, grace: float = 5.0) -> None:
        await self.server.stop(grace)

    def _handlers(self) -> grpc.GenericRpcHandler:
        def unary(
            fn: Callable[[Any], Awaitable[Any]], request: type[Any] | None, raw: bool = False
        ) -> grpc.RpcMethodHandler[Any, Any]:
            async def handle(message: Any, context: aio.ServicerContext[Any, Any]) -> Any:
                self._trail(context)
                try:
                    return await fn(message)
                except HotswapError as exc:
                    await context.abort(grpc.StatusCode[grpc_status(exc)], str(exc))

            return grpc.unary_unary_rpc_method_handler(
                handle,
                request_deserializer=None if raw else request.FromString,  # type: ignore[union-attr]
                response_serializer=None if raw else _serialize,
            )

        return grpc.method_handlers_generic_handler(
            SERVICE,
            {
                "ServerLive": unary(self.server_live, pb.ServerLiveRequest),
                "ServerReady": unary(self.server_ready, pb.ServerReadyRequest),
                "ModelReady": unary(self.model_ready, pb.ModelReadyRequest),
                "ServerMetadata": unary(self.server_metadata, pb.ServerMetadataRequest),
                "ModelMetadata": unary(self.model_metadata, pb.ModelMetadataRequest),
                "ModelInfer": unary(self.model_infer, None, raw=True),
            },
        )

    def _trail(self, context: aio.ServicerContext[Any, Any]) -> None:
        version = self.plane.serving_version()
        if version is not None:
            context.set_trailing_metadata(((VERSION_KEY, version),))

    async def server_live(self, _: pb.ServerLiveRequest) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=True)

    async def server_ready(self, _: pb.ServerReadyRequest) -> pb.ServerReadyResponse:
        return pb.ServerReadyResponse(ready=self.plane.ready_version() is not None)

    async def model_ready(self, request: pb.ModelReadyRequest) -> pb.ModelReadyResponse:
        answer = self.plane.model_ready(request.name, request.version or None)
        return pb.ModelReadyResponse(ready=answer.ready)

    async def server_metadata(self, _: pb.ServerMetadataRequest) -> pb.ServerMetadataResponse:
        meta = self.plane.server_metadata()
        return pb.ServerMetadataResponse(
            name=meta.name, version=meta.version, extensions=meta.extensions
        )

    async def model_metadata(self, request: pb.ModelMetadataRequest) -> pb.ModelMetadataResponse:
        meta = self.plane.model_metadata(request.name, request.version or None)
        return pb.ModelMetadataResponse(
            name=meta.name,
            versions=meta.versions,
            platform=meta.platform,
            inputs=[_tensor(t) for t in meta.inputs],
            outputs=[_tensor(t) for t in meta.outputs],
        )

    async def model_infer(self, raw: bytes) -> bytes:
        plane = self.plane
        async with plane.admit(decode_cost(len(raw), 0)):

            def decode() -> InferRequest:
                message, request = decode_grpc(raw)
                plane.check_model(message.model_name)
                return request

            def encode(version: str, output: torch.Tensor, request: InferRequest) -> bytes:
                return encode_grpc(plane.model_name, version, output, request)

            body, _ = await plane.infer(decode, encode)
        return body


def _tensor(meta: TensorMetadata) -> pb.ModelMetadataResponse.TensorMetadata:
    return pb.ModelMetadataResponse.TensorMetadata(
        name=meta.name, datatype=meta.datatype, shape=meta.shape
    )


def _serialize(message: Any) -> bytes:
    data: bytes = message.SerializeToString()
    return data
