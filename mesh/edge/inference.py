"""``inference.GRPCInferenceService``: the KServe v2 data plane, over ``Router`` and ``DataPlane``.

``ModelInfer``, ``ModelStreamInfer`` and ``ModelMetadata`` receive the raw request
bytes: the router reads only the model name, then the call is parsed here or its
bytes forwarded unchanged to the pod that serves it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, NamedTuple

import grpc
from google.protobuf.message import DecodeError

from mesh import __version__
from mesh.dataplane import DataPlane, ModelStats, merge_statistics
from mesh.edge import converters
from mesh.edge.peers import HOP, MODEL_ID, ROUTE
from mesh.edge.status import MalformedRequest, edge_method
from mesh.edge.wire import embed, peek_string
from mesh.errors import InvalidInput, MeshError, Unimplemented
from mesh.metrics import MeshMetrics
from mesh.router import EXCLUDE, WHY, Metadata, Router
from mesh_proto import grpc_service_pb2 as v2
from mesh_proto import grpc_service_pb2_grpc as v2_grpc

log = logging.getLogger(__name__)

EXTENSIONS = ["model_repository", "statistics", "mm-model-id", "mm-vmodel-id"]
RAW_METHODS = frozenset({"ModelInfer", "ModelStreamInfer", "ModelMetadata"})
"""Methods whose requests and answers cross the servicer as bytes."""

_TRANSPORT_HEADERS = frozenset({"user-agent", "content-type", "te", "grpc-timeout", "grpc-accept-encoding"})
_STREAM_RESPONSE_FIELD = 2  # ModelStreamInferResponse.infer_response


class Hop(NamedTuple):
    """A call another pod forwarded here."""

    model_id: str
    route: str
    ignore: frozenset[str]
    """Pods the sender could not reach."""
    why: str = ""
    """Why the sender chose this pod for a load."""


def forwarded(context: grpc.aio.ServicerContext) -> Hop | None:
    found: dict[str, str] = {}
    for key, value in context.invocation_metadata() or ():
        if key in (HOP, ROUTE, MODEL_ID, EXCLUDE, WHY):
            found[key] = _text(value)
    if HOP not in found:
        return None
    if not found.get(MODEL_ID) or not found.get(ROUTE):
        raise InvalidInput(f"a forwarded call needs {MODEL_ID} and {ROUTE} metadata")
    ignore = frozenset(p for p in found.get(EXCLUDE, "").split(",") if p)
    return Hop(found[MODEL_ID], found[ROUTE], ignore, found.get(WHY, ""))


def passthrough(context: grpc.aio.ServicerContext) -> Metadata:
    """The caller's metadata a forwarded call carries on (not ours, not the transport's)."""
    return tuple(
        (key, value)
        for key, value in context.invocation_metadata() or ()
        if not key.startswith(("mm-", "mesh-", ":", "grpc-")) and key not in _TRANSPORT_HEADERS
    )


def route(name: str, context: grpc.aio.ServicerContext) -> tuple[str, bool | None]:
    """The routing key: ``mm-vmodel-id``/``mm-model-id`` metadata (and ``-bin``), else the name.

    Returns the id and whether it is a vmodel (None: a vmodel first, then a model).
    """
    for key, value in context.invocation_metadata() or ():
        if key in ("mm-vmodel-id", "mm-vmodel-id-bin"):
            return _text(value), True
        if key in ("mm-model-id", "mm-model-id-bin"):
            return _text(value), False
    return name, None


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value


Here = Callable[[bytes, str], Awaitable[bytes]]
"""Serves raw request bytes for a resolved model id on this pod."""


class InferenceServicer(v2_grpc.GRPCInferenceServiceServicer):
    def __init__(
        self,
        dataplane: DataPlane,
        router: Router,
        metrics: MeshMetrics,
        *,
        request_timeout_s: float,
        ready: bool = True,
    ) -> None:
        self._dataplane = dataplane
        self._router = router
        self.metrics = metrics
        self._request_timeout_s = request_timeout_s
        self.ready = ready

    @edge_method("ServerLive")
    async def ServerLive(
        self, request: v2.ServerLiveRequest, context: grpc.aio.ServicerContext
    ) -> v2.ServerLiveResponse:
        return v2.ServerLiveResponse(live=True)

    @edge_method("ServerReady")
    async def ServerReady(
        self, request: v2.ServerReadyRequest, context: grpc.aio.ServicerContext
    ) -> v2.ServerReadyResponse:
        return v2.ServerReadyResponse(ready=self.ready)

    @edge_method("ServerMetadata")
    async def ServerMetadata(
        self, request: v2.ServerMetadataRequest, context: grpc.aio.ServicerContext
    ) -> v2.ServerMetadataResponse:
        return v2.ServerMetadataResponse(name="mesh", version=__version__, extensions=EXTENSIONS)

    @edge_method("ModelReady")
    async def ModelReady(
        self, request: v2.ModelReadyRequest, context: grpc.aio.ServicerContext
    ) -> v2.ModelReadyResponse:
        name, vmodel = route(request.name, context)
        return v2.ModelReadyResponse(ready=self._dataplane.ready(name, vmodel=vmodel))

    @edge_method("ModelMetadata")
    async def ModelMetadata(self, request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        return await self._dispatch(
            "ModelMetadata", "inference.ModelMetadataRequest", request, context, self._metadata_here
        )

    @edge_method("ModelInfer")
    async def ModelInfer(self, request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        return await self._dispatch(
            "ModelInfer", "inference.ModelInferRequest", request, context, self._infer_here
        )

    async def ModelStreamInfer(
        self, request_iterator: AsyncIterator[bytes], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[bytes]:
        async for request in request_iterator:
            started = time.perf_counter()
            try:
                response = await self._dispatch(
                    "ModelInfer", "inference.ModelInferRequest", request, context, self._infer_here
                )
            except MeshError as exc:
                self.metrics.observe_request("ModelStreamInfer", exc.code.name, time.perf_counter() - started)
                yield v2.ModelStreamInferResponse(error_message=exc.message).SerializeToString()
                continue
            self.metrics.observe_request("ModelStreamInfer", "OK", time.perf_counter() - started)
            yield embed(_STREAM_RESPONSE_FIELD, response)

    async def _dispatch(
        self, method: str, message: str, raw: bytes, context: grpc.aio.ServicerContext, here: Here
    ) -> bytes:
        async def local(model_id: str) -> bytes:
            return await here(raw, model_id)

        hop = forwarded(context)
        if hop is not None:
            return await self._router.serve_forwarded(
                hop.model_id, hop.route, local, ignore=hop.ignore, why=hop.why
            )
        name, vmodel = route(peek_string(raw, 1, message=message), context)
        return await self._router.call(
            name,
            vmodel,
            method=method,
            payload=raw,
            local=local,
            deadline=self._deadline(context),
            metadata=passthrough(context),
        )

    async def _infer_here(self, raw: bytes, model_id: str) -> bytes:
        request = _parse(v2.ModelInferRequest, raw)
        response = await self._dataplane.infer(model_id, converters.request_from_proto(request), vmodel=False)
        message = converters.response_to_proto(response)
        message.model_name = request.model_name
        message.model_version = request.model_version
        return message.SerializeToString()

    async def _metadata_here(self, raw: bytes, model_id: str) -> bytes:
        request = _parse(v2.ModelMetadataRequest, raw)
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
            return self._statistics(self._dataplane.statistics(request.name))
        name, _ = route(request.name, context)
        stats = self._dataplane.statistics(name)
        # The fleet answers as one server: add every pod's counts (a pod that does not answer is left out).
        parts = [stats]
        payload = v2.ModelStatisticsRequest(name=name).SerializeToString()
        key = name or "*"
        answers = await self._router.ask_every_pod(
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
        if hop is not None:  # another pod is unloading it everywhere: just here
            await self._dataplane.unload_here(hop.model_id)
        else:
            name, vmodel = route(request.model_name, context)
            await self._router.unload(name, vmodel=vmodel, deadline=self._deadline(context))
        return v2.RepositoryModelUnloadResponse()

    async def _load_here(self, model_id: str) -> bytes:
        await self._dataplane.load_here(model_id)
        return b""

    def _deadline(self, context: grpc.aio.ServicerContext) -> float:
        remaining = context.time_remaining()
        return time.monotonic() + (self._request_timeout_s if remaining is None else remaining)


def _parse(message_class: type[v2.ModelInferRequest] | type[v2.ModelMetadataRequest], raw: bytes) -> Any:
    try:
        return message_class.FromString(raw)
    except DecodeError as exc:
        raise MalformedRequest(message_class.DESCRIPTOR.full_name, str(exc)).reject() from None
