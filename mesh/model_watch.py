"""A change stream of the models and vmodels this pod's registry mirror holds (``WatchModels``).

A ``ModelWatch`` follows the ``ModelStore`` for as long as it is open (``async with``): it is
subscribed to the mirror then, and only then. ``ModelWatches`` opens them and ends every open one
when the pod stops (a stream that never ended would hold the server's stop for its whole grace).

What a watch keeps per id under its prefix is *that the id is pending*, never a queue of states:
when its consumer asks for the next change, the pending id's state is computed at that moment (its
latest) and sent only if it differs from what this watch last sent for it. So a slow consumer
costs at most one pending entry and one last-sent state per id, and changes to one model that come
close together arrive as one.

A model's state is ``ModelManager.status`` (what ``getModelStatus`` answers) plus counts drawn from
it, and it depends on more than the model's record: copies count only on live pods (an instance
record appearing or vanishing changes the models holding copies there), and failures expire with
time (the watch wakes when the earliest failure it sent expires).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Protocol

from mesh.model_status import ModelStatus
from mesh.records import ModelState, VModelRecord
from mesh.registry import ModelStore
from mesh_common.clock import now_ms

MODELS, VMODELS, INSTANCES = "models", "vmodels", "instances"
"""The mirror's kinds a watch follows (``ModelStore`` listener kinds)."""


@dataclass(frozen=True)
class LoadFailure:
    pod_id: str
    reason: str
    time_ms: int
    """Milliseconds since the epoch."""


@dataclass(frozen=True)
class ModelView:
    """One model as a watch reports it."""

    model_id: str
    type: str
    tenant: str
    status: ModelState
    loaded_copies: int
    """Copies LOADED on live pods."""
    loading_copies: int
    """Copies LOADING on live pods."""
    failures: tuple[LoadFailure, ...]
    """Pods whose recent load of it failed (not expired yet), newest first."""
    blocked: bool
    size_bytes: int


@dataclass(frozen=True)
class VModelView:
    vmodel_id: str
    active_model_id: str
    target_model_id: str
    owner: str


@dataclass(frozen=True)
class ModelChange:
    """One message of the stream: exactly one of its fields is set."""

    model: ModelView | None = None
    vmodel: VModelView | None = None
    deleted_model_id: str = ""
    deleted_vmodel_id: str = ""
    synced: bool = False
    """The initial snapshot is complete."""


SYNCED = ModelChange(synced=True)


class StatusSource(Protocol):
    def status(self, model_id: str) -> ModelStatus: ...


def vmodel_view(record: VModelRecord) -> VModelView:
    return VModelView(record.vmodel_id, record.active_model_id, record.target_model_id, record.owner)


