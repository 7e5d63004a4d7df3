"""The cache's invariants with a fake adapter: capacity, busy models, timeouts, single flight."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from adapters.base import ModelAdapter
from mesh.cache import ModelCache
from mesh.records import ModelInfo, ModelRecord
from mesh_common.errors import Busy, CapacityExceeded, ModelLoadFailed, Unavailable
from placement.eviction import EvictionPolicy
from puller import default_fetchers
from tests.mesh.fakes import Events, FakeAdapter, FakeModel, fake_cache, serving, turns_until


@pytest.fixture
def adapter() -> FakeAdapter:
    return FakeAdapter()


@pytest.fixture
def events() -> Events:
    return Events()


@pytest.fixture
async def cache(adapter, events):
    pool = ThreadPoolExecutor(4)
    cache = ModelCache(
        capacity_bytes=100,
        fetchers=default_fetchers(),
        executor=pool,
        listener=events,
        load_timeout_s=0.5,
        adapters=lambda _: adapter,
        # LRU: a deterministic order. Under GDSF, models with equal hits rank by their measured
        # load times, which vary run to run (its own tests build their caches).
        eviction_policy=EvictionPolicy.LRU,
    )
    yield cache
    adapter.block.set()
    await cache.close()
    pool.shutdown()


def record(tmp_path: Path, name: str, size: int) -> ModelRecord:
    path = tmp_path / f"{name}.txt"
    path.write_text(str(size))
    return ModelRecord(name, ModelInfo("fake", str(path)))


async def test_lru_eviction_keeps_use_within_capacity(cache, tmp_path, events) -> None:
    for name in ("a", "b", "c"):
        async with serving(cache, record(tmp_path, name, 40)):
            assert cache.used_bytes <= 100
    assert [m.model_id for m in cache.models()] == ["b", "c"]
    assert ("evicted", "a") in events.log


async def test_model_in_use_is_not_evicted_and_busy_when_no_room(cache, tmp_path, events) -> None:
    async with serving(cache, record(tmp_path, "held", 80)):
        with pytest.raises(Busy, match="every loaded model is serving"):
            await cache.ensure_loaded(record(tmp_path, "other", 40))
        assert cache.loaded("held") is not None
    # No room for now is not a broken model: the claim goes, and no failure is recorded.
    assert ("refused", "other") in events.log and ("failed", "other") not in events.log


async def test_waiting_load_proceeds_when_a_model_becomes_idle(cache, tmp_path) -> None:
    held = serving(cache, record(tmp_path, "held", 80))
    await held.__aenter__()
    waiter = asyncio.create_task(cache.ensure_loaded(record(tmp_path, "next", 40)))
    await turns_until(lambda: cache.loads_waiting_for_room == 1, "the load to wait for room")
    assert not waiter.done()
    await held.__aexit__(None, None, None)
    assert isinstance(await asyncio.wait_for(waiter, 2), FakeModel)
    assert cache.loaded("held") is None
    assert cache.loads_waiting_for_room == 0


async def test_a_load_is_no_victim_while_the_listener_records_it(adapter, tmp_path) -> None:
    class SlowRecords(Events):
        """Records a load only when let: the registry write of a real pod takes milliseconds."""

        def __init__(self) -> None:
            super().__init__()
            self.recording = asyncio.Event()
            self.let = asyncio.Event()

        async def loaded(self, model_id, size_bytes, load_seconds):
            self.recording.set()
            await self.let.wait()
            await super().loaded(model_id, size_bytes, load_seconds)

    events = SlowRecords()
    with ThreadPoolExecutor(2) as pool:
        cache = fake_cache(capacity_bytes=100, executor=pool, listener=events, load_timeout_s=5)
        first = asyncio.create_task(cache.ensure_loaded(record(tmp_path, "first", 60)))
        await asyncio.wait_for(events.recording.wait(), 5)
        second = asyncio.create_task(cache.ensure_loaded(record(tmp_path, "second", 60)))
        await turns_until(lambda: cache.loads_waiting_for_room == 1, "the second load to wait for room")
        events.let.set()
        assert isinstance(await asyncio.wait_for(first, 5), FakeModel)
        assert isinstance(await asyncio.wait_for(second, 5), FakeModel)
        assert [e for e in events.log if e[0] != "loading"] == [
            ("loaded", "first"),
            ("evicted", "first"),
            ("loaded", "second"),
        ]
        await cache.close()


async def test_single_flight(cache, tmp_path, adapter) -> None:
    adapter.block.clear()
    rec = record(tmp_path, "m", 10)
    waiters = [asyncio.create_task(cache.ensure_loaded(rec)) for _ in range(50)]
    await turns_until(lambda: adapter.loads == 1, "the load to start")  # and every waiter to join it
    adapter.block.set()
    loaded = await asyncio.gather(*waiters)
    assert adapter.loads == 1 and all(m is loaded[0] for m in loaded)


async def test_timeout_failure_and_oversize(cache, tmp_path, adapter, events) -> None:
    adapter.block.clear()
    with pytest.raises(Unavailable, match=r"timed out after 0\.5s"):
        await cache.ensure_loaded(record(tmp_path, "slow", 10))
    adapter.block.set()
    assert cache.used_bytes == 0
    with pytest.raises(ModelLoadFailed, match="bad weights"):
        await cache.ensure_loaded(record(tmp_path, "broken", 10))
    with pytest.raises(CapacityExceeded, match="needs 101 bytes"):
        await cache.ensure_loaded(record(tmp_path, "huge", 101))
    assert ("failed", "broken") in events.log and cache.used_bytes == 0


async def test_measured_size_larger_than_predicted_evicts_more(cache, tmp_path) -> None:
    await cache.ensure_loaded(record(tmp_path, "a", 40))
    await cache.ensure_loaded(record(tmp_path, "grows", 40))  # measures 90
    assert cache.loaded("a") is None
    assert cache.used_bytes == 90


async def test_gdsf_keeps_a_hot_model_through_a_scan_that_lru_lets_push_it_out(tmp_path) -> None:
    """A model used many times survives a burst of one-off loads under GDSF, not under LRU."""
    from placement.eviction import EvictionPolicy

    survived = {}
    for policy in (EvictionPolicy.GDSF, EvictionPolicy.LRU):
        pool = ThreadPoolExecutor(2)
        cache = fake_cache(capacity_bytes=100, executor=pool, listener=Events(), eviction_policy=policy)
        hot = record(tmp_path, "hot", 30)
        for _ in range(5):
            async with serving(cache, hot):
                pass
        for i in range(4):  # a scan: each model once, each needing room
            async with serving(cache, record(tmp_path, f"scan{i}", 30)):
                pass
        survived[policy] = cache.loaded("hot") is not None
        assert cache.used_bytes <= 100
        await cache.close()
        pool.shutdown()
    assert survived == {EvictionPolicy.GDSF: True, EvictionPolicy.LRU: False}


async def test_the_published_coldness_is_that_of_the_next_victim_under_each_policy(tmp_path) -> None:
    """Placement compares pods by the last use of the model each would evict next."""
    from placement.eviction import EvictionPolicy

    now = [0.0]
    ages = {}
    for policy in (EvictionPolicy.GDSF, EvictionPolicy.LRU):
        pool = ThreadPoolExecutor(2)
        cache = fake_cache(
            capacity_bytes=100, executor=pool, listener=Events(), eviction_policy=policy, clock=lambda: now[0]
        )
        assert cache.next_victim_age_s() is None
        now[0] = 10.0
        for _ in range(5):  # used often, long ago
            async with serving(cache, record(tmp_path, "hot", 30)):
                pass
        now[0] = 50.0
        async with serving(cache, record(tmp_path, "once", 30)):  # used once, lately
            pass
        now[0] = 60.0
        ages[policy] = cache.next_victim_age_s()
        await cache.close()
        pool.shutdown()
    # GDSF would evict "once" (one hit) next, LRU "hot" (older)
    assert ages == {EvictionPolicy.GDSF: 10.0, EvictionPolicy.LRU: 50.0}


async def test_a_copy_other_pods_hold_is_evicted_before_one_only_this_pod_has(tmp_path) -> None:
    pool = ThreadPoolExecutor(2)
    cache = fake_cache(
        capacity_bytes=100,
        executor=pool,
        listener=Events(),
        held_elsewhere=lambda ids: {i for i in ids if i == "shared"},
    )
    for name in ("alone", "shared"):  # "alone" is the least recently used
        async with serving(cache, record(tmp_path, name, 40)):
            pass
    async with serving(cache, record(tmp_path, "new", 40)):
        pass
    assert cache.loaded("shared") is None and cache.loaded("alone") is not None
    await cache.close()
    pool.shutdown()


class _RunsCode(FakeAdapter):
    """A format whose loading runs the artifact's code: tried in a worker process first."""

    runs_code_on_load = True


