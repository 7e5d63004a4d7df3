"""What an error means for routing: the one property the router reads of every error, the same
way for an error raised on this pod and one a peer answered (``MeshError.routing``; the
pod-to-pod hop carries it in its ``mesh-error`` trailer, ``mesh.edge.hop``).
"""

from __future__ import annotations

import enum


class Routing(enum.Enum):
    """What an error means for where a call goes next: a property of its class, read the same
    way for an error raised on this pod and one a peer answered (the hop carries it in a trailer,
    ``mesh.edge.hop``). The values are what the trailer says."""

    FINAL = "final"
    """No other pod would do better: the caller gets the error (bad input, a tenant's cap, ...)."""
    NOT_HERE = "not-here"
    """That pod does not hold the model (or lost the race to load it): another may serve it."""
    LOAD_FAILED = "load-failed"
    """The model failed to load on that pod: another pod may load it; once every try is spent the
    model is ``LOADING_FAILED`` with each pod's reason."""
    NO_ROOM = "no-room"
    """That pod has no room for the model now: another may."""
    UNAVAILABLE = "unavailable"
    """That pod answered that it cannot serve now (registry down, load timed out): another may,
    and the pod is skipped for a while."""
    UNREACHABLE = "unreachable"
    """That pod gave no answer at all: its process may be gone, though its record is not yet."""
    OUT_OF_TIME = "out-of-time"
    """The caller's deadline passed: no try is left, and no pod is to blame."""

    @property
    def retry_elsewhere(self) -> bool:
        """Whether another pod may succeed where this one did not."""
        return self in _ELSEWHERE


_ELSEWHERE = frozenset(
    {Routing.NOT_HERE, Routing.LOAD_FAILED, Routing.NO_ROOM, Routing.UNAVAILABLE, Routing.UNREACHABLE}
)
