"""Tenant caps: may a tenant register one more model, and which of its own copies make room.

A tenant over its loaded-bytes cap pays with its own models, never another tenant's:
before one of its models loads, ``tenant_victims`` picks copies of that tenant's
other models to unload, coldest first, until the new load fits under the cap. Cold
means serving the fewest requests now; among equally cold copies those on the
loading pod go first (unloading them frees room exactly where the load needs it, so
that pod's cache has no reason to evict another tenant's model), then the least
recently used. Copies serving a request or still loading are never picked.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class TenantCopy:
    model_id: str
    pod_id: str
    size_bytes: int
    rate: float = 0.0
    """Requests/s the copy serves now (0: idle)."""
    last_used_ms: int = 0
    """Best known last use (0: unknown, treated as oldest)."""
    busy: bool = False
    """Serving a request or still loading: never a victim."""


def tenant_victims(
    copies: Sequence[TenantCopy], *, cap_bytes: int, need_bytes: int, loading_pod: str
) -> list[TenantCopy] | None:
    """Copies to unload so the tenant's loaded bytes plus ``need_bytes`` fit in ``cap_bytes``.

    ``copies`` are all the tenant's copies in the fleet (they count toward its use).
    Returns ``[]`` when the load fits as is, None when even unloading every idle copy
    would not make it fit.
    """
    over = sum(c.size_bytes for c in copies) + need_bytes - cap_bytes
    if over <= 0:
        return []
    idle = sorted(
        (c for c in copies if not c.busy),
        key=lambda c: (c.rate, c.pod_id != loading_pod, c.last_used_ms, c.model_id, c.pod_id),
    )
    victims: list[TenantCopy] = []
    for copy in idle:
        victims.append(copy)
        over -= copy.size_bytes
        if over <= 0:
            return victims
    return None


def registration_refusal(tenant: str, *, registered: int, cap: int) -> str | None:
    """Why the tenant may not register another model (None: it may)."""
    if cap and registered >= cap:
        return f"tenant {tenant!r} has {registered} registered models; its cap is {cap}"
    return None
