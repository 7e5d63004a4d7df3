"""The pod's local model cache: bounded in bytes, single-flight loads, LRU eviction of idle models.

Invariants:
- ``used_bytes`` (loaded sizes plus reservations for loads in flight) never exceeds
  ``capacity_bytes``. A load reserves its predicted size before it starts and
  settles on the adapter's measured size when it ends.
- A model serving a request (``in_use`` > 0) or loading is never evicted.
- Concurrent requests for one unloaded model share one load.
- At most ``load_concurrency`` loads run at once; each step (waiting for room, the trial,
  the load) has the load timeout.
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
from mesh.records import ModelRecord
from mesh.working_set import WorkingSet
from mesh_common.errors import (
    Busy,
    CapacityExceeded,
    MeshError,
    ModelLoadFailed,
    QuotaExceeded,
    Unavailable,
    UnsupportedModelType,
    quoted,
)
from placement.eviction import EvictionCandidate, EvictionPolicy, choose_victims, gdsf_priority
from puller import Artifact, FetcherTable

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


@dataclass
class _Entry:
    model_id: str
    size_bytes: int
    last_used: float
    model: LoadedModel | None = None
    in_use: int = 0
    artifact: Artifact | None = None
    hits: int = 0
    load_ms: float = 0.0
    """Fetch plus load time measured when it was loaded: what evicting it would cost."""
    priority: float = 0.0
    """GDSF's H, refreshed on every use (see ``placement.eviction``)."""


@dataclass(frozen=True)
class CachedModel:
    model_id: str
    size_bytes: int
    last_used: float
    in_use: int
    loaded: bool


