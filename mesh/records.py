"""Registry records: what the fleet knows about each model and vmodel, and the changes made to them.

Values are JSON so ``etcdctl get`` stays readable. Records are immutable: each change is a method
returning a new record (``ModelRecord.with_load``, ``without_copy``, ...), written with
compare-and-swap by a one-line closure calling it. ``ModelRecord.counted_copies`` is the one rule
for which copies of a model count (the pods' records: ``mesh.pod_records``).
"""

from __future__ import annotations

import enum
import json
from collections.abc import Collection, Container
from dataclasses import asdict, dataclass, field, replace
from typing import Any

# The pods' and tenants' records live beside these; importable from here as before.
from mesh.pod_records import HOT_MODELS as HOT_MODELS
from mesh.pod_records import InstanceRecord as InstanceRecord
from mesh.pod_records import LeaderRecord as LeaderRecord
from mesh.pod_records import ModelTraffic as ModelTraffic
from mesh.pod_records import TenantRecord as TenantRecord


class ModelState(enum.Enum):
    """A model's or a copy's state; names match ModelMesh's ``ModelStatus``."""

    NOT_FOUND = "NOT_FOUND"
    NOT_LOADED = "NOT_LOADED"
    LOADING = "LOADING"
    LOADED = "LOADED"
    LOADING_FAILED = "LOADING_FAILED"


@dataclass(frozen=True)
class ModelInfo:
    """What registration said: the format, where the artifact is, and an optional storage key JSON."""

    type: str
    path: str
    key: str = ""


@dataclass(frozen=True)
class CopyRecord:
    state: ModelState
    since_ms: int
    why: str = ""
    """Why the copy is on this pod: the placement decision (score and runner-up) or the janitor's reason."""


@dataclass(frozen=True)
class FailureRecord:
    time_ms: int
    reason: str


@dataclass(frozen=True)
class ModelEvent:
    """One line of a model's recent history (loads, evictions, unloads, failures), for ``mesh status``."""

    time_ms: int
    pod_id: str
    what: str


HISTORY = 12
"""Events a model record keeps (the newest)."""

HELD = frozenset({ModelState.LOADED, ModelState.LOADING})
"""Copy states that hold (or are about to hold) the model: they take room and can serve calls soon."""

LOADED = frozenset({ModelState.LOADED})
"""Copies that can serve calls now."""

ANY_STATE = frozenset(ModelState)
"""Every copy state (``ModelRecord.counted_copies``: the state does not matter)."""


class Mine(enum.Enum):
    """How the asking pod's own copy counts in ``ModelRecord.counted_copies``."""

    LIKE_OTHERS = "like others"
    """Only if this pod is live in the caller's view, as any other pod (fleet-wide figures)."""
    ALWAYS = "always"
    """Even when this pod's instance record is not in the caller's view: the pod asking is alive,
    though its record may not have reached its mirror yet (at start, after rejoining the fleet)."""
    NEVER = "never"
    """Never: the question is about the other pods (where else the model is, whom to forward to)."""


