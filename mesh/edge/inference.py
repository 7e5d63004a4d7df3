"""``inference.GRPCInferenceService``: the KServe v2 data plane, over ``Router`` and ``DataPlane``.

``ModelInfer``, ``ModelStreamInfer`` and ``ModelMetadata`` receive the raw request
bytes: the request is parsed once for its model name and for serving it here, and a
call served elsewhere forwards those bytes unchanged to the pod that serves it.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import Executor
from typing import Any, NamedTuple, TypeVar

import grpc
from google.protobuf.message import DecodeError

from mesh import __version__
from mesh.dataplane import DataPlane, InferenceRequest, InferenceResponse, ModelStats, merge_statistics
from mesh.edge import converters
from mesh.edge.health import PodReadiness
from mesh.edge.hop import (
    HOP_KEYS,
    MODEL_ID,
    RESERVED_PREFIXES,
    ROUTING_KEYS,
    VMODEL_ID,
    Hop,
    Metadata,
    metadata_text,
    read_hop,
)
from mesh.edge.status import MalformedRequest, edge_method, internal_error, interrupted
from mesh.edge.wire import embed
from mesh.fleet_calls import FleetCalls
from mesh.metrics import MeshMetrics
from mesh.request_budget import RequestBudget, charge
from mesh.router import Router
from mesh_common.errors import MeshError, Unimplemented
from mesh_proto import grpc_service_pb2 as v2
from mesh_proto import grpc_service_pb2_grpc as v2_grpc

log = logging.getLogger(__name__)

EXTENSIONS = ["model_repository", "statistics", MODEL_ID, VMODEL_ID]
RAW_METHODS = frozenset({"ModelInfer", "ModelStreamInfer", "ModelMetadata"})
"""Methods whose requests and answers cross the servicer as bytes."""

_TRANSPORT_HEADERS = frozenset({"user-agent", "content-type", "te", "grpc-timeout", "grpc-accept-encoding"})
_NOT_CARRIED = (*RESERVED_PREFIXES, ":", "grpc-")
_STREAM_RESPONSE_FIELD = 2  # ModelStreamInferResponse.infer_response
T = TypeVar("T")


class CallMetadata(NamedTuple):
    """What a call's metadata says, read in one pass."""

    hop: Hop | None
    """Set when another pod forwarded the call."""
    routed: tuple[str, bool] | None
    """The id in ``mm-vmodel-id``/``mm-model-id`` (or ``-bin``) and whether it names a vmodel."""
    passthrough: Metadata
    """The caller's metadata a forwarded call carries on (not ours, not the transport's)."""


def read_metadata(context: grpc.aio.ServicerContext) -> CallMetadata:
    hop_keys: dict[str, str] = {}
    routed: tuple[str, bool] | None = None
    carried: list[tuple[str, str | bytes]] = []
    for key, value in context.invocation_metadata() or ():
        if not key.startswith(_NOT_CARRIED) and key not in _TRANSPORT_HEADERS:
            carried.append((key, value))
            continue
        if key in HOP_KEYS:  # mm-model-id is both: the id a hop carries and a routing key
            hop_keys[key] = metadata_text(key, value)
        if routed is None and key in ROUTING_KEYS:  # the first one wins
            routed = metadata_text(key, value), ROUTING_KEYS[key]
    if not hop_keys and routed is None and not carried:
        return _PLAIN  # most calls: nothing but transport headers
    return CallMetadata(read_hop(hop_keys), routed, tuple(carried))


_PLAIN = CallMetadata(None, None, ())


def forwarded(context: grpc.aio.ServicerContext) -> Hop | None:
    return read_metadata(context).hop


def route(name: str, context: grpc.aio.ServicerContext) -> tuple[str, bool | None]:
    """The routing key: ``mm-vmodel-id``/``mm-model-id`` metadata (and ``-bin``), else the name.

    Returns the id and whether it is a vmodel (None: a vmodel first, then a model).
    """
    return read_metadata(context).routed or (name, None)