class ModelWatch:
    """Changes of the models and vmodels whose ids start with ``prefix``: ``changes()`` gives the
    snapshot, then ``SYNCED``, then each change, until the consumer stops iterating."""

    def __init__(
        self,
        store: ModelStore,
        statuses: StatusSource,
        prefix: str,
        *,
        clock_ms: Callable[[], int] = now_ms,
    ) -> None:
        self._store = store
        self._statuses = statuses
        self._prefix = prefix
        self._clock_ms = clock_ms
        self._pending: dict[tuple[str, str], None] = {}
        """(kind, id) whose state may have changed since it was last sent, oldest first."""
        self._wake = asyncio.Event()
        self._sent_models: dict[str, ModelView] = {}
        self._sent_vmodels: dict[str, VModelView] = {}
        self._expiring: dict[str, int] = {}
        """Model id -> when its sent state changes by time alone (a failure expiring), ``clock_ms``."""
        self._live: set[str] = set()
        self._open = False
        self._ended = False

    async def __aenter__(self) -> ModelWatch:
        self._live = set(self._store.instances())
        self._store.subscribe(self._on_change)
        self._open = True
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._store.unsubscribe(self._on_change)
        self._open = False

    def end(self) -> None:
        """Make ``changes()`` stop after the change it is on (the pod is stopping)."""
        self._ended = True
        self._wake.set()

    async def changes(self) -> AsyncIterator[ModelChange]:
        """The snapshot (every id under the prefix, models then vmodels, each sorted), ``SYNCED``,
        then the changes as they happen. Must be iterated inside ``async with``."""
        if not self._open:
            raise RuntimeError("ModelWatch.changes() is iterated only inside `async with` the watch")
        snapshot = [(MODELS, r.model_id) for r in self._store.models() if r.model_id.startswith(self._prefix)]
        snapshot += [
            (VMODELS, v.vmodel_id) for v in self._store.vmodels() if v.vmodel_id.startswith(self._prefix)
        ]
        for key in snapshot:
            if self._ended:
                return
            self._pending.pop(key, None)
            change = self._resolve(*key)
            if change is not None:
                yield change
        yield SYNCED
        while not self._ended:
            while self._pending and not self._ended:
                key = next(iter(self._pending))
                del self._pending[key]
                change = self._resolve(*key)
                if change is not None:
                    yield change
            await self._wait()

    async def _wait(self) -> None:
        """Until an id is pending (a change of the mirror, or a sent failure expiring) or the watch
        ends. ``end()`` may have come while the consumer held the last change: its wake-up is not
        cleared away unseen."""
        self._wake.clear()
        delay = self._expire()
        if self._pending or self._ended:
            return
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(delay):
                await self._wake.wait()
        self._expire()

    def _expire(self) -> float | None:
        """Marks pending the models whose sent failures expired; returns the seconds until the next
        one does (None: none will)."""
        if not self._expiring:
            return None
        now = self._clock_ms()
        for model_id in [m for m, at in self._expiring.items() if at <= now]:
            del self._expiring[model_id]
            self._pending[(MODELS, model_id)] = None
        return max(0.0, (min(self._expiring.values()) - now) / 1000) if self._expiring else None

    def _resolve(self, kind: str, record_id: str) -> ModelChange | None:
        """The change to send for one id now, or None when its state is what was last sent."""
        if kind == MODELS:
            return self._resolve_model(record_id)
        record = self._store.vmodel(record_id)
        if record is None:
            gone = self._sent_vmodels.pop(record_id, None)
            return ModelChange(deleted_vmodel_id=record_id) if gone is not None else None
        view = vmodel_view(record)
        if self._sent_vmodels.get(record_id) == view:
            return None
        self._sent_vmodels[record_id] = view
        return ModelChange(vmodel=view)

    def _resolve_model(self, model_id: str) -> ModelChange | None:
        record = self._store.model(model_id)
        if record is None:
            self._expiring.pop(model_id, None)
            gone = self._sent_models.pop(model_id, None)
            return ModelChange(deleted_model_id=model_id) if gone is not None else None
        status = self._statuses.status(model_id)
        live = [c.state for c in status.copies]  # LOADING_FAILED entries are not copies
        failures = sorted(status.failures.items(), key=lambda item: item[1].time_ms, reverse=True)
        view = ModelView(
            model_id=model_id,
            type=record.info.type,
            tenant=record.tenant,
            status=status.state,
            loaded_copies=live.count(ModelState.LOADED),
            loading_copies=live.count(ModelState.LOADING),
            failures=tuple(LoadFailure(pod, f.reason, f.time_ms) for pod, f in failures),
            blocked=status.blocked,
            size_bytes=record.size_bytes,
        )
        if status.changes_at_ms:
            self._expiring[model_id] = status.changes_at_ms
        else:
            self._expiring.pop(model_id, None)
        if self._sent_models.get(model_id) == view:
            return None
        self._sent_models[model_id] = view
        return ModelChange(model=view)

    def _on_change(self, kind: str, record_id: str, record: Any) -> None:
        """The store's listener: runs inside the mirror's update, so it only marks ids pending."""
        if kind in (MODELS, VMODELS):
            if record_id.startswith(self._prefix):
                self._mark(kind, record_id)
        elif kind == INSTANCES:
            self._pod_changed(record_id, live=record is not None)

    def _pod_changed(self, pod_id: str, *, live: bool) -> None:
        """A pod's instance record appeared or vanished: its copies count, or stop counting."""
        if live == (pod_id in self._live):
            return  # a republication: liveness, and so every state, is unchanged
        if live:
            self._live.add(pod_id)
        else:
            self._live.discard(pod_id)
        for record in self._store.models():
            if pod_id in record.copies and record.model_id.startswith(self._prefix):
                self._mark(MODELS, record.model_id)

    def _mark(self, kind: str, record_id: str) -> None:
        self._pending[(kind, record_id)] = None
        self._wake.set()


class ModelWatches:
    """Opens the pod's watches and ends them all when it stops (``end_all``)."""

    def __init__(self, store: ModelStore, statuses: StatusSource) -> None:
        self._store = store
        self._statuses = statuses
        self._open: set[ModelWatch] = set()
        self._ending = False

    @property
    def open_count(self) -> int:
        """Watches open now (each stream being served holds one)."""
        return len(self._open)

    @contextlib.asynccontextmanager
    async def watch(self, prefix: str) -> AsyncIterator[ModelWatch]:
        """An open ``ModelWatch`` of the ids starting with ``prefix``; closed (unsubscribed) on exit."""
        async with ModelWatch(self._store, self._statuses, prefix) as watch:
            self._open.add(watch)
            if self._ending:
                watch.end()
            try:
                yield watch
            finally:
                self._open.discard(watch)

    def end_all(self) -> None:
        """End every open watch, and each opened from now on, at its next change."""
        self._ending = True
        for watch in self._open:
            watch.end()
