"""An in-memory registry for a single pod and for unit tests: same semantics as etcd's.

Leases here never expire by time (the registry dies with its one process); revoking
one deletes its keys, as in etcd.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import AsyncIterator

from mesh.registry.base import (
    MUST_NOT_EXIST,
    NO_LEASE,
    Entry,
    Registry,
    RegistryCompacted,
    RegistryConflict,
    WatchEvent,
)

_HISTORY = 10_000
"""Events kept so a watch can resume from a recent revision."""


class MemoryRegistry(Registry):
    def __init__(self, *, history: int = _HISTORY) -> None:
        self._history_size = history
        self._data: dict[str, Entry] = {}
        self._revision = 0
        self._history: list[WatchEvent] = []
        self._changed = asyncio.Condition()
        self._leases: dict[int, set[str]] = {}
        self._next_lease = 1

    async def read(self, key: str) -> tuple[Entry | None, int]:
        return self._data.get(key), self._revision

    async def range(self, prefix: str) -> tuple[list[Entry], int]:
        entries = [entry for key, entry in sorted(self._data.items()) if key.startswith(prefix)]
        return entries, self._revision

    async def put(
        self, key: str, value: bytes, *, expected_revision: int | None = None, lease: int = NO_LEASE
    ) -> int:
        self._check(key, expected_revision)
        for keys in self._leases.values():
            keys.discard(key)
        if lease != NO_LEASE:
            if lease not in self._leases:
                raise RegistryConflict(f"lease {lease} has expired", key=key)
            self._leases[lease].add(key)
        self._revision += 1
        self._data[key] = Entry(key, value, self._revision)
        await self._record(WatchEvent(key, value, self._revision))
        return self._revision

    async def delete(self, key: str, *, expected_revision: int | None = None) -> int:
        self._check(key, expected_revision)
        if key in self._data:
            self._revision += 1
            del self._data[key]
            await self._record(WatchEvent(key, None, self._revision))
        return self._revision

    async def watch(self, prefix: str, *, after_revision: int) -> AsyncIterator[WatchEvent]:
        seen = after_revision
        while True:
            if self._history and seen < self._history[0].revision - 1:
                raise RegistryCompacted(revision=self._history[0].revision - 1)
            async with self._changed:
                await self._changed.wait_for(functools.partial(self._newer_than, seen))
                if self._history[0].revision > seen + 1:
                    raise RegistryCompacted(revision=self._history[0].revision - 1)
                events = [e for e in self._history if e.revision > seen]
            seen = self._revision
            for event in events:
                if event.key.startswith(prefix):
                    yield event

    async def grant_lease(self, ttl_s: float) -> int:
        lease = self._next_lease
        self._next_lease += 1
        self._leases[lease] = set()
        return lease

    async def keep_alive(self, lease: int) -> bool:
        return lease in self._leases

    async def revoke_lease(self, lease: int) -> None:
        for key in sorted(self._leases.pop(lease, set())):
            await self.delete(key)

    def _newer_than(self, revision: int) -> bool:
        return self._revision > revision

    def _check(self, key: str, expected_revision: int | None) -> None:
        if expected_revision is None:
            return
        current = self._data.get(key)
        actual = current.mod_revision if current else MUST_NOT_EXIST
        if actual != expected_revision:
            raise RegistryConflict(f"registry key {key!r} changed concurrently", key=key)

    async def _record(self, event: WatchEvent) -> None:
        self._history.append(event)
        del self._history[: -self._history_size]
        async with self._changed:
            self._changed.notify_all()
