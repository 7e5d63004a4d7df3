"""A pod's cache pressure: its recently used working set over its capacity (``mesh_cache_pressure``).

Why this is the autoscaling signal. A warm cache is always nearly full, so used/capacity sits
near 1 on a pod that is doing fine and on one that is drowning alike. What more pods cure is
churn: models evicted to make room and then needed again. So the pressure counts the bytes of the
distinct models the pod served or was asked to load within the last ``window_s`` (still loaded
or evicted since), plus the bytes of loads waiting for room, and divides by the capacity:

- below 1: the models used recently fit together; evictions only drop models nobody asked for;
- above 1: the pod keeps evicting models it needs again (thrashing): more pods (more room in
  the fleet) would hold the working set, and the HorizontalPodAutoscaler's target sits below 1.

Memory stays bounded by the models registered: a model is remembered only while evicted within
the window (loaded ones are read from the cache), and entries older than the window go.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Protocol


class UsedModel(Protocol):
    """What the pressure reads of a model in the cache (``mesh.cache.CachedModel``)."""

    @property
    def model_id(self) -> str: ...
    @property
    def size_bytes(self) -> int: ...
    @property
    def last_used(self) -> float: ...


class WorkingSet:
    """Models evicted within the window, with their size and last use (the cache's clock, seconds)."""

    def __init__(self, window_s: float) -> None:
        self.window_s = window_s
        self._evicted: dict[str, tuple[float, int]] = {}
        """Model id -> (last used, size in bytes) when it was evicted."""

    def evicted(self, model_id: str, size_bytes: int, last_used: float) -> None:
        """The cache evicted a model (called on the event loop, by the cache)."""
        self._evicted[model_id] = (last_used, size_bytes)

    def forget(self, model_id: str) -> None:
        """The model was unregistered: it is nobody's working set any more."""
        self._evicted.pop(model_id, None)

    def recent_bytes(self, cached: Iterable[UsedModel], *, now: float) -> int:
        """Bytes of the distinct models used within the window: those in the cache (loaded or
        loading) and those evicted since. Drops evicted entries older than the window."""
        return sum(self._recent(cached, now=now).values())

    def pressure(
        self, cached: Iterable[UsedModel], *, waiting: Mapping[str, int], capacity_bytes: int, now: float
    ) -> float:
        """(recently used bytes + bytes of loads waiting for room) / capacity, each model once:
        ``waiting`` (model id -> predicted bytes) often holds a model evicted within the window and
        asked for again, the very churn the pressure measures, which must not count twice."""
        sizes = self._recent(cached, now=now)
        sizes.update(waiting)
        return sum(sizes.values()) / max(capacity_bytes, 1)

    def _recent(self, cached: Iterable[UsedModel], *, now: float) -> dict[str, int]:
        since = now - self.window_s
        for model_id in [m for m, (used, _) in self._evicted.items() if used < since]:
            del self._evicted[model_id]
        sizes = {m: size for m, (_, size) in self._evicted.items()}
        for model in cached:
            if model.last_used >= since:
                sizes[model.model_id] = model.size_bytes
            else:
                sizes.pop(model.model_id, None)  # loaded again since, then idle past the window
        return sizes

    def __len__(self) -> int:
        return len(self._evicted)
