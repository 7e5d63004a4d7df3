"""The router against fake peers: a real registry mirror and cache, peers that answer as told.

Covers what the fleet tests cannot pin down: which pod each try goes to and how, the
raw bytes and metadata a forward carries, exclusions, bounded tries, the deadline and
cancellation reaching the peer call, and that a forwarded call is never forwarded again.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from mesh.cache import ModelCache
from mesh.cache_events import CacheEvents
from mesh.dataplane import DataPlane
from mesh.edge.hop import Route
from mesh.fleet_calls import FleetCalls
from mesh.fleet_copies import FleetCopies
from mesh.heap import HeapFreezer
from mesh.inference_threads import InferenceThreads
from mesh.management import ModelManager
from mesh.metrics import MeshMetrics
from mesh.model_status import SetVModel
from mesh.placement_view import PlacementView
from mesh.records import (
    CopyRecord,
    InstanceRecord,
    ModelInfo,
    ModelRecord,
    ModelState,
    ModelTraffic,
    TenantRecord,
    VModelRecord,
)
from mesh.registry import ModelStore
from mesh.router import Router
from mesh.wiring import TenantRoom, build_routing
from mesh_common.clock import now_ms
from mesh_common.errors import (
    Busy,
    DeadlineExceeded,
    ModelInUse,
    ModelLoadFailed,
    NotFound,
    NotHere,
    QuotaExceeded,
    Unavailable,
    Unreachable,
    quoted,
)
from puller import default_fetchers
from tests.mesh.fakes import CountingRegistry, FakePeers, fake_cache, serving

SELF = "pod-a"
LABELS = ("type:fake",)
PAYLOAD = b"\x0a\x05model\x12raw-tensor-bytes"


class RacingRegistry(CountingRegistry):
    """The in-memory registry, where another pod's write can land right after one of this pod's:
    ``after_write[key]`` runs once, after the first put or delete of ``key``."""

    def __init__(self) -> None:
        super().__init__()
        self.after_write: dict[str, Callable[[], Awaitable[object]]] = {}

    async def put(self, key: str, value: bytes, **kwargs: Any) -> int:
        revision = await super().put(key, value, **kwargs)
        await self._race(key)
        return revision

    async def delete(self, key: str, *, expected_revision: int | None = None) -> int:
        revision = await super().delete(key, expected_revision=expected_revision)
        await self._race(key)
        return revision

    async def _race(self, key: str) -> None:
        other_pod = self.after_write.pop(key, None)
        if other_pod is not None:
            await other_pod()


@dataclass
class Harness:
    router: Router
    view: PlacementView
    fleet: FleetCalls
    copies: FleetCopies
    store: ModelStore
    registry: RacingRegistry
    cache: ModelCache
    peers: FakePeers
    artifacts: Path
    lease: int
    manager: ModelManager
    self_used: int = 0
    self_leaving: bool = False

    async def pod(
        self,
        pod_id: str,
        *,
        used: int = 0,
        in_flight: int = 0,
        shutting_down: bool = False,
        hot: dict[str, ModelTraffic] | None = None,
        published_ms: int = 0,
    ) -> None:
        record = InstanceRecord(
            pod_id=pod_id,
            endpoint=pod_id,  # endpoints are the pod ids, so FakePeers' answers read plainly
            capacity_bytes=1000,
            used_bytes=used,
            requests_in_flight=in_flight,
            labels=LABELS,
            shutting_down=shutting_down,
            hot=hot or {},
            published_ms=published_ms,
        )
        await self.store.publish_instance(record, lease=self.lease)

    async def model(
        self, model_id: str, size: int = 10, tenant: str = "default", **copies: ModelState
    ) -> None:
        path = self.artifacts / f"{model_id}.txt"
        path.write_text(str(size))
        record = ModelRecord(
            model_id,
            ModelInfo("fake", str(path)),
            tenant=tenant,
            size_bytes=size,
            copies={pod.replace("_", "-"): CopyRecord(state, now_ms()) for pod, state in copies.items()},
        )
        assert await self.store.create_model(record) is None

    async def registered_elsewhere(self, model_id: str) -> None:
        """Register a model as another pod does: straight into the registry. This pod's mirror
        learns of it a moment later, through the watch."""
        path = self.artifacts / f"{model_id}.txt"
        path.write_text("10")
        record = ModelRecord(model_id, ModelInfo("fake", str(path)), size_bytes=10)
        await self.registry.put(f"{self.store.prefix}models/{model_id}", record.to_json())
        assert self.store.model(model_id) is None  # the watch has not delivered it yet

    async def vmodel_set_elsewhere(self, vmodel_id: str, model_id: str) -> None:
        """``registered_elsewhere`` for a vmodel whose active and target model is ``model_id``."""
        record = VModelRecord(vmodel_id, model_id, model_id)
        await self.registry.put(f"{self.store.prefix}vmodels/{vmodel_id}", record.to_json())
        assert self.store.vmodel(vmodel_id) is None

    async def call(self, model_id: str = "m", *, within_s: float = 5.0) -> bytes:
        return await self.router.call(
            model_id,
            None,
            method="ModelInfer",
            payload=PAYLOAD,
            local=self.local,
            deadline=time.monotonic() + within_s,
            metadata=(("x-trace", "t1"),),
        )

    async def local(self, model_id: str) -> bytes:
        async with serving(self.cache, self.store.model(model_id)):  # type: ignore[arg-type]
            return b"served here"

    def describe(self) -> InstanceRecord:
        return InstanceRecord(
            pod_id=SELF,
            endpoint=SELF,
            capacity_bytes=1000,
            used_bytes=self.self_used or self.cache.used_bytes,
            labels=LABELS,
            shutting_down=self.self_leaving,
        )


@pytest.fixture
async def harness(tmp_path: Path) -> AsyncIterator[Harness]:
    registry = RacingRegistry()
    store = ModelStore(registry)
    await store.start()
    pool = ThreadPoolExecutor(2)
    events = CacheEvents(MeshMetrics(CollectorRegistry()), HeapFreezer(enabled=False), asyncio.Event())
    admit = TenantRoom(load_timeout_s=5)
    cache = fake_cache(capacity_bytes=1000, executor=pool, listener=events, load_timeout_s=5, admit=admit)
    manager = ModelManager(
        store=store, cache=cache, fetchers=default_fetchers(), pod_id=SELF, failure_ttl_s=30
    )
    events.manager = manager
    peers = FakePeers()
    harness = Harness(
        router=None,  # type: ignore[arg-type]
        view=None,  # type: ignore[arg-type]
        fleet=None,  # type: ignore[arg-type]
        copies=None,  # type: ignore[arg-type]
        store=store,
        registry=registry,
        cache=cache,
        peers=peers,
        artifacts=tmp_path,
        lease=await registry.grant_lease(60),
        manager=manager,
    )
    routing = build_routing(
        pod_id=SELF,
        store=store,
        manager=manager,
        cache=cache,
        peers=peers,
        describe_self=harness.describe,
        in_flight=Counter(),
        admit=admit,
        failure_ttl_s=30,
        attempts=3,
        suspect_s=30,
    )
    harness.view, harness.router = routing.placement, routing.router
    harness.copies, harness.fleet = routing.copies, routing.fleet
    await harness.pod(SELF)
    yield harness
    await manager.stop()
    await cache.close()
    await store.stop()
    pool.shutdown()


async def test_forwards_the_raw_bytes_to_the_holder_marked_serve_only_if_loaded(harness: Harness) -> None:
    await harness.pod("pod-b")
    await harness.model("m", pod_b=ModelState.LOADED)
    assert await harness.call() == b"answer from pod-b"
    (sent,) = harness.peers.sent
    assert (sent.endpoint, sent.method, sent.route, sent.model_id) == (
        "pod-b",
        "ModelInfer",
        Route.LOADED,
        "m",
    )
    assert sent.payload is PAYLOAD  # the very bytes: never decoded and re-encoded
    assert ("x-trace", "t1") in sent.metadata
    assert harness.cache.loaded("m") is None


async def test_the_holder_with_fewest_calls_in_flight_gets_the_next_call(harness: Harness) -> None:
    await harness.pod("pod-b")
    await harness.pod("pod-c")
    await harness.model("m", pod_b=ModelState.LOADED, pod_c=ModelState.LOADED)
    harness.peers.answers["pod-b"] = "hang"
    harness.peers.answers["pod-c"] = "hang"
    first = asyncio.create_task(harness.call())
    await harness.peers.started.wait()
    busy = harness.peers.sent[0].endpoint
    harness.peers.answers[busy] = b"late"
    idle = "pod-c" if busy == "pod-b" else "pod-b"
    harness.peers.answers[idle] = b"from the idle copy"
    assert await harness.call() == b"from the idle copy"
    first.cancel()
    with pytest.raises(asyncio.CancelledError):
        await first


async def test_not_here_excludes_that_pod_and_tries_the_next(harness: Harness) -> None:
    await harness.pod("pod-b")
    await harness.pod("pod-c")
    await harness.model("m", pod_b=ModelState.LOADED, pod_c=ModelState.LOADED)
    harness.peers.answers["pod-b"] = NotHere("pod-b: evicted", pod_id="pod-b")
    harness.peers.answers["pod-c"] = NotHere("pod-c: evicted", pod_id="pod-c")
    # Both copies are stale; the third try is placement's: this pod has the most room.
    harness.self_used = 0
    await harness.pod("pod-b", used=900)
    await harness.pod("pod-c", used=900)
    assert await harness.call() == b"served here"
    assert sorted(harness.peers.routes()) == [("pod-b", Route.LOADED), ("pod-c", Route.LOADED)]
    record = harness.store.model("m")
    assert record is not None and record.copies[SELF].state is ModelState.LOADED


async def test_tries_are_bounded_and_end_unavailable_with_every_reason(harness: Harness) -> None:
    for pod in ("pod-b", "pod-c", "pod-d", "pod-e"):
        await harness.pod(pod)
        harness.peers.answers[pod] = NotHere(f"{pod}: not loaded", pod_id=pod)
    loaded = ModelState.LOADED
    await harness.model("m", pod_b=loaded, pod_c=loaded, pod_d=loaded, pod_e=loaded)
    with pytest.raises(Unavailable) as caught:
        await harness.call()
    assert type(caught.value) is Unavailable  # not a bare NotHere, never INTERNAL
    assert len(harness.peers.sent) == 3
    assert "after 3 attempt(s)" in caught.value.message
    for sent in harness.peers.sent:
        assert f"{sent.endpoint}: {sent.endpoint}: not loaded" in caught.value.message


async def test_an_unreachable_peer_is_suspected_and_named_in_later_loads(harness: Harness) -> None:
    await harness.pod("pod-b")
    await harness.pod("pod-c", used=990)
    await harness.model("m", pod_b=ModelState.LOADED)
    harness.peers.answers["pod-b"] = Unavailable("pod-b did not answer: UNAVAILABLE")
    harness.self_used = 995  # this pod is full: placement must pick pod-c
    assert await harness.call() == b"answer from pod-c"
    assert harness.peers.routes() == [("pod-b", Route.LOADED), ("pod-c", Route.LOAD)]
    assert harness.peers.sent[1].hop.ignore == {"pod-b"}
    # The next call skips pod-b at once, though its copy is still on record.
    await harness.model("n", pod_b=ModelState.LOADED, pod_c=ModelState.LOADED)
    harness.peers.sent.clear()
    assert await harness.call("n") == b"answer from pod-c"
    assert harness.peers.routes() == [("pod-c", Route.LOADED)]


async def test_the_deadline_is_propagated_and_ends_the_call(harness: Harness) -> None:
    await harness.pod("pod-b")
    await harness.model("m", pod_b=ModelState.LOADED)
    harness.peers.answers["pod-b"] = "hang"
    started = time.monotonic()
    with pytest.raises(DeadlineExceeded) as caught:
        await asyncio.wait_for(harness.call(within_s=0.3), 5)
    assert time.monotonic() - started < 2
    assert 0 < harness.peers.sent[0].timeout_s <= 0.3
    assert caught.value.message == "model 'm': the deadline passed (pod-b: no answer in time)"


async def test_cancelling_the_call_cancels_the_peer_call(harness: Harness) -> None:
    await harness.pod("pod-b")
    await harness.model("m", pod_b=ModelState.LOADED)
    harness.peers.answers["pod-b"] = "hang"
    call = asyncio.create_task(harness.call(within_s=30))
    await harness.peers.started.wait()
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call
    assert harness.peers.cancelled == ["pod-b"]
    assert harness.router.in_flight["pod-b"] == 0


async def test_a_model_loaded_nowhere_is_claimed_before_this_pod_loads_it(harness: Harness) -> None:
    await harness.pod("pod-b", used=990)
    await harness.model("m")
    assert await harness.call() == b"served here"
    assert harness.peers.sent == []
    record = harness.store.model("m")
    assert record is not None and set(record.copies) == {SELF}


async def test_a_load_placed_on_a_peer_goes_there_as_a_load(harness: Harness) -> None:
    await harness.pod("pod-b")
    await harness.model("m")
    harness.self_used = 995
    assert await harness.call() == b"answer from pod-b"
    assert harness.peers.routes() == [("pod-b", Route.LOAD)]
    why = harness.peers.sent[0].hop.why  # the decision travels with the load, not kept here
    assert why.startswith("placed on pod-b by pod-a: score") and " vs runner-up pod-a " in why, why


def _sizes(component: object) -> dict[str, int]:
    """The size of every container a component holds (its attributes), by attribute name."""
    return {
        name: len(value) for name, value in vars(component).items() if isinstance(value, (dict, list, set))
    }


async def test_placing_a_thousand_models_leaves_the_router_no_bigger(harness: Harness) -> None:
    """The router keeps nothing per model: what it holds stays bounded by the pods of the fleet
    however many models it placed (each decision travels with its load)."""
    harness.self_leaving = True  # every load is placed on pod-b, through the peer
    await harness.pod("pod-b")
    for i in range(1000):
        await harness.model(f"m{i}")
        assert await harness.call(f"m{i}") == b"answer from pod-b"
    assert len(harness.peers.sent) == 1000 and {s.route for s in harness.peers.sent} == {Route.LOAD}
    pods = len(harness.store.instances())
    for component in (harness.router, harness.view):
        sizes = _sizes(component)
        assert sizes and all(size <= pods for size in sizes.values()), sizes


async def test_placement_counts_copies_a_peer_recorded_after_its_published_record(
    harness: Harness,
) -> None:
    """pod-b's record says it is empty, but it has loaded a big model since: the load goes to pod-c."""
    published = now_ms() - 1000
    await harness.pod("pod-b", published_ms=published)
    await harness.pod("pod-c", used=100, published_ms=published)
    await harness.model("big", size=600, pod_b=ModelState.LOADED)
    await harness.model("coming", size=50, pod_b=ModelState.LOADING)
    await harness.model("m", size=300)
    pod_b = next(pod for pod in harness.view.view().pods if pod.pod_id == "pod-b")
    assert (pod_b.used_bytes, pod_b.loads_in_flight) == (650, 1)
    harness.self_used = 995
    assert await harness.call() == b"answer from pod-c"
    assert harness.peers.routes() == [("pod-c", Route.LOAD)]
    await harness.pod("pod-b", used=650, published_ms=now_ms() + 1)  # pod-b republished
    pod_b = next(pod for pod in harness.view.view().pods if pod.pod_id == "pod-b")
    assert (pod_b.used_bytes, pod_b.loads_in_flight) == (650, 0)


