"""The room in a pod's model cache: which models it holds, the bytes they take, and eviction.

Invariants (``ModelCache`` relies on them):
- ``used_bytes`` (loaded sizes plus reservations for loads in flight) never exceeds
  ``capacity_bytes``: a load reserves its predicted size (``reserve``) and settles on the
  adapter's measured size (``settle``), evicting idle models as the policy ranks them.
- A model serving a call (``in_use`` > 0) or loading is never evicted; a load that finds no idle
  model to evict waits for one to go idle, until its deadline.
- Every model that leaves (evicted or unloaded) is released: its artifact handed back, the
  adapter's ``unload`` run on the load threads, the listener told.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Protocol

from adapters import LoadedModel
from mesh.working_set import WorkingSet
from mesh_common.errors import Busy, CapacityExceeded, quoted
from placement.eviction import EvictionCandidate, EvictionPolicy, choose_victims, gdsf_priority
from puller import Artifact

log = logging.getLogger(__name__)


class Unloaded(Protocol):
    async def unloaded(self, model_id: str, *, evicted: bool, reason: str = "") -> None: ...


@dataclass
class CacheEntry:
    """A model the cache holds, or the room reserved for one loading (``model`` is None)."""

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


class CacheRoom:
    """Owns the cache's entries and their bytes; chooses and releases what to evict."""

    def __init__(
        self,
        *,
        capacity_bytes: int,
        executor: Executor,
        listener: Unloaded,
        clock: Callable[[], float],
        policy: EvictionPolicy,
        held_elsewhere: Callable[[list[str]], set[str]] | None,
        working_set: WorkingSet | None,
    ) -> None:
        self.capacity_bytes = capacity_bytes
        self.entries: dict[str, CacheEntry] = {}
        self._executor = executor
        self._listener = listener
        self._clock = clock
        self._policy = policy
        self._held_elsewhere = held_elsewhere
        """Which of the given models other live pods hold too (their copies here go first)."""
        self._working_set = working_set
        """Told of each eviction, for the cache pressure (``mesh.working_set``)."""
        self._idle = asyncio.Event()
        self.loads_waiting = 0
        """Loads parked until a model that is serving goes idle and can be evicted."""
        self.waiting: dict[str, int] = {}
        """Model id -> predicted bytes, for each load waiting for a serving model to go idle (one
        load per model at a time)."""
        self._inflation = 0.0
        """GDSF's L: the highest priority evicted so far."""

    @property
    def used_bytes(self) -> int:
        return sum(entry.size_bytes for entry in self.entries.values())

    def next_victim_age_s(self) -> float | None:
        """Seconds since the idle model the eviction policy would evict next was last used (None: no
        idle model). Published so placement sends loads to the pod whose next victim is coldest."""
        idle = [e for e in self.entries.values() if e.model is not None and not e.in_use]
        if not idle:
            return None
        if self._policy is EvictionPolicy.GDSF:
            victim = min(idle, key=lambda e: e.priority)
        else:
            victim = min(idle, key=lambda e: e.last_used)
        return self._clock() - victim.last_used

    def touch(self, entry: CacheEntry, *, hits: int = 1) -> None:
        """Count ``hits`` uses and refresh the entry's GDSF priority."""
        entry.hits += hits
        entry.priority = gdsf_priority(
            self._inflation, hits=max(entry.hits, 1), load_ms=entry.load_ms, size_bytes=entry.size_bytes
        )

    def wake(self) -> None:
        """A model went idle, or bytes were freed: loads waiting for room look again."""
        self._idle.set()

    async def reserve(self, model_id: str, size: int, deadline: float) -> CacheEntry:
        """Evict idle models until ``size`` fits, then hold the space; waits for busy models."""
        while True:
            victims = choose_victims(
                self._candidates(), self.used_bytes + size - self.capacity_bytes, self._policy
            )
            if victims is not None:
                evicted = self._evict(victims)
                entry = CacheEntry(model_id, size, self._clock())
                self.entries[model_id] = entry
                for victim in evicted:
                    await self.release(victim, evicted=True)
                return entry
            if self._clock() >= deadline:
                raise Busy(
                    f"no room for model {quoted(model_id)} ({size} bytes): every loaded model is serving "
                    f"requests ({self.used_bytes} of {self.capacity_bytes} bytes in use); retry later",
                    model_id=model_id,
                )
            self.loads_waiting += 1
            self.waiting[model_id] = size
            try:
                await self.wait_idle(deadline)
            finally:
                self.loads_waiting -= 1
                self.waiting.pop(model_id, None)

    async def settle(self, entry: CacheEntry, model: LoadedModel) -> None:
        """Put the loaded ``model`` in its reservation, at its measured size (evicting to fit)."""
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
                await self.release(victim, evicted=True)
        entry.size_bytes = measured
        entry.model = model
        entry.last_used = self._clock()
        self._idle.set()  # a new evictable model, and maybe fewer bytes than reserved: wake waiters

    def drop(self, entry: CacheEntry) -> None:
        """Give back a reservation whose load failed (a no-op once another entry took its place)."""
        if self.entries.get(entry.model_id) is entry:
            del self.entries[entry.model_id]
            self._idle.set()

    async def release(self, entry: CacheEntry, *, evicted: bool, reason: str = "") -> None:
        """Free an entry already taken out of ``entries``: its artifact, its model, then tell."""
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

    async def wait_idle(self, deadline: float) -> None:
        """Wait until a model goes idle or bytes are freed, or the deadline passes."""
        self._idle.clear()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(max(deadline - self._clock(), 0)):
                await self._idle.wait()

    def _candidates(self) -> list[EvictionCandidate]:
        loaded = [e for e in self.entries.values() if e.model is not None]
        elsewhere = self._held_elsewhere([e.model_id for e in loaded]) if self._held_elsewhere else set()
        return [
            EvictionCandidate(
                e.model_id, e.size_bytes, e.last_used, e.in_use, e.priority, e.model_id in elsewhere
            )
            for e in loaded
        ]

    def _evict(self, victims: list[str]) -> list[CacheEntry]:
        """Take the victims out of the cache (the caller releases them) and raise GDSF's L."""
        evicted = [self.entries.pop(v) for v in victims]
        for entry in evicted:
            self._inflation = max(self._inflation, entry.priority)
        return evicted
