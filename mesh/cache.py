"""The pod's local model cache: bounded in bytes, single-flight loads, eviction of idle models.

Invariants:
- Bytes: ``used_bytes`` never exceeds ``capacity_bytes``, and a model serving a call or loading
  is never evicted (``mesh.cache_room`` keeps the room and chooses what to evict).
- Concurrent requests for one unloaded model share one load.
- At most ``load_concurrency`` loads run at once; each step (waiting for room, the trial,
  the load) has the load timeout. A format's first load imports its framework on a load thread
  first, counted in no load's time (``mesh.adapter_imports``).
- An artifact whose loading runs code (pickle) is loaded in a worker process first
  (``Probe``), in the room reserved for it and within a timeout of its own (the pod's own
  load then has its full timeout). The worker ends before the pod loads the model, so the
  model's bytes are held once at a time; only the worker's own footprint (its interpreter,
  tens of MiB, one per load in flight) is outside ``used_bytes``.

The cache knows nothing of the registry: it reports loads, failures and evictions
to a ``CacheListener``.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import Executor
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from adapters import LoadedModel, ModelAdapter, adapter_for
from adapters.artifacts import artifact_bytes
from mesh.adapter_imports import AdapterImports
from mesh.cache_room import CacheEntry, CacheRoom
from mesh.records import ModelRecord
from mesh.working_set import WorkingSet
from mesh_common.errors import (
    Busy,
    CapacityExceeded,
    MeshError,
    ModelLoadFailed,
    QuotaExceeded,
    Unavailable,
    quoted,
)
from placement.eviction import EvictionPolicy
from puller import FetcherTable

log = logging.getLogger(__name__)

_RELOADS = 3

Admit = Callable[[ModelRecord, int], Awaitable[None]]
"""Called before a load reserves room, with the record and predicted size; may make room elsewhere
(a tenant over its cap unloads its own models) or refuse with ``QuotaExceeded``."""


class Probe(Protocol):
    """Loads an artifact in a worker process before the pod does (``adapters.probe.LoadProbe``)."""

    def check(self, model_id: str, adapter: ModelAdapter, path: Path, *, timeout_s: float) -> None: ...


class CacheListener(Protocol):
    async def loading(self, model_id: str) -> None: ...
    async def loaded(self, model_id: str, size_bytes: int, load_seconds: float) -> None: ...
    async def failed(self, model_id: str, error: MeshError) -> None: ...
    async def refused(self, model_id: str, error: MeshError) -> None: ...
    async def unloaded(self, model_id: str, *, evicted: bool, reason: str = "") -> None: ...


@dataclass(frozen=True)
class CachedModel:
    model_id: str
    size_bytes: int
    last_used: float
    in_use: int
    loaded: bool


class ModelCache:
    """Owns this pod's loaded models: holds them for calls, loads them single-flight, unloads."""

    def __init__(
        self,
        *,
        capacity_bytes: int,
        fetchers: FetcherTable,
        executor: Executor,
        listener: CacheListener,
        load_concurrency: int = 2,
        load_timeout_s: float = 120.0,
        clock: Callable[[], float] = time.monotonic,
        adapters: Callable[[str], ModelAdapter] = adapter_for,
        eviction_policy: EvictionPolicy = EvictionPolicy.GDSF,
        admit: Admit | None = None,
        held_elsewhere: Callable[[list[str]], set[str]] | None = None,
        probe: Probe | None = None,
        working_set: WorkingSet | None = None,
    ) -> None:
        self.capacity_bytes = capacity_bytes
        self._fetchers = fetchers
        self._executor = executor
        self._listener = listener
        self._load_slots = asyncio.Semaphore(load_concurrency)
        self._load_timeout_s = load_timeout_s
        self._clock = clock
        self._adapters = AdapterImports(adapters, executor)
        self._room = CacheRoom(
            capacity_bytes=capacity_bytes,
            executor=executor,
            listener=listener,
            clock=clock,
            policy=eviction_policy,
            held_elsewhere=held_elsewhere,
            working_set=working_set,
        )
        self._entries = self._room.entries
        self._loads: dict[str, asyncio.Task[CacheEntry]] = {}
        self._load_waiters: dict[asyncio.Task[CacheEntry], int] = {}
        """Callers awaiting each load task (by task: a reload after an unload is another task)."""
        self._admit = admit
        self._probe = probe
        """Tries artifacts whose loading runs code (``runs_code_on_load``) outside the pod first."""

    # queries

    @property
    def used_bytes(self) -> int:
        """Loaded sizes plus reservations for loads in flight: never above ``capacity_bytes``."""
        return self._room.used_bytes

    def models(self) -> list[CachedModel]:
        return [
            CachedModel(e.model_id, e.size_bytes, e.last_used, e.in_use, e.model is not None)
            for e in sorted(self._entries.values(), key=lambda e: e.model_id)
        ]

    def loaded(self, model_id: str) -> LoadedModel | None:
        entry = self._entries.get(model_id)
        return entry.model if entry else None

    def loading(self, model_id: str) -> bool:
        return model_id in self._loads

    @property
    def loads_in_flight(self) -> int:
        return len(self._loads)

    @property
    def loads_waiting_for_room(self) -> int:
        """Loads parked until a model that is serving goes idle and can be evicted."""
        return self._room.loads_waiting

    @property
    def waiting_for_room(self) -> dict[str, int]:
        """Model id -> predicted bytes, for each load waiting for a serving model to go idle."""
        return self._room.waiting

    def next_victim_age_s(self) -> float | None:
        """Seconds since the idle model the eviction policy would evict next was last used (None: no
        idle model). Published so placement sends loads to the pod whose next victim is coldest."""
        return self._room.next_victim_age_s()

    # use

    def hold_loaded(self, model_id: str) -> CacheEntry | None:
        """Hold a loaded model for a call without waiting (None: not loaded, ``await hold``).
        On every call's path: no coroutine when the model is loaded."""
        entry = self._entries.get(model_id)
        if entry is None or entry.model is None:
            return None
        self._held(entry)
        return entry

    async def hold(self, record: ModelRecord) -> CacheEntry:
        """Hold the model for a call, loading it first if needed; ``let_go`` when the call ends."""
        entry = self.hold_loaded(record.model_id)
        if entry is None:
            entry = await self._loaded_entry(record)
            self._held(entry)
        return entry

    def _held(self, entry: CacheEntry) -> None:
        entry.in_use += 1
        entry.last_used = self._clock()
        self._room.touch(entry)

    def let_go(self, entry: CacheEntry) -> None:
        entry.in_use -= 1
        entry.last_used = self._clock()
        if entry.in_use == 0:
            self._room.wake()

    async def ensure_loaded(self, record: ModelRecord) -> LoadedModel:
        entry = await self._loaded_entry(record)
        assert entry.model is not None
        return entry.model

    async def unload(self, model_id: str, *, grace_s: float = 5.0, reason: str = "") -> bool:
        """Unload a model once its in-flight requests finish (waiting up to ``grace_s``); ``reason``
        (who asked, and why) goes to the listener with the unload."""
        load = self._loads.get(model_id)
        if load is not None:
            with contextlib.suppress(Exception):
                await asyncio.shield(load)
        entry = self._entries.get(model_id)
        if entry is None or entry.model is None:
            return False
        deadline = self._clock() + grace_s
        while entry.in_use and self._clock() < deadline:
            await self._room.wait_idle(deadline)
        if self._entries.get(model_id) is not entry:
            return False
        del self._entries[model_id]
        await self._room.release(entry, evicted=False, reason=reason)
        return True

    async def cancel_loads(self) -> None:
        """Cancel the loads in flight and wait until each has dropped its claim (the pod is stopping:
        a claim left LOADING would count as a crash against its model)."""
        tasks = list(self._loads.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def close(self) -> None:
        await self.cancel_loads()
        for model_id in list(self._entries):
            entry = self._entries.pop(model_id)
            if entry.model is not None:
                await self._room.release(entry, evicted=False)

    # loading

    async def _loaded_entry(self, record: ModelRecord) -> CacheEntry:
        """The model's loaded entry; a load that was evicted before its waiter ran is redone."""
        for _ in range(_RELOADS):
            entry = self._entries.get(record.model_id)
            if entry is None or entry.model is None:
                entry = await self._load_shared(record)
            if entry.model is not None and self._entries.get(record.model_id) is entry:
                return entry
        raise Busy(
            f"model {quoted(record.model_id)} was evicted {_RELOADS} times before it could serve: "
            "the pod is over-committed; retry later",
            model_id=record.model_id,
        )

    async def _load_shared(self, record: ModelRecord) -> CacheEntry:
        model_id = record.model_id
        task = self._loads.get(model_id)
        if task is None:
            task = asyncio.create_task(self._load(record), name=f"load:{model_id}")
            self._loads[model_id] = task
            task.add_done_callback(functools.partial(self._load_done, model_id))
        self._load_waiters[task] = self._load_waiters.get(task, 0) + 1
        try:
            return await asyncio.shield(task)
        finally:
            left = self._load_waiters[task] - 1
            if left:
                self._load_waiters[task] = left
            else:
                del self._load_waiters[task]
                if task.done():  # the last caller has the model: the load's hold goes
                    self._let_go_of_load(task)

    def _load_done(self, model_id: str, task: asyncio.Task[CacheEntry]) -> None:
        self._loads.pop(model_id, None)
        if task not in self._load_waiters:  # every caller gave up before it finished
            self._let_go_of_load(task)

    def _let_go_of_load(self, task: asyncio.Task[CacheEntry]) -> None:
        if not task.cancelled() and task.exception() is None:
            self.let_go(task.result())

    async def _load(self, record: ModelRecord) -> CacheEntry:
        """Every way out but a load drops the claim a router may have written before it (``refused``
        or ``failed``): one left LOADING would count as a crash once this pod's lease ends. Waiting
        for a load slot is inside: a stopping pod cancels queued loads too."""
        model_id = record.model_id
        try:
            adapter = await self._adapters.adapter(record.info.type)
            async with self._load_slots:
                await self._listener.loading(model_id)
                started = self._clock()
                entry = await self._fetch_and_load(record, adapter)
        except (QuotaExceeded, Busy) as exc:  # refused for now, not failed: no failure record
            await self._listener.refused(model_id, exc)
            raise
        except asyncio.CancelledError:  # the pod is stopping: not the model's fault
            await self._listener.refused(model_id, Unavailable("the pod is stopping"))
            raise
        except MeshError as exc:
            await self._listener.failed(model_id, exc)
            raise
        except Exception as exc:
            error = ModelLoadFailed(model_id=model_id, reason=f"{type(exc).__name__}: {exc}")
            await self._listener.failed(model_id, error)
            raise error from exc
        seconds = self._clock() - started
        device = entry.model.device if entry.model is not None else "?"
        log.info("loaded %s on %s: %d bytes in %.3fs", model_id, device, entry.size_bytes, seconds)
        # Held for the load's callers until they have it (``_load_shared`` lets go): idle, a model
        # whose callers have not resumed yet is another load's likeliest victim (GDSF ranks it by
        # one hit), and the listener's registry write leaves milliseconds for that. Not a hit.
        entry.in_use += 1
        try:
            await self._listener.loaded(model_id, entry.size_bytes, seconds)
        except BaseException:
            self.let_go(entry)
            raise
        return entry

    async def _fetch_and_load(self, record: ModelRecord, adapter: ModelAdapter) -> CacheEntry:
        started = self._clock()
        artifact = await self._fetchers.fetch(record.info.path, storage=_storage(record))
        fetched_ms = (self._clock() - started) * 1000
        try:
            entry = await self._load_artifact(record, adapter, artifact.path)
        except BaseException:
            artifact.release()
            raise
        artifact.loaded()
        entry.artifact = artifact
        entry.load_ms += fetched_ms
        self._room.touch(entry, hits=0)
        return entry

    async def _load_artifact(self, record: ModelRecord, adapter: ModelAdapter, path: Path) -> CacheEntry:
        model_id = record.model_id
        raw, predicted = await asyncio.get_running_loop().run_in_executor(
            self._executor, lambda: (artifact_bytes(path), adapter.predict_size(path))
        )
        if raw > self.capacity_bytes or record.size_bytes > self.capacity_bytes:
            size = max(raw, record.size_bytes)
            raise CapacityExceeded(model_id=model_id, size_bytes=size, capacity_bytes=self.capacity_bytes)
        predicted = min(max(predicted, record.size_bytes), self.capacity_bytes)
        if self._admit is not None:
            await self._admit(record, predicted)
        entry = await self._room.reserve(model_id, predicted, self._clock() + self._load_timeout_s)
        try:
            if self._probe is not None and adapter.runs_code_on_load:
                await self._try_outside(model_id, adapter, path)
            started = self._clock()
            async with asyncio.timeout(self._load_timeout_s):
                model = await asyncio.get_running_loop().run_in_executor(self._executor, adapter.load, path)
            entry.load_ms = (self._clock() - started) * 1000
        except TimeoutError:
            self._room.drop(entry)
            raise self._timed_out(model_id) from None
        except BaseException:
            self._room.drop(entry)
            raise
        try:
            await self._room.settle(entry, model)
        except BaseException:
            self._room.drop(entry)
            await asyncio.get_running_loop().run_in_executor(self._executor, model.unload)
            raise
        return entry

    async def _try_outside(self, model_id: str, adapter: ModelAdapter, path: Path) -> None:
        """Load the artifact in a worker process first: one that kills its loader fails here
        (``LoaderCrashed``) instead of killing the pod. In the room reserved for the model (the
        worker holds what the pod will), within a timeout of its own; the worker has ended, its
        memory given back, when this returns."""
        assert self._probe is not None
        check = functools.partial(self._probe.check, model_id, adapter, path, timeout_s=self._load_timeout_s)
        try:
            await asyncio.get_running_loop().run_in_executor(self._executor, check)
        except TimeoutError:
            raise self._timed_out(model_id) from None

    def _timed_out(self, model_id: str) -> Unavailable:
        message = f"loading model {quoted(model_id)} timed out after {self._load_timeout_s:g}s"
        return Unavailable(message, model_id=model_id)


def _storage(record: ModelRecord) -> dict[str, object]:
    """The model key's JSON (checked at registration), or nothing."""
    if not record.info.key:
        return {}
    parsed = json.loads(record.info.key)
    return parsed if isinstance(parsed, dict) else {}
