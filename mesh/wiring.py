"""Builds a pod from its settings: each piece constructed once, in an order where it is handed
what it needs (``build_pod``), and the piece tests build alone (``build_routing``).

Order: the registry's mirror and metrics; the cache (its events counted and sent to the
manager); the manager; the data plane; the bound server (its port is in the instance record);
the sampler (which describes the pod); placement, router and fleet operations on top; the
publisher; the janitor. Nothing here starts: ``Pod.start`` does, in its own order.

Three edges still point back to a piece built later, because the pieces are a cycle at run
time, not only at construction: the cache reports loads to the manager (``CacheEvents.manager``),
the cache asks fleet copies for tenant room before a load (``TenantRoom.copies``), and the
manager loads through the router (``ModelManager.set_loader``). Each is closed here, right after
the piece exists, and nowhere else.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from prometheus_client import CollectorRegistry

from adapters.probe import LoadProbe
from mesh.cache import ModelCache
from mesh.cache_events import CacheEvents, CopyRepair, LoadedElsewhere
from mesh.dataplane import DataPlane
from mesh.devices import GpuProbe, NvmlProbe
from mesh.edge.health import PodReadiness
from mesh.edge.hop import Peers
from mesh.edge.inference import InferenceServicer
from mesh.edge.management import MeshAdminServicer, ModelMeshServicer
from mesh.edge.peers import PeerClient
from mesh.edge.server import build_server, new_server
from mesh.fleet_calls import FleetCalls
from mesh.fleet_copies import FleetCopies
from mesh.handover import HandOver
from mesh.heap import HeapFreezer
from mesh.inference_threads import InferenceThreads
from mesh.instance import InstancePublisher
from mesh.janitor import build_janitor
from mesh.management import ModelManager
from mesh.metrics import MeshMetrics
from mesh.model_watch import ModelWatches
from mesh.placement_view import PlacementView
from mesh.pod import Pod, Pools
from mesh.records import InstanceRecord, ModelRecord
from mesh.registry import MemoryRegistry, ModelStore, Registry
from mesh.registry.etcd import EtcdRegistry
from mesh.registry.etcd_config import EtcdConnection
from mesh.request_budget import RequestBudget
from mesh.router import Router
from mesh.sampler import PodSampler
from mesh.settings import MeshSettings
from mesh.working_set import WorkingSet
from placement.copies import CopyPolicy
from placement.eviction import EvictionPolicy
from puller import ArtifactCache, FetcherTable, storage_fetchers


async def build_pod(
    settings: MeshSettings,
    *,
    registry: Registry | None = None,
    fetchers: FetcherTable | None = None,
    metrics_registry: CollectorRegistry | None = None,
    gpu_probe: GpuProbe | None = None,
) -> Pod:
    """A pod built from ``settings``, not started; the keyword parts replace the ones the
    settings would make (tests pass an in-memory registry, fake fetchers, a fake GPU probe)."""
    s = settings
    registry = registry or settings_registry(s)
    metrics = MeshMetrics(metrics_registry or CollectorRegistry())
    if gpu_probe is None:
        gpu_probe = await asyncio.to_thread(NvmlProbe)  # NVML init blocks: off the loop
    artifacts: ArtifactCache | None = None
    if fetchers is None:
        fetchers, artifacts = storage_fetchers(
            cache_dir=s.artifact_dir(),
            cache_bytes=s.artifact_bytes(),
            storage_config=s.storage_config,
            pvc_root=s.pvc_root,
            metrics=metrics.registry,
            concurrency=s.download_concurrency,
        )
    pools = Pools(s)
    store = ModelStore(registry, namespace=s.namespace)
    peers = PeerClient(s.pod_id, max_message_bytes=s.max_message_bytes)
    heap = HeapFreezer(enabled=s.gc_freeze)
    working_set = WorkingSet(s.pressure_window_s)
    # Each trial's worker runs the program's main module again (``mesh serve``: mesh_tools.cli),
    # which imports the pod: imported once in the fork server, that costs 5 ms a worker, not 200.
    probe = LoadProbe(workers=s.load_concurrency, preload=("mesh.wiring",)) if s.probe_loads else None
    copy_policy = copy_policy_from(s)
    changed = asyncio.Event()  # the pod changed: the publisher republishes soon
    events = CacheEvents(metrics, heap, changed)
    admit = TenantRoom(s.load_timeout_s)
    cache = ModelCache(
        capacity_bytes=s.capacity_bytes,
        fetchers=fetchers,
        executor=pools.load,
        listener=events,
        load_concurrency=s.load_concurrency,
        load_timeout_s=s.load_timeout_s,
        eviction_policy=EvictionPolicy(s.eviction_policy),
        admit=admit,
        held_elsewhere=LoadedElsewhere(store, s.pod_id),
        probe=probe,
        working_set=working_set,
    )
    manager = ModelManager(
        store=store,
        cache=cache,
        fetchers=fetchers,
        pod_id=s.pod_id,
        failure_ttl_s=s.failure_ttl_s,
        copy_policy=copy_policy,
        max_load_crashes=s.max_load_crashes,
        crash_window_s=s.crash_window_s,
        dead_after_s=s.lease_ttl_s,
    )
    events.manager = manager
    repair = CopyRepair(manager)
    dataplane = DataPlane(
        manager=manager,
        cache=cache,
        threads=InferenceThreads(
            pools.infer, threads=s.infer_threads, fast_threads=s.fast_infer_threads, slow_call_s=s.slow_call_s
        ),
        inline_infer_s=s.inline_infer_s,
        max_batch_rows=s.max_batch_rows,
    )
    server = new_server(s.max_message_bytes)
    port = server.add_insecure_port(f"{s.host}:{s.port}")
    in_flight: Counter[str] = Counter()
    sampler = PodSampler(
        settings=s,
        endpoint=f"{s.advertise_host or s.host}:{port}",
        cache=cache,
        dataplane=dataplane,
        working_set=working_set,
        metrics=metrics,
        gpu_probe=gpu_probe,
        in_flight=in_flight,
    )
    routing = build_routing(
        pod_id=s.pod_id,
        store=store,
        manager=manager,
        cache=cache,
        peers=peers,
        describe_self=sampler.describe,
        in_flight=in_flight,
        admit=admit,
        failure_ttl_s=s.failure_ttl_s,
        attempts=s.route_attempts,
        suspect_s=s.lease_ttl_s,
    )
    placement, router, copies = routing.placement, routing.router, routing.copies
    timeout_s = s.request_timeout_s
    manager.set_loader(lambda model_id: router.ensure_loaded(model_id, deadline=time.monotonic() + timeout_s))
    watches = ModelWatches(store, manager)
    readiness = PodReadiness()
    budget = RequestBudget(limit_bytes=s.max_request_bytes_in_flight, wait_s=s.request_wait_s)
    publisher = InstancePublisher(
        registry=registry,
        store=store,
        describe=sampler.describe,
        ttl_s=s.lease_ttl_s,
        min_interval_s=s.publish_interval_s,
        on_rejoin=repair.rejoined,
        changed=changed,
    )
    janitor = build_janitor(
        pod_id=s.pod_id,
        store=store,
        manager=manager,
        lease=lambda: publisher.lease,
        view=placement.view,
        load=_preload(router),
        settings=s,
        copies=copies,
        copy_policy=copy_policy,
        on_round=metrics.janitor_rounds.inc,
    )
    pod = Pod(
        s,
        registry=registry,
        store=store,
        metrics=metrics,
        cache=cache,
        manager=manager,
        router=router,
        copies=copies,
        watches=watches,
        dataplane=dataplane,
        sampler=sampler,
        publisher=publisher,
        janitor=janitor,
        hand_over=HandOver(
            pod_id=s.pod_id, models=s.handoff_models, store=store, cache=cache, manager=manager, router=router
        ),
        readiness=readiness,
        request_budget=budget,
        events=events,
        repair=repair,
        peers=peers,
        heap=heap,
        working_set=working_set,
        probe=probe,
        gpu_probe=gpu_probe,
        artifacts=artifacts,
        fetchers=fetchers,
        pools=pools,
        server=server,
        port=port,
    )
    build_server(
        server,
        inference=InferenceServicer(
            dataplane,
            router,
            metrics,
            fleet=routing.fleet,
            request_timeout_s=s.request_timeout_s,
            budget=budget,
            decoder=pools.decode,
            decode_inline_bytes=s.decode_inline_bytes,
            readiness=readiness,
        ),
        modelmesh=ModelMeshServicer(manager, metrics),
        admin=MeshAdminServicer(manager, cache, metrics, pod.status_counts, watches=watches),
        readiness=readiness,
    )
    return pod


@dataclass(frozen=True)
class Routing:
    """The pod's view of the fleet and the operations across it."""

    placement: PlacementView
    router: Router
    copies: FleetCopies
    fleet: FleetCalls


