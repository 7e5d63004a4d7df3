"""Local paths and ``file://`` URIs: nothing is copied."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from mesh_common.errors import ArtifactNotFound
from puller.base import Artifact, ArtifactFetcher


class LocalFetcher(ArtifactFetcher):
    async def fetch(self, uri: str, *, storage: Mapping[str, Any]) -> Artifact:
        path = Path(unquote(urlsplit(uri).path)) if uri.startswith("file://") else Path(uri)
        if not path.exists():
            raise ArtifactNotFound(f"artifact not found: {uri}", uri=uri)
        return Artifact(path)
