"""ModelMesh's ``storage-config``: credentials and endpoints per storage key.

The config is a directory with one file per storage key (a mounted Kubernetes Secret) or one
JSON file ``{"<key>": {...}, ...}``. Each entry is a JSON object with a ``type`` (``s3``,
``gcs``, ``http``, ``pvc``) and that type's fields::

    s3:   access_key_id, secret_access_key, endpoint_url, region, bucket / default_bucket,
          certificate (CA PEM), addressing_style (path | virtual | auto)
    gcs:  private_key, client_email, token_uri, endpoint_url
    http: url, headers, certificate (CA PEM), client_certificate, client_key
    pvc:  name (the claim)

A registration picks an entry with ``storage_key`` in its model key JSON and may override
non-secret fields with ``storage_params`` (``{"bucket": ...}``). Without a ``storage_key`` the
entry ``default_<type>`` is used, else ``default`` when its type fits. The config is re-read
whenever its files change, so a rotated Secret needs no restart.

Credentials never leave this module's callers in text: ``StorageLocation.redact`` scrubs
them from any message, and a model key that carries credentials is refused at registration
(the registry would store them).
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from mesh_common.errors import InvalidInput, StorageConfigError, quoted

log = logging.getLogger(__name__)

# Fields whose values are secrets: never in the registry, never in a message.
SECRET_FIELDS = frozenset(
    {
        "access_key_id",
        "secret_access_key",
        "session_token",
        "private_key",
        "private_key_id",
        "client_key",
        "token",
        "password",
        "headers",
    }
)

# URI scheme -> storage-config type.
SCHEME_TYPES = {"s3": "s3", "gs": "gcs", "gcs": "gcs", "http": "http", "https": "http", "pvc": "pvc"}


class StorageConfig:
    """The storage-config entries, re-read when the directory or file changes."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._signature: object = None
        self._entries: dict[str, Any] = {}
        self._lock = threading.Lock()

    def entry(self, key: str) -> dict[str, Any] | None:
        """A copy of the entry for ``key``, or None when the config has no such key."""
        with self._lock:
            self._refresh()
            found = self._entries.get(key)
        if isinstance(found, StorageConfigError):
            raise found
        return dict(found) if found is not None else None

    def keys(self) -> list[str]:
        with self._lock:
            self._refresh()
            return sorted(self._entries)

    def _files(self) -> list[Path]:
        assert self.path is not None
        if self.path.is_dir():
            # A mounted Secret holds "..data" and "..<timestamp>" helpers next to the keys.
            return sorted(p for p in self.path.iterdir() if not p.name.startswith(".") and p.is_file())
        return [self.path] if self.path.exists() else []

    def _refresh(self) -> None:
        if self.path is None:
            return
        files = self._files()
        signature = [(p.name, p.stat().st_mtime_ns, p.stat().st_size) for p in files]
        if signature == self._signature:
            return
        self._signature = signature
        self._entries = self._read_dir(files) if self.path.is_dir() else self._read_file(files)
        log.info("storage config %s: %d key(s)", self.path, len(self._entries))

    @staticmethod
    def _read_dir(files: list[Path]) -> dict[str, Any]:
        entries: dict[str, Any] = {}
        for path in files:
            entries[path.name] = _parse_entry(path.name, path.read_text())
        return entries

    def _read_file(self, files: list[Path]) -> dict[str, Any]:
        if not files:
            return {}
        try:
            document = json.loads(files[0].read_text())
        except json.JSONDecodeError as exc:
            error = StorageConfigError(f"storage config {self.path} is not JSON (line {exc.lineno})")
            log.error("%s", error)
            return {}
        if not isinstance(document, dict):
            log.error("storage config %s must be a JSON object of storage keys", self.path)
            return {}
        return {
            key: value if isinstance(value, dict) else _parse_entry(key, value)
            for key, value in document.items()
        }


def _parse_entry(key: str, text: object) -> Any:
    """An entry from its JSON text; a broken entry becomes the error its users will get."""
    if isinstance(text, str):
        try:
            value = json.loads(text)
        except json.JSONDecodeError as exc:
            return StorageConfigError(f"storage config entry {key!r} is not JSON (line {exc.lineno})")
        if isinstance(value, dict):
            return value
    return StorageConfigError(f"storage config entry {key!r} must be a JSON object")