def build_routing(
    *,
    pod_id: str,
    store: ModelStore,
    manager: ModelManager,
    cache: ModelCache,
    peers: Peers,
    describe_self: Callable[[], InstanceRecord],
    in_flight: Counter[str],
    admit: TenantRoom,
    failure_ttl_s: float,
    attempts: int,
    suspect_s: float,
) -> Routing:
    """Placement, the router and fleet operations over the pod's store, manager and cache;
    ``in_flight`` (calls in flight per pod) is shared by placement and the router, and
    ``admit`` (the cache's) makes tenant room through the fleet copies built here."""
    placement = PlacementView(
        pod_id=pod_id,
        store=store,
        describe_self=describe_self,
        in_flight=in_flight,
        failure_ttl_s=failure_ttl_s,
    )
    router = Router(
        pod_id=pod_id,
        store=store,
        manager=manager,
        cache=cache,
        peers=peers,
        placement=placement,
        in_flight=in_flight,
        attempts=attempts,
        suspect_s=suspect_s,
    )
    copies = FleetCopies(pod_id=pod_id, store=store, manager=manager, cache=cache, peers=peers, router=router)
    admit.copies = copies
    fleet = FleetCalls(pod_id=pod_id, store=store, manager=manager, cache=cache, peers=peers)
    return Routing(placement, router, copies, fleet)


