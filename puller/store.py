"""The interface of a remote object store (S3, GCS, HTTP), as the artifact cache uses it.

A store lists what an artifact URI names (one object, or every object under a prefix) with
each object's version and checksum, and downloads one object to a local file, verifying what
the store lets it verify. Both calls block: the cache runs them in its download threads.

Stores raise ``TransientStorageError`` for what a retry can fix (connection reset, 5xx,
throttling, a cut download) and the ``mesh_common.errors`` artifact errors for what it cannot.
"""

from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from mesh_common.errors import ArtifactCorrupt, MeshError
from puller.config import StorageLocation

Progress = Callable[[int], None]
"""Called with the number of bytes just written (from any download thread)."""


class TransientStorageError(Exception):
    """A failure a retry can fix; the message names the URI, never a credential."""


@dataclass(frozen=True)
class RemoteObject:
    """One object of an artifact: its name in the store, its path in the artifact, its version."""

    name: str
    relative: str
    size: int
    version: str
    """ETag, generation or Last-Modified: a new value means new content."""


@dataclass(frozen=True)
class Listing:
    objects: tuple[RemoteObject, ...]
    single: bool
    """True when the URI names one object (the artifact is a file), False for a prefix."""

    @property
    def size(self) -> int:
        return sum(max(o.size, 0) for o in self.objects)

    def version(self) -> str:
        """One version for the whole artifact: it changes when any object changes."""
        digest = hashlib.sha256()
        for obj in sorted(self.objects, key=lambda o: o.name):
            digest.update(f"{obj.name}\0{obj.size}\0{obj.version}\n".encode())
        return digest.hexdigest()[:32]


class RemoteStore(ABC):
    @abstractmethod
    def list(self, location: StorageLocation) -> Listing:
        """The objects ``location`` names. Raises ``ArtifactNotFound`` when there are none."""

    @abstractmethod
    def download(self, location: StorageLocation, obj: RemoteObject, dest: Path, progress: Progress) -> None:
        """Write ``obj`` to ``dest`` (a new file) and verify it. Raises ``ArtifactCorrupt`` on a mismatch."""

    def close(self) -> None:  # noqa: B027 - stores without pools hold nothing
        """Release clients and pools."""


class translated:
    """``with translated(location, translate):`` maps a store library's exceptions to ours.

    ``translate(exc, uri)`` raises the mesh error or ``TransientStorageError`` for ``exc``, or
    returns to let it propagate. Exceptions that are already ours pass through untouched.
    """

    def __init__(self, location: StorageLocation, translate: Callable[[BaseException, str], None]) -> None:
        self._location = location
        self._translate = translate

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: object, exc: BaseException | None, tb: object) -> None:
        if exc is not None and not isinstance(exc, MeshError | TransientStorageError):
            self._translate(exc, self._location.uri)


def relative_name(name: str, prefix: str) -> str:
    """The path of object ``name`` inside an artifact stored under ``prefix``."""
    relative = name[len(prefix) :].lstrip("/") if prefix else name
    parts = [p for p in relative.split("/") if p]
    if not parts or any(p in {".", ".."} for p in parts):
        raise ArtifactCorrupt(f"object name {name!r} would leave the artifact's directory; refused")
    return "/".join(parts)
