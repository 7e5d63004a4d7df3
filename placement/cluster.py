"""A frozen snapshot of the fleet, as placement decisions see it.

The pod builds one from its registry mirror (plus what it knows locally, such as the
forwards it has in flight) and hands it to the pure functions in this package.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class PodView:
    pod_id: str
    capacity_bytes: int
    used_bytes: int = 0
    oldest_used_ms: int = 0
    """Wall-clock last use of the idle model the pod would evict next (0: it holds none)."""
    loads_in_flight: int = 0
    """Loads running there, plus the loads this pod sent there that its record does not show yet."""
    requests_in_flight: int = 0
    request_rate: float = 0.0
    labels: frozenset[str] = frozenset()
    shutting_down: bool = False

    def supports(self, model_type: str) -> bool:
        return f"type:{model_type}" in self.labels


@dataclass(frozen=True)
class ModelView:
    model_id: str
    model_type: str
    size_bytes: int
    """Expected loaded size: last measured, else predicted (0: unknown, assumed small)."""
    holders: frozenset[str] = frozenset()
    """Pods with the model loaded or loading."""
    failed_on: frozenset[str] = frozenset()
    """Pods where its load failed recently."""


@dataclass(frozen=True)
class ClusterView:
    pods: tuple[PodView, ...]
    now_ms: int
    excluded: frozenset[str] = field(default_factory=frozenset)
    """Pods this decision must not pick (they just answered "not here" or are unreachable)."""
