"""The janitor's election and rounds: two pods' stores on one registry, rounds run by hand."""

from __future__ import annotations

from collections.abc import AsyncIterator, Collection
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import pytest

from mesh.janitor import Janitor, build_janitor
from mesh.management import ModelManager
from mesh.records import (
    CopyRecord,
    FailureRecord,
    InstanceRecord,
    ModelInfo,
    ModelRecord,
    ModelState,
    ModelTraffic,
    TenantRecord,
)
from mesh.registry import MemoryRegistry, ModelStore
from mesh.settings import MeshSettings
from mesh_common.clock import now_ms
from placement.cluster import ClusterView, PodView
from placement.copies import CopyPolicy
from placement.quotas import TenantCopy
from puller import default_fetchers
from tests.mesh.fakes import Events, fake_cache, until

FAILURE_TTL_S = 30.0


@dataclass
class FakeCopies:
    changes: list[tuple[str, str, str]] = field(default_factory=list)
    reasons: list[str] = field(default_factory=list)
    """Why each copy was dropped (the unloading pod records it with the unload)."""
    tenants: dict[str, list[TenantCopy]] = field(default_factory=dict)

    def tenant_copies(self, tenants: Collection[str]) -> dict[str, list[TenantCopy]]:
        return {t: self.tenants.get(t, []) for t in tenants}

    async def add_copy(self, model_id: str, pod_id: str, *, why: str, deadline: float) -> None:
        self.changes.append(("add", model_id, pod_id))

    async def drop_copy(self, model_id: str, pod_id: str, *, why: str, deadline: float) -> None:
        self.changes.append(("drop", model_id, pod_id))
        self.reasons.append(why)


@dataclass
class Member:
    janitor: Janitor
    store: ModelStore
    lease: int
    loads: list[str] = field(default_factory=list)
    copies: FakeCopies = field(default_factory=FakeCopies)
    reported: list[int] = field(default_factory=list)
    """The round count each time the janitor reported a completed round."""


@pytest.fixture
async def fleet() -> AsyncIterator[tuple[MemoryRegistry, list[Member]]]:
    registry = MemoryRegistry()
    pool = ThreadPoolExecutor(1)
    members: list[Member] = []
    caches = []
    for pod_id in ("pod-a", "pod-b"):
        store = ModelStore(registry)
        await store.start()
        lease = await registry.grant_lease(60)
        await store.publish_instance(
            InstanceRecord(pod_id, pod_id, capacity_bytes=1000, labels=("type:fake",)), lease=lease
        )
        cache = fake_cache(capacity_bytes=1000, executor=pool, listener=Events())
        caches.append(cache)
        manager = ModelManager(
            store=store, cache=cache, fetchers=default_fetchers(), pod_id=pod_id, failure_ttl_s=FAILURE_TTL_S
        )
        loads: list[str] = []

        async def load(model_id: str, deadline: float, loads: list[str] = loads) -> None:
            loads.append(model_id)

        def view(store: ModelStore = store) -> ClusterView:
            pods = tuple(
                PodView(p, i.capacity_bytes, i.used_bytes, labels=frozenset(i.labels))
                for p, i in sorted(store.instances().items())
            )
            return ClusterView(pods, now_ms())

        copies = FakeCopies()
        reported: list[int] = []
        janitor = build_janitor(
            pod_id=pod_id,
            store=store,
            manager=manager,
            lease=lambda lease=lease: lease,
            view=view,
            load=load,
            settings=MeshSettings(
                janitor_interval_s=60,
                failure_ttl_s=FAILURE_TTL_S,
                preloads_per_round=2,
                load_timeout_s=5,
                copies_per_round=4,
            ),
            copies=copies,
            copy_policy=CopyPolicy(up_rate=50, down_rate=10, cooldown_ms=0),
            on_round=lambda reported=reported: reported.append(len(reported) + 1),
        )
        members.append(Member(janitor, store, lease, loads, copies, reported))
    for member in members:
        await until(member.store, lambda m=member: len(m.store.instances()) == 2)
    yield registry, members
    for member in members:
        await member.store.stop()
    for cache in caches:
        await cache.close()
    pool.shutdown()


async def test_one_pod_leads_and_another_takes_over_when_its_lease_goes(fleet) -> None:
    registry, (a, b) = fleet
    await a.janitor.round()
    await until(b.store, lambda: b.store.leader() is not None)
    await b.janitor.round()
    assert a.janitor.leading and not b.janitor.leading
    assert (a.janitor.rounds, b.janitor.rounds) == (1, 0)
    assert (a.reported, b.reported) == ([1], [])  # only completed leader rounds are reported
    await registry.revoke_lease(a.lease)  # pod-a dies: its lease (and the leader key) go
    await until(b.store, lambda: b.store.leader() is None)
    await b.janitor.round()
    assert b.janitor.leading and b.store.leader().pod_id == "pod-b"  # type: ignore[union-attr]
    assert b.janitor.rounds == 1 and b.reported == [1]