async def test_load_failures_on_several_pods_report_each(harness: Harness) -> None:
    await harness.pod("pod-b")
    await harness.pod("pod-c")
    await harness.model("broken")  # FakeAdapter fails it here too
    harness.self_used = 995  # the peers have room: they are tried first
    harness.peers.answers["pod-b"] = ModelLoadFailed(model_id="broken", reason="bad weights on b")
    harness.peers.answers["pod-c"] = ModelLoadFailed(model_id="broken", reason="bad weights on c")
    with pytest.raises(ModelLoadFailed) as caught:
        await harness.call("broken")
    # pod-b and pod-c score alike: the rendezvous hash of the model's id orders them, always alike.
    assert harness.peers.routes() == [("pod-c", Route.LOAD), ("pod-b", Route.LOAD)]
    for pod, reason in (
        ("pod-b", "bad weights on b"),
        ("pod-c", "bad weights on c"),
        (SELF, "RuntimeError: bad weights"),
    ):
        assert f"{pod}: {reason}" in caught.value.reason


async def test_an_artifact_this_pod_cannot_read_is_a_failed_load_tried_on_the_next_pod(
    harness: Harness,
) -> None:
    """The same error a peer's load answers: the call goes on to another pod."""
    await harness.pod("pod-b", used=500)  # this pod has more room: placement tries it first
    absent = harness.artifacts / "absent.txt"
    record = ModelRecord("m", ModelInfo("fake", str(absent)), size_bytes=10)
    assert await harness.store.create_model(record) is None
    assert await harness.call() == b"answer from pod-b"
    assert harness.peers.routes() == [("pod-b", Route.LOAD)]
    failed = harness.store.model("m")
    assert failed is not None and set(failed.failures) == {SELF} and failed.copies == {}
    assert str(absent) in failed.failures[SELF].reason
    # Where no other pod can load it, the caller gets the error as this pod raised it.
    harness.peers.answers["pod-b"] = ModelLoadFailed(model_id="m", reason=f"artifact not found: {absent}")
    record = ModelRecord("n", ModelInfo("fake", str(absent)), size_bytes=10)
    assert await harness.store.create_model(record) is None
    with pytest.raises(ModelLoadFailed) as caught:
        await harness.call("n")
    assert caught.value.reason.startswith(f"pod-a: {failed.failures[SELF].reason}; pod-b: artifact not found")


