"""Which loaded models to evict to make room for a load.

The policy is least-recently-used over idle models: a model serving a request
(``in_use`` > 0) or still loading is never chosen. It is the floor the fleet's
cost-aware policy must beat.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class EvictionCandidate:
    model_id: str
    size_bytes: int
    last_used: float
    """Monotonic seconds of the last use."""
    in_use: int = 0


def choose_victims(candidates: Sequence[EvictionCandidate], need_bytes: int) -> list[str] | None:
    """The fewest least-recently-used idle models whose sizes add up to ``need_bytes``.

    Returns an empty list when nothing must go, and None when even evicting every
    idle model would not free enough.
    """
    if need_bytes <= 0:
        return []
    chosen: list[str] = []
    freed = 0
    for candidate in sorted(candidates, key=lambda c: (c.last_used, c.model_id)):
        if candidate.in_use:
            continue
        chosen.append(candidate.model_id)
        freed += candidate.size_bytes
        if freed >= need_bytes:
            return chosen
    return None
