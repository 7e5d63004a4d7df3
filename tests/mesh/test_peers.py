"""The peer client against a real gRPC server on port 0: bytes pass unchanged, answers map to errors."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator

import grpc
import pytest

from mesh.edge.peers import HOP, MODEL_ID, ROUTE, PeerClient
from mesh.edge.status import ERROR_TRAILER, abort
from mesh_common.errors import DeadlineExceeded, ModelLoadFailed, NotHere, Unavailable, Unreachable

SERVICE = "inference.GRPCInferenceService"


class Behaviour:
    def __init__(self) -> None:
        self.mode = "echo"
        self.seen: list[tuple[bytes, dict[str, str]]] = []
        self.cancelled = asyncio.Event()
        self.arrived = asyncio.Event()
        self.release = asyncio.Event()

    async def handle(self, request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        metadata = {k: v for k, v in context.invocation_metadata() or () if isinstance(v, str)}
        self.seen.append((request, metadata))
        self.arrived.set()
        if self.mode in ("slow", "pause"):
            try:
                await (asyncio.sleep(30) if self.mode == "slow" else self.release.wait())
            except asyncio.CancelledError:
                self.cancelled.set()
                raise
        if self.mode == "not-here":
            context.set_trailing_metadata(((ERROR_TRAILER, "not-here"),))
            await context.abort(grpc.StatusCode.UNAVAILABLE, "model 'm' is not loaded on pod-b")
        if self.mode == "unavailable":
            await abort(context, Unavailable("loading model 'm' timed out after 5s"))
        if self.mode == "load-failed":
            context.set_trailing_metadata(((ERROR_TRAILER, "load-failed"),))
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, "model 'm' failed to load: bad weights")
        return b"echo:" + request


@pytest.fixture
async def peer() -> AsyncIterator[tuple[str, Behaviour]]:
    behaviour = Behaviour()
    handler = grpc.method_handlers_generic_handler(
        SERVICE,
        {
            "ModelInfer": grpc.unary_unary_rpc_method_handler(
                behaviour.handle, request_deserializer=None, response_serializer=None
            )
        },
    )
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    yield f"127.0.0.1:{port}", behaviour
    await server.stop(None)


@pytest.fixture
async def client() -> AsyncIterator[PeerClient]:
    peers = PeerClient("pod-a", max_message_bytes=4 * 2**20)
    yield peers
    await peers.close()


async def forward(client: PeerClient, endpoint: str, timeout_s: float = 5.0) -> bytes:
    return await client.forward(
        endpoint, "ModelInfer", b"\x00raw\xff", model_id="m", route="loaded", timeout_s=timeout_s
    )


async def test_bytes_and_hop_metadata_arrive_unchanged(
    client: PeerClient, peer: tuple[str, Behaviour]
) -> None:
    endpoint, behaviour = peer
    assert await forward(client, endpoint) == b"echo:\x00raw\xff"
    request, metadata = behaviour.seen[0]
    assert request == b"\x00raw\xff"
    assert (metadata[HOP], metadata[ROUTE], metadata[MODEL_ID]) == ("pod-a", "loaded", "m")


async def test_trailers_map_to_not_here_and_load_failed(
    client: PeerClient, peer: tuple[str, Behaviour]
) -> None:
    endpoint, behaviour = peer
    behaviour.mode = "not-here"
    with pytest.raises(NotHere, match="not loaded on pod-b"):
        await forward(client, endpoint)
    behaviour.mode = "load-failed"
    with pytest.raises(ModelLoadFailed) as caught:
        await forward(client, endpoint)
    assert caught.value.reason == "bad weights"


async def test_a_slow_peer_is_a_deadline_not_an_unreachable_peer(
    client: PeerClient, peer: tuple[str, Behaviour]
) -> None:
    endpoint, behaviour = peer
    behaviour.mode = "slow"
    with pytest.raises(DeadlineExceeded, match="before the deadline"):
        await forward(client, endpoint, timeout_s=0.2)
    await asyncio.wait_for(behaviour.cancelled.wait(), 5)  # the deadline reached the peer's handler


async def test_cancelling_the_forward_cancels_the_peers_handler(
    client: PeerClient, peer: tuple[str, Behaviour]
) -> None:
    endpoint, behaviour = peer
    behaviour.mode = "slow"
    call = asyncio.create_task(forward(client, endpoint, timeout_s=30))
    await asyncio.wait_for(behaviour.arrived.wait(), 5)
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call
    await asyncio.wait_for(behaviour.cancelled.wait(), 5)


async def test_a_closed_port_is_unavailable(client: PeerClient) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        endpoint = f"127.0.0.1:{s.getsockname()[1]}"
    with pytest.raises(Unreachable, match="did not answer"):
        await forward(client, endpoint, timeout_s=2)


async def test_an_unavailable_answer_is_from_a_live_peer_not_an_unreachable_one(
    client: PeerClient, peer: tuple[str, Behaviour]
) -> None:
    endpoint, behaviour = peer
    behaviour.mode = "unavailable"
    with pytest.raises(Unavailable, match="timed out after 5s") as caught:
        await forward(client, endpoint)
    assert not isinstance(caught.value, Unreachable)


async def call_in_flight(
    endpoint: str, behaviour: Behaviour, *, mode: str, retire_grace_s: float
) -> tuple[PeerClient, asyncio.Task[bytes]]:
    """A client whose forward to ``endpoint`` has reached the peer's handler (held there by ``mode``)."""
    behaviour.mode = mode
    client = PeerClient("pod-a", max_message_bytes=1 << 20, retire_grace_s=retire_grace_s)
    call = asyncio.create_task(forward(client, endpoint, timeout_s=30))
    await asyncio.wait_for(behaviour.arrived.wait(), 5)
    return client, call


