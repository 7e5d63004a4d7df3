"""The janitor: the loop that, on the pod elected to lead (``mesh.election``), runs the fleet's
housekeeping chores (``mesh.chores``) once a round, and at once when woken (a pod left);
``build_janitor`` gives it the election and the chores in the order a round runs them.

A round that finds the registry down logs and waits for the next; a bug in a chore is logged
and never ends housekeeping for the whole fleet.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Sequence

from mesh.chores import (
    Chore,
    Copies,
    CopyScaling,
    DeadPodForgetter,
    DeadPods,
    FailureExpiry,
    Preloads,
    TenantCaps,
)
from mesh.election import Election
from mesh.registry import ModelStore
from mesh.settings import MeshSettings
from mesh_common.errors import MeshError
from placement.cluster import ClusterView
from placement.copies import CopyPolicy

log = logging.getLogger(__name__)


class Janitor:
    """Runs ``chores`` in order each ``interval_s`` seconds while ``election`` says this pod leads."""

    def __init__(
        self,
        *,
        election: Election,
        chores: Sequence[Chore],
        interval_s: float,
        on_round: Callable[[], None] = lambda: None,
    ) -> None:
        self.election = election
        self._chores = tuple(chores)
        self._interval_s = interval_s
        self._on_round = on_round
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.rounds = 0
        """Rounds completed as leader (``mesh status`` shows them: a janitor that leads but whose
        count stands still is stuck)."""

    @property
    def leading(self) -> bool:
        return self.election.leading

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="janitor")

    def wake(self) -> None:
        """Something changed (a pod left): run a round now rather than at the next tick."""
        self._wake.set()

    async def stop(self) -> None:
        """End the loop and resign: another pod takes the role at its next round."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await self.election.resign()

    async def _run(self) -> None:
        while True:
            try:
                await self.round()
            except MeshError as exc:  # the registry is down: try again next round
                log.warning("janitor round failed: %s", exc)
            except Exception:  # a bug must not end housekeeping for the whole fleet
                log.exception("janitor round failed unexpectedly")
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._interval_s):
                    await self._wake.wait()
            self._wake.clear()

    async def round(self) -> None:
        """Campaign if nobody leads; if this pod leads, run each chore once."""
        if not await self.election.campaign():
            return
        for chore in self._chores:
            await chore.run()
        self.rounds += 1
        self._on_round()


def build_janitor(
    *,
    pod_id: str,
    store: ModelStore,
    manager: DeadPodForgetter,
    lease: Callable[[], int],
    view: Callable[[], ClusterView],
    load: Callable[[str, float], Awaitable[None]],
    settings: MeshSettings,
    copies: Copies,
    copy_policy: CopyPolicy,
    on_round: Callable[[], None] = lambda: None,
) -> Janitor:
    """The janitor: this pod's election and the fleet's chores, in the order a round runs them."""
    s = settings
    return Janitor(
        election=Election(pod_id=pod_id, store=store, lease=lease),
        chores=(
            DeadPods(manager),
            FailureExpiry(store, failure_ttl_s=s.failure_ttl_s),
            Preloads(
                store, view=view, load=load, per_round=s.preloads_per_round, load_timeout_s=s.load_timeout_s
            ),
            CopyScaling(
                store,
                view=view,
                copies=copies,
                policy=copy_policy,
                per_round=s.copies_per_round,
                failure_ttl_s=s.failure_ttl_s,
                load_timeout_s=s.load_timeout_s,
            ),
            TenantCaps(store, copies=copies, load_timeout_s=s.load_timeout_s),
        ),
        interval_s=s.janitor_interval_s,
        on_round=on_round,
    )
