"""The in-memory registry keeps etcd's semantics; the store's mirror reads its own writes."""

from __future__ import annotations

import asyncio

import pytest

from mesh.records import CopyRecord, ModelInfo, ModelRecord, ModelState, VModelRecord
from mesh.registry import MemoryRegistry, ModelStore, RegistryConflict
from mesh.registry.base import MUST_NOT_EXIST


async def test_compare_and_swap() -> None:
    registry = MemoryRegistry()
    first = await registry.put("/k", b"1", expected_revision=MUST_NOT_EXIST)
    with pytest.raises(RegistryConflict):
        await registry.put("/k", b"2", expected_revision=MUST_NOT_EXIST)
    second = await registry.put("/k", b"2", expected_revision=first)
    with pytest.raises(RegistryConflict):
        await registry.put("/k", b"3", expected_revision=first)
    with pytest.raises(RegistryConflict):
        await registry.delete("/k", expected_revision=first)
    await registry.delete("/k", expected_revision=second)
    assert await registry.get("/k") is None


async def test_watch_resumes_after_a_revision() -> None:
    registry = MemoryRegistry()
    await registry.put("/a/1", b"x")
    revision = await registry.put("/a/2", b"y")
    await registry.put("/b/1", b"z")
    await registry.delete("/a/1")
    events = []

    async def collect() -> None:
        async for event in registry.watch("/a/", after_revision=revision - 1):
            events.append((event.key, event.value))
            if len(events) == 2:
                return

    await asyncio.wait_for(collect(), 5)
    assert events == [("/a/2", b"y"), ("/a/1", None)]


async def test_store_mirror_reads_its_writes_and_resolves_races() -> None:
    registry = MemoryRegistry()
    store, other = ModelStore(registry), ModelStore(registry)
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
    await asyncio.sleep(0)
    assert set(store.model("m").copies) == {"a", "b"}
    await store.create_vmodel(VModelRecord("v", "m", "m"))
    assert store.vmodels_using("m") == ["v"]
    await store.delete_model("m")
    assert store.model("m") is None
    await store.stop()
    await other.stop()


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