async def test_calls_in_flight_finish_when_their_pod_leaves_the_fleet(peer: tuple[str, Behaviour]) -> None:
    """A pod whose lease ran out while etcd was silent is still serving: forgetting it retires its
    channel, and the calls already on their way there are answered, not cut off."""
    endpoint, behaviour = peer
    client, call = await call_in_flight(endpoint, behaviour, mode="pause", retire_grace_s=30)
    try:
        forgetting = asyncio.create_task(client.forget(endpoint))
        done, _ = await asyncio.wait({call, forgetting}, timeout=0.5)
        assert not done  # the call goes on, and the channel waits for it
        behaviour.release.set()
        assert await asyncio.wait_for(call, 5) == b"echo:\x00raw\xff"
        await asyncio.wait_for(forgetting, 5)
        behaviour.mode = "echo"
        assert await forward(client, endpoint) == b"echo:\x00raw\xff"  # a new channel
        assert not behaviour.cancelled.is_set()
    finally:
        await client.close()


async def test_a_call_cut_off_by_a_retired_channel_is_unavailable_not_cancelled(
    peer: tuple[str, Behaviour],
) -> None:
    """gRPC ends the calls on a closing channel by cancelling them; that must reach the router as
    "this pod is gone" (it tries another), not as a cancellation of the caller's own call."""
    endpoint, behaviour = peer
    client, call = await call_in_flight(endpoint, behaviour, mode="slow", retire_grace_s=0.2)
    try:
        await asyncio.wait_for(client.forget(endpoint), 5)
        with pytest.raises(Unavailable, match="left the fleet"):
            await asyncio.wait_for(call, 5)
        await asyncio.wait_for(behaviour.cancelled.wait(), 5)  # and the peer's handler stops
    finally:
        await client.close()


async def test_closing_the_client_closes_a_channel_still_retiring(peer: tuple[str, Behaviour]) -> None:
    endpoint, behaviour = peer
    client, call = await call_in_flight(endpoint, behaviour, mode="slow", retire_grace_s=30)
    forgetting = asyncio.create_task(client.forget(endpoint))
    await asyncio.wait({forgetting}, timeout=0.2)
    forgetting.cancel()  # as the pod's stop cancels its background tasks
    with contextlib.suppress(asyncio.CancelledError):
        await forgetting
    await asyncio.wait_for(client.close(), 5)
    with pytest.raises(Unavailable, match="left the fleet"):
        await asyncio.wait_for(call, 5)
