"""The fetcher interface: a model's path or URI in, a local path holding the artifact out.

A fetch hands out an ``Artifact``. While the model loads from it the artifact is pinned; once
the model is loaded the owner calls ``loaded()`` (the files may now go if room is needed, but
only after every artifact no loaded model uses), and ``release()`` when the model is unloaded
or its load failed.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import SplitResult, urlsplit

from mesh_common.errors import InvalidInput, quoted, quoted_uri
from puller.config import StorageConfig, check_model_key, storage_uri


class UnsupportedScheme(InvalidInput):
    pass


def _nothing() -> None:
    return None


@dataclass
class Artifact:
    """A local file or directory holding a model's artifact, and the hold on it."""

    path: Path
    on_loaded: Callable[[], None] = field(default=_nothing, repr=False)
    on_release: Callable[[], None] = field(default=_nothing, repr=False)
    _state: str = "loading"

    def loaded(self) -> None:
        """The model is in memory: the files are no longer needed to serve it."""
        if self._state == "loading":
            self._state = "loaded"
            self.on_loaded()

    def release(self) -> None:
        """The model is gone (unloaded or failed): nothing of ours uses the files."""
        if self._state != "released":
            self._state = "released"
            self.on_release()


class ArtifactFetcher(ABC):
    @abstractmethod
    async def fetch(self, uri: str, *, storage: Mapping[str, Any]) -> Artifact:
        """The artifact at ``uri``, on local disk and pinned until ``loaded()``/``release()``.

        ``storage`` is the model key's parsed JSON (``storage_key``, ``storage_params``).
        Raises ``mesh_common.errors.FailedPrecondition`` subclasses when the artifact is missing,
        refused or corrupt, ``Unavailable`` when the store cannot be reached.
        """

    def check(self, uri: str, *, storage: Mapping[str, Any]) -> None:  # noqa: B027 - optional
        """Raise ``InvalidInput`` if a registration with this path and key can never work."""

    def close(self) -> None:  # noqa: B027 - most fetchers hold nothing
        """Release clients and pools."""


class FetcherTable:
    """Chooses a fetcher by the URI's scheme; a bare path has the scheme ``""``.

    With a storage config, a bare path whose model key names a ``storage_key`` (or a
    ``storage_params.type``) is a path inside that storage, as ModelMesh registrations have it:
    ``path="sklearn/model.joblib"`` with ``{"storage_key": "minio", "storage_params":
    {"bucket": "models"}}`` is ``s3://models/sklearn/model.joblib``.
    """

    def __init__(
        self, fetchers: Mapping[str, ArtifactFetcher], *, config: StorageConfig | None = None
    ) -> None:
        self._fetchers = dict(fetchers)
        self._config = config

    async def fetch(self, path: str, *, storage: Mapping[str, Any]) -> Artifact:
        uri = self.uri(path, storage=storage)
        return await self.for_uri(uri).fetch(uri, storage=storage)

    def uri(self, path: str, *, storage: Mapping[str, Any]) -> str:
        """The URI a registration's path and model key name."""
        if scheme_of(path) or self._config is None:
            return path
        params = storage.get("storage_params") or {}
        if not storage.get("storage_key") and not params.get("type"):
            return path
        return storage_uri(path, storage, self._config)

    def close(self) -> None:
        for fetcher in {id(f): f for f in self._fetchers.values()}.values():
            fetcher.close()

    def schemes(self) -> list[str]:
        return sorted(s for s in self._fetchers if s)

    def for_uri(self, uri: str) -> ArtifactFetcher:
        scheme = scheme_of(uri)
        try:
            return self._fetchers[scheme]
        except KeyError:
            raise UnsupportedScheme(
                f"unsupported storage scheme {quoted(scheme)} in {quoted(uri)}; supported: local paths and "
                f"{', '.join(s + '://' for s in self.schemes())}",
            ) from None

    def check(self, path: str, *, storage: Mapping[str, Any]) -> None:
        """Refuse registrations that can never load: unknown scheme, malformed URI, credentials
        in the model key. A missing storage key is a load failure instead: the Secret may follow."""
        check_model_key(storage)
        self.for_uri(path).check(path, storage=storage)


def scheme_of(uri: str) -> str:
    """The URI's scheme, or ``""`` for a plain path."""
    if "://" not in uri:
        return ""
    return split_uri(uri).scheme.lower()


def split_uri(uri: str) -> SplitResult:
    """``urlsplit``, with ``InvalidInput`` for what it cannot split (``http://[::1``: an unclosed
    IPv6 address; a host that Unicode normalization would change)."""
    try:
        return urlsplit(uri)
    except ValueError as exc:
        raise InvalidInput(f"{quoted_uri(uri)} is not a valid URI: {exc}") from None
