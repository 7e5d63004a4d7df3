"""Both registries keep etcd's semantics (the etcd one on a real etcd); the store's mirror reads
its own writes, resumes after a disconnect and resyncs after compaction."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace
from pathlib import Path

import grpc
import pytest

from mesh.instance import InstancePublisher
from mesh.records import CopyRecord, InstanceRecord, ModelInfo, ModelRecord, ModelState, VModelRecord
from mesh.registry import MemoryRegistry, ModelStore, Registry, RegistryConflict
from mesh.registry.base import MUST_NOT_EXIST, Entry, RegistryCompacted
from mesh.registry.etcd import EtcdRegistry, prefix_end
from mesh_common.clock import now_ms
from mesh_common.errors import Unavailable
from mesh_proto import etcd_pb2 as pb
from mesh_proto import etcd_pb2_grpc as pb_grpc
from mesh_tools.etcd_process import EtcdProcess
from tests.mesh.fakes import CountingRegistry

_names = itertools.count()


@pytest.fixture(params=["memory", "etcd"])
async def registry(request: pytest.FixtureRequest) -> AsyncIterator[Registry]:
    if request.param == "memory":
        yield MemoryRegistry()
        return
    etcd: EtcdProcess = request.getfixturevalue("etcd")
    client = EtcdRegistry(etcd.endpoint)
    yield client
    await client.close()


@pytest.fixture
def ns() -> str:
    """A key prefix no other test uses (the etcd is shared by the session)."""
    return f"/t{next(_names)}"


async def test_compare_and_swap(registry: Registry, ns: str) -> None:
    key = f"{ns}/k"
    first = await registry.put(key, b"1", expected_revision=MUST_NOT_EXIST)
    with pytest.raises(RegistryConflict):
        await registry.put(key, b"2", expected_revision=MUST_NOT_EXIST)
    second = await registry.put(key, b"2", expected_revision=first)
    with pytest.raises(RegistryConflict):
        await registry.put(key, b"3", expected_revision=first)
    with pytest.raises(RegistryConflict):
        await registry.delete(key, expected_revision=first)
    assert (await registry.get(key)).value == b"2"  # type: ignore[union-attr]
    gone = await registry.delete(key, expected_revision=second)
    assert await registry.get(key) is None
    entry, read_at = await registry.read(key)  # an absent key's answer says when it was absent
    assert entry is None and read_at >= gone


async def test_range_reads_only_the_prefix(registry: Registry, ns: str) -> None:
    await registry.put(f"{ns}/a/1", b"x")
    await registry.put(f"{ns}/a/2", b"y")
    revision = await registry.put(f"{ns}/b/1", b"z")
    entries, read_at = await registry.range(f"{ns}/a/")
    assert [(e.key, e.value) for e in entries] == [(f"{ns}/a/1", b"x"), (f"{ns}/a/2", b"y")]
    assert read_at >= revision


async def test_watch_resumes_after_a_revision(registry: Registry, ns: str) -> None:
    await registry.put(f"{ns}/a/1", b"x")
    revision = await registry.put(f"{ns}/a/2", b"y")
    await registry.put(f"{ns}/b/1", b"z")
    await registry.delete(f"{ns}/a/1")
    events = []

    async def collect() -> None:
        async for event in registry.watch(f"{ns}/a/", after_revision=revision - 1):
            events.append((event.key, event.value))
            if len(events) == 2:
                return

    await asyncio.wait_for(collect(), 5)
    assert events == [(f"{ns}/a/2", b"y"), (f"{ns}/a/1", None)]


async def test_revoking_a_lease_deletes_its_keys(registry: Registry, ns: str) -> None:
    lease = await registry.grant_lease(10)
    await registry.put(f"{ns}/leased", b"x", lease=lease)
    await registry.put(f"{ns}/kept", b"y")
    assert await registry.keep_alive(lease)
    await registry.revoke_lease(lease)
    assert await registry.get(f"{ns}/leased") is None
    assert await registry.get(f"{ns}/kept") is not None
    assert not await registry.keep_alive(lease)


async def test_etcd_lease_expires_without_keep_alive(etcd: EtcdProcess, ns: str) -> None:
    registry = EtcdRegistry(etcd.endpoint)
    lease = await registry.grant_lease(1)
    await registry.put(f"{ns}/leased", b"x", lease=lease)
    for _ in range(100):
        if await registry.get(f"{ns}/leased") is None:
            break
        await asyncio.sleep(0.1)
    assert await registry.get(f"{ns}/leased") is None
    assert not await registry.keep_alive(lease)
    await registry.close()


async def test_store_mirror_reads_its_writes_and_resolves_races(registry: Registry, ns: str) -> None:
    store, other = ModelStore(registry, namespace=ns), ModelStore(registry, namespace=ns)
    await store.start()
    await other.start()
    record = ModelRecord("m", ModelInfo("onnx", "/p"))
    assert await store.create_model(record) is None
    assert store.model("m") == record
    assert await other.create_model(ModelRecord("m", ModelInfo("sklearn", "/q"))) == record

    async def add_copy(s: ModelStore, pod: str) -> None:
        await s.update_model(
            "m",
            lambda r: ModelRecord(
                r.model_id, r.info, copies={**r.copies, pod: CopyRecord(ModelState.LOADED, 1)}
            ),
        )

    await asyncio.gather(add_copy(store, "a"), add_copy(other, "b"))
    assert set(store.model("m").copies) == {"a", "b"}  # type: ignore[union-attr]
    await store.create_vmodel(VModelRecord("v", "m", "m"))
    assert store.vmodels_using("m") == ["v"]
    await store.delete_model("m")
    assert store.model("m") is None
    await _until(lambda: other.model("m") is None)
    await store.stop()
    await other.stop()


async def test_a_burst_of_fetches_for_one_model_is_one_registry_read() -> None:
    """Calls for a model registered through another pod a moment ago read it from the registry; a
    burst of them shares one read, and a caller that gives up does not end it for the others."""
    registry = CountingRegistry()
    store = ModelStore(registry)
    await store.start()
    record = ModelRecord("m", ModelInfo("onnx", "/p"))
    await registry.put(f"{store.prefix}models/m", record.to_json())
    gone = asyncio.create_task(store.fetch_model("m"))
    burst = [asyncio.create_task(store.fetch_model("m")) for _ in range(50)]
    await asyncio.sleep(0)  # every call is waiting on the read
    gone.cancel()
    assert await asyncio.gather(*burst) == [record] * 50
    assert registry.gets == 1
    assert await store.fetch_vmodel("v") is None  # another key: a read of its own
    assert registry.gets == 2
    await store.stop()


async def test_reads_for_unknown_ids_on_the_inference_path_are_rate_limited() -> None:
    """A flood of calls for random names does not become a flood of registry reads."""
    registry = CountingRegistry()
    now = [100.0]
    store = ModelStore(registry, unknown_reads_per_s=10, clock=lambda: now[0])
    await store.start()
    for i in range(10):
        assert await store.fetch_model(f"random-{i}", limited=True) is None
    assert registry.gets == 10
    with pytest.raises(Unavailable, match="too many calls for unknown models"):
        await store.fetch_vmodel("random-10", limited=True)
    assert registry.gets == 10
    assert await store.fetch_model("asked-by-management") is None  # not limited
    assert registry.gets == 11
    now[0] += 0.5  # five more reads' worth
    for i in range(5):
        await store.fetch_model(f"later-{i}", limited=True)
    with pytest.raises(Unavailable):
        await store.fetch_model("later-5", limited=True)
    assert registry.gets == 16
    await store.stop()


class LateAnswers(MemoryRegistry):
    """The in-memory registry, where a single-key read's answer comes back only after
    ``meanwhile`` (another pod's write, and this pod's watch delivering it) has run."""

    def __init__(self) -> None:
        super().__init__()
        self.meanwhile: Callable[[], Awaitable[None]] | None = None

    async def read(self, key: str) -> tuple[Entry | None, int]:
        answer = await super().read(key)
        if self.meanwhile is not None:
            meanwhile, self.meanwhile = self.meanwhile, None
            await meanwhile()
        return answer


async def test_a_read_answered_after_the_watch_moved_on_does_not_undo_what_it_delivered() -> None:
    """A call for a model not registered yet reads the registry; the registration lands and the
    watch delivers it before the read's "absent" comes back: the mirror keeps the model."""
    registry = LateAnswers()
    store = ModelStore(registry)
    await store.start()
    record = ModelRecord("m", ModelInfo("onnx", "/p"))

    async def registered_elsewhere() -> None:
        await registry.put(f"{store.prefix}models/m", record.to_json())
        await _until(lambda: store.model("m") is not None)

    registry.meanwhile = registered_elsewhere
    assert await store.fetch_model("m") == record
    assert store.model("m") == record
    await store.stop()


