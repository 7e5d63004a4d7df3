"""``s3://bucket/key``: AWS S3 and S3-compatible stores (MinIO, Ceph, IBM COS) through boto3.

A key that names an object is a file artifact; otherwise every object under ``key/`` is
fetched. Objects larger than one chunk download as parallel requests written in place: by
part (``PartNumber``) for multipart uploads, so each part's MD5 checks against the multipart
ETag, else by byte range. Single-part objects are checked against their MD5 ETag (skipped for
SSE-KMS/SSE-C objects, whose ETag is not an MD5). Every GET carries ``If-Match`` on the listed
ETag, so an object replaced mid-download is fetched again rather than mixed.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path, PurePosixPath
from typing import Any

import boto3
import botocore.exceptions as boto_errors
from botocore import UNSIGNED
from botocore.config import Config

from mesh_common.errors import ArtifactAccessDenied, ArtifactCorrupt, ArtifactNotFound, StorageConfigError
from puller.config import StorageLocation, pem_file
from puller.store import (
    Listing,
    Progress,
    RemoteObject,
    RemoteStore,
    TransientStorageError,
    relative_name,
    translated,
)

log = logging.getLogger(__name__)

_MD5 = re.compile(r"^[0-9a-f]{32}$")
_MULTIPART = re.compile(r"^([0-9a-f]{32})-(\d+)$")
_READ = 1 << 20
_NOT_FOUND = {"404", "NoSuchKey", "NoSuchBucket", "NotFound"}
_DENIED = {
    "403",
    "AccessDenied",
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "ExpiredToken",
    "InvalidToken",
    "AllAccessDisabled",
    "AccountProblem",
}
_TRANSIENT = {
    "SlowDown",
    "Throttling",
    "ThrottlingException",
    "RequestTimeout",
    "InternalError",
    "ServiceUnavailable",
    "PreconditionFailed",
    "412",
}


class S3Store(RemoteStore):
    def __init__(self, *, certs_dir: Path, concurrency: int = 8, chunk_bytes: int = 16 << 20) -> None:
        self._certs_dir = certs_dir
        self._chunk = chunk_bytes
        self._concurrency = concurrency
        self._pool = ThreadPoolExecutor(concurrency, thread_name_prefix="s3")
        self._clients: dict[tuple[Any, ...], Any] = {}
        self._lock = threading.Lock()

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    # clients

    def client(self, params: dict[str, Any] | Any) -> Any:
        """A boto3 client for these storage-config fields; one per distinct configuration."""
        fields = (
            "endpoint_url",
            "region",
            "access_key_id",
            "secret_access_key",
            "session_token",
            "addressing_style",
            "certificate",
            "anonymous",
        )
        identity = tuple(str(params.get(f, "")) for f in fields)
        with self._lock:
            client = self._clients.get(identity)
            if client is None:
                client = self._clients[identity] = self._new_client(params, identity)
            return client

    def _new_client(self, params: Any, identity: tuple[Any, ...]) -> Any:
        endpoint = params.get("endpoint_url") or None
        style = params.get("addressing_style") or ("path" if endpoint else "auto")
        verify: str | bool | None = None
        if params.get("certificate"):
            name = f"ca-{hashlib.sha256(str(identity).encode()).hexdigest()[:16]}.pem"
            verify = str(pem_file(self._certs_dir, name, str(params["certificate"])))
        config = Config(
            s3={"addressing_style": style},
            retries={"max_attempts": 3, "mode": "standard"},
            max_pool_connections=self._concurrency * 2,
            connect_timeout=5,
            read_timeout=60,
            signature_version=UNSIGNED if params.get("anonymous") else None,
        )
        return boto3.session.Session().client(
            "s3",
            endpoint_url=endpoint,
            region_name=params.get("region") or "us-east-1",
            aws_access_key_id=params.get("access_key_id") or None,
            aws_secret_access_key=params.get("secret_access_key") or None,
            aws_session_token=params.get("session_token") or None,
            verify=verify,
            config=config,
        )

    # listing

    def list(self, location: StorageLocation) -> Listing:
        client = self.client(location.params)
        bucket, key = location.bucket, location.path
        with translated(location, _translate):
            if key and not key.endswith("/"):
                try:
                    head = client.head_object(Bucket=bucket, Key=key)
                except boto_errors.ClientError as exc:
                    if _code(exc) not in _NOT_FOUND:
                        raise
                else:
                    obj = RemoteObject(key, PurePosixPath(key).name, int(head["ContentLength"]), _etag(head))
                    return Listing((obj,), single=True)
            prefix = key.rstrip("/") + "/" if key else ""
            objects = []
            for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
                for item in page.get("Contents", []):
                    if item["Key"].endswith("/"):  # a "folder" marker
                        continue
                    relative = relative_name(item["Key"], prefix)
                    objects.append(RemoteObject(item["Key"], relative, int(item["Size"]), _etag(item)))
        if not objects:
            raise ArtifactNotFound(f"artifact not found: {location.uri}", uri=location.uri)
        return Listing(tuple(objects), single=False)

    # downloading

    def download(self, location: StorageLocation, obj: RemoteObject, dest: Path, progress: Progress) -> None:
        client = self.client(location.params)
        with translated(location, _translate):
            multipart = _MULTIPART.match(obj.version)
            if obj.size <= self._chunk:
                self._whole(client, location, obj, dest, progress)
            elif multipart:
                self._by_part(client, location, obj, dest, progress, int(multipart.group(2)))
            else:
                self._by_range(client, location, obj, dest, progress)

    def _whole(
        self, client: Any, loc: StorageLocation, obj: RemoteObject, dest: Path, progress: Progress
    ) -> None:
        response = client.get_object(Bucket=loc.bucket, Key=obj.name, **_if_match(obj))
        digest = hashlib.md5(usedforsecurity=False)
        with dest.open("wb") as out:
            for chunk in response["Body"].iter_chunks(_READ):
                out.write(chunk)
                digest.update(chunk)
                progress(len(chunk))
        if _MD5.match(obj.version) and _md5_etag(response) and digest.hexdigest() != obj.version:
            raise ArtifactCorrupt(
                f"artifact {loc.uri}: {obj.relative} does not match its MD5 (ETag); refused"
            )

    def _by_part(
        self, client: Any, loc: StorageLocation, obj: RemoteObject, dest: Path, progress: Progress, parts: int
    ) -> None:
        """Ranged GETs along the upload's parts (sized by HEAD ?partNumber), each part MD5-hashed."""

        def part_size(number: int) -> int:
            head = client.head_object(Bucket=loc.bucket, Key=obj.name, PartNumber=number)
            return int(head["ContentLength"])

        sizes = list(self._pool.map(part_size, range(1, parts + 1)))
        if sum(sizes) != obj.size:  # a store that does not size parts: no per-part check possible
            self._by_range(client, loc, obj, dest, progress)
            return
        starts = [sum(sizes[:i]) for i in range(parts)]

        def part(index: int) -> tuple[bytes, bool]:
            start, end = starts[index], starts[index] + sizes[index] - 1
            response = client.get_object(
                Bucket=loc.bucket, Key=obj.name, Range=f"bytes={start}-{end}", **_if_match(obj)
            )
            return _write_at(fd, response["Body"], start, progress), _md5_etag(response)

        fd = _open_sized(dest, obj.size)
        try:
            results = list(self._pool.map(part, range(parts)))
        finally:
            os.close(fd)
        if all(plain for _, plain in results):
            combined = hashlib.md5(b"".join(d for d, _ in results), usedforsecurity=False).hexdigest()
            if f"{combined}-{parts}" != obj.version:
                raise ArtifactCorrupt(
                    f"artifact {loc.uri}: {obj.relative} does not match its multipart ETag; refused"
                )

    def _by_range(
        self, client: Any, loc: StorageLocation, obj: RemoteObject, dest: Path, progress: Progress
    ) -> None:
        def span(start: int) -> bool:
            end = min(start + self._chunk, obj.size) - 1
            response = client.get_object(
                Bucket=loc.bucket, Key=obj.name, Range=f"bytes={start}-{end}", **_if_match(obj)
            )
            _write_at(fd, response["Body"], start, progress)
            return _md5_etag(response)

        fd = _open_sized(dest, obj.size)
        try:
            plain = all(self._pool.map(span, range(0, obj.size, self._chunk)))
        finally:
            os.close(fd)
        if plain and _MD5.match(obj.version) and _file_md5(dest) != obj.version:
            raise ArtifactCorrupt(
                f"artifact {loc.uri}: {obj.relative} does not match its MD5 (ETag); refused"
            )