async def test_no_room_anywhere_is_resource_exhausted(harness: Harness) -> None:
    await harness.pod("pod-b")
    await harness.model("m")
    harness.self_used = 995
    harness.peers.answers["pod-b"] = Busy("pod-b: every loaded model is serving", model_id="m")
    harness.self_leaving = True  # this pod cannot take it either
    with pytest.raises(Busy):
        await harness.call()


async def test_a_forwarded_call_is_served_here_or_refused_never_forwarded(harness: Harness) -> None:
    await harness.pod("pod-b")
    await harness.model("m", pod_b=ModelState.LOADED)
    with pytest.raises(NotHere):
        await harness.router.serve_forwarded("m", Route.LOADED, harness.local)
    # "load" here while a live peer holds it: the claim loses, the sender is told where it is.
    with pytest.raises(NotHere) as caught:
        await harness.router.serve_forwarded("m", Route.LOAD, harness.local)
    assert caught.value.holder == "pod-b"
    # Unless the sender could not reach that peer: then this pod claims and serves.
    assert await harness.router.serve_forwarded(
        "m", Route.LOAD, harness.local, ignore=frozenset({"pod-b"})
    ) == (b"served here")
    assert harness.peers.sent == []
    with pytest.raises(NotFound):
        await harness.router.serve_forwarded("unknown", Route.LOAD, harness.local)