@dataclass(frozen=True)
class StorageLocation:
    """Where an artifact is, and the merged storage-config entry used to reach it.

    ``uri`` is credential-free and canonical (``s3://bucket/key``); ``params`` holds secrets.
    """

    uri: str
    type: str
    bucket: str
    path: str
    params: Mapping[str, Any] = field(repr=False)

    def secrets(self) -> list[str]:
        values: list[str] = []
        for name in SECRET_FIELDS:
            value = self.params.get(name)
            if isinstance(value, str):
                values.append(value)
            elif isinstance(value, Mapping):  # headers: every value may be a token
                for item in value.values():
                    values.extend(item if isinstance(item, list) else [str(item)])
        return [v for v in values if len(v) >= 4]

    def redact(self, text: str) -> str:
        """``text`` with every credential of this location replaced by ``***``."""
        for secret in sorted(self.secrets(), key=len, reverse=True):
            text = text.replace(secret, "***")
        return text


def check_model_key(storage: Mapping[str, Any]) -> None:
    """Refuse model keys that would put credentials into the registry."""
    params = storage.get("storage_params", {})
    if not isinstance(params, Mapping):
        raise InvalidInput("modelInfo.key: storage_params must be a JSON object")
    leaked = sorted((set(params) | set(storage)) & SECRET_FIELDS)
    if leaked:
        raise InvalidInput(
            f"modelInfo.key carries credentials ({', '.join(leaked)}); they belong in the storage "
            "config (a Secret), named by storage_key, and are not stored in the registry"
        )
    key = storage.get("storage_key")
    if key is not None and not isinstance(key, str):
        raise InvalidInput("modelInfo.key: storage_key must be a string")


def locate(uri: str, storage: Mapping[str, Any], config: StorageConfig) -> StorageLocation:
    """The location of a remote artifact: its URI's parts and its storage-config entry.

    Raises:
        StorageConfigError: the named storage key is missing, or its type does not fit the URI.
    """
    parts = urlsplit(uri)
    scheme = parts.scheme.lower()
    kind = SCHEME_TYPES[scheme]
    entry = _entry_for(kind, storage, config)
    entry_type = entry.get("type")
    if entry_type is not None and SCHEME_TYPES.get(str(entry_type), str(entry_type)) != kind:
        raise StorageConfigError(
            f"storage key {quoted(storage.get('storage_key'))} is of type {quoted(entry_type)}, "
            f"but {quoted(uri)} needs {kind!r}"
        )
    params = {**entry, **dict(storage.get("storage_params") or {}), "type": kind}
    bucket = parts.netloc
    path = parts.path.lstrip("/")
    if kind == "http":
        bucket, path = f"{scheme}://{parts.netloc}", uri
    return StorageLocation(uri=uri, type=kind, bucket=bucket, path=path, params=params)


def _entry_for(kind: str, storage: Mapping[str, Any], config: StorageConfig) -> dict[str, Any]:
    key = storage.get("storage_key")
    if key:
        entry = config.entry(str(key))
        if entry is None:
            known = ", ".join(config.keys()) or "none"
            raise StorageConfigError(
                f"storage key {quoted(key)} is not in the storage config (keys: {known})", storage_key=key
            )
        return entry
    for candidate in (f"default_{kind}", "default"):
        entry = config.entry(candidate)
        if entry is not None and SCHEME_TYPES.get(str(entry.get("type", kind)), "") == kind:
            return entry
    return {}


def storage_uri(path: str, storage: Mapping[str, Any], config: StorageConfig) -> str:
    """The URI of a ModelMesh-style registration: a path inside the storage its key names."""
    kind = storage.get("storage_params", {}).get("type")
    key = storage.get("storage_key")
    entry = _entry_for(str(kind or ""), storage, config) if key else {}
    params = {**entry, **dict(storage.get("storage_params") or {})}
    kind = SCHEME_TYPES.get(str(params.get("type", "")), str(params.get("type", "")))
    relative = path.lstrip("/")
    if kind in {"s3", "gcs"}:
        bucket = params.get("bucket") or storage.get("bucket") or params.get("default_bucket")
        if not bucket:
            raise StorageConfigError(
                f"path {quoted(path)}: storage key {quoted(key)} names no bucket (set storage_params.bucket)"
            )
        return f"{'s3' if kind == 's3' else 'gs'}://{bucket}/{relative}"
    if kind == "http":
        if not params.get("url"):
            raise StorageConfigError(f"path {quoted(path)}: storage key {quoted(key)} has no url")
        return f"{str(params['url']).rstrip('/')}/{relative}"
    if kind == "pvc":
        if not params.get("name"):
            raise StorageConfigError(f"path {quoted(path)}: storage key {quoted(key)} names no claim (name)")
        return f"pvc://{params['name']}/{relative}"
    raise StorageConfigError(
        f"path {quoted(path)}: storage key {quoted(key)} has no known type (s3, gcs, http, pvc)"
    )


def pem_file(directory: Path, name: str, text: str) -> Path:
    """Write PEM text to a private file (ssl and botocore load certificates from files)."""
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    path = directory / name
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
    return path
