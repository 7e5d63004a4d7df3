"""Typed model and vmodel records over a ``Registry``, read from an in-memory mirror.

The mirror holds every record under the prefix, kept current by a watch, so the
request path never waits on the registry. Writes are compare-and-swap loops;
after a write the store waits until its mirror has seen it (read-your-writes).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import TypeVar

from mesh.errors import Unavailable
from mesh.records import ModelRecord, VModelRecord
from mesh.registry.base import MUST_NOT_EXIST, Registry, RegistryConflict, WatchEvent

log = logging.getLogger(__name__)

R = TypeVar("R", ModelRecord, VModelRecord)
_CAS_ATTEMPTS = 20


class ModelStore:
    def __init__(self, registry: Registry, *, namespace: str = "default") -> None:
        self._registry = registry
        self.prefix = f"/mesh/{namespace}/"
        self._models: dict[str, ModelRecord] = {}
        self._vmodels: dict[str, VModelRecord] = {}
        self._revisions: dict[str, int] = {}
        self._revision = 0
        self._advanced = asyncio.Condition()
        self._watch_task: asyncio.Task[None] | None = None

    # lifecycle

    async def start(self) -> None:
        entries, revision = await self._registry.range(self.prefix)
        for entry in entries:
            self._apply(WatchEvent(entry.key, entry.value, entry.mod_revision))
        self._revision = revision
        self._watch_task = asyncio.create_task(self._follow(), name="registry-mirror")

    async def stop(self) -> None:
        if self._watch_task is not None:
            self._watch_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watch_task

    # reads (mirror only)

    def model(self, model_id: str) -> ModelRecord | None:
        return self._models.get(model_id)

    def vmodel(self, vmodel_id: str) -> VModelRecord | None:
        return self._vmodels.get(vmodel_id)

    def models(self) -> list[ModelRecord]:
        return [self._models[k] for k in sorted(self._models)]

    def vmodels(self) -> list[VModelRecord]:
        return [self._vmodels[k] for k in sorted(self._vmodels)]

    def vmodels_using(self, model_id: str) -> list[str]:
        return sorted(
            v.vmodel_id for v in self._vmodels.values() if model_id in (v.active_model_id, v.target_model_id)
        )

    # writes

    async def create_model(self, record: ModelRecord) -> ModelRecord | None:
        """Create ``record``; returns the existing record instead if the id is taken."""
        return await self._create(self._model_key(record.model_id), record, self._models, record.model_id)

    async def update_model(
        self, model_id: str, change: Callable[[ModelRecord], ModelRecord | None]
    ) -> ModelRecord | None:
        """Apply ``change`` to the current record with CAS; None from ``change`` deletes it.

        Returns the record written (None if deleted or absent).
        """
        return await self._update(self._model_key(model_id), model_id, self._models, change)

    async def delete_model(self, model_id: str) -> None:
        await self._update(self._model_key(model_id), model_id, self._models, lambda _: None)

    async def create_vmodel(self, record: VModelRecord) -> VModelRecord | None:
        return await self._create(self._vmodel_key(record.vmodel_id), record, self._vmodels, record.vmodel_id)

    async def update_vmodel(
        self, vmodel_id: str, change: Callable[[VModelRecord], VModelRecord | None]
    ) -> VModelRecord | None:
        return await self._update(self._vmodel_key(vmodel_id), vmodel_id, self._vmodels, change)

    # internals

    def _model_key(self, model_id: str) -> str:
        return f"{self.prefix}models/{model_id}"

    def _vmodel_key(self, vmodel_id: str) -> str:
        return f"{self.prefix}vmodels/{vmodel_id}"

    async def _create(self, key: str, record: R, mirror: dict[str, R], record_id: str) -> R | None:
        try:
            revision = await self._registry.put(key, record.to_json(), expected_revision=MUST_NOT_EXIST)
        except RegistryConflict:
            await self._sync_key(key)
            return mirror.get(record_id)
        await self._wait_for(revision)
        return None

    async def _update(
        self, key: str, record_id: str, mirror: dict[str, R], change: Callable[[R], R | None]
    ) -> R | None:
        for _ in range(_CAS_ATTEMPTS):
            current = mirror.get(record_id)
            if current is None:
                return None
            updated = change(current)
            if updated == current:
                return current
            try:
                if updated is None:
                    revision = await self._registry.delete(key, expected_revision=self._revisions[key])
                else:
                    revision = await self._registry.put(
                        key, updated.to_json(), expected_revision=self._revisions[key]
                    )
            except RegistryConflict:
                await self._sync_key(key)
                continue
            await self._wait_for(revision)
            return updated
        raise Unavailable(f"registry record {key!r} is changing too fast to update; retry", key=key)

    async def _sync_key(self, key: str) -> None:
        """Bring one key of the mirror up to date after a lost CAS race."""
        entry = await self._registry.get(key)
        if entry is None:
            self._apply(WatchEvent(key, None, 0))
        else:
            self._apply(WatchEvent(key, entry.value, entry.mod_revision))

    async def _wait_for(self, revision: int) -> None:
        async with self._advanced:
            await self._advanced.wait_for(lambda: self._revision >= revision)

    async def _follow(self) -> None:
        async for event in self._registry.watch(self.prefix, after_revision=self._revision):
            self._apply(event)
            async with self._advanced:
                self._revision = max(self._revision, event.revision)
                self._advanced.notify_all()

    def _apply(self, event: WatchEvent) -> None:
        kind, _, record_id = event.key[len(self.prefix) :].partition("/")
        mirror: dict[str, ModelRecord] | dict[str, VModelRecord]
        if kind == "models":
            mirror = self._models
        elif kind == "vmodels":
            mirror = self._vmodels
        else:
            return
        if event.value is None:
            mirror.pop(record_id, None)
            self._revisions.pop(event.key, None)
            return
        current = self._revisions.get(event.key, -1)
        if event.revision and event.revision < current:
            return  # a stale event after a fresher direct read
        try:
            if kind == "models":
                self._models[record_id] = ModelRecord.from_json(event.value)
            else:
                self._vmodels[record_id] = VModelRecord.from_json(event.value)
        except (ValueError, KeyError, TypeError) as exc:
            log.error("ignoring unreadable registry record %s: %s", event.key, exc)
            return
        self._revisions[event.key] = event.revision