class Stalled(MemoryRegistry):
    """The in-memory registry, where single-key reads never answer (a stalled etcd)."""

    async def read(self, key: str) -> tuple[Entry | None, int]:
        await asyncio.Event().wait()
        raise AssertionError("unreachable")


async def test_stopping_the_store_ends_registry_reads_on_their_way() -> None:
    store = ModelStore(Stalled())
    await store.start()
    fetch = asyncio.create_task(store.fetch_model("m"))
    await asyncio.sleep(0)  # the fetch is waiting on its read
    assert not fetch.done()
    await store.stop()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(fetch, 1)
    assert asyncio.all_tasks() == {asyncio.current_task()}


async def test_instance_records_vanish_with_their_lease(registry: Registry, ns: str) -> None:
    store, other = ModelStore(registry, namespace=ns), ModelStore(registry, namespace=ns)
    await store.start()
    await other.start()
    seen: list[tuple[str, str, object]] = []
    other.subscribe(lambda kind, rid, rec: seen.append((kind, rid, rec)))
    lease = await registry.grant_lease(10)
    instance = InstanceRecord("pod-1", "127.0.0.1:1", capacity_bytes=100, labels=("type:onnx",))
    await store.publish_instance(instance, lease=lease)
    await _until(lambda: other.instance("pod-1") == instance)
    await registry.revoke_lease(lease)
    await _until(lambda: other.instance("pod-1") is None)
    assert seen == [("instances", "pod-1", instance), ("instances", "pod-1", None)]
    await store.stop()
    await other.stop()