async def test_a_graceful_stop_resigns_at_once(fleet) -> None:
    _, (a, b) = fleet
    await a.janitor.round()
    await a.janitor.stop()
    await until(b.store, lambda: b.store.leader() is None)
    await b.janitor.round()
    assert b.janitor.leading


async def test_the_leader_cleans_dead_copies_expires_failures_and_preloads(fleet) -> None:
    _, (a, b) = fleet
    old = now_ms() - int(FAILURE_TTL_S * 1000) - 1
    records = [
        ModelRecord(
            "dead-copy", ModelInfo("fake", "/m"), copies={"pod-gone": CopyRecord(ModelState.LOADED, 1)}
        ),
        ModelRecord(
            "failed-long-ago", ModelInfo("fake", "/m"), failures={"pod-a": FailureRecord(old, "oom")}
        ),
        ModelRecord(
            "failed-now", ModelInfo("fake", "/m"), failures={"pod-a": FailureRecord(now_ms(), "oom")}
        ),
        ModelRecord("evicted-early", ModelInfo("fake", "/m"), size_bytes=100, last_used_ms=1_000),
        ModelRecord("evicted-late", ModelInfo("fake", "/m"), size_bytes=100, last_used_ms=2_000),
        ModelRecord("evicted-latest", ModelInfo("fake", "/m"), size_bytes=100, last_used_ms=3_000),
        ModelRecord("never-loaded", ModelInfo("fake", "/m")),
        ModelRecord("too-big", ModelInfo("fake", "/m"), size_bytes=5000, last_used_ms=9_000),
    ]
    for record in records:
        await a.store.create_model(record)
    await b.janitor.round()  # b leads; a's round must then do nothing
    await a.janitor.round()
    assert b.janitor.leading and a.janitor.rounds == 0
    model = b.store.model
    assert model("dead-copy").copies == {}  # type: ignore[union-attr]
    assert model("failed-long-ago").failures == {}  # type: ignore[union-attr]
    assert set(model("failed-now").failures) == {"pod-a"}  # type: ignore[union-attr]
    # Two per round, most recently evicted first; never-loaded and too-big stay unloaded.
    assert b.loads == ["evicted-latest", "evicted-late"] and a.loads == []


async def test_the_leader_scales_copies_from_the_traffic_pods_publish(fleet) -> None:
    _, (a, _) = fleet
    loaded = CopyRecord(ModelState.LOADED, 1)
    for record in (
        ModelRecord("busy", ModelInfo("fake", "/m"), size_bytes=10, copies={"pod-a": loaded}),
        ModelRecord(
            "cooled", ModelInfo("fake", "/m"), size_bytes=10, copies={"pod-a": loaded, "pod-b": loaded}
        ),
        ModelRecord("pinned", ModelInfo("fake", "/m"), size_bytes=10, min_copies=2, copies={"pod-b": loaded}),
        ModelRecord("quiet", ModelInfo("fake", "/m"), size_bytes=10, copies={"pod-a": loaded}),
    ):
        await a.store.create_model(record)
    hot = {"busy": ModelTraffic(120.0, 1.0), "cooled": ModelTraffic(2.0, 0.0)}
    await a.store.publish_instance(
        InstanceRecord("pod-a", "pod-a", capacity_bytes=1000, labels=("type:fake",), hot=hot), lease=a.lease
    )
    await until(a.store, lambda: bool(a.store.instance("pod-a").hot))  # type: ignore[union-attr]
    await a.janitor.round()
    assert a.janitor.leading
    assert sorted(a.copies.changes) == [
        ("add", "busy", "pod-b"),
        ("add", "pinned", "pod-a"),
        ("drop", "cooled", "pod-b"),  # serves nothing: 2 req/s on one copy is below 10
    ]
    assert a.copies.reasons == ["copy dropped by the janitor: 2.0 req/s would be 2.0 per copy on 1 < 10"]


async def test_the_leader_brings_a_tenant_over_its_loaded_bytes_cap_back_under_it(fleet) -> None:
    """Loads of one tenant on two pods at once can each pass the cap check: the janitor trims."""
    _, (a, _) = fleet
    for tenant in ("over", "under", "settling"):
        await a.store.set_tenant(TenantRecord(tenant, max_loaded_bytes=250))
    a.copies.tenants = {
        "over": [
            TenantCopy("o1", "pod-a", 100, rate=5.0, last_used_ms=10),
            TenantCopy("o2", "pod-b", 100, rate=0.0, last_used_ms=30),
            TenantCopy("o3", "pod-a", 100, rate=0.0, last_used_ms=20),  # the coldest
            TenantCopy("o4", "pod-b", 100, busy=True),
        ],
        "under": [TenantCopy("u1", "pod-a", 100), TenantCopy("u2", "pod-b", 100)],
        "settling": [TenantCopy(f"s{i}", "pod-a", 100, busy=True) for i in range(3)],
    }
    await a.janitor.round()
    assert sorted(a.copies.changes) == [("drop", "o2", "pod-b"), ("drop", "o3", "pod-a")]
