"""``mmesh.ModelMesh`` (ModelMesh's management API) and ``mesh.v1.MeshAdmin`` (our extensions)."""

from __future__ import annotations

import base64
import time
from collections.abc import Callable
from typing import TypeAlias

import grpc

from mesh import __version__
from mesh.cache import ModelCache
from mesh.edge import converters
from mesh.edge.status import edge_method
from mesh.management import ModelManager
from mesh.metrics import MeshMetrics
from mesh.model_status import SetVModel, TenantUse
from mesh.model_watch import ModelWatches
from mesh_common.errors import InvalidInput, quoted
from mesh_proto import mesh_admin_pb2 as admin
from mesh_proto import mesh_admin_pb2_grpc as admin_grpc
from mesh_proto import model_mesh_pb2 as mm
from mesh_proto import model_mesh_pb2_grpc as mm_grpc

Context: TypeAlias = grpc.aio.ServicerContext


class ModelMeshServicer(mm_grpc.ModelMeshServicer):
    def __init__(self, manager: ModelManager, metrics: MeshMetrics) -> None:
        self._manager = manager
        self.metrics = metrics

    @edge_method("registerModel")
    async def registerModel(self, request: mm.RegisterModelRequest, context: Context) -> mm.ModelStatusInfo:
        status = await self._manager.register(
            request.modelId,
            converters.model_info_from_proto(request.modelInfo),
            load_now=request.loadNow,
            sync=request.sync,
        )
        return converters.status_to_proto(status)

    @edge_method("unregisterModel")
    async def unregisterModel(
        self, request: mm.UnregisterModelRequest, context: Context
    ) -> mm.UnregisterModelResponse:
        await self._manager.unregister(request.modelId)
        return mm.UnregisterModelResponse()

    @edge_method("getModelStatus")
    async def getModelStatus(self, request: mm.GetStatusRequest, context: Context) -> mm.ModelStatusInfo:
        return converters.status_to_proto(await self._manager.status_fresh(request.modelId))

    @edge_method("ensureLoaded")
    async def ensureLoaded(self, request: mm.EnsureLoadedRequest, context: Context) -> mm.ModelStatusInfo:
        status = await self._manager.ensure_loaded(request.modelId, sync=request.sync)
        return converters.status_to_proto(status)

    @edge_method("setVModel")
    async def setVModel(self, request: mm.SetVModelRequest, context: Context) -> mm.VModelStatusInfo:
        status = await self._manager.set_vmodel(
            SetVModel(
                vmodel_id=request.vModelId,
                target_model_id=request.targetModelId,
                owner=request.owner,
                update_only=request.updateOnly,
                model_info=converters.model_info_from_proto(request.modelInfo)
                if request.HasField("modelInfo")
                else None,
                auto_delete_target=request.autoDeleteTargetModel,
                load_now=request.loadNow,
                force=request.force,
                sync=request.sync,
                expected_target_model_id=request.expectedTargetModelId,
            )
        )
        return converters.vmodel_status_to_proto(status)

    @edge_method("getVModelStatus")
    async def getVModelStatus(
        self, request: mm.GetVModelStatusRequest, context: Context
    ) -> mm.VModelStatusInfo:
        status = await self._manager.vmodel_status_fresh(request.vModelId, owner=request.owner)
        return converters.vmodel_status_to_proto(status)

    @edge_method("deleteVModel")
    async def deleteVModel(
        self, request: mm.DeleteVModelRequest, context: Context
    ) -> mm.DeleteVModelResponse:
        await self._manager.delete_vmodel(request.vModelId, owner=request.owner)
        return mm.DeleteVModelResponse()


