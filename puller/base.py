"""The fetcher interface: a model's path or URI in, a local path holding the artifact out."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from mesh.errors import InvalidInput


class UnsupportedScheme(InvalidInput):
    pass


class ArtifactFetcher(ABC):
    @abstractmethod
    async def fetch(self, uri: str, *, storage: Mapping[str, Any]) -> Path:
        """A local file or directory holding the artifact at ``uri``.

        ``storage`` is the model key's parsed JSON (``storage_key``, ``storage_params``).
        Raises ``mesh.errors.FailedPrecondition`` subclasses when the artifact is missing.
        """

    async def release(self, uri: str) -> None:  # noqa: B027 - local paths hold nothing
        """The pod no longer uses the artifact at ``uri`` (a cache may reclaim it)."""


class FetcherTable:
    """Chooses a fetcher by the URI's scheme; a bare path has the scheme ``""``."""

    def __init__(self, fetchers: Mapping[str, ArtifactFetcher]) -> None:
        self._fetchers = dict(fetchers)

    def schemes(self) -> list[str]:
        return sorted(s for s in self._fetchers if s)

    def for_uri(self, uri: str) -> ArtifactFetcher:
        scheme = scheme_of(uri)
        try:
            return self._fetchers[scheme]
        except KeyError:
            raise UnsupportedScheme(
                f"unsupported storage scheme {scheme!r} in {uri!r}; supported: local paths and "
                f"{', '.join(s + '://' for s in self.schemes())}",
            ) from None


def scheme_of(uri: str) -> str:
    """The URI's scheme, or ``""`` for a plain path."""
    if "://" not in uri:
        return ""
    return urlsplit(uri).scheme.lower()