async def test_copies_recorded_after_a_pods_record_count_until_it_republishes(
    registry: Registry, ns: str
) -> None:
    """Placement adds these to the pod's published use: the record can be a publish interval old."""
    store, other = ModelStore(registry, namespace=ns), ModelStore(registry, namespace=ns)
    await store.start()
    await other.start()
    lease = await registry.grant_lease(10)
    instance = InstanceRecord("pod-1", "127.0.0.1:1", capacity_bytes=1000, published_ms=1000)
    await store.publish_instance(instance, lease=lease)

    async def put(model_id: str, size: int, copies: dict[str, CopyRecord]) -> None:
        record = ModelRecord(model_id, ModelInfo("onnx", "/p"), size_bytes=size, copies=copies)
        if store.model(model_id) is None:
            await store.create_model(record)
        else:
            await store.update_model(model_id, lambda _: record)

    await put("new", 40, {"pod-1": CopyRecord(ModelState.LOADED, 1500)})
    await put("loading", 25, {"pod-1": CopyRecord(ModelState.LOADING, 1600)})
    await put("old", 70, {"pod-1": CopyRecord(ModelState.LOADED, 900)})  # in the record already
    await put("elsewhere", 30, {"pod-2": CopyRecord(ModelState.LOADED, 1700)})
    assert store.unpublished("pod-1") == (65, 1)
    await _until(lambda: other.unpublished("pod-1") == (65, 1))

    await store.publish_instance(replace(instance, used_bytes=110, published_ms=1550), lease=lease)
    assert store.unpublished("pod-1") == (25, 1)  # "new" is in the record now
    await put("loading", 25, {})  # the load failed: the claim is gone
    assert store.unpublished("pod-1") == (0, 0)
    await put("again", 5, {"pod-1": CopyRecord(ModelState.LOADING, 1800)})
    await store.delete_model("again")
    assert store.unpublished("pod-1") == (0, 0)
    await put("later", 5, {"pod-1": CopyRecord(ModelState.LOADED, 1900)})
    assert store.unpublished("pod-1") == (5, 0)
    await registry.revoke_lease(lease)
    await _until(lambda: store.instance("pod-1") is None)
    assert store.unpublished("pod-1") == (0, 0)  # the pod left
    assert other.unpublished("pod-2") == (30, 0)  # no record of pod-2 at all: every copy counts
    await store.stop()
    await other.stop()


