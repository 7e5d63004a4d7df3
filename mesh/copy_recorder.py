"""This pod's copies in the registry, as its cache reports them.

``CopyRecorder`` is the cache's listener (through ``ModelManager``): it records each load, its
end, failure or refusal, and each unload in the model's record, and when a write is missed
(the registry was unreachable, the pod rejoined the fleet with a new lease) it makes the
registry agree with the cache again (``repair_copies``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping

from mesh.cache import ModelCache
from mesh.records import LOADED, InstanceRecord, ModelRecord, ModelState, VModelRecord
from mesh.registry import ModelStore
from mesh_common.errors import LoaderCrashed, MeshError, ModelLoadFailed
from placement.copies import CopyPolicy, ModelDemand, surplus_copy

log = logging.getLogger(__name__)


class CopyRecorder:
    """Owns the registry's record of this pod's copies, and whether it may have missed one."""

    def __init__(
        self,
        *,
        store: ModelStore,
        cache: ModelCache,
        pod_id: str,
        clock_ms: Callable[[], int],
        max_load_crashes: int,
        crash_window_ms: int,
        copy_policy: CopyPolicy,
        promote_if_ready: Callable[[VModelRecord], None],
    ) -> None:
        self._store = store
        self._cache = cache
        self.pod_id = pod_id
        self._clock_ms = clock_ms
        self._max_load_crashes = max_load_crashes
        """Deaths while loading a model (pods, or their loader processes) within the crash window
        that block it fleet-wide."""
        self._crash_window_ms = crash_window_ms
        self._copy_policy = copy_policy
        """Which copies the fleet needs (for a copy the registry lost and others replaced)."""
        self._promote_if_ready = promote_if_ready
        """Makes a vmodel's loaded target active (called for the vmodels targeting a model that loaded)."""
        self._unrecorded = False
        """A write of this pod's copies failed, or the pod rejoined the fleet: the registry may
        disagree with the cache until ``repair_copies`` has run."""
        self._rejoined = False

    async def loading(self, model_id: str) -> None:
        await self._set_copy(model_id, ModelState.LOADING)

    async def loaded(self, model_id: str, size_bytes: int, load_seconds: float) -> None:
        load_ms = int(load_seconds * 1000)

        def change(r: ModelRecord) -> ModelRecord:
            return r.with_load(self.pod_id, self._clock_ms(), size_bytes=size_bytes, load_ms=load_ms)

        await self.update_quietly(model_id, change)
        vmodels = [v for v in self._store.vmodels() if v.target_model_id == model_id]
        for vmodel in vmodels:
            self._promote_if_ready(vmodel)

    async def failed(self, model_id: str, error: MeshError) -> None:
        reason = (
            error.fields.get("reason", error.message) if isinstance(error, ModelLoadFailed) else error.message
        )
        log.warning("load of %s failed: %s", model_id, reason)

        def change(r: ModelRecord) -> ModelRecord:
            now = self._clock_ms()
            if isinstance(error, LoaderCrashed):  # the artifact kills whoever loads it
                limit, window_ms = self._max_load_crashes, self._crash_window_ms
                return r.without_copy(self.pod_id).with_crash(
                    now, self.pod_id, str(reason), limit=limit, window_ms=window_ms
                )
            return r.with_failure(self.pod_id, now, str(reason))

        await self.update_quietly(model_id, change)

    async def refused(self, model_id: str, error: MeshError) -> None:
        """A load this pod claimed was refused before it started (a tenant cap): drop the claim."""
        log.info("load of %s refused: %s", model_id, error.message)
        await self.update_quietly(model_id, lambda r: r.without_copy(self.pod_id))

    async def drop_claim(self, model_id: str) -> None:
        """Drop this pod's LOADING copy of the model unless the cache is loading or holds it (read when
        the write is made): the router claimed a load here that never reached the cache."""

        def change(r: ModelRecord) -> ModelRecord:
            if self._cache.loading(model_id) or self._cache.loaded(model_id) is not None:
                return r  # the load records its own end
            return r.without_claim(self.pod_id)

        await self.update_quietly(model_id, change)

    async def unloaded(self, model_id: str, *, evicted: bool, reason: str = "") -> None:
        # An evicted model was in use until room was needed: the janitor may pre-load it again
        # when room appears (most recent first). One unloaded on request stays unloaded.
        last_used_ms = self._clock_ms() if evicted else 0

        def change(r: ModelRecord) -> ModelRecord:
            what = "evicted to make room for another model" if evicted else "unloaded"
            if reason:
                what = f"{what}: {reason}"
            return r.with_unload(self.pod_id, self._clock_ms(), what=what, last_used_ms=last_used_ms)

        await self.update_quietly(model_id, change)

    async def _set_copy(self, model_id: str, state: ModelState) -> None:
        await self.update_quietly(model_id, lambda r: r.marked(self.pod_id, state, self._clock_ms()))

    async def update_quietly(self, model_id: str, change: Callable[[ModelRecord], ModelRecord]) -> None:
        try:
            await self._store.update_model(model_id, change)
        except MeshError as exc:
            self._unrecorded = True
            log.warning("could not record the state of %s in the registry: %s", model_id, exc)

    def rejoined(self) -> None:
        """This pod's lease ran out (etcd was silent longer than its TTL) and it rejoined the fleet
        with a new one, its instance record written: the janitor may have forgotten every copy
        recorded here. ``repair_copies`` writes them back."""
        self._rejoined = True
        self._unrecorded = True

    async def repair_copies(self) -> int:
        """Make the registry agree with the cache again where it missed this pod's copies: after a
        write of them failed (the registry was unreachable), after the pod rejoined the fleet with
        a new lease, and whenever the registry shows a model held here without this pod's copy
        (the janitor forgot it). A model held here is recorded LOADED here, and a copy recorded here
        that the cache neither holds nor is loading is dropped. A copy held here that the fleet no
        longer needs, other pods having loaded the model while the registry did not show it (it
        lost the copy, or this pod was out of the fleet), is unloaded instead (``_surplus_here``).
        A no-op when nothing was missed. Stops at the first write that fails and goes on at the next call;
        returns how many copies it wrote back, dropped or unloaded."""
        if not self._unrecorded and not self._lost_here():
            return 0
        self._unrecorded = False
        rejoined, self._rejoined = self._rejoined, False
        fixed = unloaded = 0
        for record in self._store.models():
            change = self._as_cached(record.model_id)
            surplus = self._surplus_here(record, rejoined=rejoined)
            if not surplus and change(record) == record:
                continue
            try:
                if surplus:
                    log.info("unloading %s, a copy the fleet no longer needs: %s", record.model_id, surplus)
                    await self._cache.unload(record.model_id, reason=f"a duplicate: {surplus}")
                    unloaded += 1
                    continue
                await self._store.update_model(record.model_id, change)
            except MeshError as exc:
                self._unrecorded = True
                self._rejoined = self._rejoined or rejoined
                log.info("this pod's copies are not corrected in the registry yet: %s", exc)
                break
            fixed += 1
        if rejoined or fixed or unloaded:
            log.info(
                "%s: corrected this pod's copies in %d registry record(s), unloaded %d duplicate(s)",
                "rejoined the fleet" if rejoined else "the registry had missed copies held here",
                fixed,
                unloaded,
            )
        return fixed + unloaded

    def _lost_here(self) -> bool:
        """Whether the registry shows a model this pod holds without this pod's copy, while the pod
        is in the fleet (what a pod writes before its instance record is there may be forgotten)."""
        if self._store.instance(self.pod_id) is None:
            return False
        for model in self._cache.models():
            record = self._store.model(model.model_id)
            if record is None or not model.loaded or self._cache.loading(model.model_id):
                continue
            copy = record.copies.get(self.pod_id)
            if copy is None or copy.state is not ModelState.LOADED:
                return True
        return False

    def _surplus_here(self, record: ModelRecord, *, rejoined: bool) -> str:
        """Why the fleet no longer needs this pod's copy of a model ("": it does).

        Asked of a copy held here that the registry lost, and after rejoining the fleet of every
        copy held here: while the registry did not show it, or showed this pod out of the fleet,
        calls through other pods found no copy and loaded the model again. The copy yields only to
        copies loaded after it (a lost copy: to any), so of the copies of a model one never yields.
        """
        model_id = record.model_id
        mine = record.copies.get(self.pod_id)
        if mine is not None and not rejoined:
            return ""
        if self._cache.loading(model_id) or self._cache.loaded(model_id) is None:
            return ""
        since = mine.since_ms if mine is not None else -1
        live = self._store.instances()
        staying = {pod for pod, instance in live.items() if not instance.shutting_down}
        counted = record.counted_copies(staying, states=LOADED)
        loaded = {pod: c.since_ms for pod, c in counted.items() if c.since_ms > since}
        if not loaded:
            return ""
        loaded[self.pod_id] = self._clock_ms()
        return surplus_copy(_demand(record, loaded, live), self.pod_id, self._copy_policy)

    def _as_cached(self, model_id: str) -> Callable[[ModelRecord], ModelRecord]:
        """The record with this pod's copy as the cache has it (read when the write is made)."""

        def change(r: ModelRecord) -> ModelRecord:
            if self._cache.loading(model_id):
                return r  # the load records itself when it ends
            model = self._cache.loaded(model_id)
            now = self._clock_ms()
            if model is not None:
                return r.recorded_loaded(self.pod_id, now, size_bytes=model.size_bytes)
            if self.pod_id not in r.copies:
                return r
            dropped = r.without_copy(self.pod_id)
            return dropped.with_event(now, self.pod_id, "copy dropped: not held here (missed registry write)")

        return change


def _demand(record: ModelRecord, loaded: dict[str, int], live: Mapping[str, InstanceRecord]) -> ModelDemand:
    """The model's demand as copy placement reads it: its ``loaded`` copies (pod -> since when)
    and what each serves, from the live pods' records."""
    model_id = record.model_id
    traffic = {pod: hot for pod in loaded if pod in live and (hot := live[pod].hot.get(model_id)) is not None}
    return ModelDemand(
        model_id=model_id,
        model_type=record.info.type,
        size_bytes=record.size_bytes,
        loaded=loaded,
        rates={pod: t.rate for pod, t in traffic.items()},
        queue_ms=max((t.queue_ms for t in traffic.values()), default=0.0),
        min_copies=record.min_copies,
        max_copies=record.max_copies,
    )
