"""The registry interface. Its shape is etcd's: revisions, CAS on a key's mod revision, watches.

Every write returns the store's new revision; ``ModelStore`` waits for its mirror to
reach that revision, so a pod reads its own writes.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import AsyncIterator
from dataclasses import dataclass

from mesh.errors import Unavailable

MUST_NOT_EXIST = 0
"""``expected_revision`` for a create: the write succeeds only if the key is absent."""


class RegistryConflict(Unavailable):
    """A compare-and-swap lost a race. Callers re-read and retry; if it escapes, it is retryable."""


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
    async def get(self, key: str) -> Entry | None: ...

    @abstractmethod
    async def range(self, prefix: str) -> tuple[list[Entry], int]:
        """All entries under ``prefix`` and the revision they were read at."""

    @abstractmethod
    async def put(self, key: str, value: bytes, *, expected_revision: int | None = None) -> int:
        """Write ``value``; with ``expected_revision`` only if the key's mod revision matches.

        Returns the new revision. Raises ``RegistryConflict`` when the revision does not match.
        """

    @abstractmethod
    async def delete(self, key: str, *, expected_revision: int | None = None) -> int:
        """Delete ``key`` (no error if absent); returns the revision after the call."""

    @abstractmethod
    def watch(self, prefix: str, *, after_revision: int) -> AsyncIterator[WatchEvent]:
        """Events under ``prefix`` with revisions above ``after_revision``, in order, until cancelled."""

    async def close(self) -> None:  # noqa: B027 - nothing to release by default
        """Release connections."""
