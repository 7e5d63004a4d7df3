"""Registry records: what the fleet knows about each model and vmodel.

Values are JSON so ``etcdctl get`` stays readable. Records are immutable; an update
builds a new one with ``dataclasses.replace`` and is written with compare-and-swap.
"""

from __future__ import annotations

import enum
import json
from dataclasses import asdict, dataclass, field, replace
from typing import Any, NamedTuple

from mesh.devices import DeviceMemory


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

    def with_event(self, time_ms: int, pod_id: str, what: str) -> ModelRecord:
        return replace(self, history=(*self.history, ModelEvent(time_ms, pod_id, what))[-HISTORY:])

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

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), sort_keys=True).encode()

    @classmethod
    def from_json(cls, raw: bytes) -> VModelRecord:
        return cls(**json.loads(raw))


class ModelTraffic(NamedTuple):
    """What one copy of a model serves: requests/s and queueing delay (ms), recent averages."""

    rate: float
    queue_ms: float


HOT_MODELS = 64
"""Models an instance record lists in ``hot`` (the busiest)."""


@dataclass(frozen=True)
class InstanceRecord:
    """A live pod, as the fleet sees it. Bound to the pod's lease: it vanishes when the pod dies.

    Republished (rate-limited) when capacity, use or load change; routing and placement read
    it from every pod's mirror.
    """

    pod_id: str
    endpoint: str
    """``host:port`` of the pod's gRPC server."""
    capacity_bytes: int
    used_bytes: int = 0
    models_loaded: int = 0
    loads_in_flight: int = 0
    requests_in_flight: int = 0
    request_rate: float = 0.0
    """Requests per second served by this pod, averaged over the last few seconds."""
    oldest_used_ms: int = 0
    """Wall-clock last use of the idle model its cache would evict next (0: none)."""
    labels: tuple[str, ...] = ()
    """Model types this pod can load (``type:<name>``) and its zone (``zone:<name>``)."""
    version: str = ""
    started_ms: int = 0
    shutting_down: bool = False
    devices: tuple[DeviceMemory, ...] = ()
    """Memory per device: ``host`` (the cache: ``capacity_bytes``/``used_bytes``) and each GPU."""
    hot: dict[str, ModelTraffic] = field(default_factory=dict)
    """The models this pod serves most (at most ``HOT_MODELS``): their recent rate and queueing delay."""
    published_ms: int = 0
    """Wall-clock time (this pod's clock) the record describes. Copies this pod recorded later are
    not in ``used_bytes`` yet: placement adds them (see ``ModelStore.unpublished``)."""

    def supports(self, model_type: str) -> bool:
        return f"type:{model_type}" in self.labels

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), sort_keys=True).encode()

    @classmethod
    def from_json(cls, raw: bytes) -> InstanceRecord:
        data: dict[str, Any] = json.loads(raw)
        data["labels"] = tuple(data.get("labels", ()))
        data["devices"] = tuple(DeviceMemory(**d) for d in data.get("devices", ()))
        data["hot"] = {m: ModelTraffic(*t) for m, t in data.get("hot", {}).items()}
        return cls(**data)


@dataclass(frozen=True)
class LeaderRecord:
    """The pod that runs the janitor; bound to that pod's lease, so it goes when the pod does."""

    pod_id: str
    since_ms: int

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), sort_keys=True).encode()

    @classmethod
    def from_json(cls, raw: bytes) -> LeaderRecord:
        return cls(**json.loads(raw))


@dataclass(frozen=True)
class TenantRecord:
    """A tenant's caps across the fleet (0: no cap). Tenants without a record have none."""

    tenant: str
    max_models: int = 0
    """Registered models."""
    max_loaded_bytes: int = 0
    """Bytes of its models loaded on all pods together (every copy counts)."""

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), sort_keys=True).encode()

    @classmethod
    def from_json(cls, raw: bytes) -> TenantRecord:
        return cls(**json.loads(raw))
