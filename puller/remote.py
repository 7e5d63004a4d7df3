"""A fetcher for one remote store, through the on-disk artifact cache."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from mesh_common.errors import InvalidInput, quoted
from puller.base import Artifact, ArtifactFetcher, split_uri
from puller.cache import ArtifactCache
from puller.config import StorageConfig, locate
from puller.store import RemoteStore


class RemoteFetcher(ArtifactFetcher):
    def __init__(self, store: RemoteStore, cache: ArtifactCache, config: StorageConfig) -> None:
        self.store = store
        self._cache = cache
        self._config = config

    def check(self, uri: str, *, storage: Mapping[str, Any]) -> None:
        parts = split_uri(uri)
        if not parts.netloc:
            raise InvalidInput(f"{quoted(uri)} names no bucket or host")
        if parts.scheme not in {"http", "https"} and not parts.path.strip("/"):
            raise InvalidInput(f"{quoted(uri)} names a bucket but no object or prefix in it")

    def close(self) -> None:
        self.store.close()

    async def fetch(self, uri: str, *, storage: Mapping[str, Any]) -> Artifact:
        location = locate(uri, storage, self._config)
        return await self._cache.get(location, self.store)
