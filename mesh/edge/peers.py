"""Calls to other pods: raw request bytes forwarded unchanged, and load requests.

The gRPC side of ``mesh.edge.hop``'s ``Peers``. A forwarded call goes through a generic unary
call with identity (de)serializers, so this pod never decodes or re-encodes the payload; it
carries the hop's metadata (``hop.hop_metadata``).

Answers map back to the error tree: the hop's error trailers say what a peer's error means for
routing ("not here", "load failed" with its reason, "no room", "unavailable"); a peer whose
server gave no answer (the connection failed or broke) is ``Unreachable``; anything else the
peer answered is relayed with its code and message.

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
from typing import TypeAlias

import grpc

from mesh.edge.hop import Hop, Metadata, Route, hop_metadata, read_error_trailers
from mesh.edge.status import GRPC_STATUS
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
from mesh_common.routing import Routing
from mesh_proto import grpc_service_pb2 as v2

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
    """``Peers`` over gRPC: one channel per peer endpoint, retired when the peer leaves."""

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
        hop: Hop,
        timeout_s: float,
        metadata: Metadata = (),
    ) -> bytes:
        found = self._calls.get((endpoint, method))
        if found is None:
            channel = self._channel(endpoint)
            found = self._calls[(endpoint, method)] = (channel, channel.unary_unary(SERVICE + method))
        channel, call = found
        headers = (*metadata, *hop_metadata(self.pod_id, hop))
        model_id = hop.model_id
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

    async def load(self, endpoint: str, *, hop: Hop, timeout_s: float) -> None:
        payload = v2.RepositoryModelLoadRequest(model_name=hop.model_id).SerializeToString()
        await self.forward(endpoint, "RepositoryModelLoad", payload, hop=hop, timeout_s=timeout_s)

    async def unload(self, endpoint: str, *, model_id: str, timeout_s: float, why: str = "") -> None:
        payload = v2.RepositoryModelUnloadRequest(model_name=model_id).SerializeToString()
        hop = Hop(model_id, Route.UNLOAD, why=why)
        await self.forward(endpoint, "RepositoryModelUnload", payload, hop=hop, timeout_s=timeout_s)

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


def _error(exc: grpc.aio.AioRpcError, endpoint: str, model_id: str) -> MeshError:
    routing, reason = None, None
    with contextlib.suppress(TypeError):
        routing, reason = read_error_trailers(exc.trailing_metadata() or ())
    details = exc.details() or exc.code().name
    if routing is Routing.NOT_HERE:
        return NotHere(f"{endpoint}: {details}", pod_id=endpoint)
    if routing is Routing.LOAD_FAILED:
        return ModelLoadFailed(model_id=model_id, reason=details if reason is None else reason)
    if routing is Routing.NO_ROOM:
        return Busy(f"{endpoint}: {details}", model_id=model_id)
    if exc.code() is grpc.StatusCode.DEADLINE_EXCEEDED:
        # The caller's deadline ran out there: the peer is slow or busy, not unreachable.
        return DeadlineExceeded(f"{endpoint} did not answer before the deadline", endpoint=endpoint)
    if exc.code() in _RETRY_ELSEWHERE:
        message = f"{endpoint} did not answer: {exc.code().name}: {details}"
        if routing is not None:  # the pod's server answered (an ``Unavailable`` of its own)
            return Unavailable(message, endpoint=endpoint)
        return Unreachable(message, endpoint=endpoint)
    return RemoteError(_CODES.get(exc.code(), ErrorCode.UNAVAILABLE), details)
