"""What the pod does with its cache's reports: counts them (metrics, ``mesh status``), records
this pod's copies in the registry through the manager, and repairs that record when the
registry missed a write or the pod rejoined the fleet.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter

from mesh.heap import HeapFreezer
from mesh.management import ModelManager
from mesh.metrics import MeshMetrics
from mesh.records import LOADED, Mine
from mesh.registry import ModelStore
from mesh_common.errors import MeshError


class CacheEvents:
    """The cache's listener: counts each event, forwards it to the manager (which records the
    copy in the registry), then sets ``changed`` (shared with the publisher: the pod changed)."""

    manager: ModelManager
    """Set once the manager exists: the manager needs the cache, which needs these events."""

    def __init__(self, metrics: MeshMetrics, heap: HeapFreezer, changed: asyncio.Event) -> None:
        self.metrics = metrics
        self.heap = heap
        self.counts: Counter[str] = Counter()
        self._changed = changed

    async def loading(self, model_id: str) -> None:
        await self.manager.loading(model_id)
        self._changed.set()

    async def loaded(self, model_id: str, size_bytes: int, load_seconds: float) -> None:
        self.counts["loads"] += 1
        self.metrics.loads.labels("ok").inc()
        self.metrics.load_seconds.observe(load_seconds)
        await self.manager.loaded(model_id, size_bytes, load_seconds)
        self.heap.settle()  # a load may have imported its framework: long-lived from now on
        self._changed.set()

    async def failed(self, model_id: str, error: MeshError) -> None:
        self.counts["load_failures"] += 1
        self.metrics.loads.labels("failed").inc()
        await self.manager.failed(model_id, error)
        self._changed.set()

    async def refused(self, model_id: str, error: MeshError) -> None:
        await self.manager.refused(model_id, error)
        self._changed.set()

    async def unloaded(self, model_id: str, *, evicted: bool, reason: str = "") -> None:
        self.counts["evictions" if evicted else "unloads"] += 1
        (self.metrics.evictions if evicted else self.metrics.unloads).inc()
        await self.manager.unloaded(model_id, evicted=evicted, reason=reason)
        self._changed.set()

    def snapshot(self) -> dict[str, int]:
        return {k: self.counts[k] for k in ("loads", "load_failures", "evictions", "unloads")}


class LoadedElsewhere:
    """The cache's ``held_elsewhere``: which models another live pod has loaded (from the mirror)."""

    def __init__(self, store: ModelStore, pod_id: str) -> None:
        self._store = store
        self._pod_id = pod_id

    def __call__(self, model_ids: list[str]) -> set[str]:
        live = self._store.instances()
        found = set()
        for model_id in model_ids:
            record = self._store.model(model_id)
            if record is not None and record.counted_copies(
                live, states=LOADED, here=self._pod_id, mine=Mine.NEVER
            ):
                found.add(model_id)
        return found


class CopyRepair:
    """Each second, and at once on rejoining the fleet, writes what the registry missed of this
    pod's copies (a no-op unless it missed some). Its own task: the write let through to try a
    silent etcd waits its timeout, and neither keep-alives nor calls wait for it."""

    def __init__(self, manager: ModelManager) -> None:
        self._manager = manager
        self._now = asyncio.Event()

    def rejoined(self) -> None:
        """The pod rejoined the fleet under a new lease: write its copies back now."""
        self._manager.rejoined()
        self._now.set()

    async def run(self) -> None:
        while True:
            self._now.clear()
            await self._manager.repair_copies()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(1.0):
                    await self._now.wait()
