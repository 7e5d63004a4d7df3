"""The on-disk artifact cache: one download per artifact version, kept for the next load.

Layout under the cache directory::

    .tmp/<key>-<random>/      downloads in progress (removed at start)
    <key>/meta.json           uri, version, size; its mtime is the last use
    <key>/data/...            the artifact (one file, or the objects under a prefix)

``key`` hashes the URI and the artifact's version (ETag / generation), so a changed object is
a new entry and an unchanged one is never fetched twice. A download goes to a temp directory
and is renamed into place only once every object is complete and verified: a cut or corrupt
download is never used.

Invariants:
- Bytes on disk plus downloads in flight stay within ``capacity_bytes``. Room is made by
  removing least recently used artifacts, those no loaded model uses first, then those that
  loaded models came from; an artifact a load is reading is never removed.
- Concurrent fetches of one artifact share one download.
- Transient store errors are retried with exponential backoff; when the store stays
  unreachable a cached copy of the same URI is used (logged), else the fetch is ``UNAVAILABLE``.

The accounting is per process: give each pod its own cache directory.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import random
import shutil
import threading
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from mesh_common.errors import ArtifactCorrupt, ArtifactTooLarge, Busy, MeshError, Unavailable
from puller.base import Artifact
from puller.config import StorageLocation
from puller.metrics import PullerMetrics
from puller.store import Listing, RemoteObject, RemoteStore, TransientStorageError

log = logging.getLogger(__name__)

T = TypeVar("T")

_TMP = ".tmp"
_META = "meta.json"
_DATA = "data"
_LOG_EVERY_S = 2.0


@dataclass
class _Cached:
    key: str
    uri: str
    version: str
    size: int
    path: Path
    last_used: float
    loading: int = 0
    loaded: int = 0


class ArtifactCache:
    def __init__(
        self,
        root: Path,
        capacity_bytes: int,
        *,
        metrics: PullerMetrics,
        concurrency: int = 8,
        attempts: int = 4,
        backoff_s: float = 0.25,
    ) -> None:
        self.root = root
        self.capacity_bytes = capacity_bytes
        self._metrics = metrics
        self._attempts = attempts
        self._backoff_s = backoff_s
        self._pool = ThreadPoolExecutor(concurrency, thread_name_prefix="pull")
        self._entries: dict[str, _Cached] = {}
        self._latest: dict[str, str] = {}  # uri -> key of its newest cached version
        self._downloads: dict[str, asyncio.Task[_Cached]] = {}
        self._wanted: Counter[str] = Counter()
        self._reserved = 0
        metrics.capacity_bytes.set(capacity_bytes)

    # lifecycle

    async def start(self) -> None:
        """Index what a previous run left on disk; drop partial downloads and broken entries."""
        entries = await self._run(self._scan)
        for entry in sorted(entries, key=lambda e: e.last_used):
            self._entries[entry.key] = entry
            self._latest[entry.uri] = entry.key
        self._evict_until(0)
        self._publish()
        log.info(
            "artifact cache %s: %d artifact(s), %d bytes", self.root, len(self._entries), self.used_bytes
        )

    async def close(self) -> None:
        for task in list(self._downloads.values()):
            task.cancel()
        await asyncio.gather(*self._downloads.values(), return_exceptions=True)
        self._pool.shutdown(wait=True, cancel_futures=True)

    # queries

    @property
    def used_bytes(self) -> int:
        return sum(e.size for e in self._entries.values()) + self._reserved

    def cached(self, uri: str) -> bool:
        return uri in self._latest

    # fetching

    async def get(self, location: StorageLocation, store: RemoteStore) -> Artifact:
        """The artifact at ``location`` on local disk, pinned for the load that asked."""
        try:
            listing = await self._retrying(location, lambda: store.list(location), "list")
        except Unavailable:
            stale = self._entries.get(self._latest.get(location.uri, ""))
            if stale is None:
                raise
            log.warning(
                "store unreachable for %s: using the cached copy (version %s)", location.uri, stale.version
            )
            return self._pin(stale)
        key = hashlib.sha256(f"{location.uri}\0{listing.version()}".encode()).hexdigest()[:40]
        entry = self._entries.get(key)
        if entry is not None:
            self._metrics.hits.inc()
            return self._pin(entry)
        task = self._downloads.get(key)
        if task is None:
            task = asyncio.create_task(self._download(key, location, store, listing), name=f"pull:{key}")
            self._downloads[key] = task
            task.add_done_callback(lambda _: self._downloads.pop(key, None))
        self._wanted[key] += 1
        try:
            entry = await asyncio.shield(task)
        finally:
            self._wanted[key] -= 1
            if not self._wanted[key]:
                del self._wanted[key]
        return self._pin(entry)

    def _pin(self, entry: _Cached) -> Artifact:
        entry.loading += 1
        entry.last_used = time.time()
        with contextlib.suppress(OSError):  # the last use survives restarts
            os.utime(self.root / entry.key / _META)

        def loaded() -> None:
            entry.loading -= 1
            entry.loaded += 1

        def release() -> None:
            if artifact._state == "loaded":
                entry.loaded -= 1
            else:
                entry.loading -= 1

        artifact = Artifact(entry.path, on_loaded=loaded, on_release=release)
        return artifact

    async def _download(
        self, key: str, location: StorageLocation, store: RemoteStore, listing: Listing
    ) -> _Cached:
        uri, size = location.uri, listing.size
        if size > self.capacity_bytes:
            raise ArtifactTooLarge(
                f"artifact {uri} is {size} bytes, larger than the whole artifact cache "
                f"({self.capacity_bytes} bytes); raise --cache-size",
                uri=uri,
            )
        self._make_room(size, uri)
        self._reserved += size
        self._publish()
        tmp = self.root / _TMP / f"{key}-{uuid.uuid4().hex[:8]}"
        started = time.monotonic()
        progress = _Progress(uri, size, self._metrics)
        try:
            data = tmp / _DATA
            await self._run(lambda: data.mkdir(parents=True))
            await asyncio.gather(
                *(self._pull(store, location, obj, data, progress) for obj in listing.objects)
            )
            entry = await self._run(lambda: self._commit(key, location, listing, tmp))
        except BaseException as exc:
            self._metrics.downloads.labels("failed").inc()
            await self._run(lambda: shutil.rmtree(tmp, ignore_errors=True))
            if isinstance(exc, MeshError):
                _redact(exc, location)
            raise
        finally:
            self._reserved -= size
        seconds = time.monotonic() - started
        self._entries[key] = entry
        self._latest[uri] = key
        self._metrics.downloads.labels("ok").inc()
        self._metrics.download_seconds.observe(seconds)
        self._metrics.download_rate.set(size / seconds if seconds > 0 else 0)
        self._publish()
        log.info(
            "pulled %s: %d object(s), %.1f MiB in %.2fs (%.1f MiB/s)",
            uri,
            len(listing.objects),
            size / 2**20,
            seconds,
            size / 2**20 / max(seconds, 1e-9),
        )
        return entry

    async def _pull(
        self,
        store: RemoteStore,
        location: StorageLocation,
        obj: RemoteObject,
        data: Path,
        progress: _Progress,
    ) -> None:
        await self._retrying(
            location, lambda: self._fetch_object(store, location, obj, data, progress), "download"
        )

    @staticmethod
    def _fetch_object(
        store: RemoteStore, location: StorageLocation, obj: RemoteObject, data: Path, progress: _Progress
    ) -> None:
        dest = data / obj.relative
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.unlink(missing_ok=True)  # a retry starts the object over
        store.download(location, obj, dest, progress.add)
        written = dest.stat().st_size
        if obj.size >= 0 and written != obj.size:
            raise TransientStorageError(
                f"{location.uri}: {obj.relative} ended at {written} of {obj.size} bytes"
            )

    def _commit(self, key: str, location: StorageLocation, listing: Listing, tmp: Path) -> _Cached:
        data = tmp / _DATA
        size = sum(p.stat().st_size for p in data.rglob("*") if p.is_file())
        if size != listing.size and all(o.size >= 0 for o in listing.objects):
            raise ArtifactCorrupt(
                f"artifact {location.uri}: {size} bytes on disk, the store listed {listing.size}"
            )
        meta = {"uri": location.uri, "version": listing.version(), "size": size, "single": listing.single}
        if listing.single:
            meta["file"] = listing.objects[0].relative
        (tmp / _META).write_text(json.dumps(meta))
        final = self.root / key
        try:
            tmp.rename(final)
        except OSError:  # an earlier run left the same version: keep it
            shutil.rmtree(tmp, ignore_errors=True)
        return _entry_from(final, meta, time.time())

    # room

    def _make_room(self, size: int, uri: str) -> None:
        if not self._evict_until(size):
            raise Busy(
                f"artifact cache full: {uri} needs {size} bytes and the {self.used_bytes} bytes in the "
                f"cache ({self.capacity_bytes} allowed) are all being downloaded or loaded; retry later",
                uri=uri,
            )

    def _evict_until(self, incoming: int) -> bool:
        """Remove artifacts until ``incoming`` more bytes fit; False if it cannot be done."""
        victims: list[_Cached] = []
        excess = self.used_bytes + incoming - self.capacity_bytes
        candidates = sorted(
            (e for e in self._entries.values() if e.loading == 0 and e.key not in self._wanted),
            key=lambda e: (e.loaded > 0, e.last_used),
        )
        for entry in candidates:
            if excess <= 0:
                break
            victims.append(entry)
            excess -= entry.size
        if excess > 0:
            return False
        for entry in victims:
            del self._entries[entry.key]
            if self._latest.get(entry.uri) == entry.key:
                del self._latest[entry.uri]
            # Renamed away first, so a new download of the same version never meets half a tree.
            trash = self.root / _TMP / f"evicted-{entry.key}-{uuid.uuid4().hex[:8]}"
            with contextlib.suppress(OSError):
                (self.root / entry.key).rename(trash)
            self._pool.submit(shutil.rmtree, trash, True)
            self._metrics.evictions.inc()
            log.info(
                "artifact cache: removed %s (%d bytes, last used %.0fs ago)",
                entry.uri,
                entry.size,
                time.time() - entry.last_used,
            )
        self._publish()
        return True

    def _publish(self) -> None:
        self._metrics.used_bytes.set(self.used_bytes)

    # plumbing

    async def _retrying(self, location: StorageLocation, call: Callable[[], T], what: str) -> T:
        for attempt in range(1, self._attempts + 1):
            try:
                return await self._run(call)
            except TransientStorageError as exc:
                reason = location.redact(str(exc))
                if attempt == self._attempts:
                    raise Unavailable(
                        f"storage unreachable for {location.uri}: {reason} ({self._attempts} attempts)",
                        uri=location.uri,
                    ) from None
                delay = self._backoff_s * 2 ** (attempt - 1) * (0.5 + random.random())
                log.warning(
                    "%s %s failed (attempt %d): %s; retrying in %.2fs",
                    what,
                    location.uri,
                    attempt,
                    reason,
                    delay,
                )
                await asyncio.sleep(delay)
            except MeshError as exc:
                _redact(exc, location)
                raise
        raise AssertionError("unreachable")

    def _run(self, call: Callable[[], T]) -> Awaitable[T]:
        return asyncio.get_running_loop().run_in_executor(self._pool, call)

    def _scan(self) -> list[_Cached]:
        self.root.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(self.root / _TMP, ignore_errors=True)
        (self.root / _TMP).mkdir()
        entries = []
        for child in self.root.iterdir():
            if child.name == _TMP:
                continue
            meta_path = child / _META
            try:
                meta = json.loads(meta_path.read_text())
                entries.append(_entry_from(child, meta, meta_path.stat().st_mtime))
            except (OSError, ValueError, KeyError):
                log.warning("artifact cache: removing unreadable entry %s", child)
                if child.is_dir():
                    shutil.rmtree(child, ignore_errors=True)
                else:
                    child.unlink(missing_ok=True)
        return entries


def _entry_from(directory: Path, meta: dict[str, object], last_used: float) -> _Cached:
    data = directory / _DATA
    path = data / str(meta["file"]) if meta.get("single") else data
    if not path.exists():
        raise KeyError("file")
    return _Cached(
        key=directory.name,
        uri=str(meta["uri"]),
        version=str(meta["version"]),
        size=int(str(meta["size"])),
        path=path,
        last_used=last_used,
    )


def _redact(exc: MeshError, location: StorageLocation) -> None:
    exc.message = location.redact(exc.message)
    exc.args = (exc.message,)


class _Progress:
    """Bytes written for one artifact, counted from every download thread; logged every few seconds."""

    def __init__(self, uri: str, total: int, metrics: PullerMetrics) -> None:
        self._uri = uri
        self._total = total
        self._metrics = metrics
        self._lock = threading.Lock()
        self._done = 0
        self._started = time.monotonic()
        self._logged = self._started

    def add(self, count: int) -> None:
        self._metrics.download_bytes.inc(count)
        with self._lock:
            self._done += count
            now = time.monotonic()
            if now - self._logged < _LOG_EVERY_S:
                return
            self._logged = now
            done = self._done
        rate = done / max(now - self._started, 1e-9)
        log.info(
            "pulling %s: %.1f of %.1f MiB (%.1f MiB/s)",
            self._uri,
            done / 2**20,
            self._total / 2**20,
            rate / 2**20,
        )
