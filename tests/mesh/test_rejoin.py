"""A pod whose lease ran out (etcd silent past its TTL) rejoins the fleet: it writes back the copies
the registry forgot, unloads those the fleet replaced meanwhile, and the janitor does not forget the
copies of a pod that is back. Two pods' stores on one in-memory registry; caches of fake models."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

from mesh.cache import ModelCache
from mesh.instance import InstancePublisher
from mesh.management import ModelManager
from mesh.records import CopyRecord, InstanceRecord, ModelInfo, ModelRecord, ModelState, ModelTraffic
from mesh.registry import MemoryRegistry, ModelStore
from placement.copies import CopyPolicy
from puller import default_fetchers
from tests.mesh.fakes import Events, fake_cache, until

LOADED = CopyRecord(ModelState.LOADED, 1)


@dataclass
class Member:
    pod_id: str
    store: ModelStore
    cache: ModelCache
    manager: ModelManager
    lease: int

    async def publish(self, **fields: object) -> None:
        record = InstanceRecord(self.pod_id, self.pod_id, capacity_bytes=1000, **fields)  # type: ignore[arg-type]
        await self.store.publish_instance(record, lease=self.lease)


@dataclass
class Fleet:
    registry: MemoryRegistry
    a: Member
    b: Member
    artifact: Path

    async def register(self, model_id: str, copies: dict[str, CopyRecord], **fields: object) -> None:
        info = ModelInfo("fake", str(self.artifact))
        await self.a.store.create_model(ModelRecord(model_id, info, copies=copies, **fields))  # type: ignore[arg-type]
        await until(self.b.store, lambda: self.b.store.model(model_id) is not None)

    async def hold(self, member: Member, model_id: str) -> None:
        """Load the model into the member's cache (its events go nowhere: the registry misses it)."""
        record = member.store.model(model_id)
        assert record is not None
        await member.cache.ensure_loaded(record)


@pytest.fixture
async def fleet(tmp_path: Path) -> AsyncIterator[Fleet]:
    registry = MemoryRegistry()
    pool = ThreadPoolExecutor(1)
    artifact = tmp_path / "model.txt"
    artifact.write_text("10")
    members = []
    for pod_id in ("pod-a", "pod-b"):
        store = ModelStore(registry)
        await store.start()
        cache = fake_cache(capacity_bytes=1000, executor=pool, listener=Events())
        manager = ModelManager(
            store=store,
            cache=cache,
            fetchers=default_fetchers(),
            pod_id=pod_id,
            failure_ttl_s=30,
            copy_policy=CopyPolicy(up_rate=50, down_rate=10, cooldown_ms=60_000),
        )
        member = Member(pod_id, store, cache, manager, await registry.grant_lease(60))
        await member.publish()
        members.append(member)
    for member in members:
        await until(member.store, lambda m=member: len(m.store.instances()) == 2)
    yield Fleet(registry, members[0], members[1], artifact)
    for member in members:
        await member.store.stop()
        await member.cache.close()
    pool.shutdown()


def copies(member: Member, model_id: str) -> dict[str, ModelState]:
    record = member.store.model(model_id)
    assert record is not None
    return {pod: c.state for pod, c in record.copies.items()}


async def test_the_publisher_rejoins_with_a_new_lease_and_then_says_so() -> None:
    registry = MemoryRegistry()
    store = ModelStore(registry)
    await store.start()
    seen: list[InstanceRecord | None] = []
    rejoined = asyncio.Event()

    def on_rejoin() -> None:
        seen.append(store.instance("pod-1"))
        rejoined.set()

    publisher = InstancePublisher(
        registry=registry,
        store=store,
        describe=lambda: InstanceRecord("pod-1", "127.0.0.1:1", capacity_bytes=1000),
        ttl_s=0.3,
        min_interval_s=0.01,
        on_rejoin=on_rejoin,
    )
    await publisher.start()
    first = publisher.lease
    await registry.revoke_lease(first)  # what etcd does to a lease not kept alive past its TTL
    async with asyncio.timeout(5):
        await rejoined.wait()
    assert publisher.lease != first
    # Called once the record is back under the new lease: copies written after it are not forgotten.
    assert len(seen) == 1 and seen[0] is not None and seen[0].pod_id == "pod-1"
    entry = await registry.get(f"{store.prefix}instances/pod-1")
    assert entry is not None
    await publisher.stop()
    await store.stop()