def _open_sized(dest: Path, size: int) -> int:
    fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.ftruncate(fd, size)
    return fd


def _write_at(fd: int, body: Any, offset: int, progress: Progress) -> bytes:
    """Stream ``body`` to ``fd`` from ``offset``; the MD5 digest of what was written."""
    digest = hashlib.md5(usedforsecurity=False)
    for chunk in body.iter_chunks(_READ):
        os.pwrite(fd, chunk, offset)
        offset += len(chunk)
        digest.update(chunk)
        progress(len(chunk))
    return digest.digest()


def _file_md5(path: Path) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with path.open("rb") as handle:
        while chunk := handle.read(8 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _etag(item: Any) -> str:
    return str(item.get("ETag", "")).strip('"')


def _if_match(obj: RemoteObject) -> dict[str, str]:
    return {"IfMatch": f'"{obj.version}"'} if obj.version else {}


def _md5_etag(response: Any) -> bool:
    """Whether the object's ETag is an MD5: not so under SSE-KMS or SSE-C."""
    encryption = str(response.get("ServerSideEncryption", ""))
    return not encryption.startswith("aws:kms") and not response.get("SSECustomerAlgorithm")


def _code(exc: boto_errors.ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def _translate(exc: BaseException, uri: str) -> None:
    """boto3/google exceptions as the mesh's: not found, denied, corrupt, transient, misconfigured."""
    if isinstance(exc, boto_errors.ClientError):
        code = _code(exc)
        status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
        if code in _NOT_FOUND or status == 404:
            raise ArtifactNotFound(f"artifact not found: {uri} ({code})", uri=uri) from None
        if code in _DENIED or status in {401, 403}:
            raise ArtifactAccessDenied(f"permission denied: {uri} ({code})", uri=uri) from None
        if code in _TRANSIENT or status >= 500 or status == 429:
            raise TransientStorageError(f"{uri}: {code or status}") from None
        raise StorageConfigError(f"the store refused {uri}: {code} (HTTP {status})", uri=uri) from None
    if isinstance(exc, boto_errors.FlexibleChecksumError):
        raise ArtifactCorrupt(
            f"artifact {uri} does not match its checksum (the store's CRC); refused", uri=uri
        ) from None
    if isinstance(exc, boto_errors.NoCredentialsError | boto_errors.PartialCredentialsError):
        raise ArtifactAccessDenied(f"permission denied: {uri} (no S3 credentials found)", uri=uri) from None
    transient = (
        boto_errors.ConnectionError,
        boto_errors.HTTPClientError,
        boto_errors.ResponseStreamingError,
        boto_errors.IncompleteReadError,
        ConnectionError,
        TimeoutError,
    )
    if isinstance(exc, transient):
        raise TransientStorageError(f"{uri}: {type(exc).__name__}") from None
    if isinstance(exc, boto_errors.BotoCoreError):
        raise StorageConfigError(f"cannot reach {uri}: {type(exc).__name__}", uri=uri) from None