async def test_a_model_registered_through_another_pod_a_moment_ago_is_found(harness: Harness) -> None:
    """Registered through another pod, a model reaches this pod's mirror a moment later, through the
    watch. A call that comes first, entering here or forwarded here, reads the registry instead of
    answering NOT_FOUND for a registered model."""
    await harness.registered_elsewhere("entered")
    assert await harness.call("entered") == b"served here"
    await harness.registered_elsewhere("forwarded")
    assert await harness.router.serve_forwarded("forwarded", Route.LOAD, harness.local) == b"served here"
    with pytest.raises(NotFound):  # and an unknown name is still unknown
        await harness.call("never-registered")
    await harness.registered_elsewhere("active")  # a vmodel and its model, both new here
    await harness.vmodel_set_elsewhere("named", "active")
    assert await harness.call("named") == b"served here"
    await harness.registered_elsewhere("loaded")  # RepositoryModelLoad
    await harness.router.load("loaded", vmodel=None, deadline=time.monotonic() + 5)
    assert harness.cache.loaded("loaded") is not None
    await harness.registered_elsewhere("unloaded")  # RepositoryModelUnload
    await harness.fleet.unload("unloaded", vmodel=None, deadline=time.monotonic() + 5)
    with pytest.raises(NotFound):
        await harness.router.load("never-registered", vmodel=None, deadline=time.monotonic() + 5)

    with ThreadPoolExecutor(1) as pool:
        threads = InferenceThreads(pool, threads=2, fast_threads=1, slow_call_s=1)
        plane = DataPlane(manager=harness.manager, cache=harness.cache, threads=threads, inline_infer_s=1)
        await harness.registered_elsewhere("ready")  # ModelReady
        await harness.cache.ensure_loaded(await harness.manager.fresh_model("ready"))  # type: ignore[arg-type]
        assert await plane.ready("ready")
        assert not await plane.ready("never-registered")
        await harness.registered_elsewhere("counted")  # ModelStatistics
        assert [name for name, _ in await plane.statistics("counted")] == ["counted"]


