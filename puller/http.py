"""``http(s)://``: one file from a web server, with custom headers and CA / client certificates.

The storage config's ``headers`` (e.g. ``Authorization``) go with every request;
``certificate`` is a CA bundle (PEM) to trust, ``client_certificate`` + ``client_key`` a PEM
pair for mutual TLS. The version is the ``ETag`` (else ``Last-Modified``); a response carrying
``Content-MD5`` is checked against it, and every download against ``Content-Length``.
"""

from __future__ import annotations

import base64
import hashlib
import ssl
import threading
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import unquote, urlsplit

import urllib3

from mesh_common.errors import ArtifactAccessDenied, ArtifactCorrupt, ArtifactNotFound, StorageConfigError
from puller.config import StorageLocation, pem_file
from puller.store import Listing, Progress, RemoteObject, RemoteStore, TransientStorageError

_READ = 1 << 20
_TIMEOUT = urllib3.Timeout(connect=5, read=60)


class HttpStore(RemoteStore):
    def __init__(self, *, certs_dir: Path) -> None:
        self._certs_dir = certs_dir
        self._pools: dict[tuple[str, ...], urllib3.PoolManager] = {}
        self._lock = threading.Lock()

    def close(self) -> None:
        for pool in self._pools.values():
            pool.clear()

    def pool(self, params: Any) -> urllib3.PoolManager:
        identity = tuple(str(params.get(f, "")) for f in ("certificate", "client_certificate", "client_key"))
        with self._lock:
            pool = self._pools.get(identity)
            if pool is None:
                pool = self._pools[identity] = urllib3.PoolManager(
                    ssl_context=self._context(params, identity), retries=False, timeout=_TIMEOUT
                )
            return pool

    def _context(self, params: Any, identity: tuple[str, ...]) -> ssl.SSLContext:
        context = ssl.create_default_context()
        if params.get("certificate"):
            context.load_verify_locations(cadata=str(params["certificate"]))
        cert, key = params.get("client_certificate"), params.get("client_key")
        if bool(cert) != bool(key):
            raise StorageConfigError("an http storage key needs both client_certificate and client_key")
        if cert and key:
            stem = hashlib.sha256(str(identity).encode()).hexdigest()[:16]
            cert_path = pem_file(self._certs_dir, f"client-{stem}.pem", str(cert))
            key_path = pem_file(self._certs_dir, f"client-{stem}.key", str(key))
            context.load_cert_chain(cert_path, key_path)
        return context

    def list(self, location: StorageLocation) -> Listing:
        response = self._request("HEAD", location, tolerate={405, 501})
        if response.status >= 300:  # no HEAD here: no version to key the cache, no size to check
            response = _Unknown()
        version = response.headers.get("ETag") or response.headers.get("Last-Modified") or ""
        length = response.headers.get("Content-Length")
        name = PurePosixPath(unquote(urlsplit(location.uri).path)).name or "model"
        obj = RemoteObject(location.uri, name, int(length) if length is not None else -1, version)
        return Listing((obj,), single=True)

    def download(self, location: StorageLocation, obj: RemoteObject, dest: Path, progress: Progress) -> None:
        response = self._request("GET", location, preload_content=False)
        try:
            seen = response.headers.get("ETag") or response.headers.get("Last-Modified") or ""
            if obj.version and seen != obj.version:
                raise TransientStorageError(f"{location.uri}: changed while downloading")
            digest = hashlib.md5(usedforsecurity=False)
            with dest.open("wb") as out:
                for chunk in response.stream(_READ):
                    out.write(chunk)
                    digest.update(chunk)
                    progress(len(chunk))
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            if isinstance(exc, TransientStorageError):
                raise
            raise TransientStorageError(f"{location.uri}: download cut ({type(exc).__name__})") from None
        finally:
            response.release_conn()
        expected = response.headers.get("Content-MD5")
        if expected and base64.b64encode(digest.digest()).decode() != expected.strip():
            raise ArtifactCorrupt(
                f"artifact {location.uri} does not match its Content-MD5; refused", uri=location.uri
            )

    def _request(
        self,
        method: str,
        location: StorageLocation,
        tolerate: frozenset[int] | set[int] = frozenset(),
        **options: Any,
    ) -> Any:
        headers = _headers(location.params.get("headers"))
        try:
            response = self.pool(location.params).request(method, location.uri, headers=headers, **options)
        except urllib3.exceptions.HTTPError as exc:
            raise TransientStorageError(f"{location.uri}: {type(exc).__name__}") from None
        status = response.status
        if status < 300 or status in tolerate:
            return response
        response.drain_conn()
        uri = location.uri
        if status == 404 or status == 410:
            raise ArtifactNotFound(f"artifact not found: {uri} (HTTP {status})", uri=uri)
        if status in {401, 403}:
            raise ArtifactAccessDenied(f"permission denied: {uri} (HTTP {status})", uri=uri)
        if status >= 500 or status in {408, 429}:
            raise TransientStorageError(f"{uri}: HTTP {status}")
        raise StorageConfigError(f"the server refused {uri}: HTTP {status}", uri=uri)


def _headers(raw: Any) -> dict[str, str]:
    if not raw:
        return {}
    if not isinstance(raw, dict):
        raise StorageConfigError("an http storage key's headers must be a JSON object")
    return {str(k): ", ".join(v) if isinstance(v, list) else str(v) for k, v in raw.items()}


class _Unknown:
    headers: dict[str, str] = {}
