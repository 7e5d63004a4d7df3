"""Vmodels: stable names for changing models, and their transitions (ModelMesh's semantics).

A vmodel serves its active model until its target is loaded somewhere, then the target becomes
active; an auto-delete model no vmodel uses any more is deleted. Setting a vmodel and deleting
its target through two pods at once leave no vmodel pointing at a deleted model (see
``ModelManager.unregister``).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from mesh.bounds import check_id
from mesh.fleet_views import FleetViews
from mesh.model_status import SetVModel, VModelStatus
from mesh.records import ModelInfo, ModelRecord, ModelState, VModelRecord
from mesh.registry import ModelStore
from mesh_common.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidInput,
    ModelInUse,
    ModelNotFound,
    NotFound,
    Unavailable,
    quoted,
)

log = logging.getLogger(__name__)


class VModels:
    """Owns nothing but the transitions it starts: vmodels live in the registry. Models are
    registered, deleted and loaded through the callables it is given (``ModelManager``'s)."""

    def __init__(
        self,
        *,
        store: ModelStore,
        views: FleetViews,
        clock_ms: Callable[[], int],
        fresh_model: Callable[[str], Awaitable[ModelRecord | None]],
        fresh_vmodel: Callable[[str], Awaitable[VModelRecord | None]],
        validate: Callable[[str, ModelInfo], dict[str, Any]],
        create: Callable[[ModelRecord], Awaitable[None]],
        unregister: Callable[[str], Awaitable[None]],
        load: Callable[[str], Awaitable[None]],
        spawn: Callable[[Coroutine[Any, Any, None], str], None],
    ) -> None:
        self._store = store
        self.status = views.status
        self.loaded_anywhere = views.loaded_anywhere
        self._clock_ms = clock_ms
        self.fresh_model = fresh_model
        self.fresh_vmodel = fresh_vmodel
        self._validate = validate
        self._create = create
        self.unregister = unregister
        self._load_quietly = load
        """Loads a model through the fleet's router; a failed load is a status, not an error."""
        self._spawn = spawn

    async def set_vmodel(self, request: SetVModel) -> VModelStatus:
        check_id("vModelId", request.vmodel_id)
        if request.owner:
            check_id("owner", request.owner)
        if not request.target_model_id:  # a new target is checked as a registration; others exist
            raise InvalidInput("targetModelId must not be empty")
        if request.model_info is not None:
            options = self._validate(request.target_model_id, request.model_info)
            await self._create(
                ModelRecord(
                    model_id=request.target_model_id,
                    info=request.model_info,
                    registered_ms=self._clock_ms(),
                    auto_delete=request.auto_delete_target,
                    **options,
                )
            )
        elif await self.fresh_model(request.target_model_id) is None:
            raise ModelNotFound(model_id=request.target_model_id)
        existing = await self.fresh_vmodel(request.vmodel_id)
        if existing is None:
            replaced = await self._create_vmodel(request)
        else:
            replaced = await self._retarget(existing, request)
        if await self._store.read_model(request.target_model_id) is None:
            # Unregistered through another pod while this vmodel was being set (see ``unregister``).
            await self._back_out(request, replaced)
            raise ModelNotFound(model_id=request.target_model_id)
        if replaced is not None:
            await self._collect_auto_deleted(
                {replaced.active_model_id, replaced.target_model_id} - {request.target_model_id}
            )
        current = self._store.vmodel(request.vmodel_id)
        assert current is not None
        if current.active_model_id != current.target_model_id or request.load_now:
            self._spawn(self._transition(request.vmodel_id), f"transition:{request.vmodel_id}")
        if request.sync:
            await self._transition(request.vmodel_id)
        return self.vmodel_status(request.vmodel_id, owner="")

    async def _create_vmodel(self, request: SetVModel) -> VModelRecord | None:
        """Create the vmodel; if another call created it first, retarget that (returned)."""
        if request.update_only:
            raise NotFound(f"vmodel {quoted(request.vmodel_id)} does not exist", model_id=request.vmodel_id)
        if request.expected_target_model_id not in ("", request.target_model_id):
            raise FailedPrecondition(
                f"vmodel {quoted(request.vmodel_id)} does not exist, so its target is not "
                f"{quoted(request.expected_target_model_id)}"
            )
        record = VModelRecord(
            request.vmodel_id, request.target_model_id, request.target_model_id, request.owner
        )
        raced = await self._store.create_vmodel(record)
        return None if raced is None else await self._retarget(raced, request)

    async def _retarget(self, existing: VModelRecord, request: SetVModel) -> VModelRecord:
        """Point the vmodel at the request's target; returns the record it replaced."""
        if request.owner and existing.owner and request.owner != existing.owner:
            raise AlreadyExists(
                f"vmodel {quoted(request.vmodel_id)} belongs to owner {quoted(existing.owner)}",
                model_id=request.vmodel_id,
            )
        expected = request.expected_target_model_id
        if expected and existing.target_model_id != expected:
            raise FailedPrecondition(
                f"vmodel {quoted(request.vmodel_id)} targets {quoted(existing.target_model_id)}, "
                f"not {quoted(expected)}"
            )
        target = request.target_model_id

        def change(v: VModelRecord) -> VModelRecord:
            active = target if request.force or self.loaded_anywhere(target) else v.active_model_id
            return v.retargeted(target, active=active)

        await self._store.update_vmodel(request.vmodel_id, change)
        return existing

    async def _back_out(self, request: SetVModel, replaced: VModelRecord | None) -> None:
        """Undo this call's write of a vmodel whose target is gone, unless another write followed."""
        target = request.target_model_id
        await self._store.update_vmodel(request.vmodel_id, lambda v: v.backed_out(target, replaced))

    async def _transition(self, vmodel_id: str) -> None:
        """Load the target, then make it active (ModelMesh: the active model serves until then)."""
        vmodel = self._store.vmodel(vmodel_id)
        if vmodel is None:
            return
        if self._store.model(vmodel.target_model_id) is None:
            return
        await self._load_quietly(vmodel.target_model_id)
        current = self._store.vmodel(vmodel_id)
        if current is not None:
            self.promote_if_ready(current)

    def promote_if_ready(self, vmodel: VModelRecord) -> None:
        if vmodel.active_model_id != vmodel.target_model_id and self.loaded_anywhere(vmodel.target_model_id):
            self._spawn(
                self._promote(vmodel.vmodel_id, vmodel.target_model_id), f"promote:{vmodel.vmodel_id}"
            )

    async def _promote(self, vmodel_id: str, target: str) -> None:
        old: set[str] = set()

        def change(v: VModelRecord) -> VModelRecord:
            if v.target_model_id == target:
                old.add(v.active_model_id)
            return v.promoted(target)

        await self._store.update_vmodel(vmodel_id, change)
        await self._collect_auto_deleted(old - {target})

    async def _collect_auto_deleted(self, model_ids: set[str]) -> None:
        for model_id in model_ids:
            record = self._store.model(model_id)
            if record is not None and record.auto_delete and not self._store.vmodels_using(model_id):
                log.info("deleting %s: auto-delete model no vmodel uses", model_id)
                with contextlib.suppress(ModelInUse):  # one set through another pod a moment ago does
                    await self.unregister(model_id)

    async def vmodel_status_fresh(self, vmodel_id: str, *, owner: str) -> VModelStatus:
        """``vmodel_status``, reading the registry for what this pod's mirror does not have yet (the
        vmodel, its models); while the registry does not answer, the mirror's answer."""
        with contextlib.suppress(Unavailable):
            vmodel = await self.fresh_vmodel(vmodel_id)
            if vmodel is not None:
                await self.fresh_model(vmodel.active_model_id)
                await self.fresh_model(vmodel.target_model_id)
        return self.vmodel_status(vmodel_id, owner=owner)

    def vmodel_status(self, vmodel_id: str, *, owner: str) -> VModelStatus:
        vmodel = self._store.vmodel(vmodel_id)
        if vmodel is None or (owner and vmodel.owner != owner):
            return VModelStatus("NOT_FOUND")
        active = self.status(vmodel.active_model_id)
        if vmodel.active_model_id == vmodel.target_model_id:
            return VModelStatus(
                "DEFINED", vmodel.active_model_id, vmodel.target_model_id, active, None, vmodel.owner
            )
        target = self.status(vmodel.target_model_id)
        state = "TRANSITION_FAILED" if target.state is ModelState.LOADING_FAILED else "TRANSITIONING"
        return VModelStatus(
            state, vmodel.active_model_id, vmodel.target_model_id, active, target, vmodel.owner
        )

    async def delete_vmodel(self, vmodel_id: str, *, owner: str) -> None:
        vmodel = await self.fresh_vmodel(vmodel_id)
        if vmodel is None:
            return
        if owner and vmodel.owner != owner:
            raise FailedPrecondition(
                f"vmodel {quoted(vmodel_id)} belongs to owner {quoted(vmodel.owner)}, not {quoted(owner)}"
            )
        await self._store.update_vmodel(vmodel_id, lambda _: None)
        await self._collect_auto_deleted({vmodel.active_model_id, vmodel.target_model_id})
