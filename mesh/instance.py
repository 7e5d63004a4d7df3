"""This pod's instance record: published under a lease the pod keeps alive.

The record is republished when something in it changes (capacity, use, loads,
request load), at most once per ``min_interval_s``. Keep-alives go out every third
of the lease's TTL. If the lease was lost (etcd was down or silent longer than the
TTL), a new lease is granted, the record published again, and then ``on_rejoin`` is
called: the fleet may have forgotten the copies recorded for this pod meanwhile, and
they are written back only once the record is there again (the janitor forgets the
copies of a pod with no instance record). Revoking the lease on stop removes the
record at once; a killed pod's record vanishes when its TTL runs out.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import replace

from mesh.records import InstanceRecord
from mesh.registry import ModelStore, Registry
from mesh_common.clock import now_ms
from mesh_common.errors import Unavailable

log = logging.getLogger(__name__)


class InstancePublisher:
    def __init__(
        self,
        *,
        registry: Registry,
        store: ModelStore,
        describe: Callable[[], InstanceRecord],
        ttl_s: float,
        min_interval_s: float,
        on_rejoin: Callable[[], None] = lambda: None,
        changed: asyncio.Event | None = None,
    ) -> None:
        """``changed`` is set by whoever sees the record may have changed (the pod's cache events
        share it from their construction); ``changed()`` sets it too."""
        self._registry = registry
        self._store = store
        self._describe = describe
        self._ttl_s = ttl_s
        self._min_interval_s = min_interval_s
        self._lease = 0
        self._published: InstanceRecord | None = None
        self._on_rejoin = on_rejoin
        self._rejoining = False
        """A new lease replaced a lost one and the record under it is not published yet."""
        self._changed = changed if changed is not None else asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Grant the lease and publish; fails (``Unavailable``) if the registry is unreachable."""
        self._lease = await self._registry.grant_lease(self._ttl_s)
        await self._publish()
        self._task = asyncio.create_task(self._run(), name="instance-publisher")

    @property
    def lease(self) -> int:
        """The lease this pod's records live under (0 while it has none)."""
        return self._lease

    def changed(self) -> None:
        """Something in the record may have changed: republish soon."""
        self._changed.set()

    async def stop(self) -> None:
        """Stop publishing and revoke the lease, which removes the record."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._lease:
            with contextlib.suppress(Unavailable):
                await self._registry.revoke_lease(self._lease)
            self._lease = 0

    async def _run(self) -> None:
        keepalive_every = self._ttl_s / 3
        next_keepalive = time.monotonic() + keepalive_every
        failing = False
        while True:
            timeout = max(next_keepalive - time.monotonic(), 0)
            # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a cancellation
            # that arrives as the event is set, and stop() would wait forever.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await self._changed.wait()
            try:
                if time.monotonic() >= next_keepalive:
                    await self._keep_alive()
                    next_keepalive = time.monotonic() + keepalive_every
                    if failing:
                        log.info("this pod's registry lease is being kept alive again")
                    failing = False
                if self._changed.is_set():
                    self._changed.clear()
                    if self._describe() != self._published:  # the stamp is added on publishing
                        await self._publish()
                    await asyncio.sleep(self._min_interval_s)
            except Unavailable as exc:
                if not failing:
                    log.warning("could not refresh this pod's registry record (retrying): %s", exc)
                failing = True
                next_keepalive = time.monotonic() + min(keepalive_every, 1.0)
                self._changed.set()
                await asyncio.sleep(min(keepalive_every, 1.0))

    async def _keep_alive(self) -> None:
        if await self._registry.keep_alive(self._lease):
            return
        log.warning("this pod's registry lease expired; rejoining with a new one")
        self._lease = await self._registry.grant_lease(self._ttl_s)
        self._published = None
        self._rejoining = True
        await self._publish()

    async def _publish(self) -> None:
        record = self._describe()
        await self._store.publish_instance(replace(record, published_ms=now_ms()), lease=self._lease)
        self._published = record
        if self._rejoining:
            self._rejoining = False
            log.info("this pod rejoined the fleet under a new registry lease")
            self._on_rejoin()

    async def publish_now(self) -> None:
        """Publish the current record at once (e.g. the shutting-down flag)."""
        with contextlib.suppress(Unavailable):
            await self._publish()
