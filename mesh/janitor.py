"""Cluster-wide housekeeping, run by one pod at a time.

Election: every pod campaigns for the registry's ``leader`` key, created only if absent
and bound to the campaigning pod's lease. The key vanishes with its pod (lease expiry
after a crash, revocation on a graceful stop), and the next round of another pod takes
it: a hand-over within one lease TTL plus one round.

Each round the leader:

1. removes copies recorded for pods whose instance record (lease) is gone; a copy such a
   pod left LOADING counts against the model as a crash, and enough crashes block it;
2. removes load-failure records older than the failure TTL, so those models read as
   not loaded again and load on the next call or pre-load;
3. pre-loads models that were evicted while in use and have no copy now into idle
   space (free room, no eviction), most recently evicted first (``placement.preload``),
   a few per round. Models never loaded (``loadNow`` false) or unloaded on request stay
   unloaded;
4. scales copies (``placement.copies``): from the requests/s and queueing delay each
   pod publishes for its busiest models, adds a copy of a model whose copies are too
   busy and drops an extra one that went cold, within the model's min/max copies;
5. brings a tenant over its loaded-bytes cap back under it, unloading its coldest
   copies (``placement.quotas``). Each load checks the cap first, but loads of one
   tenant starting on several pods at the same moment can each pass the check.

Every decision is logged with its reason.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Collection
from dataclasses import replace
from typing import Protocol

from mesh.management import ModelManager
from mesh.records import LeaderRecord, ModelRecord, ModelState
from mesh.registry import ModelStore
from mesh_common.clock import now_ms
from mesh_common.errors import MeshError
from placement.cluster import ClusterView
from placement.copies import CopyChange, CopyPolicy, ModelDemand, plan_copies
from placement.preload import PreloadCandidate, choose_preloads
from placement.quotas import TenantCopy, tenant_victims

log = logging.getLogger(__name__)


class Copies(Protocol):
    """Carries out copy changes (the pod's router)."""

    async def add_copy(self, model_id: str, pod_id: str, *, why: str, deadline: float) -> None: ...
    async def drop_copy(self, model_id: str, pod_id: str, *, why: str, deadline: float) -> None: ...
    def tenant_copies(self, tenants: Collection[str]) -> dict[str, list[TenantCopy]]: ...


class Janitor:
    def __init__(
        self,
        *,
        pod_id: str,
        store: ModelStore,
        manager: ModelManager,
        lease: Callable[[], int],
        view: Callable[[], ClusterView],
        load: Callable[[str, float], Awaitable[None]],
        interval_s: float,
        failure_ttl_s: float,
        preloads_per_round: int,
        load_timeout_s: float,
        copies: Copies | None = None,
        copy_policy: CopyPolicy | None = None,
        copies_per_round: int = 0,
        on_round: Callable[[], None] = lambda: None,
    ) -> None:
        self.pod_id = pod_id
        self._store = store
        self._manager = manager
        self._lease = lease
        self._view = view
        self._load = load
        self._interval_s = interval_s
        self._failure_ttl_ms = int(failure_ttl_s * 1000)
        self._preloads = preloads_per_round
        self._load_timeout_s = load_timeout_s
        self._copies = copies
        self._copy_policy = copy_policy or CopyPolicy()
        self._copies_per_round = copies_per_round
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._on_round = on_round
        self.rounds = 0
        """Rounds completed as leader (``mesh status`` shows them: a janitor that leads but whose
        count stands still is stuck)."""

    @property
    def leading(self) -> bool:
        leader = self._store.leader()
        return leader is not None and leader.pod_id == self.pod_id

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="janitor")

    def wake(self) -> None:
        """Something changed (a pod left): run a round now rather than at the next tick."""
        self._wake.set()

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        with contextlib.suppress(MeshError):
            await self._store.resign(self.pod_id)

    async def _run(self) -> None:
        while True:
            try:
                await self.round()
            except MeshError as exc:  # the registry is down: try again next round
                log.warning("janitor round failed: %s", exc)
            except Exception:  # a bug must not end housekeeping for the whole fleet
                log.exception("janitor round failed unexpectedly")
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._interval_s):
                    await self._wake.wait()
            self._wake.clear()

    async def round(self) -> None:
        """Campaign if nobody leads; if this pod leads, do one round of housekeeping."""
        if self._store.leader() is None:
            lease = self._lease()
            if lease and await self._store.campaign(LeaderRecord(self.pod_id, now_ms()), lease=lease):
                log.info("%s runs the janitor now", self.pod_id)
        if not self.leading:
            return
        cleaned = await self._manager.forget_dead_pods()
        if cleaned:
            log.info("janitor: removed %d copies recorded for pods whose lease is gone", cleaned)
        await self._expire_failures()
        await self._preload()
        await self._scale()
        await self._enforce_caps()
        self.rounds += 1
        self._on_round()

    async def _expire_failures(self) -> None:
        now = now_ms()
        for record in self._store.models():
            stale = [p for p, f in record.failures.items() if now - f.time_ms >= self._failure_ttl_ms]
            if not stale:
                continue

            def change(r: ModelRecord, stale: list[str] = stale) -> ModelRecord:
                return replace(r, failures={p: f for p, f in r.failures.items() if p not in stale})

            await self._store.update_model(record.model_id, change)
            log.info(
                "janitor: %s may load again: its load failures on %s expired",
                record.model_id,
                ", ".join(stale),
            )

    async def _preload(self) -> None:
        if self._preloads <= 0:
            return
        live = self._store.instances()
        candidates = [
            PreloadCandidate(r.model_id, r.info.type, r.size_bytes, r.last_used_ms, r.registered_ms)
            for r in self._store.models()
            if not any(
                c.state in (ModelState.LOADED, ModelState.LOADING) and p in live for p, c in r.copies.items()
            )
            and not r.failures
            and not r.blocked
            and r.last_used_ms  # evicted while in use; never one unloaded on request or never loaded
        ]
        for model_id, pod_id in choose_preloads(self._view(), candidates, limit=self._preloads):
            log.info(
                "janitor: pre-loading %s into idle space on %s (used most recently of the unloaded)",
                model_id,
                pod_id,
            )
            try:
                await self._load(model_id, time.monotonic() + self._load_timeout_s)
            except MeshError as exc:
                log.info("janitor: pre-loading %s failed: %s", model_id, exc.message)

    async def _scale(self) -> None:
        if self._copies is None or self._copies_per_round <= 0:
            return
        live = self._store.instances()
        rates: dict[str, dict[str, float]] = {}
        queue_ms: dict[str, float] = {}
        for pod_id, instance in live.items():
            for model_id, traffic in instance.hot.items():
                rates.setdefault(model_id, {})[pod_id] = traffic.rate
                queue_ms[model_id] = max(queue_ms.get(model_id, 0.0), traffic.queue_ms)
        now = now_ms()
        demands = []
        for r in self._store.models():
            loaded = {
                p: c.since_ms for p, c in r.copies.items() if c.state is ModelState.LOADED and p in live
            }
            if r.blocked:
                continue  # it killed pods that loaded it: never a new copy
            if not loaded or (len(loaded) == 1 and r.model_id not in rates and r.min_copies <= 1):
                continue  # not loaded, or one idle copy of a model that wants no more: nothing to decide
            demands.append(
                ModelDemand(
                    model_id=r.model_id,
                    model_type=r.info.type,
                    size_bytes=r.size_bytes,
                    loaded=loaded,
                    loading=frozenset(
                        p for p, c in r.copies.items() if c.state is ModelState.LOADING and p in live
                    ),
                    failed_on=frozenset(r.recent_failures(now_ms=now, failure_ttl_ms=self._failure_ttl_ms)),
                    rates=rates.get(r.model_id, {}),
                    queue_ms=queue_ms.get(r.model_id, 0.0),
                    min_copies=r.min_copies,
                    max_copies=r.max_copies,
                )
            )
        changes = plan_copies(self._view(), demands, self._copy_policy, limit=self._copies_per_round)
        await asyncio.gather(*(self._change_copy(change) for change in changes))

    async def _enforce_caps(self) -> None:
        if self._copies is None:
            return
        caps = {t.tenant: t.max_loaded_bytes for t in self._store.tenants() if t.max_loaded_bytes}
        if not caps:
            return
        for tenant, copies in self._copies.tenant_copies(caps).items():
            cap = caps[tenant]
            victims = tenant_victims(copies, cap_bytes=cap, need_bytes=0, loading_pod="")
            if not victims:  # under the cap, or over it only by loads still running: next round
                continue
            used = sum(c.size_bytes for c in copies)
            reason = f"tenant {tenant!r} has {used} bytes loaded, over its loaded-bytes cap of {cap} bytes"
            await asyncio.gather(
                *(
                    self._change_copy(CopyChange(c.model_id, c.pod_id, add=False, reason=reason))
                    for c in victims
                )
            )

    async def _change_copy(self, change: CopyChange) -> None:
        assert self._copies is not None
        deadline = time.monotonic() + self._load_timeout_s
        verb = "adding a copy of" if change.add else "dropping the copy of"
        log.info("janitor: %s %s on %s: %s", verb, change.model_id, change.pod_id, change.reason)
        try:
            if change.add:
                why = f"added by the janitor: {change.reason}"
                await self._copies.add_copy(change.model_id, change.pod_id, why=why, deadline=deadline)
            else:
                why = f"copy dropped by the janitor: {change.reason}"
                await self._copies.drop_copy(change.model_id, change.pod_id, why=why, deadline=deadline)
        except MeshError as exc:
            log.info("janitor: %s %s on %s failed: %s", verb, change.model_id, change.pod_id, exc.message)
