"""The copies of pods that died, and deaths while loading a model.

A pod that dies leaves its copies in the registry; ``DeadPods`` removes them once the registry
shows the pod gone (fleet hygiene the janitor runs), and counts a copy it left LOADING as a death
while loading that model. Enough deaths block the model until an operator clears its failures
(``clear_failures``) or it is registered again.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Container

from mesh.records import ANY_STATE, Mine, ModelRecord, ModelState
from mesh.registry import ModelStore
from mesh_common.errors import ModelNotFound

log = logging.getLogger(__name__)


class DeadPods:
    """Owns which pods with a LOADING copy were found missing from the registry, and since when."""

    def __init__(
        self,
        *,
        store: ModelStore,
        pod_id: str,
        clock_ms: Callable[[], int],
        max_load_crashes: int,
        crash_window_ms: int,
        dead_after_ms: int,
        update_quietly: Callable[[str, Callable[[ModelRecord], ModelRecord]], Awaitable[None]],
        fresh_model: Callable[[str], Awaitable[ModelRecord | None]],
    ) -> None:
        self._store = store
        self.pod_id = pod_id
        self._clock_ms = clock_ms
        self._max_load_crashes = max_load_crashes
        self._crash_window_ms = crash_window_ms
        self._dead_after_ms = dead_after_ms
        """How long a pod that left a copy LOADING must be missing from the registry before it is
        taken for dead (the pods' lease TTL: see ``forget_dead_pods``)."""
        self._update_quietly = update_quietly
        """Writes a change to a model's record, noting a failed write for ``repair_copies``."""
        self._missing_since: dict[str, int] = {}
        """Pods with a LOADING copy found missing from the registry, since when (``clock_ms``)."""
        self.fresh_model = fresh_model

    async def forget_pod(self, pod_id: str, *, unless_live: bool = False) -> int:
        """Remove the copies a pod recorded (it died, or restarted with nothing loaded).

        A copy it left LOADING means the pod died while loading the model (a pod that stops
        gracefully drops its claims first): that counts against the model as a crash (see
        ``ModelRecord.with_crash``). ``unless_live``: keep the copies if the pod's instance record
        is in the mirror when a record is written (it rejoined meanwhile and may be writing its
        copies back). Returns how many records changed. Failure records stay: they expire by
        themselves.
        """
        died = self._died_holding(pod_id)

        def change(r: ModelRecord) -> ModelRecord:
            return r if unless_live and self._store.instance(pod_id) is not None else died(r)

        changed = 0
        for record in self._store.models():
            copy = record.copies.get(pod_id)
            if copy is None:
                continue
            if copy.state is ModelState.LOADING:
                log.warning("pod %s left %s LOADING: counted as a crash", pod_id, record.model_id)
            await self._update_quietly(record.model_id, change)
            changed += 1
        return changed

    def _died_holding(self, pod_id: str) -> Callable[[ModelRecord], ModelRecord]:
        def change(r: ModelRecord) -> ModelRecord:
            limit, window_ms = self._max_load_crashes, self._crash_window_ms
            return r.without_dead_pod(pod_id, self._clock_ms(), limit=limit, window_ms=window_ms)

        return change

    async def forget_dead_pods(self) -> int:
        """Remove copies recorded for pods that are not live (their lease expired).

        A pod is taken for dead only if the registry itself has no instance record for it: this
        pod's mirror may not show yet the record of a pod that rejoined with a new lease (after an
        etcd stall longer than the lease) and is writing its copies back. A pod that left a copy
        LOADING (which counts as a crash of that model) must moreover have been missing for a whole
        lease TTL, seen by two rounds at least that far apart: a pod cut off by an etcd stall
        retries its keep-alive every third of its TTL (at most a second) and rejoins as soon as
        etcd answers again, well within that, while a pod that died stays missing. Until then its
        copies stay, and no pod loads the model (``Router._lost_load``).
        """
        live = self._store.instances()
        records = self._store.models()
        missing = {pod for r in records for pod in r.copies.keys() - self._counted_anyhow(r, live)}
        loading = {
            pod
            for r in records
            for pod, c in r.copies.items()
            if pod in missing and c.state is ModelState.LOADING
        }
        self._missing_since = {pod: t for pod, t in self._missing_since.items() if pod in loading}
        now = self._clock_ms()
        counts = []
        for pod in sorted(missing):
            if await self._store.fetch_instance(pod) is not None:
                self._missing_since.pop(pod, None)
                continue
            if pod in loading and now - self._missing_since.setdefault(pod, now) < self._dead_after_ms:
                continue
            self._missing_since.pop(pod, None)
            counts.append(await self.forget_pod(pod, unless_live=True))
        return sum(counts)

    def _counted_anyhow(self, record: ModelRecord, live: Container[str]) -> set[str]:
        """The pods whose copies of the model count, whatever their state (the others are missing)."""
        return set(record.counted_copies(live, states=ANY_STATE, here=self.pod_id, mine=Mine.ALWAYS))

    async def clear_failures(self, model_id: str) -> ModelRecord:
        """Forget the model's load failures and deaths while loading it, lifting its block (an
        operator's call: the next call may load it again). Returns the record as it was."""
        if await self.fresh_model(model_id) is None:
            raise ModelNotFound(model_id=model_id)
        before: list[ModelRecord] = []

        def change(r: ModelRecord) -> ModelRecord:
            before[:] = [r]
            return r.cleared(self._clock_ms(), self.pod_id)

        await self._store.update_model(model_id, change)
        if not before:
            raise ModelNotFound(model_id=model_id)
        log.info("load failures of %s cleared (%d deaths while loading it)", model_id, len(before[0].crashes))
        return before[0]
