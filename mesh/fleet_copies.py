"""Copies on named pods: one more copy added, one copy dropped (the janitor's hands), and a
tenant's room, kept under its loaded-bytes cap across the fleet.

Before a model of a capped tenant loads here, ``make_tenant_room`` unloads the tenant's own
coldest copies anywhere in the fleet (``placement.quotas`` chooses them) or refuses the load
with ``QuotaExceeded``. A copy dropped on another pod goes through that pod, which records
the reason with the unload in the model's history.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Collection

from mesh.cache import CachedModel, ModelCache
from mesh.edge.hop import Hop, Peers, Route
from mesh.management import ModelManager
from mesh.records import CopyRecord, Mine, ModelRecord, ModelState
from mesh.registry import ModelStore
from mesh.router import Router
from mesh_common.clock import now_ms
from mesh_common.errors import MeshError, QuotaExceeded, Unavailable, quoted
from placement.quotas import TenantCopy, tenant_victims

log = logging.getLogger(__name__)


class FleetCopies:
    """Adds and drops single copies and keeps tenants' room; keeps no state of its own."""

    def __init__(
        self,
        *,
        pod_id: str,
        store: ModelStore,
        manager: ModelManager,
        cache: ModelCache,
        peers: Peers,
        router: Router,
    ) -> None:
        self.pod_id = pod_id
        self._store = store
        self._manager = manager
        self._cache = cache
        self._peers = peers
        self._router = router

    async def add_copy(self, model_id: str, pod_id: str, *, why: str, deadline: float) -> None:
        """Load one more copy of ``model_id`` on ``pod_id`` (other pods may hold it already)."""
        timeout_s = max(deadline - time.monotonic(), 0.001)
        if pod_id == self.pod_id:

            async def local(model_id: str) -> bytes:
                await self._manager.load_here(model_id)
                return b""

            async with asyncio.timeout(timeout_s):
                await self._router.serve_forwarded(model_id, Route.COPY, local, why=why)
            return
        instance = self._store.instance(pod_id)
        if instance is None:
            raise Unavailable(f"pod {pod_id} left the fleet")
        await self._peers.load(instance.endpoint, hop=Hop(model_id, Route.COPY, why=why), timeout_s=timeout_s)

    async def drop_copy(self, model_id: str, pod_id: str, *, why: str, deadline: float) -> None:
        """Unload the copy of ``model_id`` on ``pod_id`` only (after its calls in flight finish); the
        unloading pod records ``why`` with the unload in the model's history."""
        if pod_id == self.pod_id:
            await self._cache.unload(model_id, reason=why)
            return
        instance = self._store.instance(pod_id)
        if instance is None:
            return  # gone, and its copy with it
        timeout_s = max(deadline - time.monotonic(), 0.001)
        await self._peers.unload(instance.endpoint, model_id=model_id, timeout_s=timeout_s, why=why)

    async def make_tenant_room(self, record: ModelRecord, size_bytes: int, *, deadline: float) -> None:
        """Before ``record`` loads here: keep its tenant under its loaded-bytes cap by unloading the
        tenant's own coldest copies anywhere in the fleet (``placement.quotas``), or refuse the load."""
        quota = self._store.tenant(record.tenant)
        if quota is None or not quota.max_loaded_bytes:
            return
        cap = quota.max_loaded_bytes
        tenant = record.tenant
        copies = self.tenant_copies([tenant], loading=record)[tenant]
        victims = tenant_victims(copies, cap_bytes=cap, need_bytes=size_bytes, loading_pod=self.pod_id)
        if victims is None:
            used = sum(c.size_bytes for c in copies)
            raise QuotaExceeded(
                f"tenant {quoted(tenant)} has {used} bytes loaded across the fleet and model "
                f"{quoted(record.model_id)} needs {size_bytes} more; its loaded-bytes cap is {cap} bytes "
                "and no idle model of the tenant can make room",
                tenant=tenant,
                cap="max_loaded_bytes",
            )
        for victim in victims:
            why = (
                f"tenant {quoted(tenant)} at its loaded-bytes cap ({cap} bytes): "
                f"room for {quoted(record.model_id)}"
            )
            log.info("unloading %s from %s: %s", victim.model_id, victim.pod_id, why)
            try:
                await self.drop_copy(victim.model_id, victim.pod_id, why=why, deadline=deadline)
            except MeshError as exc:
                raise Unavailable(
                    f"tenant {quoted(tenant)} is at its loaded-bytes cap and its model "
                    f"{quoted(victim.model_id)} "
                    f"could not be unloaded from {victim.pod_id} to make room: {exc.message}",
                    model_id=record.model_id,
                ) from None

    def tenant_copies(
        self, tenants: Collection[str], *, loading: ModelRecord | None = None
    ) -> dict[str, list[TenantCopy]]:
        """Every live copy of the given tenants' models (but ``loading`` about to load here), by tenant."""
        live = self._store.instances()
        here = {m.model_id: m for m in self._cache.models()}
        copies: dict[str, list[TenantCopy]] = {tenant: [] for tenant in tenants}
        for r in (r for tenant in tenants for r in self._store.models_of(tenant)):
            for pod_id, copy in r.counted_copies(live, here=self.pod_id, mine=Mine.ALWAYS).items():
                if loading is not None and r.model_id == loading.model_id and pod_id == self.pod_id:
                    continue  # the copy about to load here: its room is what is being made
                traffic = live[pod_id].hot.get(r.model_id) if pod_id in live else None
                rate = traffic.rate if traffic is not None else 0.0
                copies[r.tenant].append(self._tenant_copy(r, pod_id, copy, rate, here.get(r.model_id)))
        return copies

    def _tenant_copy(
        self, record: ModelRecord, pod_id: str, copy: CopyRecord, rate: float, cached: CachedModel | None
    ) -> TenantCopy:
        """One copy as the tenant's room sees it: busy while loading or in use; last used as the
        cache here knows it (this pod's copies) or since the copy's record changed (others)."""
        busy = copy.state is ModelState.LOADING
        last_used = copy.since_ms
        if pod_id == self.pod_id:
            busy = busy or cached is None or not cached.loaded or cached.in_use > 0
            if cached is not None:
                last_used = now_ms() - int((time.monotonic() - cached.last_used) * 1000)
        return TenantCopy(record.model_id, pod_id, record.size_bytes, rate, last_used, busy)
