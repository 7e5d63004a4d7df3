"""The graceful hand-over: before a pod leaves, its most recently used models that no other
pod holds are loaded elsewhere, so their next calls find a copy.

It is bounded: ``run(timeout_s)`` returns within ``timeout_s`` seconds (the chart's grace period
relies on it), cutting the hand-over short; it does nothing when no other pod stays.
"""

from __future__ import annotations

import asyncio
import logging
import time

from mesh.cache import ModelCache
from mesh.management import ModelManager
from mesh.registry import ModelStore
from mesh.router import Router
from mesh_common.errors import MeshError

log = logging.getLogger(__name__)


class HandOver:
    """Hands up to ``models`` of this pod's hot models to the pods that stay."""

    def __init__(
        self,
        *,
        pod_id: str,
        models: int,
        store: ModelStore,
        cache: ModelCache,
        manager: ModelManager,
        router: Router,
    ) -> None:
        self._pod_id = pod_id
        self._models = models
        self._store = store
        self._cache = cache
        self._manager = manager
        self._router = router

    async def run(self, timeout_s: float) -> None:
        """Hand over within ``timeout_s`` seconds (nothing when it is 0)."""
        if timeout_s <= 0:
            return
        try:
            async with asyncio.timeout(timeout_s):  # a hard bound: the chart's grace period relies on it
                await self._hand_over(deadline=time.monotonic() + timeout_s)
        except TimeoutError:
            log.warning("hand-over cut short after %gs (handoff_timeout_s)", timeout_s)

    async def _hand_over(self, *, deadline: float) -> None:
        """Load the most recently used models that only this pod holds on other pods."""
        recent = sorted(
            (m for m in self._cache.models() if m.loaded), key=lambda m: m.last_used, reverse=True
        )[: self._models]
        mine = frozenset({self._pod_id})
        for model in recent:
            if not self._staying_pods():
                log.info("no pod stays in the fleet: nothing to hand over")
                return
            if self._manager.held_elsewhere(model.model_id):
                continue
            try:
                await self._router.ensure_loaded(model.model_id, deadline=deadline, excluded=mine)
                log.info("handed %s over before leaving", model.model_id)
            except MeshError as exc:
                log.warning("could not hand %s over before leaving: %s", model.model_id, exc)
            if time.monotonic() >= deadline:
                return

    def _staying_pods(self) -> list[str]:
        instances = self._store.instances().items()
        return [p for p, i in instances if p != self._pod_id and not i.shutting_down]
