"""``inference.GRPCInferenceService``: the KServe v2 data plane, over ``DataPlane``."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc

from mesh import __version__
from mesh.dataplane import DataPlane
from mesh.edge import converters
from mesh.edge.status import MalformedRequest, edge_method
from mesh.errors import MeshError, Unimplemented
from mesh.metrics import MeshMetrics
from mesh_proto import grpc_service_pb2 as v2
from mesh_proto import grpc_service_pb2_grpc as v2_grpc

EXTENSIONS = ["model_repository", "statistics", "mm-model-id", "mm-vmodel-id"]


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


class InferenceServicer(v2_grpc.GRPCInferenceServiceServicer):
    def __init__(self, dataplane: DataPlane, metrics: MeshMetrics, *, ready: bool = True) -> None:
        self._dataplane = dataplane
        self.metrics = metrics
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
        name, _ = route(request.name, context)
        return v2.ModelReadyResponse(ready=self._dataplane.ready(name))

    @edge_method("ModelMetadata")
    async def ModelMetadata(
        self, request: v2.ModelMetadataRequest, context: grpc.aio.ServicerContext
    ) -> v2.ModelMetadataResponse:
        name, _ = route(request.name, context)
        _, signature = await self._dataplane.metadata(name)
        return converters.metadata_to_proto(name, signature.platform, signature.inputs, signature.outputs)

    @edge_method("ModelInfer")
    async def ModelInfer(
        self, request: v2.ModelInferRequest, context: grpc.aio.ServicerContext
    ) -> v2.ModelInferResponse:
        name, vmodel = route(request.model_name, context)
        response = await self._dataplane.infer(name, converters.request_from_proto(request), vmodel=vmodel)
        message = converters.response_to_proto(response)
        message.model_name = request.model_name
        message.model_version = request.model_version
        return message

    async def ModelStreamInfer(
        self, request_iterator: AsyncIterator[v2.ModelInferRequest], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[v2.ModelStreamInferResponse]:
        async for request in request_iterator:
            if isinstance(request, MalformedRequest):
                yield v2.ModelStreamInferResponse(error_message=request.reject().message)
                continue
            name, vmodel = route(request.model_name, context)
            try:
                response = await self._dataplane.infer(
                    name, converters.request_from_proto(request), vmodel=vmodel
                )
            except MeshError as exc:
                self.metrics.observe_request("ModelStreamInfer", exc.code.name, 0.0)
                yield v2.ModelStreamInferResponse(error_message=exc.message)
                continue
            message = converters.response_to_proto(response)
            message.model_name = request.model_name
            self.metrics.observe_request("ModelStreamInfer", "OK", 0.0)
            yield v2.ModelStreamInferResponse(infer_response=message)

    @edge_method("ModelStatistics")
    async def ModelStatistics(
        self, request: v2.ModelStatisticsRequest, context: grpc.aio.ServicerContext
    ) -> v2.ModelStatisticsResponse:
        name, _ = route(request.name, context)
        stats = self._dataplane.statistics(name)
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
        await self._dataplane.load(request.model_name)
        return v2.RepositoryModelLoadResponse()

    @edge_method("RepositoryModelUnload")
    async def RepositoryModelUnload(
        self, request: v2.RepositoryModelUnloadRequest, context: grpc.aio.ServicerContext
    ) -> v2.RepositoryModelUnloadResponse:
        await self._dataplane.unload(request.model_name)
        return v2.RepositoryModelUnloadResponse()
