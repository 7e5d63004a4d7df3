"""The controller's core: resources -> registrations, the mesh's changes -> statuses (no Kubernetes).

Invariants:
- A resource the controller holds is registered: ``apply`` sets its vmodel (``setVModel`` with
  ``autoDeleteTargetModel``: a spec change loads the new model behind the same vmodel and the mesh
  retires the old one once the new one is loaded); ``delete`` deletes the vmodel (its models go
  with it), and so does a status write that finds the resource gone (deleted without its
  finalizer running, as ModelMesh-serving handled a resource not found). Nothing else is ever
  unregistered, whatever the mesh's state.
- The resources are the source of truth: every resource is re-applied every ``resync_s``, at
  once when the mesh reports its vmodel or model deleted behind the controller's back, and after
  each reconnect, for those whose vmodel or model the mesh's snapshot lacks.
- Status follows the ``WatchModels`` stream without polling: the latest state per id is kept in
  memory; a change marks the resources it belongs to, and a writer task computes their status
  and writes it only when it differs from what was written last.
- While the mesh cannot be reached the stream is retried with exponential backoff (``backoff_s``
  doubling up to ``max_backoff_s``) and every status says so (``RuntimeUnhealthy``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Collection, Iterable
from dataclasses import dataclass, field
from typing import Any

from mesh.k8s.meshapi import Change, MeshApi
from mesh.k8s.resources import IdScheme, Kind, Registration, ResourceRef
from mesh.k8s.spec import registration
from mesh.k8s.status import ModelView, Observation, VModelView, inference_service_status, predictor_status
from mesh.k8s.statuswriter import StatusWriter
from mesh_common.clock import now_ms
from mesh_common.errors import (
    AlreadyExists,
    InvalidSpec,
    MeshError,
    ResourceGone,
    ResourceRefused,
    Unavailable,
)

log = logging.getLogger(__name__)


@dataclass
class Entry:
    """One resource the controller holds."""

    ref: ResourceRef
    vmodel_id: str
    model_id: str
    registration: Registration | None = None
    refusal: ResourceRefused | None = None
    deleting: bool = False
    predictor: dict[str, Any] | None = None  # the status last computed, Predictor-shaped
    written: dict[str, Any] | None = None  # the status last written, in the kind's shape
    watched: set[str] = field(default_factory=set)  # model ids whose changes concern it


class Reconciler:
    """Args (beyond the parts): ``ids`` names vmodels; ``supported`` the model types the pods
    serve; ``grpc_endpoint``/``http_endpoint`` what statuses advertise; ``resync_s`` seconds
    between re-registrations of every resource; ``backoff_s``/``max_backoff_s`` the waits between
    tries to reach the mesh; ``concurrency`` calls to the mesh and status writes at once;
    ``load_now`` loads a new resource's model at once (ModelMesh's ``loadNow`` for a new
    predictor), else on its first call."""

    def __init__(
        self,
        mesh: MeshApi,
        writer: StatusWriter,
        *,
        ids: IdScheme,
        supported: Collection[str],
        grpc_endpoint: str,
        http_endpoint: str = "",
        resync_s: float = 300.0,
        backoff_s: float = 0.2,
        max_backoff_s: float = 10.0,
        concurrency: int = 16,
        load_now: bool = True,
    ) -> None:
        self._mesh, self._writer, self._ids, self._supported = mesh, writer, ids, frozenset(supported)
        self._grpc_endpoint, self._http_endpoint = grpc_endpoint, http_endpoint
        self._resync_s, self._backoff_s, self._max_backoff_s = resync_s, backoff_s, max_backoff_s
        self._load_now = load_now
        self._entries: dict[ResourceRef, Entry] = {}
        self._by_vmodel: dict[str, ResourceRef] = {}
        self._by_model: dict[str, set[ResourceRef]] = {}
        self._models: dict[str, ModelView] = {}
        self._vmodels: dict[str, VModelView] = {}
        self._unreachable: str | None = None
        self._syncs = 0  # snapshots taken from the stream so far
        self._ready = asyncio.Event()  # statuses are written once the mesh answered or failed to
        self._dirty: set[ResourceRef] = set()
        self._dirty_event = asyncio.Event()
        self._stale: set[ResourceRef] = set()
        self._stale_event = asyncio.Event()
        self._limit = asyncio.Semaphore(concurrency)
        self._tasks: list[asyncio.Task[None]] = []
        self.connected = asyncio.Event()

    async def __aenter__(self) -> Reconciler:
        loops = (self._watch_loop, self._write_loop, self._reapply_loop, self._resync_loop)
        self._tasks = [asyncio.create_task(loop(), name=f"controller:{loop.__name__}") for loop in loops]
        return self

    async def __aexit__(self, *exc: object) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []

    # resources

    async def apply(self, body: dict[str, Any]) -> str | None:
        """Register what ``body`` (a resource as the API server sends it) asks for; returns the
        vmodel id clients call, or None for an InferenceService not handed to ModelMesh. A spec
        the mesh cannot take shows in the status; only an unexpected failure raises."""
        ref = ResourceRef.of(body)
        refusal: ResourceRefused | None = None
        try:
            wanted = registration(body, ids=self._ids, supported=self._supported)
        except ResourceRefused as refused:
            wanted, refusal = None, refused
        else:
            if wanted is None:
                return None
        entry = self._entries.get(ref)
        if entry is None:
            entry = self._entries[ref] = Entry(ref, self._ids.vmodel_id(ref), "")
            entry.written = _existing_status(body)
            entry.predictor = entry.written if ref.kind is Kind.PREDICTOR else None
            self._by_vmodel[entry.vmodel_id] = ref
        entry.deleting = False
        entry.registration, entry.refusal = wanted, refusal
        entry.model_id = wanted.model_id if wanted else (refusal.model_id if refusal else "")
        self._rewatch(entry)
        if wanted is not None:
            await self._register(entry)
        self._mark([ref])
        return entry.vmodel_id

    async def delete(self, body: dict[str, Any]) -> None:
        """Delete the resource's vmodel (the mesh deletes its models with it). Raises
        ``Unavailable`` while the mesh cannot be reached: the caller retries later."""
        ref = ResourceRef.of(body)
        entry = self._entries.get(ref)
        if entry is not None:
            entry.deleting = True  # a deletion the watch reports is then not undone
        vmodel_id = self._ids.vmodel_id(ref)
        try:
            await self._mesh.delete_vmodel(vmodel_id, owner=ref.kind.source)
        except Unavailable:
            raise
        except MeshError as exc:  # another owner's vmodel of that name: not ours to delete
            log.warning("%s: vmodel %s not deleted: %s", ref, vmodel_id, exc)
        self._forget(ref)

    def status_of(self, ref: ResourceRef) -> dict[str, Any] | None:
        entry = self._entries.get(ref)
        return None if entry is None else entry.predictor

    def vmodel(self, vmodel_id: str) -> VModelView | None:
        return self._vmodels.get(vmodel_id)

    def model(self, model_id: str) -> ModelView | None:
        return self._models.get(model_id)

    async def _register(self, entry: Entry) -> None:
        wanted = entry.registration
        if wanted is None or entry.deleting:
            return
        vmodel = self._vmodels.get(wanted.vmodel_id)
        load_now = self._load_now and (vmodel is None or vmodel.target_model_id != wanted.model_id)
        try:
            async with self._limit:
                await self._mesh.set_vmodel(wanted, load_now=load_now)
        except InvalidSpec as exc:
            entry.refusal = exc
        except AlreadyExists as exc:
            entry.refusal = InvalidSpec(
                f"Predictor already exists with the same name from a different source: {exc.message}",
                model_id=wanted.model_id,
            )
        except MeshError as exc:  # Unavailable, or a failure a later try may not meet: retried
            log.warning("%s: not registered yet (%s); retried on reconnect or resync", entry.ref, exc)
        else:
            entry.refusal = None
        self._mark([entry.ref])

    def _forget(self, ref: ResourceRef) -> None:
        entry = self._entries.pop(ref, None)
        if entry is None:
            return
        self._by_vmodel.pop(entry.vmodel_id, None)
        self._rewatch(entry)
        self._dirty.discard(ref)
        self._stale.discard(ref)

    def _rewatch(self, entry: Entry) -> None:
        """Index the entry under the models whose changes concern it."""
        for model_id in entry.watched:
            self._by_model.get(model_id, set()).discard(entry.ref)
        vmodel = self._vmodels.get(entry.vmodel_id)
        watched = {entry.model_id} if entry.model_id else set()
        if vmodel is not None:
            watched |= {vmodel.active_model_id, vmodel.target_model_id}
        if entry.ref not in self._entries:
            watched = set()
        entry.watched = watched
        for model_id in watched:
            self._by_model.setdefault(model_id, set()).add(entry.ref)

    # the watch

    async def _watch_loop(self) -> None:
        """Follow the stream for ever. A stream that broke after it synced is reopened at once;
        a failure to reopen it (or to open the first) marks the mesh unreachable, then the next
        try waits ``backoff_s``, doubling each time up to ``max_backoff_s``."""
        failures = 0
        while True:
            syncs = self._syncs
            try:
                await self._follow()
            except MeshError as exc:
                log.warning("the mesh's watch stream broke: %s", exc)
            self.connected.clear()
            failures = 1 if self._syncs > syncs else failures + 1
            if failures > 1 or self._syncs == 0:
                self._set_unreachable(f"Waiting for the mesh at {self._grpc_endpoint} to answer")
            retries = failures - 1 if self._syncs else failures
            delay = min(self._backoff_s * 2 ** (retries - 1), self._max_backoff_s) if retries else 0.0
            await asyncio.sleep(delay * random.uniform(0.75, 1.0))

    async def _follow(self) -> None:
        """Follow one stream: collect the snapshot, swap it in once synced, then apply changes."""
        models: dict[str, ModelView] = {}
        vmodels: dict[str, VModelView] = {}
        synced = False
        async for change in self._mesh.watch(""):
            if synced:
                self._on_change(change)
            elif change.synced:
                synced = True
                self._on_synced(models, vmodels)
            elif change.model is not None:
                models[change.model.model_id] = change.model
            elif change.vmodel is not None:
                vmodels[change.vmodel.vmodel_id] = change.vmodel

    def _on_synced(self, models: dict[str, ModelView], vmodels: dict[str, VModelView]) -> None:
        self._models, self._vmodels = models, vmodels
        self._unreachable = None
        self._syncs += 1
        self.connected.set()
        self._ready.set()
        for entry in self._entries.values():
            self._rewatch(entry)
        self._mark(self._entries)
        self._make_stale(
            ref
            for ref, entry in self._entries.items()
            if entry.registration is not None
            and (
                entry.vmodel_id not in vmodels
                or vmodels[entry.vmodel_id].target_model_id != entry.registration.model_id
                or entry.registration.model_id not in models
            )
        )
        log.info("following the mesh: %d models, %d vmodels", len(models), len(vmodels))

    def _on_change(self, change: Change) -> None:
        if change.model is not None:
            self._models[change.model.model_id] = change.model
            self._mark(self._by_model.get(change.model.model_id, ()))
        elif change.vmodel is not None:
            self._vmodels[change.vmodel.vmodel_id] = change.vmodel
            self._vmodel_changed(change.vmodel.vmodel_id)
        elif change.deleted_model_id:
            self._models.pop(change.deleted_model_id, None)
            refs = self._by_model.get(change.deleted_model_id, set())
            self._mark(refs)
            self._make_stale(r for r in refs if self._entries[r].model_id == change.deleted_model_id)
        elif change.deleted_vmodel_id:
            self._vmodels.pop(change.deleted_vmodel_id, None)
            self._vmodel_changed(change.deleted_vmodel_id)
            ref = self._by_vmodel.get(change.deleted_vmodel_id)
            self._make_stale([ref] if ref is not None else [])

    def _vmodel_changed(self, vmodel_id: str) -> None:
        ref = self._by_vmodel.get(vmodel_id)
        if ref is not None:
            self._rewatch(self._entries[ref])
            self._mark([ref])

    def _set_unreachable(self, message: str) -> None:
        self._ready.set()
        if self._unreachable != message:
            self._unreachable = message
            self._mark(self._entries)

    # re-applying

    def _make_stale(self, refs: Iterable[ResourceRef]) -> None:
        fresh = {r for r in refs if not self._entries[r].deleting and self._entries[r].registration}
        if fresh:
            self._stale |= fresh
            self._stale_event.set()

    async def _reapply_loop(self) -> None:
        while True:
            await self._stale_event.wait()
            self._stale_event.clear()
            stale, self._stale = self._stale, set()
            entries = [self._entries[r] for r in stale if r in self._entries]
            log.info("registering %d resource(s) again", len(entries))
            await asyncio.gather(*(self._register(e) for e in entries))

    async def _resync_loop(self) -> None:
        while True:
            await asyncio.sleep(self._resync_s)
            self._make_stale(self._entries)

    # statuses

    def _mark(self, refs: Iterable[ResourceRef]) -> None:
        self._dirty.update(refs)
        if self._dirty:
            self._dirty_event.set()

    async def _write_loop(self) -> None:
        await self._ready.wait()  # before it, every status would say Pending for a moment
        while True:
            await self._dirty_event.wait()
            self._dirty_event.clear()
            dirty, self._dirty = self._dirty, set()
            await asyncio.gather(*(self._flush(ref) for ref in dirty))

    async def _flush(self, ref: ResourceRef) -> None:
        entry = self._entries.get(ref)
        if entry is None or entry.deleting:
            return
        now = now_ms()
        entry.predictor = predictor_status(self._observe(entry), previous=entry.predictor, now_ms=now)
        status = entry.predictor
        if ref.kind is Kind.INFERENCE_SERVICE:
            status = inference_service_status(entry.predictor, previous=entry.written, now_ms=now)
        if _same(status, entry.written):
            return
        try:
            async with self._limit:
                await self._writer.write(ref, status)
        except ResourceGone:  # deleted without its finalizer running: as ModelMesh, drop its vmodel
            log.warning("%s was deleted behind the controller's back: deleting its vmodel", ref)
            await self._drop_deleted(entry)
            return
        except Exception as exc:  # the API server refused or was unreachable: try again later
            log.warning("%s: status not written: %s", ref, exc)
            asyncio.get_running_loop().call_later(1.0, self._mark, [ref])
            return
        entry.written = status

    async def _drop_deleted(self, entry: Entry) -> None:
        with contextlib.suppress(MeshError):  # unreachable: the vmodel stays (nothing is lost)
            await self.delete({"kind": entry.ref.kind.kind, "metadata": {
                "namespace": entry.ref.namespace, "name": entry.ref.name}})  # fmt: skip
        self._forget(entry.ref)

    def _observe(self, entry: Entry) -> Observation:
        vmodel = self._vmodels.get(entry.vmodel_id)
        ids = {vmodel.active_model_id, vmodel.target_model_id} if vmodel else set()
        return Observation(
            vmodel_id=entry.vmodel_id,
            model_id=entry.model_id,
            grpc_endpoint=self._grpc_endpoint,
            http_endpoint=self._http_endpoint,
            refusal=entry.refusal,
            vmodel=vmodel,
            models={i: self._models[i] for i in ids if i in self._models},
            unreachable=self._unreachable,
        )


def _existing_status(body: dict[str, Any]) -> dict[str, Any] | None:
    status = body.get("status")
    return dict(status) if isinstance(status, dict) and status else None


def _same(new: object, old: object) -> bool:
    """Whether merge-patching ``new`` over ``old`` would change nothing: each field of ``new``
    equals ``old``'s (``None``: absent there); fields only ``old`` has are left alone."""
    if new is None:
        return old is None
    if isinstance(new, dict):
        return isinstance(old, dict) and all(_same(v, old.get(k)) for k, v in new.items())
    return bool(new == old)
