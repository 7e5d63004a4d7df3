"""Typed model, vmodel and instance records over a ``Registry``, read from an in-memory mirror.

The mirror holds every record under the prefix, kept current by a watch, so the
request path never waits on the registry. The watch resumes from the last revision
it saw after a disconnect and resyncs with a full read after compaction. Writes are
compare-and-swap loops; after a write the store waits until its mirror has seen it
(read-your-writes).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import heapq
import itertools
import logging
import time
from collections.abc import Callable
from typing import Any, NamedTuple, TypeVar

from mesh.records import (
    InstanceRecord,
    LeaderRecord,
    ModelRecord,
    ModelState,
    TenantRecord,
    VModelRecord,
)
from mesh.registry.base import (
    MUST_NOT_EXIST,
    Registry,
    RegistryCompacted,
    RegistryConflict,
    WatchEvent,
)
from mesh_common.errors import Unavailable

log = logging.getLogger(__name__)

R = TypeVar("R", ModelRecord, VModelRecord, TenantRecord)
_CAS_ATTEMPTS = 20
_MIRROR_WAIT_S = 2.0
"""How long a writer waits for the watch to show its write before reading the key directly."""
_RETRY_MAX_S = 2.0
UNKNOWN_READS_PER_S = 100.0
"""Registry reads per second (and burst) for ids the mirror does not know, on the inference path:
calls for a flood of random names must not become a flood of etcd reads. Past it, such a call is
answered from the mirror. A burst of calls for one id shares one read and counts once."""

_KINDS: dict[str, Callable[[bytes], Any]] = {
    "models": ModelRecord.from_json,
    "vmodels": VModelRecord.from_json,
    "instances": InstanceRecord.from_json,
    "leader": LeaderRecord.from_json,
    "tenants": TenantRecord.from_json,
}
LEADER = "leader"
"""The janitor's election key (one record, id ``""``)."""

Listener = Callable[[str, str, Any], None]
"""Called with (kind, id, record or None) after the mirror changes."""


class Unpublished(NamedTuple):
    """What a pod's instance record does not show yet: copies it recorded after publishing it."""

    bytes: int
    """Sizes of those copies (0 for a model never loaded: its size is not known yet)."""
    loads: int
    """How many of them are still loading."""


_HELD = (ModelState.LOADING, ModelState.LOADED)


