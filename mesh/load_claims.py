"""A pod's claim to load a model: recorded in the registry (a compare-and-swap on the model's
record) before the load starts, so two pods never load one model at once, and dropped again
when the load never reached the cache.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from mesh.management import ModelManager
from mesh.records import Mine, ModelRecord
from mesh.registry import ModelStore
from mesh_common.clock import now_ms
from mesh_common.errors import NotHere, Unavailable, quoted

log = logging.getLogger(__name__)


class LoadClaims:
    """Writes this pod's LOADING copies; keeps no state of its own."""

    def __init__(self, *, pod_id: str, store: ModelStore, manager: ModelManager) -> None:
        self.pod_id = pod_id
        self._store = store
        self._manager = manager

    async def claim(
        self,
        model_id: str,
        *,
        ignore: frozenset[str] = frozenset(),
        why: str = "",
        extra_copy: bool = False,
    ) -> None:
        """Record this pod as loading ``model_id`` unless another live pod holds or loads it
        (``extra_copy``: even then: the janitor is adding a copy)."""
        holder = ""
        live = {
            pod
            for pod, instance in self._store.instances().items()
            if pod not in ignore and not instance.shutting_down  # a leaving pod's copy goes with it
        }

        def change(record: ModelRecord) -> ModelRecord:
            nonlocal holder
            holder = (
                ""
                if extra_copy
                else min(record.counted_copies(live, here=self.pod_id, mine=Mine.NEVER), default="")
            )
            return record if holder else record.with_claim(self.pod_id, now_ms(), why)

        try:
            await self._store.update_model(model_id, change)
        except Unavailable as exc:  # registry down: serving beats a perfect record
            log.warning("could not claim the load of %s in the registry (%s); loading anyway", model_id, exc)
            return
        if holder:
            message = f"pod {holder} already holds model {quoted(model_id)}"
            raise NotHere(message, pod_id=self.pod_id, holder=holder)

    async def claimed(
        self,
        model_id: str,
        serve: Callable[[], Awaitable[bytes]],
        *,
        ignore: frozenset[str],
        why: str,
        extra_copy: bool = False,
    ) -> bytes:
        """``claim`` the load here, then ``serve``. A claim whose load never started in the cache
        (the call was cancelled, or refused before it reached the cache) is dropped when the call
        ends: left LOADING, it would count as a crash of the model once this pod's lease ended."""
        try:
            await self.claim(model_id, ignore=ignore, why=why, extra_copy=extra_copy)
            return await serve()
        finally:
            await self._manager.drop_claim(model_id)
