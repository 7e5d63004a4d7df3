"""The answer to an unexpected error: a trace id for the caller, the exception for the log."""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import AsyncIterator

import grpc
import pytest
from prometheus_client import CollectorRegistry

from mesh.edge.status import MESSAGE_BYTES, bounded, edge_method, internal_error
from mesh.metrics import MeshMetrics
from mesh_common.errors import ModelNotFound, quoted


def test_an_unexpected_error_is_logged_under_the_trace_id_the_caller_gets(caplog) -> None:
    caplog.set_level(logging.ERROR, logger="mesh.edge.status")
    try:
        raise ValueError("secret path /srv/models/x")
    except ValueError:
        message = internal_error("ModelStreamInfer")
    match = re.fullmatch(r"internal error \(trace id ([0-9a-f]{16})\)", message)
    assert match, message
    (record,) = caplog.records
    assert match.group(1) in record.getMessage() and "ModelStreamInfer" in record.getMessage()
    assert record.exc_info is not None and record.exc_info[0] is ValueError
    assert "secret" not in message


def test_messages_quote_input_cut_short_and_stay_within_a_trailer() -> None:
    assert quoted("iris") == "'iris'" and quoted(3) == "3"
    assert quoted("x" * 1000) == repr("x" * 200) + "... (1000 characters)"
    assert ModelNotFound(model_id="模" * 2**20).message.endswith("... (1048576 characters) is not registered")
    assert bounded("a short message") == "a short message"
    for message in ("m" * 10_000, "模" * 10_000, "%" * 10_000, "🙂" * 10_000):
        cut = bounded(message)
        assert cut.startswith(message[:100]) and "(message cut at" in cut
        encoded = sum(1 if " " <= c <= "~" and c != "%" else 3 * len(c.encode()) for c in cut)
        assert encoded <= MESSAGE_BYTES, (message[:1], encoded)


def test_each_error_gets_its_own_trace_id() -> None:
    ids = set()
    for _ in range(3):
        try:
            raise RuntimeError
        except RuntimeError:
            ids.add(internal_error("ModelInfer"))
    assert len(ids) == 3


class Interrupted:
    """A servicer whose call waits on a future that something inside the pod may cancel."""

    def __init__(self) -> None:
        self.metrics = MeshMetrics(CollectorRegistry())
        self.waiting: asyncio.Future[bytes] | None = None
        self.arrived = asyncio.Event()

    @edge_method("ModelInfer")
    async def handle(self, request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        self.waiting = asyncio.get_running_loop().create_future()
        self.arrived.set()
        return await self.waiting


@pytest.fixture
async def interrupted() -> AsyncIterator[tuple[grpc.aio.Channel, Interrupted]]:
    servicer = Interrupted()
    handler = grpc.method_handlers_generic_handler(
        "inference.GRPCInferenceService",
        {"ModelInfer": grpc.unary_unary_rpc_method_handler(servicer.handle)},
    )
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    yield channel, servicer
    await channel.close()
    await server.stop(None)


async def test_a_cancellation_from_inside_the_pod_is_answered_unavailable(
    interrupted: tuple[grpc.aio.Channel, Interrupted],
) -> None:
    """gRPC sends no status for a handler that ends cancelled: without an answer, the caller would
    wait until its deadline for a call the pod had already given up on."""
    channel, servicer = interrupted
    infer = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")
    call = asyncio.ensure_future(infer(b"", timeout=30))
    await asyncio.wait_for(servicer.arrived.wait(), 5)
    assert servicer.waiting is not None
    servicer.waiting.cancel()  # not the call's task: a future on its path
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await asyncio.wait_for(call, 5)
    assert caught.value.code() is grpc.StatusCode.UNAVAILABLE
    assert "interrupted inside the pod" in (caught.value.details() or "")
    assert servicer.metrics.requests.value("ModelInfer", "UNAVAILABLE") == 1


async def test_a_caller_cancelling_still_ends_the_call_cancelled(
    interrupted: tuple[grpc.aio.Channel, Interrupted],
) -> None:
    channel, servicer = interrupted
    call = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")(b"", timeout=30)
    await asyncio.wait_for(servicer.arrived.wait(), 5)
    call.cancel()
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 5
    while not servicer.metrics.requests.value("ModelInfer", "CANCELLED"):  # the server's side of it
        assert loop.time() < deadline, "the handler did not end cancelled"
        await asyncio.sleep(0.01)
    assert servicer.waiting is not None and servicer.waiting.cancelled()
    assert servicer.metrics.requests.value("ModelInfer", "UNAVAILABLE") == 0
