"""Deaths while loading count against the model: a copy a dead pod left LOADING, or a loader process
that died; enough of them block the model fleet-wide until it is registered again. A pod that
stops gracefully drops its claims, so stopping is never counted as a crash."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path

import pytest

from mesh.cache import ModelCache
from mesh.management import ModelManager
from mesh.records import CopyRecord, InstanceRecord, ModelInfo, ModelRecord, ModelState
from mesh.registry import MemoryRegistry, ModelStore
from mesh_common.errors import LoaderCrashed, ModelLoadFailed, UnsupportedModelType
from puller import default_fetchers
from tests.mesh.fakes import Events, FakeAdapter, fake_cache, turns_until

TTL_S = 60.0
LEASE_S = 10.0
WINDOW_S = 3600.0


@dataclass
class Clock:
    now_ms: int = 1_000_000

    def __call__(self) -> int:
        return self.now_ms


@dataclass
class Member:
    registry: MemoryRegistry
    store: ModelStore
    manager: ModelManager
    clock: Clock


@pytest.fixture
async def member() -> AsyncIterator[Member]:
    registry = MemoryRegistry()
    store = ModelStore(registry)
    await store.start()
    lease = await registry.grant_lease(60)
    await store.publish_instance(InstanceRecord("pod-a", "pod-a", capacity_bytes=1000), lease=lease)
    pool = ThreadPoolExecutor(1)
    clock = Clock()
    manager = ModelManager(
        store=store,
        cache=fake_cache(capacity_bytes=1000, executor=pool, listener=Events()),
        fetchers=default_fetchers(),
        pod_id="pod-a",
        failure_ttl_s=TTL_S,
        max_load_crashes=2,
        crash_window_s=WINDOW_S,
        dead_after_s=LEASE_S,
        clock_ms=clock,
    )
    await store.create_model(ModelRecord("m", ModelInfo("fake", "m.txt")))
    yield Member(registry, store, manager, clock)
    await store.stop()
    pool.shutdown()


async def _copy(store: ModelStore, pod_id: str, state: ModelState) -> None:
    def change(r: ModelRecord) -> ModelRecord:
        return replace(r, copies={**r.copies, pod_id: CopyRecord(state, 1)})

    await store.update_model("m", change)


def _record(member: Member) -> ModelRecord:
    record = member.store.model("m")
    assert record is not None
    return record


async def test_a_dead_pods_loading_copy_is_a_crash_and_its_loaded_copy_is_not(member: Member) -> None:
    await _copy(member.store, "gone-1", ModelState.LOADED)
    await _copy(member.store, "gone-2", ModelState.LOADING)
    assert await member.manager.forget_dead_pods() == 1  # gone-1's copy: nothing to count
    assert set(_record(member).copies) == {"gone-2"} and _record(member).crashes == ()
    member.clock.now_ms += int(LEASE_S * 1000) - 1
    assert await member.manager.forget_dead_pods() == 0  # gone-2 may yet rejoin (an etcd stall)
    member.clock.now_ms += 1
    assert await member.manager.forget_dead_pods() == 1  # away a whole lease TTL: it died
    record = _record(member)
    assert record.copies == {} and not record.blocked
    assert [(c.pod_id, c.what) for c in record.crashes] == [("gone-2", "pod gone-2 died while loading it")]
    assert member.manager.status("m").errors == ["gone-2: pod gone-2 died while loading it"]
    assert member.manager.record("m") == record  # one crash, elsewhere: this pod may still load it


async def test_the_limit_th_crash_blocks_the_model_past_its_failures_ttl(member: Member) -> None:
    crash = LoaderCrashed(model_id="m", reason="the loader process died: exit code 3")
    await member.manager.failed("m", crash)
    await _copy(member.store, "gone-1", ModelState.LOADING)
    await member.manager.forget_dead_pods()
    member.clock.now_ms += int(LEASE_S * 1000)
    await member.manager.forget_dead_pods()
    record = _record(member)
    assert record.blocked == (
        "pods died loading it (pod-a: the loader process died: exit code 3; "
        "gone-1: pod gone-1 died while loading it); no pod loads it again until it is registered again "
        "or an operator clears it (mesh clear)"
    )
    member.clock.now_ms += int(TTL_S * 1000) * 10
    status = member.manager.status("m")
    assert status.state is ModelState.LOADING_FAILED and status.errors == [record.blocked]
    with pytest.raises(ModelLoadFailed, match="pods died loading it"):
        member.manager.record("m")
    assert ModelRecord.from_json(record.to_json()) == record


async def test_a_pod_back_from_an_etcd_stall_is_not_counted_as_dead(member: Member) -> None:
    """pod-b was loading the model when etcd stalled past its lease: the janitor's first look finds
    no instance record, but pod-b rejoins (within a third of its TTL of etcd answering) and writes
    its copy back. Its load was no crash, and its copy stays."""
    await _copy(member.store, "pod-b", ModelState.LOADING)
    assert await member.manager.forget_dead_pods() == 0
    lease = await member.registry.grant_lease(60)
    await member.store.publish_instance(InstanceRecord("pod-b", "pod-b", capacity_bytes=1000), lease=lease)
    await _copy(member.store, "pod-b", ModelState.LOADED)  # its write-back after rejoining
    member.clock.now_ms += int(LEASE_S * 1000) * 2
    assert await member.manager.forget_dead_pods() == 0
    record = _record(member)
    assert record.crashes == () and record.copies["pod-b"].state is ModelState.LOADED


async def test_deaths_block_the_model_only_when_enough_fall_within_the_window(member: Member) -> None:
    def crash(code: int) -> LoaderCrashed:
        return LoaderCrashed(model_id="m", reason=f"the loader process died: exit code {code}")

    await member.manager.failed("m", crash(3))
    member.clock.now_ms += int(WINDOW_S * 1000)  # weeks apart, unrelated: they do not add up
    await member.manager.failed("m", crash(4))
    assert len(_record(member).crashes) == 2 and not _record(member).blocked
    member.clock.now_ms += int(WINDOW_S * 1000) - 1
    await member.manager.failed("m", crash(5))
    assert _record(member).blocked.startswith(
        "pods died loading it (pod-a: the loader process died: exit code 4; "
        "pod-a: the loader process died: exit code 5)"
    )


async def test_a_load_that_fails_without_dying_is_no_crash(member: Member) -> None:
    for _ in range(3):
        await member.manager.failed("m", ModelLoadFailed(model_id="m", reason="ValueError: cannot unpickle"))
    assert _record(member).crashes == () and not _record(member).blocked


async def test_loads_cancelled_by_a_stopping_pod_drop_their_claims(tmp_path: Path) -> None:
    """One load running and one queued for the pod's only load slot: both drop their claims."""
    adapter = FakeAdapter()
    adapter.block.clear()
    events = Events()
    pool = ThreadPoolExecutor(2)
    cache = ModelCache(
        capacity_bytes=100,
        fetchers=default_fetchers(),
        executor=pool,
        listener=events,
        adapters=lambda _: adapter,
        load_concurrency=1,
    )
    loads = []
    for model_id in ("m", "queued"):
        path = tmp_path / f"{model_id}.txt"
        path.write_text("10")
        record = ModelRecord(model_id, ModelInfo("fake", str(path)))
        loads.append(asyncio.create_task(cache.ensure_loaded(record)))
    await turns_until(
        lambda: adapter.loads == 1 and cache.loading("queued"), "one load to start, one to queue"
    )
    await cache.cancel_loads()
    assert sorted(events.log) == [("loading", "m"), ("refused", "m"), ("refused", "queued")]
    assert not cache.loading("m") and not cache.loading("queued")
    adapter.block.set()
    for load in loads:
        with pytest.raises(asyncio.CancelledError):
            await load
    await cache.close()
    pool.shutdown()


async def test_a_load_of_a_type_this_pod_cannot_load_drops_its_claim(tmp_path: Path) -> None:
    def no_adapter(model_type: str) -> FakeAdapter:
        raise KeyError(model_type)

    events = Events()
    pool = ThreadPoolExecutor(1)
    cache = ModelCache(
        capacity_bytes=100, fetchers=default_fetchers(), executor=pool, listener=events, adapters=no_adapter
    )
    path = tmp_path / "m.txt"
    path.write_text("10")
    with pytest.raises(UnsupportedModelType):
        await cache.ensure_loaded(ModelRecord("m", ModelInfo("other", str(path))))
    assert events.log == [("failed", "m")]  # the listener drops the claim with the failure
    await cache.close()
    pool.shutdown()