@dataclass(frozen=True)
class ModelRecord:
    model_id: str
    info: ModelInfo
    tenant: str = "default"
    size_bytes: int = 0
    """Last measured loaded size (0 until a load measured it)."""
    load_ms: int = 0
    """Last measured time to fetch and load it (0 until a load measured it)."""
    copies: dict[str, CopyRecord] = field(default_factory=dict)
    """Pod id -> the copy's state on that pod."""
    failures: dict[str, FailureRecord] = field(default_factory=dict)
    """Pod id -> the last load failure there (expired by readers after a TTL)."""
    registered_ms: int = 0
    last_used_ms: int = 0
    """When a pod last evicted it while it was in use (0: never, or unloaded on request)."""
    auto_delete: bool = False
    """Delete once no vmodel refers to it (ModelMesh's autoDeleteTargetModel)."""
    min_copies: int = 1
    """Copies the janitor keeps loaded while the model has any (registration option)."""
    max_copies: int = 0
    """Most copies the janitor adds under load (0: the fleet's default)."""
    history: tuple[ModelEvent, ...] = ()
    """Recent loads, evictions, unloads and failures, oldest first (at most ``HISTORY``)."""
    crashes: tuple[ModelEvent, ...] = ()
    """Deaths while loading the model, oldest first: a pod that died with its copy LOADING, or a
    pod's loader process that died trying it. Kept as history; only those within the crash window
    of each other count toward a block (``with_crash``)."""
    blocked: str = ""
    """Why no pod may load or serve the model (set after too many ``crashes`` within the crash window;
    empty: none). It does not expire: it goes when the model is registered again or an operator
    clears it (``ModelManager.clear_failures``)."""

    def counted_copies(
        self,
        live: Container[str] | None,
        *,
        states: Collection[ModelState] = HELD,
        here: str = "",
        mine: Mine = Mine.LIKE_OTHERS,
        excluded: Container[str] = (),
    ) -> dict[str, CopyRecord]:
        """The copies that count, pod id -> copy, in the record's order. The one rule: a copy counts
        when its state is one of ``states`` and its pod is live (in ``live``: the live pods as the
        caller sees them, usually its mirror's instance records; ``None``: every recorded pod, live
        or not) and not ``excluded``. The copy of ``here`` (the asking pod) counts as ``mine`` says:
        like any other, always (the asking pod is alive whatever its mirror shows), or never.

        A copy on a pod whose lease ended stays recorded until the janitor forgets it, so readers
        that ask "is the model there" must pass ``live``.
        """
        return {
            pod: copy
            for pod, copy in self.copies.items()
            if copy.state in states and pod not in excluded and self._pod_counts(pod, live, here, mine)
        }

    @staticmethod
    def _pod_counts(pod: str, live: Container[str] | None, here: str, mine: Mine) -> bool:
        if here and pod == here and mine is not Mine.LIKE_OTHERS:
            return mine is Mine.ALWAYS
        return live is None or pod in live

    def with_event(self, time_ms: int, pod_id: str, what: str) -> ModelRecord:
        return replace(self, history=(*self.history, ModelEvent(time_ms, pod_id, what))[-HISTORY:])

    def as_registered(self) -> ModelRecord:
        """The record without copies or load failures (put back after a delete that must be undone)."""
        return replace(self, copies={}, failures={})

    def with_copy(self, pod_id: str, copy: CopyRecord) -> ModelRecord:
        return replace(self, copies={**self.copies, pod_id: copy})

    def with_claim(self, pod_id: str, time_ms: int, why: str) -> ModelRecord:
        """The record with ``pod_id`` LOADING the model, for ``why``, unless it has a copy already."""
        if pod_id in self.copies:
            return self
        return self.with_copy(pod_id, CopyRecord(ModelState.LOADING, time_ms, why))

    def marked(self, pod_id: str, state: ModelState, time_ms: int) -> ModelRecord:
        """The record with ``pod_id``'s copy in ``state`` since ``time_ms`` (keeping why it is
        there); unchanged if the copy is in that state already."""
        current = self.copies.get(pod_id)
        if current is not None and current.state is state:
            return self
        why = current.why if current is not None else ""
        return self.with_copy(pod_id, CopyRecord(state, time_ms, why))

    def without_copy(self, pod_id: str) -> ModelRecord:
        if pod_id not in self.copies:
            return self
        return replace(self, copies={pod: c for pod, c in self.copies.items() if pod != pod_id})

    def without_claim(self, pod_id: str) -> ModelRecord:
        """The record without ``pod_id``'s copy if that copy is LOADING (a load that never started)."""
        copy = self.copies.get(pod_id)
        if copy is None or copy.state is not ModelState.LOADING:
            return self
        return self.without_copy(pod_id)

    def with_load(self, pod_id: str, time_ms: int, *, size_bytes: int, load_ms: int) -> ModelRecord:
        """The record with ``pod_id``'s copy LOADED since ``time_ms`` (keeping why it is there), its
        load failure there gone, the measured size and load time, and a line of history."""
        why = c.why if (c := self.copies.get(pod_id)) is not None else ""
        copies = {**self.copies, pod_id: CopyRecord(ModelState.LOADED, time_ms, why)}
        failures = {pod: f for pod, f in self.failures.items() if pod != pod_id}
        r = replace(self, copies=copies, failures=failures, size_bytes=size_bytes, load_ms=load_ms)
        return r.with_event(time_ms, pod_id, f"loaded in {load_ms} ms ({size_bytes} bytes)")

    def recorded_loaded(self, pod_id: str, time_ms: int, *, size_bytes: int) -> ModelRecord:
        """The record with ``pod_id``'s copy LOADED (a load the registry missed: no load time is
        known), and a line of history; unchanged if it is recorded LOADED already."""
        copy = self.copies.get(pod_id)
        if copy is not None and copy.state is ModelState.LOADED:
            return self
        why = copy.why if copy is not None else ""
        r = replace(self, size_bytes=size_bytes).with_copy(
            pod_id, CopyRecord(ModelState.LOADED, time_ms, why)
        )
        return r.with_event(time_ms, pod_id, "recorded as loaded here again (registry missed it)")

    def with_failure(self, pod_id: str, time_ms: int, reason: str) -> ModelRecord:
        """The record with ``pod_id``'s copy gone, its load failure there, and a line of history."""
        r = self.without_copy(pod_id)
        r = replace(r, failures={**r.failures, pod_id: FailureRecord(time_ms, reason)})
        return r.with_event(time_ms, pod_id, f"load failed: {reason[:300]}")

    def without_failures(self, pod_ids: Collection[str]) -> ModelRecord:
        """The record without the load failures on ``pod_ids`` (they expired)."""
        return replace(self, failures={p: f for p, f in self.failures.items() if p not in pod_ids})

    def cleared(self, time_ms: int, pod_id: str) -> ModelRecord:
        """The record without load failures, deaths while loading it or a block (an operator's
        call through ``pod_id``), and a line of history."""
        r = replace(self, failures={}, crashes=(), blocked="")
        return r.with_event(time_ms, pod_id, "load failures cleared by an operator")

    def with_unload(self, pod_id: str, time_ms: int, *, what: str, last_used_ms: int) -> ModelRecord:
        """The record without ``pod_id``'s copy, ``last_used_ms`` set (0: unloaded on request, so
        not pre-loaded again), and ``what`` happened in its history."""
        r = replace(self.without_copy(pod_id), last_used_ms=last_used_ms)
        return r.with_event(time_ms, pod_id, what)

    def without_dead_pod(self, pod_id: str, time_ms: int, *, limit: int, window_ms: int) -> ModelRecord:
        """The record without the copy of a pod that died; a copy it left LOADING counts as a
        death while loading the model (``with_crash``)."""
        copy = self.copies.get(pod_id)
        r = self.without_copy(pod_id)
        if copy is None or copy.state is not ModelState.LOADING:
            return r
        return r.with_crash(
            time_ms, pod_id, f"pod {pod_id} died while loading it", limit=limit, window_ms=window_ms
        )

    def with_crash(self, time_ms: int, pod_id: str, what: str, *, limit: int, window_ms: int) -> ModelRecord:
        """The record with one more death while loading it, on ``pod_id`` (also that pod's load
        failure and a line of history); the ``limit``-th such death within ``window_ms`` (this one
        included) blocks the model fleet-wide. Older deaths no longer count: deaths weeks apart are
        more likely unrelated failures of the pods than a model that kills them."""
        crashes = (*self.crashes, ModelEvent(time_ms, pod_id, what))[-HISTORY:]
        failures = {**self.failures, pod_id: FailureRecord(time_ms, what)}
        record = replace(self, crashes=crashes, failures=failures).with_event(time_ms, pod_id, what)
        recent = [c for c in crashes if time_ms - c.time_ms < window_ms]
        if len(recent) < limit or self.blocked:
            return record
        deaths = "; ".join(f"{c.pod_id}: {c.what}" for c in recent[-limit:])
        return replace(
            record,
            blocked=f"pods died loading it ({deaths}); no pod loads it again until it is registered "
            "again or an operator clears it (mesh clear)",
        )

    def state(self, *, now_ms: int, failure_ttl_ms: int) -> ModelState:
        if self.blocked:
            return ModelState.LOADING_FAILED
        states = {copy.state for copy in self.copies.values()}
        if ModelState.LOADED in states:
            return ModelState.LOADED
        if ModelState.LOADING in states:
            return ModelState.LOADING
        if self.recent_failures(now_ms=now_ms, failure_ttl_ms=failure_ttl_ms):
            return ModelState.LOADING_FAILED
        return ModelState.NOT_LOADED

    def recent_failures(self, *, now_ms: int, failure_ttl_ms: int) -> dict[str, FailureRecord]:
        return {pod: f for pod, f in self.failures.items() if now_ms - f.time_ms < failure_ttl_ms}

    def to_json(self) -> bytes:
        data = asdict(self)
        data["copies"] = {
            pod: {"state": c.state.value, "since_ms": c.since_ms, "why": c.why}
            for pod, c in self.copies.items()
        }
        return json.dumps(data, sort_keys=True).encode()

    @classmethod
    def from_json(cls, raw: bytes) -> ModelRecord:
        data: dict[str, Any] = json.loads(raw)
        data["info"] = ModelInfo(**data["info"])
        data["copies"] = {
            pod: CopyRecord(ModelState(c["state"]), c["since_ms"], c.get("why", ""))
            for pod, c in data["copies"].items()
        }
        data["failures"] = {pod: FailureRecord(**f) for pod, f in data["failures"].items()}
        data["history"] = tuple(ModelEvent(**e) for e in data.get("history", ()))
        data["crashes"] = tuple(ModelEvent(**e) for e in data.get("crashes", ()))
        return cls(**data)


@dataclass(frozen=True)
class VModelRecord:
    """A stable name for a changing model: calls go to ``active``; ``target`` replaces it once loaded."""

    vmodel_id: str
    active_model_id: str
    target_model_id: str
    owner: str = ""

    def retargeted(self, target: str, *, active: str) -> VModelRecord:
        return replace(self, target_model_id=target, active_model_id=active)

    def promoted(self, target: str) -> VModelRecord:
        """The vmodel serving ``target``, if that is still its target (else unchanged)."""
        if self.target_model_id != target:
            return self
        return replace(self, active_model_id=target)

    def backed_out(self, target: str, replaced: VModelRecord | None) -> VModelRecord | None:
        """The vmodel as ``replaced`` had it (``None``: deleted) if its target is still ``target``,
        the one a write that must be undone set (else a later write stands: unchanged)."""
        if self.target_model_id != target:
            return self
        if replaced is None:
            return None
        return self.retargeted(replaced.target_model_id, active=replaced.active_model_id)

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), sort_keys=True).encode()

    @classmethod
    def from_json(cls, raw: bytes) -> VModelRecord:
        return cls(**json.loads(raw))