async def test_management_calls_see_what_another_pod_registered_a_moment_ago(harness: Harness) -> None:
    """getModelStatus, ensureLoaded and unregisterModel through this pod right after a registration
    through another: the registry is read, not the mirror that has not caught up."""
    manager, registry, prefix = harness.manager, harness.registry, harness.store.prefix
    await harness.registered_elsewhere("status")
    assert (await manager.status_fresh("status")).state is ModelState.NOT_LOADED
    assert (await manager.status_fresh("never-registered")).state is ModelState.NOT_FOUND
    await harness.registered_elsewhere("ensured")
    await manager.ensure_loaded("ensured", sync=True)
    assert harness.cache.loaded("ensured") is not None
    with pytest.raises(NotFound):
        await manager.ensure_loaded("never-registered", sync=True)
    await harness.registered_elsewhere("gone")
    await manager.unregister("gone")  # not a no-op: the model is deleted
    assert await registry.get(f"{prefix}models/gone") is None


async def test_vmodel_calls_see_what_another_pod_set_a_moment_ago(harness: Harness) -> None:
    manager, registry, prefix = harness.manager, harness.registry, harness.store.prefix
    await harness.registered_elsewhere("m1")
    await harness.vmodel_set_elsewhere("shown", "m1")
    status = await manager.vmodel_status_fresh("shown", owner="")
    assert (status.status, status.active_model_id, status.active.state) == (
        "DEFINED",
        "m1",
        ModelState.NOT_LOADED,
    )
    await harness.registered_elsewhere("m2")  # a target registered elsewhere, an update-only set
    await harness.vmodel_set_elsewhere("updated", "m1")
    status = await manager.set_vmodel(SetVModel("updated", "m2", update_only=True, force=True))
    assert (status.active_model_id, status.target_model_id) == ("m2", "m2")
    await harness.vmodel_set_elsewhere("deleted", "m1")
    await manager.delete_vmodel("deleted", owner="")  # not a no-op: the vmodel is deleted
    assert await registry.get(f"{prefix}vmodels/deleted") is None


async def test_calls_for_a_flood_of_unknown_names_do_not_each_read_the_registry(harness: Harness) -> None:
    for i in range(300):
        with pytest.raises(NotFound):
            await harness.call(f"random-{i}")
    assert harness.registry.gets <= 200  # a burst of 100, then 100 a second


async def test_unregister_refuses_a_model_a_vmodel_set_elsewhere_a_moment_ago_uses(harness: Harness) -> None:
    await harness.model("m")
    await harness.vmodel_set_elsewhere("v", "m")
    with pytest.raises(ModelInUse, match="used by vmodel"):
        await harness.manager.unregister("m")
    assert await harness.registry.get(f"{harness.store.prefix}models/m") is not None


