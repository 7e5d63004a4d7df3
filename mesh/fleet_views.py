"""What the registry says about models, tenants and the fleet, as this pod's mirror shows it.

``FleetViews`` only reads: a model's status (``getModelStatus``), the fleet's and tenants' figures,
each pod's traffic, and where a model's copies are. Which copies count is
``ModelRecord.counted_copies``'s rule; each question says how this pod's own copy counts.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

from mesh.model_status import NOT_FOUND_STATUS, CopyStatus, FleetView, ModelStatus, TenantUse
from mesh.records import ANY_STATE, LOADED, Mine, ModelState, ModelTraffic
from mesh.registry import ModelStore


class FleetViews:
    """Owns nothing: reads the mirror (``store``) on each call."""

    def __init__(
        self, *, store: ModelStore, pod_id: str, clock_ms: Callable[[], int], failure_ttl_ms: int
    ) -> None:
        self._store = store
        self.pod_id = pod_id
        self._clock_ms = clock_ms
        self._failure_ttl_ms = failure_ttl_ms

    def status(self, model_id: str) -> ModelStatus:
        record = self._store.model(model_id)
        if record is None:
            return NOT_FOUND_STATUS
        live = self._store.instances()
        copies_live = record.counted_copies(live, states=ANY_STATE, here=self.pod_id, mine=Mine.ALWAYS)
        record = replace(record, copies=copies_live)
        now = self._clock_ms()
        state = record.state(now_ms=now, failure_ttl_ms=self._failure_ttl_ms)
        failures = record.recent_failures(now_ms=now, failure_ttl_ms=self._failure_ttl_ms)
        errors = [f"{pod}: {failure.reason}" for pod, failure in sorted(failures.items())]
        if record.blocked:
            errors.insert(0, record.blocked)
        copies = [CopyStatus(pod, copy.state, copy.since_ms) for pod, copy in record.copies.items()]
        copies += [
            CopyStatus(pod, ModelState.LOADING_FAILED, f.time_ms)
            for pod, f in failures.items()
            if pod not in record.copies
        ]
        copies.sort(key=lambda c: c.time_ms, reverse=True)
        expires = min((f.time_ms for f in failures.values()), default=None)
        return ModelStatus(
            state,
            errors if state is ModelState.LOADING_FAILED else [],
            copies,
            failures=failures,
            blocked=bool(record.blocked),
            changes_at_ms=0 if expires is None else expires + self._failure_ttl_ms,
        )

    def fleet(self) -> FleetView:
        live = self._store.instances()
        loaded = [list(r.counted_copies(live, states=LOADED)) for r in self._store.models()]
        return FleetView(
            pods=[live[p] for p in sorted(live)],
            models_registered=len(loaded),
            models_loaded=sum(1 for pods in loaded if pods),
            copies=sum(len(pods) for pods in loaded),
            janitor=leader.pod_id if (leader := self._store.leader()) is not None else "",
        )

    def traffic(self, model_id: str) -> dict[str, ModelTraffic]:
        """What each live pod's copy of the model serves now (pods where it is busy enough to be listed)."""
        return {
            pod: instance.hot[model_id]
            for pod, instance in self._store.instances().items()
            if model_id in instance.hot
        }

    def tenants(self) -> list[TenantUse]:
        """Every tenant with caps or registered models, with its use."""
        live = self._store.instances()
        registered: dict[str, int] = {}
        loaded: dict[str, int] = {}
        for r in self._store.models():
            registered[r.tenant] = registered.get(r.tenant, 0) + 1
            copies = len(r.counted_copies(live))
            loaded[r.tenant] = loaded.get(r.tenant, 0) + copies * r.size_bytes
        caps = {t.tenant: t for t in self._store.tenants()}
        return [
            TenantUse(
                name,
                caps[name].max_models if name in caps else 0,
                caps[name].max_loaded_bytes if name in caps else 0,
                registered.get(name, 0),
                loaded.get(name, 0),
            )
            for name in sorted(registered.keys() | caps.keys())
        ]

    def loaded_anywhere(self, model_id: str) -> bool:
        """Whether a live pod (or this one) has recorded the model as loaded."""
        record = self._store.model(model_id)
        live = self._store.instances()
        return record is not None and bool(
            record.counted_copies(live, states=LOADED, here=self.pod_id, mine=Mine.ALWAYS)
        )

    def held_elsewhere(self, model_id: str) -> bool:
        """Whether another live pod has the model loaded or loading."""
        record = self._store.model(model_id)
        live = self._store.instances()
        return record is not None and bool(record.counted_copies(live, here=self.pod_id, mine=Mine.NEVER))