RawRequest = type[v2.ModelInferRequest] | type[v2.ModelMetadataRequest]
"""The requests that arrive as bytes: a call served on another pod forwards the bytes it came with."""


class InferenceServicer(v2_grpc.GRPCInferenceServiceServicer):
    def __init__(
        self,
        dataplane: DataPlane,
        router: Router,
        metrics: MeshMetrics,
        *,
        fleet: FleetCalls,
        request_timeout_s: float,
        budget: RequestBudget,
        decoder: Executor,
        decode_inline_bytes: int,
        readiness: PodReadiness,
    ) -> None:
        self._dataplane = dataplane
        self._router = router
        self._fleet = fleet
        self.metrics = metrics
        self._request_timeout_s = request_timeout_s
        self._budget = budget
        self._decoder = decoder
        """Parses, decodes and answers requests of ``decode_inline_bytes`` or more."""
        self._decode_inline_bytes = decode_inline_bytes
        self._readiness = readiness
        """The pod's one readiness flag, which gRPC health publishes too."""

    @edge_method("ServerLive")
    async def ServerLive(
        self, request: v2.ServerLiveRequest, context: grpc.aio.ServicerContext
    ) -> v2.ServerLiveResponse:
        return v2.ServerLiveResponse(live=True)

    @edge_method("ServerReady")
    async def ServerReady(
        self, request: v2.ServerReadyRequest, context: grpc.aio.ServicerContext
    ) -> v2.ServerReadyResponse:
        return v2.ServerReadyResponse(ready=self._readiness.ready)

    @edge_method("ServerMetadata")
    async def ServerMetadata(
        self, request: v2.ServerMetadataRequest, context: grpc.aio.ServicerContext
    ) -> v2.ServerMetadataResponse:
        return v2.ServerMetadataResponse(name="mesh", version=__version__, extensions=EXTENSIONS)

    @edge_method("ModelReady")
    async def ModelReady(
        self, request: v2.ModelReadyRequest, context: grpc.aio.ServicerContext
    ) -> v2.ModelReadyResponse:
        if not self._readiness.ready:  # starting or stopping: no model is ready here
            return v2.ModelReadyResponse(ready=False)
        name, vmodel = route(request.name, context)
        return v2.ModelReadyResponse(ready=await self._dataplane.ready(name, vmodel=vmodel))

    @edge_method("ModelMetadata")
    async def ModelMetadata(self, request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        return await self._dispatch("ModelMetadata", v2.ModelMetadataRequest, request, context)

    @edge_method("ModelInfer")
    async def ModelInfer(self, request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        return await self._dispatch("ModelInfer", v2.ModelInferRequest, request, context)

    async def ModelStreamInfer(
        self, request_iterator: AsyncIterator[bytes], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[bytes]:
        async for request in request_iterator:
            started = time.perf_counter()
            try:
                response = await self._dispatch("ModelInfer", v2.ModelInferRequest, request, context)
            except MeshError as exc:
                self.metrics.observe_request("ModelStreamInfer", exc.code.name, time.perf_counter() - started)
                yield v2.ModelStreamInferResponse(error_message=exc.message).SerializeToString()
                continue
            except asyncio.CancelledError:
                error = interrupted("ModelStreamInfer")
                if error is None:
                    raise
                elapsed = time.perf_counter() - started
                self.metrics.observe_request("ModelStreamInfer", error.code.name, elapsed)
                yield v2.ModelStreamInferResponse(error_message=error.message).SerializeToString()
                continue
            except Exception:  # as a unary call would be answered: one request fails, the stream goes on
                self.metrics.observe_request("ModelStreamInfer", "INTERNAL", time.perf_counter() - started)
                message = internal_error("ModelStreamInfer")
                yield v2.ModelStreamInferResponse(error_message=message).SerializeToString()
                continue
            self.metrics.observe_request("ModelStreamInfer", "OK", time.perf_counter() - started)
            yield embed(_STREAM_RESPONSE_FIELD, response)

    async def _dispatch(
        self, method: str, message_class: RawRequest, raw: bytes, context: grpc.aio.ServicerContext
    ) -> bytes:
        """Serve a call here or on the pod that holds its model; a forwarded call carries ``raw``
        unchanged. The request is parsed once, here, for its model name and for serving it here.

        An inference call holds its charge from the pod's request budget until it is answered; a
        large one is parsed on a thread, without copying its tensors."""
        cost = 0
        if message_class is v2.ModelInferRequest:
            contents: list[memoryview] | None = None
            if len(raw) >= self._decode_inline_bytes:
                with self._budget.waiting_for(len(raw)):
                    request, contents = await self._off_loop(converters.split_infer_request, raw)
                elements = converters.bytes_elements(request, len(raw))
            else:
                request = _parse(message_class, raw)
                # Reading the tensors' headers costs more than the search (most calls have no BYTES).
                elements = converters.bytes_elements(request, len(raw)) if b"BYTES" in raw else 0
            name = request.model_name
            here: Callable[[str], Awaitable[bytes]] = functools.partial(self._infer_here, request, contents)
            cost = charge(len(raw), elements)
        else:
            request = _parse(message_class, raw)
            name = request.name
            here = functools.partial(self._metadata_here, request)
        call = read_metadata(context)
        if cost and not self._budget.take_now(cost):
            await self._budget.take(cost, deadline=self._deadline(context))
        try:
            if call.hop is not None:
                hop = call.hop
                return await self._router.serve_forwarded(
                    hop.model_id, hop.route, here, ignore=hop.ignore, why=hop.why
                )
            name, vmodel = call.routed or (name, None)
            return await self._router.call(
                name,
                vmodel,
                method=method,
                payload=raw,
                local=here,
                deadline=self._deadline(context),
                metadata=call.passthrough,
            )
        finally:
            if cost:
                self._budget.give_back(cost)

    async def _infer_here(
        self, request: v2.ModelInferRequest, contents: list[memoryview] | None, model_id: str
    ) -> bytes:
        if contents is None:
            return self._answer(
                request,
                await self._dataplane.infer(model_id, converters.request_from_proto(request), vmodel=False),
            )
        # A large request: refused on its header when it cannot match a model loaded here, before
        # anything is decoded; decoded and answered on a thread.
        self._dataplane.check_header(model_id, converters.header_inputs(request))
        decoded = [await self._off_loop(converters.request_from_proto, request, contents)]
        response = await self._dataplane.infer(model_id, decoded[0], vmodel=False)
        return await self._off_loop(self._answer, request, response, decoded)

    @staticmethod
    def _answer(
        request: v2.ModelInferRequest,
        response: InferenceResponse,
        decoded: list[InferenceRequest] | None = None,
    ) -> bytes:
        """The answer's bytes. ``decoded`` is emptied here: on a thread, a large request's Python
        objects are freed there, not on the event loop."""
        if decoded is not None:
            decoded.clear()
        # The answer names the model as the caller did (a vmodel id stays a vmodel id).
        response.model_name = request.model_name
        return converters.response_to_proto(response, version=request.model_version).SerializeToString()

    async def _off_loop(self, work: Callable[..., T], *args: Any) -> T:
        """``work`` on the decode threads. A call cancelled meanwhile ends only once the work has:
        the memory it holds stays charged to the call until then."""
        done = asyncio.get_running_loop().run_in_executor(self._decoder, work, *args)
        try:
            return await asyncio.shield(done)
        except asyncio.CancelledError:
            with contextlib.suppress(Exception):
                await done
            raise

    async def _metadata_here(self, request: v2.ModelMetadataRequest, model_id: str) -> bytes:
        _, signature = await self._dataplane.metadata(model_id, vmodel=False)
        message = converters.metadata_to_proto(
            request.name, signature.platform, signature.inputs, signature.outputs
        )
        return message.SerializeToString()

    @edge_method("ModelStatistics")
    async def ModelStatistics(
        self, request: v2.ModelStatisticsRequest, context: grpc.aio.ServicerContext
    ) -> v2.ModelStatisticsResponse:
        if forwarded(context) is not None:  # a fleet-wide read another pod started: this pod's part
            return self._statistics(await self._dataplane.statistics(request.name))
        name, _ = route(request.name, context)
        stats = await self._dataplane.statistics(name)
        # The fleet answers as one server: add every pod's counts (a pod that does not answer is left out).
        parts = [stats]
        payload = v2.ModelStatisticsRequest(name=name).SerializeToString()
        key = name or "*"
        answers = await self._fleet.ask_every_pod(
            "ModelStatistics", payload, key=key, deadline=self._deadline(context)
        )
        for pod_id, answer in answers:
            if isinstance(answer, MeshError):
                log.info("statistics of %s leave out %s: %s", key, pod_id, answer.message)
                continue
            message = v2.ModelStatisticsResponse.FromString(answer)
            parts.append([converters.statistics_from_proto(m) for m in message.model_stats])
        stats = merge_statistics(*parts)
        return self._statistics(stats)

    @staticmethod
    def _statistics(stats: list[tuple[str, ModelStats]]) -> v2.ModelStatisticsResponse:
        return v2.ModelStatisticsResponse(
            model_stats=[converters.statistics_to_proto(n, s) for n, s in stats]
        )

    @edge_method("RepositoryIndex")
    async def RepositoryIndex(
        self, request: v2.RepositoryIndexRequest, context: grpc.aio.ServicerContext
    ) -> v2.RepositoryIndexResponse:
        response = v2.RepositoryIndexResponse()
        for entry in self._dataplane.index(ready_only=request.ready):
            state = "READY" if entry.state.value == "LOADED" else entry.state.value
            response.models.add(name=entry.model_id, version="1", state=state, reason=entry.reason)
        return response

    @edge_method("RepositoryModelLoad")
    async def RepositoryModelLoad(
        self, request: v2.RepositoryModelLoadRequest, context: grpc.aio.ServicerContext
    ) -> v2.RepositoryModelLoadResponse:
        if request.parameters:
            raise Unimplemented("load parameters (config overrides) are not supported; register the model")
        hop = forwarded(context)
        if hop is not None:
            await self._router.serve_forwarded(
                hop.model_id, hop.route, self._load_here, ignore=hop.ignore, why=hop.why
            )
        else:
            name, vmodel = route(request.model_name, context)
            await self._router.load(name, vmodel=vmodel, deadline=self._deadline(context))
        return v2.RepositoryModelLoadResponse()

    @edge_method("RepositoryModelUnload")
    async def RepositoryModelUnload(
        self, request: v2.RepositoryModelUnloadRequest, context: grpc.aio.ServicerContext
    ) -> v2.RepositoryModelUnloadResponse:
        hop = forwarded(context)
        if hop is not None:  # another pod unloads it everywhere, or drops this copy: just here
            await self._dataplane.unload_here(hop.model_id, reason=hop.why)
        else:
            name, vmodel = route(request.model_name, context)
            await self._fleet.unload(name, vmodel=vmodel, deadline=self._deadline(context))
        return v2.RepositoryModelUnloadResponse()

    async def _load_here(self, model_id: str) -> bytes:
        await self._dataplane.load_here(model_id)
        return b""

    def _deadline(self, context: grpc.aio.ServicerContext) -> float:
        remaining = context.time_remaining()
        return time.monotonic() + (self._request_timeout_s if remaining is None else remaining)


def _parse(message_class: RawRequest, raw: bytes) -> Any:
    try:
        return message_class.FromString(raw)
    except DecodeError as exc:
        raise MalformedRequest(message_class.DESCRIPTOR.full_name, str(exc)).reject() from None
