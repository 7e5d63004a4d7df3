"""``gs://bucket/path``: Google Cloud Storage through google-cloud-storage.

Honours ``STORAGE_EMULATOR_HOST`` (the client library does). Credentials: a service account's
``private_key`` and ``client_email`` from the storage config; without them, the environment's
default credentials, else anonymous access (public buckets, the emulator). Each object is
pinned to the generation listed and verified by CRC32C; large objects download in parallel
chunks (the library's transfer manager, which checks the whole object's CRC32C).
"""

from __future__ import annotations

import os
import threading
from pathlib import Path, PurePosixPath
from typing import Any

import google.auth
import google.auth.exceptions
import requests
from google.api_core import exceptions as api_errors
from google.auth.credentials import AnonymousCredentials
from google.cloud import storage
from google.cloud.storage import transfer_manager
from google.oauth2 import service_account

from mesh_common.errors import ArtifactAccessDenied, ArtifactCorrupt, ArtifactNotFound, StorageConfigError
from puller.config import StorageLocation
from puller.store import (
    Listing,
    Progress,
    RemoteObject,
    RemoteStore,
    TransientStorageError,
    relative_name,
    translated,
)

try:
    from google.resumable_media.common import DataCorruption
except ImportError:  # pragma: no cover - older layouts
    DataCorruption = ValueError  # type: ignore[assignment,misc]


class GcsStore(RemoteStore):
    def __init__(self, *, concurrency: int = 8, chunk_bytes: int = 16 << 20) -> None:
        self._concurrency = concurrency
        self._chunk = chunk_bytes
        self._clients: dict[tuple[str, ...], storage.Client] = {}
        self._lock = threading.Lock()

    def client(self, params: Any) -> storage.Client:
        identity = tuple(
            str(params.get(f, "")) for f in ("private_key", "client_email", "token_uri", "endpoint_url")
        )
        with self._lock:
            client = self._clients.get(identity)
            if client is None:
                client = self._clients[identity] = _new_client(params)
            return client

    def list(self, location: StorageLocation) -> Listing:
        bucket = self.client(location.params).bucket(location.bucket)
        path = location.path
        with translated(location, _translate):
            if path and not path.endswith("/"):
                blob = bucket.get_blob(path)
                if blob is not None:
                    return Listing((_object(blob, PurePosixPath(path).name),), single=True)
            prefix = path.rstrip("/") + "/" if path else ""
            objects = [
                _object(blob, relative_name(blob.name, prefix))
                for blob in bucket.list_blobs(prefix=prefix)
                if not blob.name.endswith("/")
            ]
        if not objects:
            raise ArtifactNotFound(f"artifact not found: {location.uri}", uri=location.uri)
        return Listing(tuple(objects), single=False)

    def download(self, location: StorageLocation, obj: RemoteObject, dest: Path, progress: Progress) -> None:
        bucket = self.client(location.params).bucket(location.bucket)
        with translated(location, _translate):
            blob = bucket.get_blob(obj.name, generation=int(obj.version))
            if blob is None:
                raise TransientStorageError(f"{location.uri}: {obj.relative} changed while downloading")
            try:
                if obj.size > self._chunk and blob.crc32c:
                    transfer_manager.download_chunks_concurrently(
                        blob,
                        str(dest),
                        chunk_size=self._chunk,
                        max_workers=self._concurrency,
                        worker_type=transfer_manager.THREAD,
                        crc32c_checksum=True,
                    )
                else:
                    blob.download_to_filename(str(dest), checksum="crc32c" if blob.crc32c else "md5")
            except DataCorruption:
                raise ArtifactCorrupt(
                    f"artifact {location.uri}: {obj.relative} does not match its checksum; refused"
                ) from None
            progress(dest.stat().st_size)


def _object(blob: Any, relative: str) -> RemoteObject:
    return RemoteObject(blob.name, relative, int(blob.size or 0), str(blob.generation))


def _new_client(params: Any) -> storage.Client:
    options = {"api_endpoint": params["endpoint_url"]} if params.get("endpoint_url") else None
    if params.get("private_key") or params.get("client_email"):
        if not (params.get("private_key") and params.get("client_email")):
            raise StorageConfigError("a GCS storage key needs both private_key and client_email")
        info = {
            "type": "service_account",
            "private_key": params["private_key"],
            "client_email": params["client_email"],
            "token_uri": params.get("token_uri") or "https://oauth2.googleapis.com/token",
        }
        credentials = service_account.Credentials.from_service_account_info(info)
        return storage.Client(project="-", credentials=credentials, client_options=options)
    if os.environ.get("STORAGE_EMULATOR_HOST"):
        return storage.Client(project="-", credentials=AnonymousCredentials(), client_options=options)
    try:
        credentials, project = google.auth.default()
    except google.auth.exceptions.DefaultCredentialsError:
        return storage.Client.create_anonymous_client()
    return storage.Client(project=project or "-", credentials=credentials, client_options=options)


def _translate(exc: BaseException, uri: str) -> None:
    """boto3/google exceptions as the mesh's: not found, denied, corrupt, transient, misconfigured."""
    if isinstance(exc, api_errors.NotFound):
        raise ArtifactNotFound(f"artifact not found: {uri}", uri=uri) from None
    if isinstance(exc, api_errors.Forbidden | api_errors.Unauthorized | google.auth.exceptions.RefreshError):
        raise ArtifactAccessDenied(f"permission denied: {uri} ({type(exc).__name__})", uri=uri) from None
    if isinstance(exc, api_errors.PreconditionFailed):
        raise TransientStorageError(f"{uri}: changed while downloading") from None
    if isinstance(exc, api_errors.ServerError | api_errors.TooManyRequests | api_errors.RetryError):
        raise TransientStorageError(f"{uri}: {type(exc).__name__}") from None
    if isinstance(exc, requests.ConnectionError | requests.Timeout | ConnectionError | TimeoutError):
        raise TransientStorageError(f"{uri}: {type(exc).__name__}") from None
    if isinstance(exc, api_errors.ClientError):
        raise StorageConfigError(f"the store refused {uri}: {type(exc).__name__}", uri=uri) from None
