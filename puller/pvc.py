"""``pvc://<claim>/<path>``: a file or directory on a mounted PersistentVolumeClaim, not copied.

Claims are mounted under one root (``--pvc-root``, e.g. ``/pvc_mounts/<claim>``). A path that
would leave its claim's mount (``..``, an absolute path, a symlink pointing outside) is refused.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import unquote

from mesh_common.errors import ArtifactNotFound, InvalidInput, quoted
from puller.base import Artifact, ArtifactFetcher, split_uri


def split_pvc_uri(uri: str) -> tuple[str, PurePosixPath]:
    """``(claim, relative path)`` of a ``pvc://`` URI; ``InvalidInput`` for malformed ones."""
    parts = split_uri(uri)
    claim = unquote(parts.netloc)
    relative = PurePosixPath(unquote(parts.path).lstrip("/"))
    if not claim or claim in {".", ".."} or "/" in claim:
        raise InvalidInput(f"{quoted(uri)}: a pvc URI is pvc://<claim>/<path>")
    if ".." in relative.parts:
        raise InvalidInput(f"{quoted(uri)}: the path must stay inside the claim (no '..')")
    return claim, relative


class PvcFetcher(ArtifactFetcher):
    def __init__(self, root: Path) -> None:
        self.root = root

    def check(self, uri: str, *, storage: Mapping[str, Any]) -> None:
        split_pvc_uri(uri)

    def resolve(self, uri: str) -> Path:
        """The local path of ``uri`` under the mount root, refusing any escape from the claim."""
        claim, relative = split_pvc_uri(uri)
        mount = Path(os.path.realpath(self.root / claim))
        target = Path(os.path.realpath(mount / relative))
        if target != mount and mount not in target.parents:
            raise InvalidInput(
                f"{quoted(uri)} resolves outside its claim's mount (a symlink leaves it); refused"
            )
        return target

    async def fetch(self, uri: str, *, storage: Mapping[str, Any]) -> Artifact:
        path = self.resolve(uri)
        if not path.exists():
            raise ArtifactNotFound(f"artifact not found: {uri} (no {path})", uri=uri)
        return Artifact(path)
