"""Which model a name means: a model id, or a vmodel's active model, as this pod's mirror knows
them, reading the registry itself for a name the mirror does not have yet.

``ModelNames`` also refuses, on the call path, a model whose load failed on this pod lately or
that is blocked fleet-wide (``record``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

from mesh.bounds import registrable
from mesh.cache import ModelCache
from mesh.records import ModelRecord, VModelRecord
from mesh.registry import ModelStore
from mesh_common.errors import ModelLoadFailed, ModelNotFound, NotFound, Unavailable, quoted


class ModelNames:
    """Owns nothing: reads the mirror (and the registry, for unknown names) on each call. Looking
    a vmodel up also promotes its target when that has loaded (``promote_if_ready``)."""

    def __init__(
        self,
        *,
        store: ModelStore,
        cache: ModelCache,
        pod_id: str,
        clock_ms: Callable[[], int],
        failure_ttl_ms: int,
        promote_if_ready: Callable[[VModelRecord], None],
    ) -> None:
        self._store = store
        self._cache = cache
        self.pod_id = pod_id
        self._clock_ms = clock_ms
        self._failure_ttl_ms = failure_ttl_ms
        self._promote_if_ready = promote_if_ready

    def record(self, model_id: str) -> ModelRecord:
        """The model's record, or ``ModelNotFound``; a recent failure here, or a model blocked for
        killing the pods that loaded it, is ``ModelLoadFailed``."""
        record = self._store.model(model_id)
        if record is None:
            raise ModelNotFound(model_id=model_id)
        if record.blocked:
            raise ModelLoadFailed(model_id=model_id, reason=record.blocked)
        failure = record.failures.get(self.pod_id)  # on every call: no copy of the failures
        if (
            failure is not None
            and self._clock_ms() - failure.time_ms < self._failure_ttl_ms
            and self._cache.loaded(model_id) is None
        ):
            raise ModelLoadFailed(model_id=model_id, reason=failure.reason)
        return record

    def record_any(self, model_id: str) -> ModelRecord:
        """The model's record whatever its state, or ``ModelNotFound``."""
        record = self._store.model(model_id)
        if record is None:
            raise ModelNotFound(model_id=model_id)
        return record

    def resolve(self, name: str, *, vmodel: bool | None = None) -> ModelRecord:
        """The model a call names: a vmodel's active model, or a model (``vmodel`` None: either)."""
        return self.record(self.lookup(name, vmodel=vmodel).model_id)

    def lookup(self, name: str, *, vmodel: bool | None = None) -> ModelRecord:
        """Like ``resolve``, without refusing a model whose load failed on this pod."""
        if vmodel is not False:
            record = self._store.vmodel(name)
            if record is not None:
                self._promote_if_ready(record)
                return self.record_any(record.active_model_id)
            if vmodel:
                raise NotFound(f"vmodel {quoted(name)} is not registered", model_id=name)
        return self.record_any(name)

    async def fresh_model(self, model_id: str, *, limited: bool = False) -> ModelRecord | None:
        """The model's record, read from the registry when this pod's mirror does not have it: a
        model registered through another pod reaches this pod's mirror a moment later, through the
        watch, and a caller may already ask this pod about it. ``Unavailable`` if the registry does
        not answer then (or if ``limited`` and past the reads allowed for unknown ids)."""
        record = self._store.model(model_id)
        if record is not None or not registrable(model_id):
            return record  # an id no registration accepts is never in the registry: no read
        return await self._store.fetch_model(model_id, limited=limited)

    async def fresh_vmodel(self, vmodel_id: str, *, limited: bool = False) -> VModelRecord | None:
        """``fresh_model`` for a vmodel."""
        record = self._store.vmodel(vmodel_id)
        if record is not None or not registrable(vmodel_id):
            return record
        return await self._store.fetch_vmodel(vmodel_id, limited=limited)

    async def lookup_fresh(self, name: str, *, vmodel: bool | None = None) -> ModelRecord:
        """``lookup``, reading the registry itself when this pod's mirror does not know ``name``:
        it may have been registered through another pod a moment ago, before this pod's watch
        delivered it (a vmodel's active model too). A registry read for each unknown name, up to
        ``UNKNOWN_READS_PER_S``; past it, and while the registry does not answer, the name counts
        as not registered."""
        try:
            return self.lookup(name, vmodel=vmodel)
        except NotFound:
            with contextlib.suppress(Unavailable):
                found = await self.fresh_vmodel(name, limited=True) if vmodel is not False else None
                if found is not None:
                    await self.fresh_model(found.active_model_id, limited=True)
                elif vmodel is not True:
                    await self.fresh_model(name, limited=True)
        return self.lookup(name, vmodel=vmodel)
