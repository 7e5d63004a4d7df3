"""The registry interface. Its shape is etcd's: revisions, CAS on a key's mod revision, watches.

Every write returns the store's new revision; ``ModelStore`` waits for its mirror to
reach that revision, so a pod reads its own writes.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import AsyncIterator
from dataclasses import dataclass

from mesh_common.errors import Unavailable

MUST_NOT_EXIST = 0
"""``expected_revision`` for a create: the write succeeds only if the key is absent."""


class RegistryConflict(Unavailable):
    """A compare-and-swap lost a race. Callers re-read and retry; if it escapes, it is retryable."""


class RegistryCompacted(Unavailable):
    """A watch asked for history the registry no longer keeps: the reader must resync with ``range``."""

    def __init__(self, *, revision: int) -> None:
        super().__init__(f"registry history before revision {revision} was compacted", revision=revision)
        self.revision = revision


NO_LEASE = 0
"""``lease`` for a key that lives until it is deleted."""


@dataclass(frozen=True)
class Entry:
    key: str
    value: bytes
    mod_revision: int


@dataclass(frozen=True)
class WatchEvent:
    """A put (``value`` set) or a delete (``value`` None) at ``revision``."""

    key: str
    value: bytes | None
    revision: int


class Registry(ABC):
    @abstractmethod
    async def read(self, key: str) -> tuple[Entry | None, int]:
        """The entry under ``key`` (None: absent) and the revision it was read at."""

    async def get(self, key: str) -> Entry | None:
        entry, _ = await self.read(key)
        return entry

    @abstractmethod
    async def range(self, prefix: str) -> tuple[list[Entry], int]:
        """All entries under ``prefix`` and the revision they were read at."""

    @abstractmethod
    async def put(
        self, key: str, value: bytes, *, expected_revision: int | None = None, lease: int = NO_LEASE
    ) -> int:
        """Write ``value``; with ``expected_revision`` only if the key's mod revision matches.

        A key written with a ``lease`` is deleted when the lease expires or is revoked.

        Returns the new revision. Raises ``RegistryConflict`` when the revision does not match.
        """

    @abstractmethod
    async def delete(self, key: str, *, expected_revision: int | None = None) -> int:
        """Delete ``key`` (no error if absent); returns the revision after the call."""

    @abstractmethod
    def watch(self, prefix: str, *, after_revision: int) -> AsyncIterator[WatchEvent]:
        """Events under ``prefix`` with revisions above ``after_revision``, in order, until cancelled.

        Raises ``RegistryCompacted`` when that history is gone and ``Unavailable`` when the
        connection drops; the caller resumes from the last revision it saw (or resyncs).
        """

    @abstractmethod
    async def grant_lease(self, ttl_s: float) -> int:
        """A new lease that expires ``ttl_s`` seconds after its last keep-alive."""

    @abstractmethod
    async def keep_alive(self, lease: int) -> bool:
        """Refresh ``lease``; False if it has already expired (its keys are gone)."""

    @abstractmethod
    async def revoke_lease(self, lease: int) -> None:
        """End ``lease`` now, deleting its keys."""

    @property
    def reachable(self) -> bool:
        """Whether the registry answered since a call last found it unreachable (``mesh_registry_up``)."""
        return True

    async def close(self) -> None:  # noqa: B027 - nothing to release by default
        """Release connections."""
