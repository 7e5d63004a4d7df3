"""The janitor's chores: each one unit of fleet-wide housekeeping that the elected pod runs each round.

In the order a round runs them:

1. ``DeadPods`` removes copies recorded for pods whose instance record (lease) is gone; a
   copy such a pod left LOADING counts against the model as a crash, and enough crashes
   block it;
2. ``FailureExpiry`` removes load-failure records older than the failure TTL, so those
   models read as not loaded again and load on the next call or pre-load;
3. ``Preloads`` pre-loads models that were evicted while in use and have no copy now into
   idle space (free room, no eviction), most recently evicted first
   (``placement.preload``), a few per round. Models never loaded (``loadNow`` false) or
   unloaded on request stay unloaded;
4. ``CopyScaling`` scales copies (``placement.copies``): from the requests/s and queueing
   delay each pod publishes for its busiest models, adds a copy of a model whose copies
   are too busy and drops an extra one that went cold, within the model's min/max copies;
5. ``TenantCaps`` brings a tenant over its loaded-bytes cap back under it, unloading its
   coldest copies (``placement.quotas``). Each load checks the cap first, but loads of one
   tenant starting on several pods at the same moment can each pass the check.

Every decision is logged with its reason. A chore holds no state between rounds beyond
its settings: any pod can take a round over.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Collection
from dataclasses import replace
from typing import Protocol

from mesh.records import ModelRecord, ModelState
from mesh.registry import ModelStore
from mesh_common.clock import now_ms
from mesh_common.errors import MeshError
from placement.cluster import ClusterView
from placement.copies import CopyChange, CopyPolicy, ModelDemand, plan_copies
from placement.preload import PreloadCandidate, choose_preloads
from placement.quotas import TenantCopy, tenant_victims

log = logging.getLogger(__name__)


class Chore(Protocol):
    """One unit of housekeeping; the janitor runs each once a round, in order, while it leads."""

    async def run(self) -> None: ...


class Copies(Protocol):
    """Carries out copy changes (the pod's ``FleetCopies``)."""

    async def add_copy(self, model_id: str, pod_id: str, *, why: str, deadline: float) -> None: ...
    async def drop_copy(self, model_id: str, pod_id: str, *, why: str, deadline: float) -> None: ...
    def tenant_copies(self, tenants: Collection[str]) -> dict[str, list[TenantCopy]]: ...


class DeadPodForgetter(Protocol):
    async def forget_dead_pods(self) -> int: ...


class DeadPods:
    """Removes the copies recorded for pods whose lease is gone (the manager does the accounting)."""

    def __init__(self, manager: DeadPodForgetter) -> None:
        self._manager = manager

    async def run(self) -> None:
        cleaned = await self._manager.forget_dead_pods()
        if cleaned:
            log.info("janitor: removed %d copies recorded for pods whose lease is gone", cleaned)


class FailureExpiry:
    """Drops load failures older than ``failure_ttl_s`` (seconds)."""

    def __init__(self, store: ModelStore, *, failure_ttl_s: float) -> None:
        self._store = store
        self._failure_ttl_ms = int(failure_ttl_s * 1000)

    async def run(self) -> None:
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


class Preloads:
    """Loads up to ``per_round`` evicted-while-used models with no copy into idle space."""

    def __init__(
        self,
        store: ModelStore,
        *,
        view: Callable[[], ClusterView],
        load: Callable[[str, float], Awaitable[None]],
        per_round: int,
        load_timeout_s: float,
    ) -> None:
        self._store = store
        self._view = view
        self._load = load
        self._per_round = per_round
        self._load_timeout_s = load_timeout_s

    async def run(self) -> None:
        if self._per_round <= 0:
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
        for model_id, pod_id in choose_preloads(self._view(), candidates, limit=self._per_round):
            log.info(
                "janitor: pre-loading %s into idle space on %s (used most recently of the unloaded)",
                model_id,
                pod_id,
            )
            try:
                await self._load(model_id, time.monotonic() + self._load_timeout_s)
            except MeshError as exc:
                log.info("janitor: pre-loading %s failed: %s", model_id, exc.message)


class CopyScaling:
    """Adds copies of busy models and drops cold extra ones, ``per_round`` changes at most."""

    def __init__(
        self,
        store: ModelStore,
        *,
        view: Callable[[], ClusterView],
        copies: Copies,
        policy: CopyPolicy,
        per_round: int,
        failure_ttl_s: float,
        load_timeout_s: float,
    ) -> None:
        self._store = store
        self._view = view
        self._copies = copies
        self._policy = policy
        self._per_round = per_round
        self._failure_ttl_ms = int(failure_ttl_s * 1000)
        self._load_timeout_s = load_timeout_s

    async def run(self) -> None:
        if self._per_round <= 0:
            return
        live = self._store.instances()
        rates: dict[str, dict[str, float]] = {}
        queue_ms: dict[str, float] = {}
        for pod_id, instance in live.items():
            for model_id, traffic in instance.hot.items():
                rates.setdefault(model_id, {})[pod_id] = traffic.rate
                queue_ms[model_id] = max(queue_ms.get(model_id, 0.0), traffic.queue_ms)
        now = now_ms()
        demands = [
            demand
            for r in self._store.models()
            if (demand := self._demand(r, live, rates, queue_ms, now)) is not None
        ]
        changes = plan_copies(self._view(), demands, self._policy, limit=self._per_round)
        await asyncio.gather(*(change_copy(self._copies, c, self._load_timeout_s) for c in changes))

    def _demand(
        self,
        r: ModelRecord,
        live: Collection[str],
        rates: dict[str, dict[str, float]],
        queue_ms: dict[str, float],
        now: int,
    ) -> ModelDemand | None:
        """What ``r``'s copies see of demand, or None when there is nothing to decide for it."""
        loaded = {p: c.since_ms for p, c in r.copies.items() if c.state is ModelState.LOADED and p in live}
        if r.blocked:
            return None  # it killed pods that loaded it: never a new copy
        if not loaded or (len(loaded) == 1 and r.model_id not in rates and r.min_copies <= 1):
            return None  # not loaded, or one idle copy of a model that wants no more: nothing to decide
        return ModelDemand(
            model_id=r.model_id,
            model_type=r.info.type,
            size_bytes=r.size_bytes,
            loaded=loaded,
            loading=frozenset(p for p, c in r.copies.items() if c.state is ModelState.LOADING and p in live),
            failed_on=frozenset(r.recent_failures(now_ms=now, failure_ttl_ms=self._failure_ttl_ms)),
            rates=rates.get(r.model_id, {}),
            queue_ms=queue_ms.get(r.model_id, 0.0),
            min_copies=r.min_copies,
            max_copies=r.max_copies,
        )


class TenantCaps:
    """Unloads the coldest copies of a tenant over its loaded-bytes cap until it is under."""

    def __init__(self, store: ModelStore, *, copies: Copies, load_timeout_s: float) -> None:
        self._store = store
        self._copies = copies
        self._load_timeout_s = load_timeout_s

    async def run(self) -> None:
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
                    change_copy(
                        self._copies,
                        CopyChange(c.model_id, c.pod_id, add=False, reason=reason),
                        self._load_timeout_s,
                    )
                    for c in victims
                )
            )


async def change_copy(copies: Copies, change: CopyChange, load_timeout_s: float) -> None:
    """Carry out one copy change within ``load_timeout_s``; a failure is logged, never raised."""
    deadline = time.monotonic() + load_timeout_s
    verb = "adding a copy of" if change.add else "dropping the copy of"
    log.info("janitor: %s %s on %s: %s", verb, change.model_id, change.pod_id, change.reason)
    try:
        if change.add:
            why = f"added by the janitor: {change.reason}"
            await copies.add_copy(change.model_id, change.pod_id, why=why, deadline=deadline)
        else:
            why = f"copy dropped by the janitor: {change.reason}"
            await copies.drop_copy(change.model_id, change.pod_id, why=why, deadline=deadline)
    except MeshError as exc:
        log.info("janitor: %s %s on %s failed: %s", verb, change.model_id, change.pod_id, exc.message)