async def test_the_publisher_stamps_each_record_with_the_time_it_describes() -> None:
    registry = MemoryRegistry()
    store = ModelStore(registry)
    await store.start()
    record = InstanceRecord("pod-1", "127.0.0.1:1", capacity_bytes=1000)
    publisher = InstancePublisher(
        registry=registry, store=store, describe=lambda: record, ttl_s=30, min_interval_s=0.01
    )
    before = now_ms()
    await publisher.start()
    first = store.instance("pod-1")
    assert first is not None and before <= first.published_ms <= now_ms()
    record = replace(record, used_bytes=10)
    publisher.changed()
    await _until(lambda: store.instance("pod-1") != first)
    second = store.instance("pod-1")
    assert second == replace(record, published_ms=second.published_ms)  # type: ignore[union-attr]
    assert second is not None and second.published_ms >= first.published_ms
    await publisher.stop()
    await _until(lambda: store.instance("pod-1") is None)  # the lease went with it
    await store.stop()


async def test_mirror_resumes_after_etcd_restarts(tmp_path: Path) -> None:
    etcd = EtcdProcess(tmp_path / "data")
    etcd.start()
    try:
        reader, writer = EtcdRegistry(etcd.endpoint, timeout_s=1), EtcdRegistry(etcd.endpoint, timeout_s=1)
        store = ModelStore(reader)
        await store.start()
        await ModelStore(writer).create_model(ModelRecord("before", ModelInfo("onnx", "/p")))
        await _until(lambda: store.model("before") is not None)
        etcd.stop()
        await _until(lambda: not store.connected)
        etcd.start()  # same ports, same data
        later = ModelStore(writer)
        await later.start()
        await later.create_model(ModelRecord("after", ModelInfo("onnx", "/q")))
        await _until(lambda: store.model("after") is not None, within_s=20)
        assert store.connected
        await later.stop()
        await store.stop()
        await reader.close()
        await writer.close()
    finally:
        etcd.stop()


async def test_etcd_watch_from_a_compacted_revision_says_so(etcd: EtcdProcess, ns: str) -> None:
    registry = EtcdRegistry(etcd.endpoint)
    first = await registry.put(f"{ns}/a", b"1")
    revision = await registry.put(f"{ns}/a", b"2")
    with grpc.insecure_channel(etcd.endpoint) as channel:
        pb_grpc.KVStub(channel).Compact(pb.CompactionRequest(revision=revision, physical=True), timeout=5)
    with pytest.raises(RegistryCompacted):
        async for _ in registry.watch(f"{ns}/", after_revision=first - 1):
            pass
    await registry.close()


async def test_mirror_resyncs_after_missing_history() -> None:
    registry = MemoryRegistry(history=5)
    store = ModelStore(registry)
    await store.start()
    writer = ModelStore(registry)
    await writer.start()
    await writer.create_model(ModelRecord("gone", ModelInfo("onnx", "/p")))
    await _until(lambda: store.model("gone") is not None)
    # Many writes with no chance for the mirror's watch to run: its history is trimmed away.
    for i in range(20):
        await registry.put(
            f"{store.prefix}models/m{i}", ModelRecord(f"m{i}", ModelInfo("onnx", "/q")).to_json()
        )
    await registry.delete(f"{store.prefix}models/gone")
    await _until(lambda: store.model("gone") is None and store.model("m19") is not None)
    assert len(store.models()) == 20
    await store.stop()
    await writer.stop()


async def _until(condition: Callable[[], bool], within_s: float = 10.0) -> None:
    """Wait for state another task or process changes (a mirror following etcd)."""
    async with asyncio.timeout(within_s):
        while not condition():  # noqa: ASYNC110 - the state lives in other tasks and processes
            await asyncio.sleep(0.02)


def test_prefix_end() -> None:
    assert prefix_end(b"/mesh/") == b"/mesh0"
    assert prefix_end(b"a\xff") == b"b"
    assert prefix_end(b"\xff") == b"\0"


def test_records_round_trip_as_json() -> None:
    record = ModelRecord(
        "m",
        ModelInfo("onnx", "s3://b/k", '{"storage_key": "s"}'),
        size_bytes=5,
        copies={"p": CopyRecord(ModelState.LOADING, 7)},
    )
    assert ModelRecord.from_json(record.to_json()) == record
    vmodel = VModelRecord("v", "a", "b", "owner")
    assert VModelRecord.from_json(vmodel.to_json()) == vmodel
    instance = InstanceRecord("p", "h:1", 10, labels=("type:onnx", "zone:a"), shutting_down=True)
    assert InstanceRecord.from_json(instance.to_json()) == instance