async def test_unregister_and_a_vmodel_set_elsewhere_at_once_leave_no_vmodel_without_its_model(
    harness: Harness,
) -> None:
    """Another pod checked that the model exists and sets a vmodel on it just as this pod deletes
    the model: this pod sees the vmodel after its delete and puts the model back."""
    manager, registry, prefix = harness.manager, harness.registry, harness.store.prefix
    await harness.model("m", size=30)
    await harness.cache.ensure_loaded(harness.store.model("m"))  # type: ignore[arg-type]
    assert manager.status("m").state is ModelState.LOADED
    registry.after_write[f"{prefix}models/m"] = lambda: harness.vmodel_set_elsewhere("v", "m")
    with pytest.raises(ModelInUse, match="used by vmodel"):
        await manager.unregister("m")
    entry = await registry.get(f"{prefix}models/m")
    assert entry is not None
    restored = ModelRecord.from_json(entry.value)
    assert (restored.info.path, restored.size_bytes, restored.copies) == (
        str(harness.artifacts / "m.txt"),
        30,
        {},  # every pod dropped its copy when the record went
    )
    await manager.ensure_loaded("m", sync=True)  # the vmodel's model serves again
    assert harness.cache.loaded("m") is not None


async def test_a_vmodel_set_as_its_target_is_unregistered_elsewhere_is_backed_out(harness: Harness) -> None:
    """Another pod, which saw no vmodel on the model, deletes it just as this pod writes a vmodel
    on it: this pod reads the target after its write, finds it gone and undoes the write."""
    manager, registry, prefix = harness.manager, harness.registry, harness.store.prefix
    for model_id in ("m1", "m2", "m3"):
        await harness.model(model_id)

    def unregistered_elsewhere(model_id: str) -> Callable[[], Awaitable[int]]:
        return lambda: registry.delete(f"{prefix}models/{model_id}")

    registry.after_write[f"{prefix}vmodels/new"] = unregistered_elsewhere("m1")
    with pytest.raises(NotFound, match="'m1' is not registered"):
        await manager.set_vmodel(SetVModel("new", "m1"))
    assert await registry.get(f"{prefix}vmodels/new") is None
    assert manager.vmodel_status("new", owner="").status == "NOT_FOUND"

    await manager.set_vmodel(SetVModel("kept", "m2"))
    registry.after_write[f"{prefix}vmodels/kept"] = unregistered_elsewhere("m3")
    with pytest.raises(NotFound, match="'m3' is not registered"):
        await manager.set_vmodel(SetVModel("kept", "m3", force=True))
    entry = await registry.get(f"{prefix}vmodels/kept")
    assert entry is not None
    kept = VModelRecord.from_json(entry.value)
    assert (kept.active_model_id, kept.target_model_id) == ("m2", "m2")


async def test_a_dead_pods_copy_is_not_used_and_a_leaving_pod_serves_until_it_goes(harness: Harness) -> None:
    await harness.model("m", pod_gone=ModelState.LOADED)  # no instance record: its lease expired
    assert await harness.call("m") == b"served here"
    assert harness.peers.sent == []
    await harness.pod("pod-b", shutting_down=True)
    await harness.model("n", pod_b=ModelState.LOADED)
    assert await harness.call("n") == b"answer from pod-b"
    assert harness.peers.routes() == [("pod-b", Route.LOADED)]


async def test_unload_reaches_every_holder_and_names_the_unreachable(harness: Harness) -> None:
    await harness.pod("pod-b")
    await harness.pod("pod-c")
    await harness.model("m", pod_b=ModelState.LOADED, pod_c=ModelState.LOADED, pod_gone=ModelState.LOADED)
    await harness.cache.ensure_loaded(harness.store.model("m"))  # type: ignore[arg-type]
    harness.peers.answers["pod-c"] = Unavailable("pod-c did not answer: UNAVAILABLE")
    with pytest.raises(Unavailable, match="could not be unloaded everywhere: pod-c: pod-c did not answer"):
        await harness.fleet.unload("m", vmodel=None, deadline=time.monotonic() + 5)
    assert harness.cache.loaded("m") is None  # this pod and the reachable peer unloaded regardless
    assert sorted((s.endpoint, s.method, s.route) for s in harness.peers.sent) == [
        ("pod-b", "RepositoryModelUnload", "unload"),
        ("pod-c", "RepositoryModelUnload", "unload"),
    ]
    harness.peers.answers.pop("pod-c")
    harness.peers.sent.clear()
    await harness.fleet.unload("m", vmodel=None, deadline=time.monotonic() + 5)  # retrying is safe
    assert len(harness.peers.sent) == 2
    with pytest.raises(NotFound):
        await harness.fleet.unload("nope", vmodel=None, deadline=time.monotonic() + 5)


