"""``ModelWatch`` over a real mirror and manager (the in-memory registry): the snapshot, states that
change without their record (a pod vanishing, a failure expiring), coalescing for a slow consumer,
a resync after missing history, and a watch that leaves nothing subscribed."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace

import pytest

from mesh.management import ModelManager
from mesh.model_watch import SYNCED, ModelChange, ModelView, ModelWatch, ModelWatches
from mesh.records import CopyRecord, FailureRecord, InstanceRecord, ModelInfo, ModelRecord, ModelState
from mesh.registry import MemoryRegistry, ModelStore
from mesh_common.clock import now_ms
from puller import default_fetchers
from tests.mesh.fakes import Events, fake_cache

FAILURE_TTL_S = 0.3


@dataclass
class Member:
    registry: MemoryRegistry
    store: ModelStore
    manager: ModelManager


@pytest.fixture
async def member() -> AsyncIterator[Member]:
    registry = MemoryRegistry(history=5)
    store = ModelStore(registry)
    await store.start()
    pool = ThreadPoolExecutor(1)
    manager = ModelManager(
        store=store,
        cache=fake_cache(capacity_bytes=1000, executor=pool, listener=Events()),
        fetchers=default_fetchers(),
        pod_id="pod-a",
        failure_ttl_s=FAILURE_TTL_S,
    )
    yield Member(registry, store, manager)
    await store.stop()
    pool.shutdown()


async def _next(changes: AsyncIterator[ModelChange], within_s: float = 5.0) -> ModelChange:
    async with asyncio.timeout(within_s):
        return await anext(changes)


def _model(change: ModelChange) -> ModelView:
    assert change.model is not None, change
    return change.model


async def _edit(store: ModelStore, model_id: str, **fields: object) -> None:
    await store.update_model(model_id, lambda r: replace(r, **fields))  # type: ignore[arg-type]


async def test_snapshot_then_synced_then_changes(member: Member) -> None:
    for model_id in ("b", "a", "other"):
        await member.store.create_model(ModelRecord(model_id, ModelInfo("fake", "m.txt"), tenant="t1"))
    async with ModelWatch(member.store, member.manager, "") as watch:
        changes = watch.changes()
        first, second, third = [_model(await _next(changes)) for _ in range(3)]
        assert [first.model_id, second.model_id, third.model_id] == ["a", "b", "other"]
        assert first == ModelView("a", "fake", "t1", ModelState.NOT_LOADED, 0, 0, (), False, 0)
        assert await _next(changes) == SYNCED
        await member.store.create_model(ModelRecord("c", ModelInfo("fake", "c.txt")))
        assert _model(await _next(changes)).model_id == "c"
        await member.store.delete_model("a")
        assert await _next(changes) == ModelChange(deleted_model_id="a")
        await changes.aclose()
    assert member.store.subscribers == 0


async def test_a_slow_consumer_gets_each_models_latest_state_once(member: Member) -> None:
    await member.store.create_model(ModelRecord("m", ModelInfo("fake", "m.txt")))
    await member.store.create_model(ModelRecord("n", ModelInfo("fake", "n.txt")))
    async with ModelWatch(member.store, member.manager, "") as watch:
        changes = watch.changes()
        for _ in range(3):
            await _next(changes)  # m, n, synced
        for size in range(1, 51):  # the consumer reads nothing meanwhile
            await _edit(member.store, "m", size_bytes=size)
        await _edit(member.store, "n", size_bytes=7)
        await _edit(member.store, "m", load_ms=1)  # not part of the watched state: no message
        latest, other = _model(await _next(changes)), _model(await _next(changes))
        assert (latest.model_id, latest.size_bytes, other.model_id, other.size_bytes) == ("m", 50, "n", 7)
        await member.store.create_model(ModelRecord("o", ModelInfo("fake", "o.txt")))
        assert _model(await _next(changes)).model_id == "o"  # nothing about m came in between


async def test_copies_count_only_on_live_pods_and_failures_expire(member: Member) -> None:
    lease = await member.registry.grant_lease(60)
    await member.store.publish_instance(InstanceRecord("pod-b", "pod-b", capacity_bytes=1000), lease=lease)
    await member.store.create_model(ModelRecord("m", ModelInfo("fake", "m.txt")))
    async with ModelWatch(member.store, member.manager, "m") as watch:
        changes = watch.changes()
        assert _model(await _next(changes)).status is ModelState.NOT_LOADED
        assert await _next(changes) == SYNCED
        await _edit(member.store, "m", copies={"pod-b": CopyRecord(ModelState.LOADED, now_ms())})
        loaded = _model(await _next(changes))
        assert (loaded.status, loaded.loaded_copies, loaded.loading_copies) == (ModelState.LOADED, 1, 0)

        await member.registry.revoke_lease(lease)  # pod-b dies; the model's record stays as it was
        gone = _model(await _next(changes))
        assert (gone.status, gone.loaded_copies) == (ModelState.NOT_LOADED, 0)
        assert member.store.model("m").copies  # type: ignore[union-attr]

        failed_at = now_ms()
        await _edit(member.store, "m", failures={"pod-c": FailureRecord(failed_at, "bad weights")})
        failed = _model(await _next(changes))
        assert failed.status is ModelState.LOADING_FAILED
        reasons = [(f.pod_id, f.reason, f.time_ms) for f in failed.failures]
        assert reasons == [("pod-c", "bad weights", failed_at)]
        expired = _model(await _next(changes, within_s=FAILURE_TTL_S + 2))  # no record changed
        assert (expired.status, expired.failures) == (ModelState.NOT_LOADED, ())
        assert now_ms() - failed_at >= FAILURE_TTL_S * 1000


async def test_a_resync_after_missing_history_sends_what_vanished(member: Member) -> None:
    await member.store.create_model(ModelRecord("gone", ModelInfo("fake", "m.txt")))
    async with ModelWatch(member.store, member.manager, "") as watch:
        changes = watch.changes()
        assert _model(await _next(changes)).model_id == "gone"
        assert await _next(changes) == SYNCED
        # Writes with no chance for the mirror's watch to run: its history is trimmed away.
        prefix = member.store.prefix
        for i in range(20):
            record = ModelRecord(f"m{i:02d}", ModelInfo("fake", "q.txt"))
            await member.registry.put(f"{prefix}models/m{i:02d}", record.to_json())
        await member.registry.delete(f"{prefix}models/gone")
        seen = [await _next(changes) for _ in range(21)]
    assert ModelChange(deleted_model_id="gone") in seen
    assert sorted(c.model.model_id for c in seen if c.model is not None) == [f"m{i:02d}" for i in range(20)]
    assert member.store.subscribers == 0


async def test_changes_outside_a_watch_are_refused(member: Member) -> None:
    watch = ModelWatch(member.store, member.manager, "")
    with pytest.raises(RuntimeError, match="async with"):
        await anext(watch.changes())


async def test_ending_the_watches_ends_each_open_stream_and_each_opened_later(member: Member) -> None:
    watches = ModelWatches(member.store, member.manager)
    async with watches.watch("") as watch:
        changes = watch.changes()
        assert await _next(changes) == SYNCED
        assert (watches.open_count, member.store.subscribers) == (1, 1)
        watches.end_all()
        with pytest.raises(StopAsyncIteration):
            await _next(changes)
    assert (watches.open_count, member.store.subscribers) == (0, 0)
    async with watches.watch("") as late:
        assert [c async for c in late.changes()] == [SYNCED]


async def test_ending_a_watch_while_its_consumer_holds_a_change_ends_the_stream(member: Member) -> None:
    watches = ModelWatches(member.store, member.manager)
    async with watches.watch("") as watch:
        changes = watch.changes()
        assert await _next(changes) == SYNCED
        await member.store.create_model(ModelRecord("m", ModelInfo("fake", "m.txt")))
        assert _model(await _next(changes)).model_id == "m"  # the stream is writing this one out
        watches.end_all()  # the pod stops meanwhile, and nothing else changes
        with pytest.raises(StopAsyncIteration):
            await _next(changes)
