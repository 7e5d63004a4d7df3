"""Calls to other pods: raw request bytes forwarded unchanged, and load requests.

A forwarded call goes through a generic unary call with identity (de)serializers, so
this pod never decodes or re-encodes the payload. It carries ``mesh-hop`` (the
forwarding pod, so the receiver never forwards again), ``mesh-route`` (``loaded``:
serve only if the model is loaded there; ``load``: placement chose that pod, load it)
and ``mm-model-id`` (the model the entry pod resolved).

Answers map back to the error tree: the ``mesh-error`` trailer says "not here",
"load failed" or "no room"; an unreachable peer is ``Unavailable``; anything else
the peer answered is relayed with its code and message.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence

import grpc

from mesh.edge.status import ERROR_TRAILER, GRPC_STATUS
from mesh.errors import (
    Busy,
    DeadlineExceeded,
    ErrorCode,
    MeshError,
    ModelLoadFailed,
    NotHere,
    RemoteError,
    Unavailable,
)
from mesh_proto import grpc_service_pb2 as v2

HOP = "mesh-hop"
ROUTE = "mesh-route"
MODEL_ID = "mm-model-id"
SERVICE = "/inference.GRPCInferenceService/"

_CODES = {status: code for code, status in GRPC_STATUS.items()}
_RETRY_ELSEWHERE = {
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.INTERNAL,
    grpc.StatusCode.UNKNOWN,
    grpc.StatusCode.CANCELLED,
}


class PeerClient:
    def __init__(self, pod_id: str, *, max_message_bytes: int) -> None:
        self.pod_id = pod_id
        self._options = [
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.max_send_message_length", max_message_bytes),
            ("grpc.initial_reconnect_backoff_ms", 100),
            ("grpc.max_reconnect_backoff_ms", 1000),
        ]
        self._channels: dict[str, grpc.aio.Channel] = {}
        self._calls: dict[tuple[str, str], grpc.aio.UnaryUnaryMultiCallable[bytes, bytes]] = {}

    async def forward(
        self,
        endpoint: str,
        method: str,
        payload: bytes,
        *,
        model_id: str,
        route: str,
        timeout_s: float,
        metadata: Sequence[tuple[str, str | bytes]] = (),
    ) -> bytes:
        call = self._calls.get((endpoint, method))
        if call is None:
            call = self._channel(endpoint).unary_unary(SERVICE + method)
            self._calls[(endpoint, method)] = call
        headers = (*metadata, (HOP, self.pod_id), (ROUTE, route), (MODEL_ID, model_id))
        try:
            response: bytes = await call(payload, timeout=timeout_s, metadata=headers)
        except grpc.aio.AioRpcError as exc:
            raise _error(exc, endpoint, model_id) from None
        return response

    async def load(
        self,
        endpoint: str,
        *,
        model_id: str,
        timeout_s: float,
        metadata: Sequence[tuple[str, str | bytes]] = (),
        route: str = "load",
    ) -> None:
        payload = v2.RepositoryModelLoadRequest(model_name=model_id).SerializeToString()
        await self.forward(
            endpoint,
            "RepositoryModelLoad",
            payload,
            model_id=model_id,
            route=route,
            timeout_s=timeout_s,
            metadata=metadata,
        )

    async def unload(
        self,
        endpoint: str,
        *,
        model_id: str,
        timeout_s: float,
        metadata: Sequence[tuple[str, str | bytes]] = (),
    ) -> None:
        payload = v2.RepositoryModelUnloadRequest(model_name=model_id).SerializeToString()
        await self.forward(
            endpoint,
            "RepositoryModelUnload",
            payload,
            model_id=model_id,
            route="unload",
            timeout_s=timeout_s,
            metadata=metadata,
        )

    async def forget(self, endpoint: str) -> None:
        channel = self._channels.pop(endpoint, None)
        self._calls = {key: call for key, call in self._calls.items() if key[0] != endpoint}
        if channel is not None:
            await channel.close()

    async def close(self) -> None:
        for endpoint in list(self._channels):
            await self.forget(endpoint)

    def _channel(self, endpoint: str) -> grpc.aio.Channel:
        channel = self._channels.get(endpoint)
        if channel is None:
            channel = grpc.aio.insecure_channel(endpoint, options=self._options)
            self._channels[endpoint] = channel
        return channel


def _error(exc: grpc.aio.AioRpcError, endpoint: str, model_id: str) -> MeshError:
    signal = ""
    with contextlib.suppress(TypeError):
        for key, value in exc.trailing_metadata() or ():
            if key == ERROR_TRAILER:
                signal = value.decode() if isinstance(value, bytes) else value
    details = exc.details() or exc.code().name
    if signal == "not-here":
        return NotHere(f"{endpoint}: {details}", pod_id=endpoint)
    if signal == "load-failed":
        prefix = f"model {model_id!r} failed to load: "
        return ModelLoadFailed(model_id=model_id, reason=details.removeprefix(prefix))
    if signal == "no-room":
        return Busy(f"{endpoint}: {details}", model_id=model_id)
    if exc.code() is grpc.StatusCode.DEADLINE_EXCEEDED:
        # The caller's deadline ran out there: the peer is slow or busy, not unreachable.
        return DeadlineExceeded(f"{endpoint} did not answer before the deadline", endpoint=endpoint)
    if exc.code() in _RETRY_ELSEWHERE:
        return Unavailable(f"{endpoint} did not answer: {exc.code().name}: {details}", endpoint=endpoint)
    return RemoteError(_CODES.get(exc.code(), ErrorCode.UNAVAILABLE), details)
