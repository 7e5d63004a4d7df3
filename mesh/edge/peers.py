"""Calls to other pods: raw request bytes forwarded unchanged, and load requests.

A forwarded call goes through a generic unary call with identity (de)serializers, so
this pod never decodes or re-encodes the payload. It carries ``mesh-hop`` (the
forwarding pod, so the receiver never forwards again), ``mesh-route`` (``loaded``:
serve only if the model is loaded there; ``load``: placement chose that pod, load it)
and ``mm-model-id`` (the model the entry pod resolved; ``mm-model-id-bin``, UTF-8, for an id
that plain metadata cannot carry).

Answers map back to the error tree: the ``mesh-error`` trailer says "not here",
"load failed", "no room" or "unavailable"; a peer whose server gave no answer (the connection
failed or broke) is ``Unreachable``; anything else the peer answered is relayed with its code
and message.

When a pod leaves the registry its channel is retired, not cut: a pod whose lease
ran out while etcd was silent is still serving, and the calls already on their way
to it finish (for up to ``RETIRE_GRACE_S``). A call cut off when the channel closes
is ``Unavailable`` (the router tries another pod), never a bare cancellation, which
would leave the caller without an answer until its deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import Sequence
from typing import TypeAlias

import grpc

from mesh.edge.status import ERROR_TRAILER, GRPC_STATUS
from mesh_common.errors import (
    Busy,
    DeadlineExceeded,
    ErrorCode,
    MeshError,
    ModelLoadFailed,
    NotHere,
    RemoteError,
    Unavailable,
    Unreachable,
    quoted,
)
from mesh_proto import grpc_service_pb2 as v2

HOP = "mesh-hop"
ROUTE = "mesh-route"
MODEL_ID = "mm-model-id"
MODEL_ID_BIN = "mm-model-id-bin"
"""The hop's model id when plain metadata cannot carry it (not printable ASCII): UTF-8 bytes."""
SERVICE = "/inference.GRPCInferenceService/"

_Call: TypeAlias = "grpc.aio.UnaryUnaryMultiCallable[bytes, bytes]"

RETIRE_GRACE_S = 10.0
"""How long calls in flight to a pod that left the registry may still run before its channel
closes under them."""

_CODES = {status: code for code, status in GRPC_STATUS.items()}
_RETRY_ELSEWHERE = {
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.INTERNAL,
    grpc.StatusCode.UNKNOWN,
    grpc.StatusCode.CANCELLED,
}


class PeerClient:
    def __init__(
        self, pod_id: str, *, max_message_bytes: int, retire_grace_s: float = RETIRE_GRACE_S
    ) -> None:
        self.pod_id = pod_id
        self._retire_grace_s = retire_grace_s
        self._options = [
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.max_send_message_length", max_message_bytes),
            ("grpc.initial_reconnect_backoff_ms", 100),
            ("grpc.max_reconnect_backoff_ms", 1000),
        ]
        self._channels: dict[str, grpc.aio.Channel] = {}
        self._calls: dict[tuple[str, str], tuple[grpc.aio.Channel, _Call]] = {}
        self._in_flight: Counter[grpc.aio.Channel] = Counter()
        self._drained: dict[grpc.aio.Channel, asyncio.Event] = {}
        """Set when the last call in flight on a retiring channel ends."""
        self._retiring: set[grpc.aio.Channel] = set()

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
        found = self._calls.get((endpoint, method))
        if found is None:
            channel = self._channel(endpoint)
            found = self._calls[(endpoint, method)] = (channel, channel.unary_unary(SERVICE + method))
        channel, call = found
        headers = (*metadata, (HOP, self.pod_id), (ROUTE, route), id_header(model_id))
        self._in_flight[channel] += 1
        try:
            response: bytes = await call(payload, timeout=timeout_s, metadata=headers)
        except grpc.aio.AioRpcError as exc:
            raise _error(exc, endpoint, model_id) from None
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if task is not None and task.cancelling():  # this call was cancelled: it ends here
                raise
            raise Unavailable(  # the channel closed under the call
                f"pod at {endpoint} left the fleet while model {quoted(model_id)} was being served there",
                model_id=model_id,
            ) from None
        finally:
            left = self._in_flight[channel] - 1
            if left:
                self._in_flight[channel] = left
            else:
                del self._in_flight[channel]
                drained = self._drained.get(channel)
                if drained is not None:
                    drained.set()
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
        """Retire the channel to a pod that left the registry: new calls get a new channel, and
        calls in flight on this one may finish for ``retire_grace_s`` before it closes."""
        channel = self._channels.pop(endpoint, None)
        self._calls = {key: found for key, found in self._calls.items() if key[0] != endpoint}
        if channel is None:
            return
        self._retiring.add(channel)  # if this is cancelled (the pod stops), ``close`` closes it
        if self._in_flight[channel]:
            drained = self._drained[channel] = asyncio.Event()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._retire_grace_s):
                    await drained.wait()
            del self._drained[channel]
        self._retiring.discard(channel)
        await channel.close()  # what is still in flight is cut off: Unavailable to its caller

    async def close(self) -> None:
        """Close every channel at once, retiring ones included (the pod is stopping)."""
        channels = [*self._channels.values(), *self._retiring]
        self._channels.clear()
        self._retiring.clear()
        self._calls.clear()
        for channel in channels:
            await channel.close()

    def _channel(self, endpoint: str) -> grpc.aio.Channel:
        channel = self._channels.get(endpoint)
        if channel is None:
            channel = grpc.aio.insecure_channel(endpoint, options=self._options)
            self._channels[endpoint] = channel
        return channel


def id_header(model_id: str) -> tuple[str, str | bytes]:
    """The metadata that carries a hop's model id: ``mm-model-id`` when the id is printable ASCII
    without surrounding spaces (what every pod of the fleet reads), else ``mm-model-id-bin``
    (any id: gRPC sends it base64-encoded)."""
    if model_id.isascii() and model_id.isprintable() and model_id == model_id.strip():
        return MODEL_ID, model_id
    return MODEL_ID_BIN, model_id.encode()


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
        prefix = f"model {quoted(model_id)} failed to load: "
        return ModelLoadFailed(model_id=model_id, reason=details.removeprefix(prefix))
    if signal == "no-room":
        return Busy(f"{endpoint}: {details}", model_id=model_id)
    if exc.code() is grpc.StatusCode.DEADLINE_EXCEEDED:
        # The caller's deadline ran out there: the peer is slow or busy, not unreachable.
        return DeadlineExceeded(f"{endpoint} did not answer before the deadline", endpoint=endpoint)
    if exc.code() in _RETRY_ELSEWHERE:
        message = f"{endpoint} did not answer: {exc.code().name}: {details}"
        if signal:  # the pod's server answered (an ``Unavailable`` of its own)
            return Unavailable(message, endpoint=endpoint)
        return Unreachable(message, endpoint=endpoint)
    return RemoteError(_CODES.get(exc.code(), ErrorCode.UNAVAILABLE), details)
