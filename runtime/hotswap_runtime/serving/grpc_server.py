"""The KServe v2 ``inference.GRPCInferenceService`` on its own port (grpc.aio).

It runs on the event loop the REST server runs on and serves requests through the same
``inference.Engine``: ModelInfer messages reach the handler as bytes and are parsed in a
codec thread, answers are serialized there too. Errors map through the one table in
``errors.py`` to gRPC status codes. Every ModelInferResponse carries ``model_version``,
the revision that computed it, and every answer the ``hotswap-model-version`` trailing
metadata.

Bounded before it costs (docs/security.md, "Serving: gRPC"): gRPC's own limits come from
the settings (message size, connections, streams per connection, keepalive pings, the
handshake), BDP probing is off so a stream's window stays 64 KiB until its message is
asked for, and ModelInfer is registered as a stream-unary method (the wire does not
tell unary from client streaming) so this code runs when the call starts, before its
message arrives: ``receiving.Receiving`` bounds how many messages arrive at once and
for how long, a stream ended inside its message is answered at once, and the request
memory budget is charged what parsing the message will cost (``grpcwire.parse_cost``,
read from its wire format) before protobuf parses it.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import grpc
from grpc import aio

from hotswap_runtime.errors import HotswapError, grpc_status
from hotswap_runtime.serving.codec import InferRequest, decode_grpc, encode_grpc
from hotswap_runtime.serving.dataplane import DataPlane, TensorMetadata
from hotswap_runtime.serving.grpc_v2 import inference_pb2 as pb
from hotswap_runtime.serving.grpcwire import scan
from hotswap_runtime.serving.listen import grpc_address, listen_hosts
from hotswap_runtime.serving.receiving import Receiving
from hotswap_runtime.settings import Settings

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)
SERVICE = "inference.GRPCInferenceService"
VERSION_KEY = "hotswap-model-version"
STREAM_WINDOW = 64 << 10  # bytes a stream may hold before its message is asked for
HANDSHAKE_MS = 10_000  # a connection's HTTP/2 preface and settings
IDLE_MS = 300_000  # a connection without calls for this long is closed (GOAWAY)


class GrpcServer:
    """GRPCInferenceService over ``plane`` on ``host:port`` (and 127.0.0.1: see
    serving/listen.py); built on the event loop that serves it."""

    def __init__(self, plane: DataPlane, settings: Settings) -> None:
        self.plane = plane
        self.receiving = Receiving(settings.grpc_receiving, settings.grpc_receive_seconds)
        self.server = aio.server(options=options(settings))
        self.server.add_generic_rpc_handlers((self._handlers(),))
        self.port = settings.grpc_port
        for host in listen_hosts(settings.host, settings.loopback):  # serving/listen.py
            self.port = self.server.add_insecure_port(grpc_address(host, self.port))

    async def start(self) -> None:
        await self.server.start()
        log.info("gRPC GRPCInferenceService on port %d", self.port)

    async def stop(self, grace: float = 5.0) -> None:
        await self.server.stop(grace)

    def _handlers(self) -> grpc.GenericRpcHandler:
        async def model_infer(_: Any, context: aio.ServicerContext[Any, Any]) -> bytes:
            self._trail(context)
            try:
                return await self.model_infer(context)
            except HotswapError as exc:
                await context.abort(grpc.StatusCode[grpc_status(exc)], str(exc))
                raise  # abort raises

        def unary(
            fn: Callable[[Any], Awaitable[Any]], request: type[Any]
        ) -> grpc.RpcMethodHandler[Any, Any]:
            async def handle(message: Any, context: aio.ServicerContext[Any, Any]) -> Any:
                self._trail(context)
                try:
                    return await fn(message)
                except HotswapError as exc:
                    await context.abort(grpc.StatusCode[grpc_status(exc)], str(exc))

            return grpc.unary_unary_rpc_method_handler(
                handle, request_deserializer=request.FromString, response_serializer=_serialize
            )

        return grpc.method_handlers_generic_handler(
            SERVICE,
            {
                "ServerLive": unary(self.server_live, pb.ServerLiveRequest),
                "ServerReady": unary(self.server_ready, pb.ServerReadyRequest),
                "ModelReady": unary(self.model_ready, pb.ModelReadyRequest),
                "ServerMetadata": unary(self.server_metadata, pb.ServerMetadataRequest),
                "ModelMetadata": unary(self.model_metadata, pb.ModelMetadataRequest),
                "ModelInfer": grpc.stream_unary_rpc_method_handler(model_infer),
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

    async def model_infer(self, context: aio.ServicerContext[Any, Any]) -> bytes:
        """One ModelInfer call: its message received within the receiving limits, the
        budget charged what parsing it costs, then decoded, run and encoded. Refusals
        before parsing are logged (the peer and the reason)."""
        plane = self.plane
        async with contextlib.AsyncExitStack() as admitted:
            async with self.receiving.slot():
                try:
                    raw = await self.receiving.read(context)
                    scanned = scan(raw)
                    await admitted.enter_async_context(plane.admit(scanned.cost))
                except HotswapError as exc:
                    log.info("gRPC ModelInfer from %s refused: %s", context.peer(), exc)
                    raise

            def decode() -> InferRequest:
                message, request = decode_grpc(raw, scanned)
                plane.check_model(message.model_name)
                return request

            def encode(version: str, output: torch.Tensor, request: InferRequest) -> bytes:
                return encode_grpc(plane.model_name, version, output, request)

            body, _ = await plane.infer(decode, encode)
        return body


def options(settings: Settings) -> list[tuple[str, Any]]:
    """grpc-core's channel arguments for the server, from the runtime's settings."""
    return [
        ("grpc.max_receive_message_length", settings.max_request_bytes),
        ("grpc.max_send_message_length", -1),
        ("grpc.so_reuseport", 0),
        ("grpc.max_allowed_incoming_connections", settings.grpc_max_connections),
        ("grpc.max_concurrent_streams", settings.grpc_max_streams),
        # Count open streams (what a client obeys), not streams whose memory grpc-core
        # has yet to free: counting those refuses a client's new call, after its last
        # one ended, with REFUSED_STREAM (UNAVAILABLE) whenever it keeps the limit busy.
        ("grpc.http.overload_protection", 0),
        # A stream's window stays at its initial 64 KiB until its message is asked for.
        ("grpc.http2.bdp_probe", 0),
        ("grpc.http2.lookahead_bytes", STREAM_WINDOW),
        # Keepalive enforcement: pings more often than this, or without a call, are
        # strikes; two strikes close the connection (GOAWAY too_many_pings).
        (
            "grpc.http2.min_ping_interval_without_data_ms",
            int(settings.grpc_min_ping_seconds * 1000),
        ),
        ("grpc.keepalive_permit_without_calls", 0),
        ("grpc.http2.max_ping_strikes", 2),
        ("grpc.server_handshake_timeout_ms", HANDSHAKE_MS),
        ("grpc.max_connection_idle_ms", IDLE_MS),
    ]


def _tensor(meta: TensorMetadata) -> pb.ModelMetadataResponse.TensorMetadata:
    return pb.ModelMetadataResponse.TensorMetadata(
        name=meta.name, datatype=meta.datatype, shape=meta.shape
    )


def _serialize(message: Any) -> bytes:
    data: bytes = message.SerializeToString()
    return data
