"""Registry records of the fleet's pods and tenants: each live pod's instance record (capacity,
use, traffic), the janitor's leader record and the tenants' caps.

Values are JSON so ``etcdctl get`` stays readable. Records are immutable.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any, NamedTuple

from mesh.devices import DeviceMemory


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