class MeshAdminServicer(admin_grpc.MeshAdminServicer):
    def __init__(
        self,
        manager: ModelManager,
        cache: ModelCache,
        metrics: MeshMetrics,
        counters: Callable[[], dict[str, int]],
        watches: ModelWatches,
    ) -> None:
        self._manager = manager
        self._cache = cache
        self._watches = watches
        self.metrics = metrics
        self._counters = counters

    @edge_method("ListModels")
    async def ListModels(
        self, request: admin.ListModelsRequest, context: Context
    ) -> admin.ListModelsResponse:
        after = _after(request.page_token)
        models = sorted(
            (r for r in self._manager.registered() if r.model_id.startswith(request.prefix)),
            key=lambda r: r.model_id,
        )
        vmodels = sorted(
            (v for v in self._manager.vmodels() if v.vmodel_id.startswith(request.prefix)),
            key=lambda v: v.vmodel_id,
        )
        page = _Page(request.page_size)
        for record in models:
            if after < ("m", record.model_id):
                status = self._manager.status(record.model_id)
                summary = admin.ModelSummary(
                    model_id=record.model_id,
                    type=record.info.type,
                    path=record.info.path,
                    status=status.state.value,
                    size_bytes=record.size_bytes,
                    errors=status.errors,
                )
                if not page.add(("m", record.model_id), summary):
                    return page.response
        for vmodel in vmodels:
            if after < ("v", vmodel.vmodel_id):
                entry = admin.VModelSummary(
                    vmodel_id=vmodel.vmodel_id,
                    active_model_id=vmodel.active_model_id,
                    target_model_id=vmodel.target_model_id,
                    owner=vmodel.owner,
                )
                if not page.add(("v", vmodel.vmodel_id), entry):
                    return page.response
        return page.response

    @edge_method("PodStatus")
    async def PodStatus(self, request: admin.PodStatusRequest, context: Context) -> admin.PodStatusResponse:
        counters = self._counters()
        response = admin.PodStatusResponse(
            pod_id=self._manager.pod_id,
            capacity_bytes=self._cache.capacity_bytes,
            used_bytes=self._cache.used_bytes,
            loads=counters["loads"],
            load_failures=counters["load_failures"],
            evictions=counters["evictions"],
            unloads=counters["unloads"],
            janitor_rounds=counters["janitor_rounds"],
            version=__version__,
        )
        now_s, now_wall_ms = time.monotonic(), time.time() * 1000
        for model in self._cache.models():
            if model.loaded:
                response.loaded.add(
                    model_id=model.model_id,
                    size_bytes=model.size_bytes,
                    in_flight=model.in_use,
                    last_used_ms=int(now_wall_ms - (now_s - model.last_used) * 1000),
                )
        return response

    @edge_method("FleetStatus")
    async def FleetStatus(
        self, request: admin.FleetStatusRequest, context: Context
    ) -> admin.FleetStatusResponse:
        fleet = self._manager.fleet()
        response = admin.FleetStatusResponse(
            models_registered=fleet.models_registered,
            models_loaded=fleet.models_loaded,
            copies=fleet.copies,
            janitor=fleet.janitor,
        )
        for pod in fleet.pods:
            response.pods.add(
                pod_id=pod.pod_id,
                endpoint=pod.endpoint,
                capacity_bytes=pod.capacity_bytes,
                used_bytes=pod.used_bytes,
                models_loaded=pod.models_loaded,
                loads_in_flight=pod.loads_in_flight,
                requests_in_flight=pod.requests_in_flight,
                request_rate=pod.request_rate,
                shutting_down=pod.shutting_down,
                version=pod.version,
                started_ms=pod.started_ms,
                devices=[
                    admin.DeviceSummary(
                        name=d.name, capacity_bytes=d.capacity_bytes, used_bytes=d.used_bytes, model=d.model
                    )
                    for d in pod.devices
                ],
            )
        return response

    @edge_method("DescribeModel")
    async def DescribeModel(self, request: admin.DescribeModelRequest, context: Context) -> admin.ModelDetail:
        status = await self._manager.status_fresh(request.model_id)
        record = self._manager.record_any(request.model_id)
        traffic = self._manager.traffic(record.model_id)
        detail = admin.ModelDetail(
            model_id=record.model_id,
            type=record.info.type,
            path=record.info.path,
            tenant=record.tenant,
            status=status.state.value,
            size_bytes=record.size_bytes,
            load_ms=record.load_ms,
            min_copies=record.min_copies,
            max_copies=record.max_copies,
            errors=status.errors,
        )
        for copy in status.copies:
            recorded = record.copies.get(copy.pod_id)
            served = traffic.get(copy.pod_id)
            detail.copies.add(
                pod_id=copy.pod_id,
                state=copy.state.value,
                since_ms=copy.time_ms,
                why=recorded.why if recorded is not None else "",
                request_rate=served.rate if served is not None else 0.0,
                queue_ms=served.queue_ms if served is not None else 0.0,
            )
        for event in record.history:
            detail.history.add(time_ms=event.time_ms, pod_id=event.pod_id, what=event.what)
        return detail

    @edge_method("SetTenant")
    async def SetTenant(self, request: admin.SetTenantRequest, context: Context) -> admin.TenantStatus:
        use = await self._manager.set_tenant(
            request.tenant, max_models=request.max_models, max_loaded_bytes=request.max_loaded_bytes
        )
        return _tenant_status(use)

    @edge_method("ListTenants")
    async def ListTenants(
        self, request: admin.ListTenantsRequest, context: Context
    ) -> admin.ListTenantsResponse:
        return admin.ListTenantsResponse(tenants=[_tenant_status(t) for t in self._manager.tenants()])

    @edge_method("ClearFailures")
    async def ClearFailures(
        self, request: admin.ClearFailuresRequest, context: Context
    ) -> admin.ClearFailuresResponse:
        before = await self._manager.clear_failures(request.model_id)
        return admin.ClearFailuresResponse(
            crashes=len(before.crashes), failures=len(before.failures), blocked=bool(before.blocked)
        )

    @edge_method("WatchModels")
    async def WatchModels(self, request: admin.WatchModelsRequest, context: Context) -> None:
        async with self._watches.watch(request.prefix) as watch:
            async for change in watch.changes():
                await context.write(converters.model_change_to_proto(change))