async def test_a_forwarded_load_says_why_placement_chose_the_pod(harness: Harness) -> None:
    harness.self_leaving = True  # this pod may not load: pod-b is the only choice
    await harness.pod("pod-b")
    await harness.model("m")
    assert await harness.call() == b"answer from pod-b"
    (sent,) = harness.peers.sent
    why = sent.hop.why
    assert isinstance(why, str) and sent.route == Route.LOAD
    assert why.startswith("placed on pod-b by pod-a: score"), why


async def test_a_local_load_keeps_its_reason_in_the_copy_record(harness: Harness) -> None:
    await harness.model("m")
    assert await harness.call() == b"served here"
    copy = harness.store.model("m").copies[SELF]  # type: ignore[union-attr]
    assert copy.state is ModelState.LOADED and copy.why.startswith("placed on pod-a by pod-a"), copy
    history = [e.what for e in harness.store.model("m").history]  # type: ignore[union-attr]
    assert len(history) == 1 and history[0].startswith("loaded in"), history


async def test_a_copy_is_added_beside_other_holders_here_or_on_a_peer(harness: Harness) -> None:
    await harness.pod("pod-b")
    await harness.pod("pod-c")
    await harness.model("m", pod_b=ModelState.LOADED)
    deadline = time.monotonic() + 5
    await harness.copies.add_copy("m", "pod-c", why="added by the janitor: busy", deadline=deadline)
    (sent,) = harness.peers.sent
    assert (sent.endpoint, sent.route, sent.hop.why) == (
        "pod-c",
        Route.COPY,
        "added by the janitor: busy",
    )
    await harness.copies.add_copy("m", SELF, why="added by the janitor: busy", deadline=deadline)
    assert harness.cache.loaded("m") is not None
    copies = harness.store.model("m").copies  # type: ignore[union-attr]
    assert set(copies) == {"pod-b", SELF} and copies[SELF].why == "added by the janitor: busy"
    await harness.copies.drop_copy("m", "pod-b", why="copy dropped: idle", deadline=deadline)
    assert harness.peers.routes()[-1] == ("pod-b", "unload")
    assert harness.peers.sent[-1].hop.why == "copy dropped: idle"  # pod-b notes it
    await harness.copies.drop_copy("m", SELF, why="copy dropped: über-idle", deadline=deadline)
    assert harness.cache.loaded("m") is None
    # The pod that unloads records the reason with the unload: one event, in order.
    history = [e.what for e in harness.store.model("m").history if e.pod_id == SELF]  # type: ignore[union-attr]
    assert history[-1] == "unloaded: copy dropped: über-idle", history