def copy_policy_from(s: MeshSettings) -> CopyPolicy:
    return CopyPolicy(
        up_rate=s.copy_up_rate,
        up_queue_ms=s.copy_up_queue_ms,
        down_rate=s.copy_down_rate,
        cooldown_ms=int(s.copy_cooldown_s * 1000),
        default_max=s.max_copies,
    )


def settings_registry(settings: MeshSettings) -> Registry:
    """etcd as ``etcd_config`` (ModelMesh's etcd_connection JSON) or ``etcd`` says, else in memory."""
    if settings.etcd_config is not None:
        return EtcdRegistry(EtcdConnection.from_file(settings.etcd_config))
    if settings.etcd:
        return EtcdRegistry(EtcdConnection.from_endpoints(settings.etcd))
    return MemoryRegistry()


class TenantRoom:
    """The cache's ``admit``: before a load, keep its tenant under its loaded-bytes cap through
    the fleet's copies, within ``load_timeout_s`` seconds."""

    copies: FleetCopies
    """Set once fleet copies exist (they route through the router, which needs the cache)."""

    def __init__(self, load_timeout_s: float) -> None:
        self._load_timeout_s = load_timeout_s

    async def __call__(self, record: ModelRecord, size_bytes: int) -> None:
        deadline = time.monotonic() + self._load_timeout_s
        await self.copies.make_tenant_room(record, size_bytes, deadline=deadline)


def _preload(router: Router) -> Callable[[str, float], Awaitable[None]]:
    async def load(model_id: str, deadline: float) -> None:
        await router.ensure_loaded(model_id, deadline=deadline)

    return load
