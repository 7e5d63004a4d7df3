"""Finding the model file inside a local artifact path.

A path may name the file itself, a directory holding it, or a Triton-style
repository ``<name>/<version>/model.<ext>`` (the highest numeric version wins).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from mesh_common.errors import ArtifactNotFound


def find_artifact(path: Path, suffixes: Iterable[str]) -> Path:
    """The one model file under ``path`` with one of ``suffixes``.

    Raises:
        ArtifactNotFound: nothing (or more than one candidate) matches.
    """
    wanted = tuple(suffixes)
    if path.is_file():
        return path
    if not path.is_dir():
        raise ArtifactNotFound(f"artifact path {str(path)!r} does not exist")
    found = _search(path, wanted, depth=2)
    if found is None:
        raise ArtifactNotFound(
            f"no file ending in {', '.join(wanted)} under {str(path)!r} "
            "(looked in the directory, its numeric version folders and a single model folder)"
        )
    return found


def _search(directory: Path, suffixes: tuple[str, ...], depth: int) -> Path | None:
    """The model file in ``directory``, else in its highest numeric version folder that has one,
    else in its one subfolder (``depth`` levels down at most)."""
    found = _model_file(directory, suffixes)
    if found is not None or depth == 0:
        return found
    subdirs = [p for p in directory.iterdir() if p.is_dir() and not p.name.startswith(".")]
    versions = sorted((p for p in subdirs if p.name.isdigit()), key=lambda p: int(p.name), reverse=True)
    for version in versions:
        found = _search(version, suffixes, depth - 1)
        if found is not None:
            return found
    if len(subdirs) == 1 and not versions:
        return _search(subdirs[0], suffixes, depth - 1)
    return None


def _model_file(directory: Path, suffixes: tuple[str, ...]) -> Path | None:
    """The one file in ``directory`` (not below) with one of ``suffixes``; of several, the one named
    ``model*``. Raises ``ArtifactNotFound`` when that still leaves more than one."""
    files = sorted(p for p in directory.iterdir() if p.is_file() and p.name.endswith(suffixes))
    if not files:
        return None
    candidates = [p for p in files if p.name.startswith("model")] or files
    if len(candidates) > 1:
        raise ArtifactNotFound(
            f"several model files under {str(directory)!r}: {', '.join(p.name for p in candidates)}"
        )
    return candidates[0]


def artifact_bytes(path: Path) -> int:
    """Total bytes of the files at ``path`` (a file or a directory tree)."""
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