async def test_a_pod_writes_back_the_copies_the_registry_forgot(fleet: Fleet) -> None:
    a = fleet.a
    for model_id in ("m1", "m2"):
        await fleet.register(model_id, {})  # the janitor forgot pod-a's copies
        await fleet.hold(a, model_id)

    # Seen in the registry: a model held here without this pod's copy is written back.
    assert await a.manager.repair_copies() == 2
    assert copies(a, "m1") == copies(a, "m2") == {"pod-a": ModelState.LOADED}
    assert await a.manager.repair_copies() == 0  # nothing missed now

    # On rejoining with a new lease: every copy held here, whatever the mirror shows.
    await a.store.update_model("m2", lambda r: ModelRecord(r.model_id, r.info))
    a.manager.rejoined()
    assert await a.manager.repair_copies() == 1
    assert copies(a, "m2") == {"pod-a": ModelState.LOADED}


async def test_nothing_is_written_back_while_the_pod_is_out_of_the_fleet(fleet: Fleet) -> None:
    """The janitor forgets the copies of a pod with no instance record: they wait for the new one."""
    a = fleet.a
    await fleet.register("m", {})
    await fleet.hold(a, "m")
    await fleet.registry.revoke_lease(a.lease)
    await until(a.store, lambda: a.store.instance("pod-a") is None)
    assert await a.manager.repair_copies() == 0
    assert copies(a, "m") == {}
    a.lease = await fleet.registry.grant_lease(60)
    await a.publish()
    assert await a.manager.repair_copies() == 1
    assert copies(a, "m") == {"pod-a": ModelState.LOADED}


async def test_a_copy_another_pod_replaced_is_unloaded_unless_the_fleet_needs_it(fleet: Fleet) -> None:
    """While pod-a was out of the fleet or its copies forgotten, pod-b loaded models again. pod-a
    drops its copy where pod-b's is enough (no cooldown: neither copy was added for traffic), and
    writes back the copies that traffic or a minimum number of copies needs. A copy yields only
    to one loaded after it, so two pods never both drop theirs."""
    a, b = fleet.a, fleet.b
    await fleet.register("dup", {"pod-b": LOADED})  # pod-a's copy was forgotten
    await fleet.register("busy", {"pod-b": LOADED})
    await fleet.register("pinned", {"pod-b": LOADED}, min_copies=2)
    older, younger = CopyRecord(ModelState.LOADED, 1_000), CopyRecord(ModelState.LOADED, 2_000)
    await fleet.register("replaced", {"pod-a": older, "pod-b": younger})  # loaded while pod-a was out
    await fleet.register("kept", {"pod-a": younger, "pod-b": older})
    await fleet.register("as-old", {"pod-a": older, "pod-b": older})
    await b.publish(hot={"busy": ModelTraffic(30.0, 0.0)})
    await until(a.store, lambda: "busy" in a.store.instance("pod-b").hot)  # type: ignore[union-attr]
    for model_id in ("dup", "busy", "pinned", "replaced", "kept", "as-old"):
        await fleet.hold(a, model_id)

    # Seen in the registry: the copies lost from it.
    assert await a.manager.repair_copies() == 3
    assert a.cache.loaded("dup") is None
    assert copies(a, "dup") == {"pod-b": ModelState.LOADED}
    held = {"pod-a": ModelState.LOADED, "pod-b": ModelState.LOADED}
    assert copies(a, "busy") == copies(a, "pinned") == held
    assert a.cache.loaded("replaced") is not None  # recorded here: only a rejoin looks again

    # On rejoining the fleet: every copy held here.
    a.manager.rejoined()
    assert await a.manager.repair_copies() == 1
    assert a.cache.loaded("replaced") is None
    assert all(a.cache.loaded(m) is not None for m in ("busy", "pinned", "kept", "as-old"))


async def test_the_janitor_keeps_the_copies_of_a_pod_back_before_its_mirror_shows_it(fleet: Fleet) -> None:
    """pod-a's lease ran out and pod-b's mirror saw its instance record go; pod-a rejoined under a
    new lease, but pod-b's mirror lags (its watch is stopped here). The registry itself says pod-a
    is live: its copies stay."""
    a, b = fleet.a, fleet.b
    await fleet.register("m", {"pod-a": LOADED})
    await fleet.registry.revoke_lease(a.lease)
    await until(b.store, lambda: b.store.instance("pod-a") is None)
    await b.store.stop()  # the watch: pod-b's mirror no longer follows
    a.lease = await fleet.registry.grant_lease(60)
    await a.publish()
    assert b.store.instance("pod-a") is None
    assert await b.manager.forget_dead_pods() == 0
    assert copies(a, "m") == {"pod-a": ModelState.LOADED}
    assert b.store.instance("pod-a") is not None  # read from the registry
