"""What the pod does with its cache's reports: which models count as loaded elsewhere (the
cache evicts those first), read from a real store's mirror."""

from __future__ import annotations

from mesh.cache_events import LoadedElsewhere
from mesh.records import CopyRecord, InstanceRecord, ModelInfo, ModelRecord, ModelState
from mesh.registry import MemoryRegistry, ModelStore
from mesh_common.clock import now_ms


async def test_only_a_copy_loaded_on_another_live_pod_counts_as_loaded_elsewhere() -> None:
    registry = MemoryRegistry()
    store = ModelStore(registry)
    await store.start()
    try:
        lease = await registry.grant_lease(60)
        for pod in ("pod-a", "pod-b"):
            await store.publish_instance(InstanceRecord(pod, pod, capacity_bytes=1000), lease=lease)
        copies = {
            "shared": {"pod-a": ModelState.LOADED, "pod-b": ModelState.LOADED},
            "mine-only": {"pod-a": ModelState.LOADED},
            "loading-there": {"pod-a": ModelState.LOADED, "pod-b": ModelState.LOADING},
            "on-a-dead-pod": {"pod-a": ModelState.LOADED, "pod-gone": ModelState.LOADED},
        }
        for model_id, states in copies.items():
            record = ModelRecord(
                model_id,
                ModelInfo("fake", "/nowhere"),
                copies={p: CopyRecord(s, now_ms()) for p, s in states.items()},
            )
            assert await store.create_model(record) is None
        loaded_elsewhere = LoadedElsewhere(store, "pod-a")
        assert loaded_elsewhere([*copies, "unknown"]) == {"shared"}
    finally:
        await store.stop()
