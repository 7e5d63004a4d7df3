"""Registration options in the model key JSON, tenant caps on registration, tenant use, copy settings."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from pydantic import ValidationError

from mesh.management import ModelManager
from mesh.records import (
    CopyRecord,
    InstanceRecord,
    ModelEvent,
    ModelInfo,
    ModelRecord,
    ModelState,
    ModelTraffic,
)
from mesh.registry import MemoryRegistry, ModelStore
from mesh.settings import MeshSettings
from mesh_common.errors import InvalidInput, QuotaExceeded
from puller import default_fetchers
from tests.mesh.fakes import Events, fake_cache


@pytest.fixture
async def manager(tmp_path: Path) -> AsyncIterator[ModelManager]:
    store = ModelStore(MemoryRegistry())
    await store.start()
    pool = ThreadPoolExecutor(1)
    cache = fake_cache(capacity_bytes=1000, executor=pool, listener=Events())
    manager = ModelManager(
        store=store, cache=cache, fetchers=default_fetchers(), pod_id="pod-a", failure_ttl_s=30
    )
    (tmp_path / "model.joblib").write_bytes(b"x")
    manager.test_path = str(tmp_path / "model.joblib")  # type: ignore[attr-defined]
    yield manager
    await cache.close()
    await store.stop()
    pool.shutdown()


async def register(manager: ModelManager, model_id: str, **key: object) -> ModelRecord:
    info = ModelInfo("sklearn", manager.test_path, json.dumps(key) if key else "")  # type: ignore[attr-defined]
    await manager.register(model_id, info, load_now=False, sync=False)
    return manager.record_any(model_id)


async def test_options_come_from_the_model_key_json(manager: ModelManager) -> None:
    plain = await register(manager, "plain")
    assert (plain.tenant, plain.min_copies, plain.max_copies) == ("default", 1, 0)
    record = await register(manager, "m", storage_key="local", tenant="team-a", min_copies=2, max_copies=3)
    assert (record.tenant, record.min_copies, record.max_copies) == ("team-a", 2, 3)


@pytest.mark.parametrize(
    ("key", "reason"),
    [
        ({"tenant": ""}, "tenant ''"),
        ({"tenant": "a/b"}, "tenant 'a/b'"),
        ({"tenant": 7}, "tenant 7"),
        ({"min_copies": 0}, "min_copies must be an integer >= 1, not 0"),
        ({"max_copies": "2"}, "max_copies must be an integer >= 1, not '2'"),
        ({"max_copies": True}, "max_copies must be an integer >= 1, not True"),
        ({"min_copies": 3, "max_copies": 2}, "min_copies 3 > max_copies 2"),
    ],
)
async def test_bad_options_are_invalid_argument_and_register_nothing(
    manager: ModelManager, key: dict[str, object], reason: str
) -> None:
    with pytest.raises(InvalidInput) as refused:
        await register(manager, "m", **key)
    assert reason in refused.value.message
    assert manager.registered() == []


async def test_the_registration_cap_names_the_tenant_and_counts_only_its_models(
    manager: ModelManager,
) -> None:
    await manager.set_tenant("team-a", max_models=2, max_loaded_bytes=0)
    await register(manager, "a1", tenant="team-a")
    await register(manager, "a2", tenant="team-a")
    await register(manager, "b1", tenant="team-b")
    await register(manager, "a1", tenant="team-a")  # registering an existing model again is fine
    with pytest.raises(QuotaExceeded) as refused:
        await register(manager, "a3", tenant="team-a")
    assert refused.value.message == "tenant 'team-a' has 2 registered models; its cap is 2"
    assert refused.value.code.name == "RESOURCE_EXHAUSTED"
    await manager.unregister("a2")
    await register(manager, "a3", tenant="team-a")  # room again
    await manager.set_tenant("team-a", max_models=0, max_loaded_bytes=0)  # no caps: record removed
    await register(manager, "a4", tenant="team-a")
    assert [m.model_id for m in manager.registered() if m.tenant == "team-a"] == ["a1", "a3", "a4"]
    store: ModelStore = manager._store  # the per-tenant index the caps read
    assert [m.model_id for m in store.models_of("team-a")] == ["a1", "a3", "a4"]
    assert [m.model_id for m in store.models_of("team-b")] == ["b1"]
    await manager.unregister("b1")
    assert store.models_of("team-b") == [] and store.tenant_models("team-b") == 0


async def test_tenant_use_counts_every_live_copy(manager: ModelManager) -> None:
    store = manager._store
    lease = await store._registry.grant_lease(60)
    for pod in ("pod-a", "pod-b"):
        await store.publish_instance(InstanceRecord(pod, pod, capacity_bytes=1000), lease=lease)
    loaded = CopyRecord(ModelState.LOADED, 1)
    await store.create_model(
        ModelRecord(
            "m",
            ModelInfo("sklearn", "/m"),
            tenant="t",
            size_bytes=100,
            copies={"pod-a": loaded, "pod-b": loaded},
        )
    )
    await store.create_model(
        ModelRecord(
            "gone", ModelInfo("sklearn", "/m"), tenant="t", size_bytes=50, copies={"pod-dead": loaded}
        )
    )
    use = await manager.set_tenant("t", max_models=5, max_loaded_bytes=1000)
    assert (use.models_registered, use.loaded_bytes, use.max_models, use.max_loaded_bytes) == (
        2,
        200,
        5,
        1000,
    )
    assert [(t.tenant, t.models_registered) for t in manager.tenants()] == [("t", 2)]
    with pytest.raises(InvalidInput):
        await manager.set_tenant("bad name", max_models=1, max_loaded_bytes=0)


def test_records_round_trip_with_traffic_history_and_reasons() -> None:
    record = ModelRecord(
        "m",
        ModelInfo("sklearn", "/m"),
        tenant="t",
        min_copies=2,
        max_copies=4,
        copies={"pod-a": CopyRecord(ModelState.LOADED, 5, "placed on pod-a by pod-b: score 3.00")},
    )
    for n in range(20):
        record = record.with_event(n, "pod-a", f"event {n}")
    assert len(record.history) == 12 and record.history[0] == ModelEvent(8, "pod-a", "event 8")
    assert ModelRecord.from_json(record.to_json()) == record
    instance = InstanceRecord("pod-a", "h:1", capacity_bytes=1, hot={"m": ModelTraffic(3.5, 1.25)})
    assert InstanceRecord.from_json(instance.to_json()) == instance
    # records written before these fields existed still read
    old = json.loads(record.to_json())
    for name in ("history", "min_copies", "max_copies"):
        del old[name]
    del old["copies"]["pod-a"]["why"]
    assert ModelRecord.from_json(json.dumps(old).encode()).copies["pod-a"].why == ""


def test_copy_thresholds_without_hysteresis_are_refused() -> None:
    with pytest.raises(ValidationError, match="copy_down_rate \\(5\\) must be below copy_up_rate \\(5\\)"):
        MeshSettings(copy_up_rate=5, copy_down_rate=5)
    assert MeshSettings(copy_up_rate=5, copy_down_rate=1).copy_up_rate == 5


def test_a_publish_interval_that_would_starve_the_lease_is_refused() -> None:
    with pytest.raises(ValidationError, match=r"publish_interval_s \(1\.5\) must be at most a third"):
        MeshSettings(lease_ttl_s=3, publish_interval_s=1.5)
    assert MeshSettings(lease_ttl_s=3, publish_interval_s=1).publish_interval_s == 1