PAGE_BYTES = 3 * 2**20
"""Most bytes of entries in one ``ListModels`` page: stock gRPC clients accept answers of 4 MiB."""

_Position: TypeAlias = tuple[str, str]
"""Where an entry sorts in a listing: ``("m", model id)`` before ``("v", vmodel id)``."""


class _Page:
    """One ``ListModels`` answer being filled: up to ``size`` entries (0: no count) and
    ``PAGE_BYTES``; the first entry that does not fit ends it with a token for the next page."""

    def __init__(self, size: int) -> None:
        self.response = admin.ListModelsResponse()
        self._size = size
        self._count = 0
        self._bytes = 0
        self._last: _Position = ("", "")

    def add(self, position: _Position, entry: admin.ModelSummary | admin.VModelSummary) -> bool:
        """Adds ``entry``, or ends the page (False) when it does not fit."""
        entry_bytes = entry.ByteSize() + 8  # field tag and length
        full = self._size and self._count >= self._size
        if self._count and (full or self._bytes + entry_bytes > PAGE_BYTES):
            kind, key = self._last
            self.response.next_page_token = base64.urlsafe_b64encode(f"{kind}/{key}".encode()).decode()
            return False
        if isinstance(entry, admin.ModelSummary):
            self.response.models.append(entry)
        else:
            self.response.vmodels.append(entry)
        self._count += 1
        self._bytes += entry_bytes
        self._last = position
        return True


def _after(token: str) -> _Position:
    """The position a page token names (the previous page's last entry); ``("", "")``: none."""
    if not token:
        return ("", "")
    try:
        kind, _, key = base64.urlsafe_b64decode(token.encode()).decode().partition("/")
    except (ValueError, UnicodeError):
        kind, key = "", ""
    if kind not in ("m", "v") or not key:
        raise InvalidInput(f"page_token {quoted(token)} is not a token ListModels gave out")
    return (kind, key)


def _tenant_status(use: TenantUse) -> admin.TenantStatus:
    return admin.TenantStatus(
        tenant=use.tenant,
        max_models=use.max_models,
        max_loaded_bytes=use.max_loaded_bytes,
        models_registered=use.models_registered,
        loaded_bytes=use.loaded_bytes,
    )