class ModelCache:
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
        self._adapters = adapters
        self._adapter_imports: dict[str, asyncio.Future[ModelAdapter]] = {}
        """Each model type's adapter, resolved once on a load thread (see ``_adapter``)."""
        self._entries: dict[str, _Entry] = {}
        self._loads: dict[str, asyncio.Task[_Entry]] = {}
        self._load_waiters: dict[asyncio.Task[_Entry], int] = {}
        """Callers awaiting each load task (by task: a reload after an unload is another task)."""
        self._idle = asyncio.Event()
        self._waiting_for_room = 0
        self.bytes_waiting_for_room = 0
        """Predicted bytes of the loads waiting for a serving model to go idle."""
        self._working_set = working_set
        """Told of each eviction, for the cache pressure (``mesh.working_set``)."""
        self._policy = eviction_policy
        self._admit = admit
        self._held_elsewhere = held_elsewhere
        """Which of the given models other live pods hold too (their copies here go first)."""
        self._probe = probe
        """Tries artifacts whose loading runs code (``runs_code_on_load``) outside the pod first."""
        self._inflation = 0.0
        """GDSF's L: the highest priority evicted so far."""

    # queries

    @property
    def used_bytes(self) -> int:
        return sum(entry.size_bytes for entry in self._entries.values())

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
        return self._waiting_for_room

    def next_victim_age_s(self) -> float | None:
        """Seconds since the idle model the eviction policy would evict next was last used (None: no
        idle model). Published so placement sends loads to the pod whose next victim is coldest."""
        idle = [e for e in self._entries.values() if e.model is not None and not e.in_use]
        if not idle:
            return None
        if self._policy is EvictionPolicy.GDSF:
            victim = min(idle, key=lambda e: e.priority)
        else:
            victim = min(idle, key=lambda e: e.last_used)
        return self._clock() - victim.last_used

    # use

    def hold_loaded(self, model_id: str) -> _Entry | None:
        """Hold a loaded model for a call without waiting (None: not loaded, ``await hold``).
        On every call's path: no coroutine when the model is loaded."""
        entry = self._entries.get(model_id)
        if entry is None or entry.model is None:
            return None
        self._held(entry)
        return entry

    async def hold(self, record: ModelRecord) -> _Entry:
        """Hold the model for a call, loading it first if needed; ``let_go`` when the call ends."""
        entry = self.hold_loaded(record.model_id)
        if entry is None:
            entry = await self._loaded_entry(record)
            self._held(entry)
        return entry

    def _held(self, entry: _Entry) -> None:
        entry.in_use += 1
        entry.last_used = self._clock()
        self._touch(entry)

    def let_go(self, entry: _Entry) -> None:
        entry.in_use -= 1
        entry.last_used = self._clock()
        if entry.in_use == 0:
            self._idle.set()

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
            await self._wait_idle(deadline)
        if self._entries.get(model_id) is not entry:
            return False
        del self._entries[model_id]
        await self._release(entry, evicted=False, reason=reason)
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
                await self._release(entry, evicted=False)

    # loading

    async def _loaded_entry(self, record: ModelRecord) -> _Entry:
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

    async def _load_shared(self, record: ModelRecord) -> _Entry:
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

    def _load_done(self, model_id: str, task: asyncio.Task[_Entry]) -> None:
        self._loads.pop(model_id, None)
        if task not in self._load_waiters:  # every caller gave up before it finished
            self._let_go_of_load(task)

    def _let_go_of_load(self, task: asyncio.Task[_Entry]) -> None:
        if not task.cancelled() and task.exception() is None:
            self.let_go(task.result())

    async def _load(self, record: ModelRecord) -> _Entry:
        """Every way out but a load drops the claim a router may have written before it (``refused``
        or ``failed``): one left LOADING would count as a crash once this pod's lease ends. Waiting
        for a load slot is inside: a stopping pod cancels queued loads too."""
        model_id = record.model_id
        try:
            adapter = await self._adapter(record.info.type)
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

    async def _adapter(self, model_type: str) -> ModelAdapter:
        """The adapter for ``model_type``. Its first use imports the format's framework (torch: about
        1.4 s): on a load thread, once however many loads wait for it, and before any load's clock
        starts, so the import counts in no model's load time. Later uses cost no thread hop."""
        resolving = self._adapter_imports.get(model_type)
        if resolving is None:
            loop = asyncio.get_running_loop()
            resolving = loop.run_in_executor(self._executor, self._adapters, model_type)
            self._adapter_imports[model_type] = resolving
        elif resolving.done() and not resolving.cancelled() and resolving.exception() is None:
            return resolving.result()
        try:
            return await asyncio.shield(resolving)
        except KeyError:
            raise UnsupportedModelType(model_type=model_type, supported=[]) from None
        except Exception:  # the framework failed to import: a later load tries again
            if self._adapter_imports.get(model_type) is resolving:
                del self._adapter_imports[model_type]
            raise

    async def _fetch_and_load(self, record: ModelRecord, adapter: ModelAdapter) -> _Entry:
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
        self._touch(entry, hits=0)
        return entry

    async def _load_artifact(self, record: ModelRecord, adapter: ModelAdapter, path: Path) -> _Entry:
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
        entry = await self._reserve(model_id, predicted, self._clock() + self._load_timeout_s)
        try:
            if self._probe is not None and adapter.runs_code_on_load:
                await self._try_outside(model_id, adapter, path)
            started = self._clock()
            async with asyncio.timeout(self._load_timeout_s):
                model = await asyncio.get_running_loop().run_in_executor(self._executor, adapter.load, path)
            entry.load_ms = (self._clock() - started) * 1000
        except TimeoutError:
            self._drop(entry)
            raise self._timed_out(model_id) from None
        except BaseException:
            self._drop(entry)
            raise
        try:
            await self._settle(entry, model)
        except BaseException:
            self._drop(entry)
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

    async def _reserve(self, model_id: str, size: int, deadline: float) -> _Entry:
        """Evict idle models until ``size`` fits, then hold the space; waits for busy models."""
        while True:
            victims = choose_victims(
                self._candidates(), self.used_bytes + size - self.capacity_bytes, self._policy
            )
            if victims is not None:
                evicted = self._evict(victims)
                entry = _Entry(model_id, size, self._clock())
                self._entries[model_id] = entry
                for victim in evicted:
                    await self._release(victim, evicted=True)
                return entry
            if self._clock() >= deadline:
                raise Busy(
                    f"no room for model {quoted(model_id)} ({size} bytes): every loaded model is serving "
                    f"requests ({self.used_bytes} of {self.capacity_bytes} bytes in use); retry later",
                    model_id=model_id,
                )
            self._waiting_for_room += 1
            self.bytes_waiting_for_room += size
            try:
                await self._wait_idle(deadline)
            finally:
                self._waiting_for_room -= 1
                self.bytes_waiting_for_room -= size

    async def _settle(self, entry: _Entry, model: LoadedModel) -> None:
        measured = model.size_bytes
        if measured > self.capacity_bytes:
            raise CapacityExceeded(
                model_id=entry.model_id, size_bytes=measured, capacity_bytes=self.capacity_bytes
            )
        if measured > entry.size_bytes:
            victims = choose_victims(
                self._candidates(),
                self.used_bytes - entry.size_bytes + measured - self.capacity_bytes,
                self._policy,
            )
            if victims is None:
                raise Busy(
                    f"model {quoted(entry.model_id)} measured {measured} bytes, more than the "
                    f"{entry.size_bytes} predicted, and no idle model can make room; retry later",
                    model_id=entry.model_id,
                )
            for victim in self._evict(victims):
                await self._release(victim, evicted=True)
        entry.size_bytes = measured
        entry.model = model
        entry.last_used = self._clock()
        self._idle.set()  # a new evictable model, and maybe fewer bytes than reserved: wake waiters

    def _candidates(self) -> list[EvictionCandidate]:
        loaded = [e for e in self._entries.values() if e.model is not None]
        elsewhere = self._held_elsewhere([e.model_id for e in loaded]) if self._held_elsewhere else set()
        return [
            EvictionCandidate(
                e.model_id, e.size_bytes, e.last_used, e.in_use, e.priority, e.model_id in elsewhere
            )
            for e in loaded
        ]

    def _evict(self, victims: list[str]) -> list[_Entry]:
        """Take the victims out of the cache (the caller releases them) and raise GDSF's L."""
        evicted = [self._entries.pop(v) for v in victims]
        for entry in evicted:
            self._inflation = max(self._inflation, entry.priority)
        return evicted

    def _touch(self, entry: _Entry, *, hits: int = 1) -> None:
        entry.hits += hits
        entry.priority = gdsf_priority(
            self._inflation, hits=max(entry.hits, 1), load_ms=entry.load_ms, size_bytes=entry.size_bytes
        )

    def _drop(self, entry: _Entry) -> None:
        if self._entries.get(entry.model_id) is entry:
            del self._entries[entry.model_id]
            self._idle.set()

    async def _release(self, entry: _Entry, *, evicted: bool, reason: str = "") -> None:
        model = entry.model
        entry.model = None
        if entry.artifact is not None:
            entry.artifact.release()
            entry.artifact = None
        self._idle.set()
        if model is not None:
            await asyncio.get_running_loop().run_in_executor(self._executor, model.unload)
        if evicted:
            log.info("evicted %s (%d bytes)", entry.model_id, entry.size_bytes)
            if self._working_set is not None:
                self._working_set.evicted(entry.model_id, entry.size_bytes, entry.last_used)
        await self._listener.unloaded(entry.model_id, evicted=evicted, reason=reason)

    async def _wait_idle(self, deadline: float) -> None:
        self._idle.clear()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(max(deadline - self._clock(), 0)):
                await self._idle.wait()


def _storage(record: ModelRecord) -> dict[str, object]:
    """The model key's JSON (checked at registration), or nothing."""
    if not record.info.key:
        return {}
    parsed = json.loads(record.info.key)
    return parsed if isinstance(parsed, dict) else {}