async def test_a_pod_serving_more_than_its_share_sends_the_excess_to_other_copies(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    await harness.model("m", pod_b=ModelState.LOADED)
    await harness.call()  # loads it here too
    harness.peers.sent.clear()
    # this pod serves 90 calls/s, pod-b 10: the mean is 50, so 4 in 9 of this pod's calls go over
    await harness.pod(SELF, hot={"m": ModelTraffic(90.0, 0.0)})
    await harness.pod("pod-b", hot={"m": ModelTraffic(10.0, 0.0)})
    draws = iter([0.40, 0.50])
    monkeypatch.setattr("mesh.router.random.random", lambda: next(draws))
    assert await harness.call() == b"answer from pod-b"  # 0.40 < 4/9
    assert await harness.call() == b"served here"  # 0.50 >= 4/9
    # at its share (or with no other copy) every call stays here, and no draw is made
    await harness.pod(SELF, hot={"m": ModelTraffic(10.0, 0.0)})
    assert await harness.call() == b"served here"
    assert [s.endpoint for s in harness.peers.sent] == ["pod-b"]


async def test_a_tenant_at_its_cap_unloads_its_own_coldest_copies_first(harness: Harness) -> None:
    await harness.pod("pod-b", used=990)  # full: loads land here
    await harness.store.set_tenant(TenantRecord("t", max_loaded_bytes=300))
    await harness.model("t-here", size=100, tenant="t")
    await harness.model("other", size=100, tenant="u")
    await harness.call("t-here")
    await harness.call("other")
    await harness.model("t-far", size=100, tenant="t", pod_b=ModelState.LOADED)
    await harness.model("t-new", size=150, tenant="t")
    harness.peers.sent.clear()
    assert await harness.call("t-new") == b"served here"
    # 100 here + 100 on pod-b + 150 > 300: the idle copy here goes (local first among the cold)
    assert harness.cache.loaded("t-here") is None and harness.cache.loaded("other") is not None
    assert harness.peers.sent == []
    note = harness.store.model("t-here").history[-1]  # type: ignore[union-attr]
    assert "tenant 't' at its loaded-bytes cap" in note.what and note.pod_id == SELF
    # a bigger model needs pod-b's copy gone too: unloaded through the peer
    await harness.model("t-big", size=290, tenant="t")
    assert await harness.call("t-big") == b"served here"
    assert ("pod-b", "unload") in harness.peers.routes() and harness.cache.loaded("t-new") is None
    assert harness.cache.loaded("other") is not None


async def test_a_load_the_tenant_cap_cannot_fit_is_refused_not_failed(harness: Harness) -> None:
    await harness.store.set_tenant(TenantRecord("t", max_loaded_bytes=100))
    await harness.model("huge", size=150, tenant="t")
    with pytest.raises(QuotaExceeded) as refused:
        await harness.call("huge")
    assert "tenant 't'" in refused.value.message and "cap is 100 bytes" in refused.value.message
    record = harness.store.model("huge")
    assert record is not None and record.copies == {} and record.failures == {}
    assert harness.cache.used_bytes == 0


async def test_a_call_that_ends_before_its_load_starts_drops_its_claim(harness: Harness) -> None:
    """Cancelled between the claim and the cache, or refused on its way there: no LOADING copy
    is left behind (the janitor would count it as a crash once this pod's lease ended)."""
    await harness.model("m")
    reached = asyncio.Event()

    async def hang(model_id: str) -> bytes:
        reached.set()
        await asyncio.Event().wait()
        return b""

    call = asyncio.create_task(
        harness.router.call(
            "m", None, method="ModelInfer", payload=PAYLOAD, local=hang, deadline=time.monotonic() + 30
        )
    )
    await reached.wait()
    record = harness.store.model("m")
    assert record is not None and record.copies[SELF].state is ModelState.LOADING
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call
    record = harness.store.model("m")
    assert record is not None and record.copies == {}

    async def refuse(model_id: str) -> bytes:
        raise NotFound("the input names no such tensor")

    with pytest.raises(NotFound):
        await harness.router.call(
            "m", None, method="ModelInfer", payload=PAYLOAD, local=refuse, deadline=time.monotonic() + 5
        )
    record = harness.store.model("m")
    assert record is not None and record.copies == {}
    assert await harness.call() == b"served here"  # a load that starts keeps its copy
    record = harness.store.model("m")
    assert record is not None and record.copies[SELF].state is ModelState.LOADED


async def test_a_call_waits_for_the_fate_of_a_pod_that_died_loading_its_model(harness: Harness) -> None:
    """A call that finds its model loading on a pod that may have died waits, within its deadline,
    until the registry records that pod's fate (the janitor turns the copy into a crash), then
    loads the model: it does not fail for a death that is being accounted for."""
    await harness.model("m", pod_gone=ModelState.LOADING)
    listening = harness.store.subscribers
    call = asyncio.create_task(harness.call("m", within_s=5))

    async def waiting() -> None:  # the store's listener count has no event to wait on
        while harness.store.subscribers == listening and not call.done():  # noqa: ASYNC110
            await asyncio.sleep(0.005)

    await asyncio.wait_for(waiting(), 5)
    assert not call.done(), call.result()  # waiting on the registry, not refused
    await harness.manager.forget_pod("pod-gone")  # what the janitor does once the lease ended
    assert await asyncio.wait_for(call, 5) == b"served here"
    assert harness.store.subscribers == listening  # the wait left no listener behind


async def test_a_load_on_a_pod_that_may_have_died_blocks_others_and_on_a_slow_pod_does_not(
    harness: Harness,
) -> None:
    """A LOADING copy on a pod whose instance record is gone, or that gave no answer at all, may be
    a pod the model killed: no other pod loads it until the janitor has recorded its fate. A live
    pod that answered, if only to say it is unavailable, is no such sign: the model loads here."""
    long_id = "m" * 250
    await harness.model(long_id, pod_gone=ModelState.LOADING)
    started = time.monotonic()
    with pytest.raises(Unavailable) as refused:
        await harness.call(long_id, within_s=0.3)
    assert time.monotonic() - started >= 0.3  # it waited for the registry to learn the pod's fate
    assert "was loading on pod-gone, which stopped answering" in refused.value.message
    assert f"model {quoted(long_id)} was loading" in refused.value.message  # cut short, its length named

    await harness.pod("pod-b")
    await harness.pod("pod-c")
    await harness.model("n", pod_b=ModelState.LOADED, pod_c=ModelState.LOADED)
    harness.peers.answers["pod-b"] = Unavailable("pod-b: loading model 'x' timed out after 5s")
    harness.peers.answers["pod-c"] = Unreachable("pod-c did not answer: UNAVAILABLE: Connection reset")
    assert await harness.call("n") == b"served here"  # pod-b and pod-c are suspected now
    await harness.model("slow", pod_b=ModelState.LOADING)
    assert await harness.call("slow") == b"served here"
    await harness.model("silent", pod_c=ModelState.LOADING)
    with pytest.raises(Unavailable, match="was loading on pod-c, which stopped answering"):
        await harness.call("silent", within_s=0.3)