class ModelStore:
    def __init__(
        self,
        registry: Registry,
        *,
        namespace: str = "default",
        unknown_reads_per_s: float = UNKNOWN_READS_PER_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._registry = registry
        self._unknown_reads = _TokenBucket(unknown_reads_per_s, clock)
        self.prefix = f"/mesh/{namespace}/"
        self._mirror: dict[str, dict[str, Any]] = {kind: {} for kind in _KINDS}
        self._models: dict[str, ModelRecord] = self._mirror["models"]
        self._vmodels: dict[str, VModelRecord] = self._mirror["vmodels"]
        self._instances: dict[str, InstanceRecord] = self._mirror["instances"]
        self._tenants: dict[str, TenantRecord] = self._mirror["tenants"]
        self._tenant_models: dict[str, set[str]] = {}
        """Registered model ids per tenant, kept as the mirror changes (quota checks must not scan)."""
        self._fresh: dict[str, dict[str, tuple[int, int, bool]]] = {}
        """Per pod: copies recorded after its published instance record, model id -> (since_ms,
        size_bytes, loading). A pod republishes at most every few hundred ms; until then placement
        would see room that a just-loaded model already took."""
        self._revisions: dict[str, int] = {}
        self._revision = 0
        self._waiters: list[tuple[int, int, asyncio.Future[None]]] = []
        """Writers waiting for the mirror to reach a revision: a heap of (revision, seq, future)."""
        self._seq = itertools.count()
        self._reads: dict[str, asyncio.Task[None]] = {}
        """Registry reads of one key in progress (``fetch_model``): concurrent askers share one."""
        self._watch_task: asyncio.Task[None] | None = None
        self._listeners: list[Listener] = []
        self.connected = False
        """Whether the watch is following the registry now (False while it reconnects)."""

    # lifecycle

    async def start(self) -> None:
        await self._resync()
        self._watch_task = asyncio.create_task(self._follow(), name="registry-mirror")

    async def stop(self) -> None:
        """End the watch and any registry read still on its way (a stalled registry would hold one
        for up to its timeout)."""
        tasks = [*self._reads.values()]
        if self._watch_task is not None:
            tasks.append(self._watch_task)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def subscribe(self, listener: Listener) -> None:
        """Call ``listener`` after each change of the mirror, until ``unsubscribe``. It runs inside
        the mirror's update, on the event loop: it must be quick and must not block."""
        self._listeners.append(listener)

    def unsubscribe(self, listener: Listener) -> None:
        """Stop calling ``listener`` (one that is not subscribed is ignored)."""
        with contextlib.suppress(ValueError):
            self._listeners.remove(listener)

    @property
    def subscribers(self) -> int:
        """How many listeners are subscribed now (a stream that ended must have left none)."""
        return len(self._listeners)

    # reads (mirror only)

    def model(self, model_id: str) -> ModelRecord | None:
        return self._models.get(model_id)

    def vmodel(self, vmodel_id: str) -> VModelRecord | None:
        return self._vmodels.get(vmodel_id)

    def instance(self, pod_id: str) -> InstanceRecord | None:
        return self._instances.get(pod_id)

    async def fetch_model(self, model_id: str, *, limited: bool = False) -> ModelRecord | None:
        """Read a model's record straight from the registry into the mirror: for one that another
        pod registered a moment ago, before this pod's watch delivers it. ``Unavailable`` if the
        registry does not answer, or if ``limited`` and this pod is past ``UNKNOWN_READS_PER_S``.
        Concurrent calls for one model share one read."""
        await self._read_key(self._key("models", model_id), limited=limited)
        return self._models.get(model_id)

    async def fetch_vmodel(self, vmodel_id: str, *, limited: bool = False) -> VModelRecord | None:
        """``fetch_model`` for a vmodel."""
        await self._read_key(self._key("vmodels", vmodel_id), limited=limited)
        return self._vmodels.get(vmodel_id)

    async def fetch_instance(self, pod_id: str) -> InstanceRecord | None:
        """A pod's instance record as the registry has it now (into the mirror): whether the pod is
        live, for a decision that must not rest on a mirror that may lag. ``Unavailable`` if the
        registry does not answer."""
        await self._sync_key(self._key("instances", pod_id))
        return self._instances.get(pod_id)

    async def read_model(self, model_id: str) -> ModelRecord | None:
        """``fetch_model``, always with a read of its own that begins now: a writer checking what
        the registry holds after its write must not take the answer of a read that began before."""
        await self._sync_key(self._key("models", model_id))
        return self._models.get(model_id)

    async def fetch_vmodels_using(self, model_id: str) -> list[str]:
        """``vmodels_using`` as the registry has it now, not as this pod's mirror does (a vmodel set
        through another pod a moment ago counts); the vmodels read go into the mirror.
        ``Unavailable`` if the registry does not answer."""
        prefix = self._key("vmodels", "")
        entries, _ = await self._registry.range(prefix)
        for entry in entries:
            self._apply(WatchEvent(entry.key, entry.value, entry.mod_revision))
        return self.vmodels_using(model_id, among={entry.key[len(prefix) :] for entry in entries})

    def models(self) -> list[ModelRecord]:
        return [self._models[k] for k in sorted(self._models)]

    def vmodels(self) -> list[VModelRecord]:
        return [self._vmodels[k] for k in sorted(self._vmodels)]

    def instances(self) -> dict[str, InstanceRecord]:
        """Live pods by id (their lease-bound records)."""
        return dict(self._instances)

    def leader(self) -> LeaderRecord | None:
        """The pod running the janitor now, if any."""
        record: LeaderRecord | None = self._mirror[LEADER].get("")
        return record

    def tenant(self, tenant: str) -> TenantRecord | None:
        """The tenant's caps, if any were set."""
        return self._tenants.get(tenant)

    def tenant_models(self, tenant: str) -> int:
        """How many registered models belong to ``tenant``."""
        return len(self._tenant_models.get(tenant, ()))

    def models_of(self, tenant: str) -> list[ModelRecord]:
        """The tenant's model records (without scanning the others)."""
        return [self._models[m] for m in sorted(self._tenant_models.get(tenant, ()))]

    def tenants(self) -> list[TenantRecord]:
        return [self._tenants[k] for k in sorted(self._tenants)]

    def unpublished(self, pod_id: str) -> Unpublished:
        """Copies ``pod_id`` recorded (claimed or loaded) after the instance record the mirror holds.

        Both times come from that pod's clock (a pod writes its own copies and its own record),
        so no clock skew between pods enters.
        """
        fresh = self._fresh.get(pod_id)
        if not fresh:
            return Unpublished(0, 0)
        instance = self._instances.get(pod_id)
        published = instance.published_ms if instance is not None else 0
        size = loads = 0
        for since, size_bytes, loading in fresh.values():
            if since > published:
                size += size_bytes
                loads += loading
        return Unpublished(size, loads)

    def vmodels_using(self, model_id: str, *, among: set[str] | None = None) -> list[str]:
        """The mirror's vmodels (or those of ``among`` it holds) whose active or target is the model."""
        return sorted(
            v.vmodel_id
            for v in self._vmodels.values()
            if model_id in (v.active_model_id, v.target_model_id) and (among is None or v.vmodel_id in among)
        )

    # writes

    async def create_model(self, record: ModelRecord) -> ModelRecord | None:
        """Create ``record``; returns the existing record instead if the id is taken."""
        return await self._create(self._key("models", record.model_id), record, self._models, record.model_id)

    async def update_model(
        self, model_id: str, change: Callable[[ModelRecord], ModelRecord | None]
    ) -> ModelRecord | None:
        """Apply ``change`` to the current record with CAS; None from ``change`` deletes it.

        Returns the record written (None if deleted or absent).
        """
        return await self._update(self._key("models", model_id), model_id, self._models, change)

    async def delete_model(self, model_id: str) -> None:
        await self._update(self._key("models", model_id), model_id, self._models, lambda _: None)

    async def create_vmodel(self, record: VModelRecord) -> VModelRecord | None:
        key = self._key("vmodels", record.vmodel_id)
        return await self._create(key, record, self._vmodels, record.vmodel_id)

    async def update_vmodel(
        self, vmodel_id: str, change: Callable[[VModelRecord], VModelRecord | None]
    ) -> VModelRecord | None:
        return await self._update(self._key("vmodels", vmodel_id), vmodel_id, self._vmodels, change)

    async def set_tenant(self, record: TenantRecord) -> None:
        """Create or replace a tenant's caps (no caps at all deletes the record)."""
        key = self._key("tenants", record.tenant)
        if not record.max_models and not record.max_loaded_bytes:
            if record.tenant in self._tenants:
                await self._wait_for(await self._registry.delete(key), key)
            return
        await self._wait_for(await self._registry.put(key, record.to_json()), key)

    async def publish_instance(self, record: InstanceRecord, *, lease: int) -> None:
        """Write this pod's instance record, bound to ``lease`` (last writer wins: only its pod writes it)."""
        key = self._key("instances", record.pod_id)
        revision = await self._registry.put(key, record.to_json(), lease=lease)
        await self._wait_for(revision, key)

    async def campaign(self, record: LeaderRecord, *, lease: int) -> bool:
        """Become the leader unless a live one exists; the key lives as long as ``lease``."""
        key = self.prefix + LEADER
        try:
            revision = await self._registry.put(
                key, record.to_json(), expected_revision=MUST_NOT_EXIST, lease=lease
            )
        except RegistryConflict:
            await self._sync_key(key)
            return False
        await self._wait_for(revision, key)
        return True

    async def resign(self, pod_id: str) -> None:
        """Give up leadership (only if ``pod_id`` holds it)."""
        key = self.prefix + LEADER
        current = self.leader()
        if current is not None and current.pod_id == pod_id:
            with contextlib.suppress(RegistryConflict):
                await self._registry.delete(key, expected_revision=self._revisions[key])

    async def remove_instance(self, pod_id: str) -> None:
        key = self._key("instances", pod_id)
        await self._wait_for(await self._registry.delete(key), key)

    # internals

    def _key(self, kind: str, record_id: str) -> str:
        return self.prefix + LEADER if kind == LEADER else f"{self.prefix}{kind}/{record_id}"

    async def _create(self, key: str, record: R, mirror: dict[str, R], record_id: str) -> R | None:
        try:
            revision = await self._registry.put(key, record.to_json(), expected_revision=MUST_NOT_EXIST)
        except RegistryConflict:
            await self._sync_key(key)
            return mirror.get(record_id)
        await self._wait_for(revision, key)
        return None

    async def _update(
        self, key: str, record_id: str, mirror: dict[str, R], change: Callable[[R], R | None]
    ) -> R | None:
        for _ in range(_CAS_ATTEMPTS):
            current = mirror.get(record_id)
            if current is None:
                return None
            updated = change(current)
            if updated == current:
                return current
            try:
                if updated is None:
                    revision = await self._registry.delete(key, expected_revision=self._revisions[key])
                else:
                    revision = await self._registry.put(
                        key, updated.to_json(), expected_revision=self._revisions[key]
                    )
            except RegistryConflict:
                await self._sync_key(key)
                continue
            await self._wait_for(revision, key)
            return updated
        raise Unavailable(f"registry record {key!r} is changing too fast to update; retry", key=key)

    async def _read_key(self, key: str, *, limited: bool = False) -> None:
        """``_sync_key``, once for every caller that asks for ``key`` while a read of it is on its way
        (a burst of calls for a model this pod has not seen yet is one registry read, not one each).
        A caller that gives up does not cancel the read for the others."""
        read = self._reads.get(key)
        if read is None:
            if limited and not self._unknown_reads.take():
                raise Unavailable("too many calls for unknown models to read each from the registry")
            read = self._reads[key] = asyncio.create_task(self._sync_key(key), name=f"registry-read:{key}")
            read.add_done_callback(functools.partial(self._read_done, key))
        await asyncio.shield(read)

    def _read_done(self, key: str, read: asyncio.Task[None]) -> None:
        del self._reads[key]
        if not read.cancelled():
            read.exception()  # retrieved: every caller may have left before it ended

    async def _sync_key(self, key: str) -> None:
        """Bring one key of the mirror up to date (after a lost CAS race, or for a key it lacks).
        An answer older than what the watch delivered meanwhile is dropped."""
        entry, revision = await self._registry.read(key)
        if entry is None:
            self._apply(WatchEvent(key, None, revision))
        else:
            self._apply(WatchEvent(key, entry.value, entry.mod_revision))

    async def _wait_for(self, revision: int, key: str) -> None:
        if self._revision >= revision:
            return
        # One future per writer, released in revision order: a watch event wakes only the
        # writers it satisfies (a Condition would wake every waiter on every event).
        waiter = asyncio.get_running_loop().create_future()
        heapq.heappush(self._waiters, (revision, next(self._seq), waiter))
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(_MIRROR_WAIT_S):
                await waiter
                return
        # The watch is behind (reconnecting): read the key itself so the caller sees its write.
        await self._sync_key(key)

    async def _follow(self) -> None:
        delay = 0.1
        while True:
            try:
                async for event in self._registry.watch(self.prefix, after_revision=self._revision):
                    self.connected = True
                    delay = 0.1
                    self._apply(event)
                    self._advance(event.revision)
            except RegistryCompacted as exc:
                log.warning("%s; resyncing the registry mirror", exc)
                await self._resync_quietly()
            except Unavailable as exc:
                if self.connected:
                    log.warning("registry watch lost (%s); resuming from revision %d", exc, self._revision)
                self.connected = False
                await asyncio.sleep(delay)
                delay = min(delay * 2, _RETRY_MAX_S)

    async def _resync_quietly(self) -> None:
        with contextlib.suppress(Unavailable):
            await self._resync()

    async def _resync(self) -> None:
        """Replace the mirror with a full read (at start, and after compaction)."""
        entries, revision = await self._registry.range(self.prefix)
        present = {entry.key for entry in entries}
        for kind, mirror in self._mirror.items():
            for record_id in list(mirror):
                key = self._key(kind, record_id)
                if key not in present:
                    self._apply(WatchEvent(key, None, revision))
        for entry in entries:
            self._apply(WatchEvent(entry.key, entry.value, entry.mod_revision))
        self.connected = True
        self._advance(revision)

    def _advance(self, revision: int) -> None:
        self._revision = max(self._revision, revision)
        while self._waiters and self._waiters[0][0] <= self._revision:
            _, _, waiter = heapq.heappop(self._waiters)
            if not waiter.done():  # a writer that timed out cancelled its future
                waiter.set_result(None)

    def _apply(self, event: WatchEvent) -> None:
        kind, _, record_id = event.key[len(self.prefix) :].partition("/")
        parse = _KINDS.get(kind)
        if parse is None:
            return
        mirror = self._mirror[kind]
        current = self._revisions.get(event.key, -1)
        if event.revision < current:
            return  # an older event or read answer than the mirror already holds
        if event.value is None:
            gone = mirror.pop(record_id, None)
            if gone is not None:
                if kind == "models":
                    self._index_tenant(gone.tenant, record_id, present=False)
                    self._index_copies(record_id, gone, None)
                elif kind == "instances":
                    self._fresh.pop(record_id, None)
                self._notify(kind, record_id, None)
            self._revisions.pop(event.key, None)
            return
        try:
            record = parse(event.value)
        except (ValueError, KeyError, TypeError) as exc:
            log.error("ignoring unreadable registry record %s: %s", event.key, exc)
            return
        self._revisions[event.key] = event.revision
        previous = mirror.get(record_id)
        if previous != record:
            if kind == "models":
                if previous is not None:
                    self._index_tenant(previous.tenant, record_id, present=False)
                self._index_tenant(record.tenant, record_id, present=True)
            mirror[record_id] = record
            if kind == "models":
                self._index_copies(record_id, previous, record)
            elif kind == "instances":
                self._published(record)
            self._notify(kind, record_id, record)

    def _index_copies(self, model_id: str, previous: ModelRecord | None, record: ModelRecord | None) -> None:
        """Keep ``_fresh`` current for one model record's change (``record`` None: deleted)."""
        copies = record.copies if record is not None else {}
        for pod_id in previous.copies if previous is not None else ():
            copy = copies.get(pod_id)
            if copy is None or copy.state not in _HELD:
                fresh = self._fresh.get(pod_id)
                if fresh is not None:
                    fresh.pop(model_id, None)
        if record is None:
            return
        for pod_id, copy in copies.items():
            if copy.state not in _HELD:
                continue
            instance = self._instances.get(pod_id)
            if instance is not None and copy.since_ms <= instance.published_ms:
                self._fresh.get(pod_id, {}).pop(model_id, None)
                continue
            loading = copy.state is ModelState.LOADING
            self._fresh.setdefault(pod_id, {})[model_id] = (copy.since_ms, record.size_bytes, loading)

    def _published(self, instance: InstanceRecord) -> None:
        """A pod republished: the copies its record now covers leave ``_fresh``."""
        fresh = self._fresh.get(instance.pod_id)
        if fresh:
            for model_id in [m for m, (since, _, _) in fresh.items() if since <= instance.published_ms]:
                del fresh[model_id]

    def _index_tenant(self, tenant: str, model_id: str, *, present: bool) -> None:
        ids = self._tenant_models.setdefault(tenant, set())
        if present:
            ids.add(model_id)
        else:
            ids.discard(model_id)
            if not ids:
                del self._tenant_models[tenant]

    def _notify(self, kind: str, record_id: str, record: Any) -> None:
        for listener in tuple(self._listeners):  # a listener may unsubscribe another meanwhile
            try:
                listener(kind, record_id, record)
            except Exception:
                log.exception("registry listener failed on %s/%s", kind, record_id)


class _TokenBucket:
    """``rate`` takes a second on average, up to ``rate`` at once."""

    def __init__(self, rate: float, clock: Callable[[], float]) -> None:
        self._rate = rate
        self._clock = clock
        self._tokens = rate
        self._at = clock()

    def take(self) -> bool:
        now = self._clock()
        self._tokens = min(self._rate, self._tokens + (now - self._at) * self._rate)
        self._at = now
        if self._tokens < 1:
            return False
        self._tokens -= 1
        return True