@dataclass
class _Trials:
    """A probe whose trial passes, after ``spend`` on the cache's clock, noting what the cache held."""

    cache: ModelCache | None = None
    clock: list[float] = field(default_factory=lambda: [0.0])
    spend: float = 0.0
    seen: list[tuple[list[str], int]] = field(default_factory=list)

    def check(self, model_id: str, adapter: ModelAdapter, path: Path, *, timeout_s: float) -> None:
        assert self.cache is not None
        self.seen.append(([m.model_id for m in self.cache.models()], self.cache.used_bytes))
        self.clock[0] += self.spend


def _probed_cache(
    adapter: FakeAdapter, events: Events, trials: _Trials, pool: ThreadPoolExecutor
) -> ModelCache:
    cache = ModelCache(
        capacity_bytes=100,
        fetchers=default_fetchers(),
        executor=pool,
        listener=events,
        load_timeout_s=5.0,
        clock=lambda: trials.clock[0],
        adapters=lambda _: adapter,
        eviction_policy=EvictionPolicy.LRU,
        probe=trials,
    )
    trials.cache = cache
    return cache


async def test_the_trial_load_does_not_spend_the_loads_own_timeout(tmp_path, events) -> None:
    adapter = _RunsCode()
    adapter.block.clear()
    trials = _Trials(spend=5.0)  # the trial took the whole load timeout (its own bound)
    with ThreadPoolExecutor(2) as pool:
        cache = _probed_cache(adapter, events, trials, pool)
        load = asyncio.create_task(cache.ensure_loaded(record(tmp_path, "m", 10)))
        await turns_until(lambda: adapter.loads == 1, "the pod's own load to start")
        done, _ = await asyncio.wait({load}, timeout=0.2)  # what was left of a shared timeout: none
        assert not done, load.exception()
        adapter.block.set()
        assert (await load).size_bytes == 10
        await cache.close()


async def test_the_trial_load_runs_in_room_made_for_the_model(tmp_path, events) -> None:
    """The worker holds the model as the pod will: room is made first, so a full pod's memory is not
    exceeded by a model's size while it is tried."""
    adapter = _RunsCode()
    trials = _Trials()
    with ThreadPoolExecutor(2) as pool:
        cache = _probed_cache(adapter, events, trials, pool)
        await cache.ensure_loaded(record(tmp_path, "old", 60))
        await cache.ensure_loaded(record(tmp_path, "new", 60))
        # Each reserved before its trial; "old" evicted before "new" is tried.
        assert trials.seen == [(["old"], 60), (["new"], 60)]
        await cache.close()
