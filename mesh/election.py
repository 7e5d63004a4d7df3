"""Which pod runs the fleet's housekeeping: an election on the registry's ``leader`` key.

Every pod campaigns for the ``leader`` key, created only if absent and bound to the
campaigning pod's lease. The key vanishes with its pod (lease expiry after a crash,
revocation on a graceful stop), and the next campaign of another pod takes it: a
hand-over within one lease TTL plus one janitor round.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable

from mesh.records import LeaderRecord
from mesh.registry import ModelStore
from mesh_common.clock import now_ms
from mesh_common.errors import MeshError

log = logging.getLogger(__name__)


class Election:
    """This pod's candidacy for the ``leader`` key; owns nothing but the campaign and the resignation."""

    def __init__(self, *, pod_id: str, store: ModelStore, lease: Callable[[], int]) -> None:
        self.pod_id = pod_id
        self._store = store
        self._lease = lease
        """This pod's current registry lease (0 before it has one: no campaign then)."""

    @property
    def leading(self) -> bool:
        """Whether the mirror says this pod holds the ``leader`` key."""
        leader = self._store.leader()
        return leader is not None and leader.pod_id == self.pod_id

    async def campaign(self) -> bool:
        """Take the key if nobody holds it; whether this pod leads now."""
        if self._store.leader() is None:
            lease = self._lease()
            if lease and await self._store.campaign(LeaderRecord(self.pod_id, now_ms()), lease=lease):
                log.info("%s runs the janitor now", self.pod_id)
        return self.leading

    async def resign(self) -> None:
        """Give the key up (a graceful stop): another pod takes it at its next campaign."""
        with contextlib.suppress(MeshError):
            await self._store.resign(self.pod_id)
