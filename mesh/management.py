"""ModelMesh's management semantics over the registry and the local cache: registration, and
the front (``ModelManager``) over the pieces that do the rest.

Registration writes a ``ModelRecord``; status is derived from the record's copies and recent
failures (``mesh.fleet_views``); vmodels serve their active model until the target is loaded
(``mesh.vmodels``); names resolve through ``mesh.model_names``; this pod's copies and load
failures are recorded by ``mesh.copy_recorder`` (the cache's listener), dead pods' by
``mesh.dead_pods``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from adapters import ADAPTERS, supported_types
from mesh.bounds import check_id, check_path, parse_model_key
from mesh.cache import ModelCache
from mesh.copy_recorder import CopyRecorder
from mesh.dead_pods import DeadPods
from mesh.fleet_views import FleetViews
from mesh.model_names import ModelNames
from mesh.model_options import check_tenant, model_options
from mesh.model_status import (
    FleetView,
    ModelStatus,
    SetVModel,
    TenantUse,
    VModelStatus,
)
from mesh.records import (
    ModelInfo,
    ModelRecord,
    ModelTraffic,
    TenantRecord,
    VModelRecord,
)
from mesh.registry import ModelStore
from mesh.vmodels import VModels
from mesh_common.clock import now_ms
from mesh_common.errors import (
    AlreadyExists,
    InvalidInput,
    MeshError,
    ModelInUse,
    ModelNotFound,
    QuotaExceeded,
    Unavailable,
    UnsupportedModelType,
    quoted,
)
from placement.copies import CopyPolicy
from placement.quotas import registration_refusal
from puller import FetcherTable

log = logging.getLogger(__name__)


class ModelManager:
    """Registers and deletes models and loads them on request; the front the edge, the router and
    the janitor call, handing the rest to its pieces: ``names`` (which model a name means),
    ``views`` (what the registry says), ``virtual_models`` (vmodels), ``copies`` (this pod's copies,
    the cache's listener) and ``dead_pods`` (dead pods' copies, deaths while loading, their block)."""

    def __init__(
        self,
        *,
        store: ModelStore,
        cache: ModelCache,
        fetchers: FetcherTable,
        pod_id: str,
        failure_ttl_s: float,
        max_load_crashes: int = 2,
        crash_window_s: float = 3600.0,
        dead_after_s: float = 0.0,
        clock_ms: Callable[[], int] = now_ms,
        copy_policy: CopyPolicy | None = None,
    ) -> None:
        self._store = store
        self._cache = cache
        self._fetchers = fetchers
        self.pod_id = pod_id
        self._failure_ttl_ms = int(failure_ttl_s * 1000)
        self._clock_ms = clock_ms
        self._tasks: set[asyncio.Task[None]] = set()
        self._loader: Callable[[str], Awaitable[None]] = self.load_here
        self.views = FleetViews(
            store=store, pod_id=pod_id, clock_ms=clock_ms, failure_ttl_ms=self._failure_ttl_ms
        )
        self.virtual_models = VModels(
            store=store,
            views=self.views,
            clock_ms=clock_ms,
            fresh_model=self.fresh_model,
            fresh_vmodel=self.fresh_vmodel,
            validate=self._validate,
            create=self._create,
            unregister=self.unregister,
            load=self._load_quietly,
            spawn=self._spawn,
        )
        self.names = ModelNames(
            store=store,
            cache=cache,
            pod_id=pod_id,
            clock_ms=clock_ms,
            failure_ttl_ms=self._failure_ttl_ms,
            promote_if_ready=self.virtual_models.promote_if_ready,
        )
        crash_window_ms = int(crash_window_s * 1000)
        self.copies = CopyRecorder(
            store=store,
            cache=cache,
            pod_id=pod_id,
            clock_ms=clock_ms,
            max_load_crashes=max_load_crashes,
            crash_window_ms=crash_window_ms,
            copy_policy=copy_policy or CopyPolicy(),
            promote_if_ready=self.virtual_models.promote_if_ready,
        )
        self.dead_pods = DeadPods(
            store=store,
            pod_id=pod_id,
            clock_ms=clock_ms,
            max_load_crashes=max_load_crashes,
            crash_window_ms=crash_window_ms,
            dead_after_ms=int(dead_after_s * 1000),
            update_quietly=self.copies.update_quietly,
            fresh_model=self.names.fresh_model,
        )

    def set_loader(self, loader: Callable[[str], Awaitable[None]]) -> None:
        """Where ``ensureLoaded``, ``loadNow`` and vmodel transitions load: the fleet's router."""
        self._loader = loader

    async def load_here(self, model_id: str) -> None:
        """Load the model on this pod (no routing)."""
        await self._cache.ensure_loaded(self.record(model_id))

    async def stop(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    # models

    async def register(self, model_id: str, info: ModelInfo, *, load_now: bool, sync: bool) -> ModelStatus:
        options = self._validate(model_id, info)
        record = ModelRecord(model_id=model_id, info=info, registered_ms=self._clock_ms(), **options)
        await self._create(record)
        if load_now:
            await self._load(model_id, sync=sync)
        return self.status(model_id)

    async def unregister(self, model_id: str) -> None:
        """Delete a model no vmodel uses. The vmodels are read from the registry before and after
        the delete, and ``set_vmodel`` reads its target after writing: of an unregister and a
        vmodel set through two pods at once, at least one sees the other and backs out, so no
        vmodel is left pointing at a deleted model."""
        record = await self.fresh_model(model_id)
        if record is None:
            return
        await self._refuse_if_used(model_id)
        await self._store.delete_model(model_id)
        try:
            await self._refuse_if_used(model_id)
        except ModelInUse:
            # A vmodel set through another pod took it as its target during the delete: put it back.
            await self._store.create_model(record.as_registered())
            raise
        await self._cache.unload(model_id)

    async def _refuse_if_used(self, model_id: str) -> None:
        users = await self._store.fetch_vmodels_using(model_id)
        if users:
            raise ModelInUse(model_id=model_id, vmodel_ids=users)

    async def status_fresh(self, model_id: str) -> ModelStatus:
        """``status``, reading the registry when this pod's mirror does not know the model (see
        ``fresh_model``); while the registry does not answer, the mirror's answer."""
        with contextlib.suppress(Unavailable):
            await self.fresh_model(model_id)
        return self.status(model_id)

    async def ensure_loaded(self, model_id: str, *, sync: bool) -> ModelStatus:
        if await self.fresh_model(model_id) is None:
            raise ModelNotFound(model_id=model_id)
        await self._load(model_id, sync=sync)
        return self.status(model_id)

    # tenants

    async def set_tenant(self, tenant: str, *, max_models: int, max_loaded_bytes: int) -> TenantUse:
        check_tenant(tenant)
        if max_models < 0 or max_loaded_bytes < 0:
            raise InvalidInput("tenant caps must not be negative (0: no cap)")
        await self._store.set_tenant(TenantRecord(tenant, max_models, max_loaded_bytes))
        log.info("tenant %s caps: %d models, %d loaded bytes (0: none)", tenant, max_models, max_loaded_bytes)
        use = {t.tenant: t for t in self.tenants()}
        return use.get(tenant, TenantUse(tenant, 0, 0, 0, 0))

    def registered(self) -> list[ModelRecord]:
        return self._store.models()

    def vmodels(self) -> list[VModelRecord]:
        return self._store.vmodels()

    async def _load(self, model_id: str, *, sync: bool) -> None:
        record = self._store.model(model_id)
        if record is None:
            raise ModelNotFound(model_id=model_id)
        if sync:
            await self._load_quietly(model_id)
        else:
            self._spawn(self._load_quietly(model_id), f"ensure-loaded:{model_id}")

    async def _load_quietly(self, model_id: str) -> None:
        with contextlib.suppress(MeshError):  # a failed load is a status, not an RPC error
            await self._loader(model_id)

    async def _create(self, record: ModelRecord) -> None:
        quota = self._store.tenant(record.tenant)
        if quota is not None and self._store.model(record.model_id) is None:
            refusal = registration_refusal(
                record.tenant, registered=self._store.tenant_models(record.tenant), cap=quota.max_models
            )
            if refusal is not None:
                raise QuotaExceeded(refusal, tenant=record.tenant, cap="max_models")
        existing = await self._store.create_model(record)
        if existing is not None and (
            existing.info != record.info or existing.auto_delete != record.auto_delete
        ):
            raise AlreadyExists(
                f"model {quoted(record.model_id)} is already registered with different info "
                f"(type={quoted(existing.info.type)}, path={quoted(existing.info.path)})",
                model_id=record.model_id,
            )

    def _validate(self, model_id: str, info: ModelInfo) -> dict[str, Any]:
        """Checks a registration; returns the mesh's options from the model key JSON."""
        check_id("modelId", model_id)
        if info.type not in ADAPTERS:
            raise UnsupportedModelType(model_type=info.type, supported=supported_types())
        check_path(model_id, info.path)
        key = parse_model_key(model_id, info.key)
        self._fetchers.check(info.path, storage=key)
        return model_options(model_id, key)

    def _spawn(self, coro: Coroutine[Any, Any, None], name: str) -> None:
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # this pod's copies (``CopyRecorder``) and the dead pods' (``DeadPods``)

    async def loading(self, model_id: str) -> None:
        await self.copies.loading(model_id)

    async def loaded(self, model_id: str, size_bytes: int, load_seconds: float) -> None:
        await self.copies.loaded(model_id, size_bytes, load_seconds)

    async def failed(self, model_id: str, error: MeshError) -> None:
        await self.copies.failed(model_id, error)

    async def refused(self, model_id: str, error: MeshError) -> None:
        await self.copies.refused(model_id, error)

    async def drop_claim(self, model_id: str) -> None:
        await self.copies.drop_claim(model_id)

    async def unloaded(self, model_id: str, *, evicted: bool, reason: str = "") -> None:
        await self.copies.unloaded(model_id, evicted=evicted, reason=reason)

    def rejoined(self) -> None:
        self.copies.rejoined()

    async def repair_copies(self) -> int:
        return await self.copies.repair_copies()

    async def forget_pod(self, pod_id: str, *, unless_live: bool = False) -> int:
        return await self.dead_pods.forget_pod(pod_id, unless_live=unless_live)

    async def forget_dead_pods(self) -> int:
        return await self.dead_pods.forget_dead_pods()

    async def clear_failures(self, model_id: str) -> ModelRecord:
        return await self.dead_pods.clear_failures(model_id)

    # what the registry says (``FleetViews``)

    def status(self, model_id: str) -> ModelStatus:
        return self.views.status(model_id)

    def fleet(self) -> FleetView:
        return self.views.fleet()

    def traffic(self, model_id: str) -> dict[str, ModelTraffic]:
        return self.views.traffic(model_id)

    def tenants(self) -> list[TenantUse]:
        return self.views.tenants()

    def loaded_anywhere(self, model_id: str) -> bool:
        return self.views.loaded_anywhere(model_id)

    def held_elsewhere(self, model_id: str) -> bool:
        return self.views.held_elsewhere(model_id)

    # vmodels (``VModels``)

    async def set_vmodel(self, request: SetVModel) -> VModelStatus:
        return await self.virtual_models.set_vmodel(request)

    async def vmodel_status_fresh(self, vmodel_id: str, *, owner: str) -> VModelStatus:
        return await self.virtual_models.vmodel_status_fresh(vmodel_id, owner=owner)

    def vmodel_status(self, vmodel_id: str, *, owner: str) -> VModelStatus:
        return self.virtual_models.vmodel_status(vmodel_id, owner=owner)

    async def delete_vmodel(self, vmodel_id: str, *, owner: str) -> None:
        await self.virtual_models.delete_vmodel(vmodel_id, owner=owner)

    # names (``ModelNames``)

    def record(self, model_id: str) -> ModelRecord:
        return self.names.record(model_id)

    def record_any(self, model_id: str) -> ModelRecord:
        return self.names.record_any(model_id)

    def resolve(self, name: str, *, vmodel: bool | None = None) -> ModelRecord:
        return self.names.resolve(name, vmodel=vmodel)

    def lookup(self, name: str, *, vmodel: bool | None = None) -> ModelRecord:
        return self.names.lookup(name, vmodel=vmodel)

    async def fresh_model(self, model_id: str, *, limited: bool = False) -> ModelRecord | None:
        return await self.names.fresh_model(model_id, limited=limited)

    async def fresh_vmodel(self, vmodel_id: str, *, limited: bool = False) -> VModelRecord | None:
        return await self.names.fresh_vmodel(vmodel_id, limited=limited)

    async def lookup_fresh(self, name: str, *, vmodel: bool | None = None) -> ModelRecord:
        return await self.names.lookup_fresh(name, vmodel=vmodel)
