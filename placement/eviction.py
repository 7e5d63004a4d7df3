"""Which loaded models to evict to make room for a load.

A model serving a request (``in_use`` > 0) or still loading is never chosen. Two policies:

``lru``
    Least recently used first: the floor every other policy must beat.

``gdsf``
    GreedyDual-Size-Frequency (Cherkasova, 1998), with the cost of a miss being the
    model's measured load time. Each loaded model carries a priority

        H = L + hits x load_ms / size_MiB

    set when it is loaded and refreshed on every use; the models with the lowest H go
    first. ``L`` is the pod's inflation value: after an eviction it rises to the
    highest H evicted, so a model that stops being used sinks below newly used ones
    (recency) instead of living forever on old hits (frequency). A model that is cheap
    to reload per byte it frees, used rarely, or not used for a long time goes first;
    a one-off scan of cold models (hits = 1) is evicted before hot models it would
    otherwise push out.

Under either policy, a model with copies on other pods (``replicated``) goes before any
model this pod alone holds: evicting an extra copy costs no reload, its calls go to the
other copies.

The simulator (``python -m placement.simulate``) replays traces against both and
against the offline optimum; the pod's default is the one it shows winning.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass
from operator import attrgetter

MIB = 2**20


class EvictionPolicy(enum.Enum):
    LRU = "lru"
    GDSF = "gdsf"


@dataclass(frozen=True)
class EvictionCandidate:
    model_id: str
    size_bytes: int
    last_used: float
    """Seconds (any clock the caller keeps) of the last use."""
    in_use: int = 0
    priority: float = 0.0
    """GDSF's H: see ``gdsf_priority``."""
    replicated: bool = False
    """Other pods hold copies: evicting this one costs no reload."""


_PRIORITY = attrgetter("priority")
_LAST_USED = attrgetter("last_used")


def gdsf_priority(inflation: float, *, hits: int, load_ms: float, size_bytes: int) -> float:
    """H = L + hits x cost / size, with cost the load time (ms) and size in MiB (at least 1 KiB)."""
    return inflation + hits * max(load_ms, 1.0) / max(size_bytes / MIB, 1 / 1024)


def choose_victims(
    candidates: Sequence[EvictionCandidate],
    need_bytes: int,
    policy: EvictionPolicy = EvictionPolicy.LRU,
) -> list[str] | None:
    """The idle models to evict, in order, until ``need_bytes`` are free.

    Returns an empty list when nothing must go, and None when even evicting every
    idle model would not free enough (then nothing should be evicted). Equal keys go
    in the order of ``candidates``.
    """
    if need_bytes <= 0:
        return []
    # One float key sorted in C: ties keep the caller's order (a tuple key costs 4-5x more,
    # and this runs on every load that needs room).
    key = _PRIORITY if policy is EvictionPolicy.GDSF else _LAST_USED
    order = sorted(candidates, key=key)
    if any(c.replicated for c in order):
        order = [c for c in order if c.replicated] + [c for c in order if not c.replicated]
    chosen: list[str] = []
    freed = 0
    for candidate in order:
        if candidate.in_use:
            continue
        chosen.append(candidate.model_id)
        freed += candidate.size_bytes
        if freed >= need_bytes:
            return chosen
    return None
