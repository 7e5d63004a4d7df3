"""A pod: settings in, a running gRPC server, cache, registry and metrics out.

pod = Pod(settings)
await pod.start()          # binds; pod.port / pod.metrics_port are the real ports
...
await pod.stop()           # not ready (health NOT_SERVING), hand over, drain calls, unload, close
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from collections.abc import Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from prometheus_client import CollectorRegistry, start_http_server

from adapters import supported_types
from adapters.probe import LoadProbe
from mesh import __version__
from mesh.cache import ModelCache
from mesh.dataplane import DataPlane
from mesh.devices import HOST, DeviceMemory, GpuProbe, NvmlProbe, gpu_devices
from mesh.edge.health import PodReadiness
from mesh.edge.inference import InferenceServicer
from mesh.edge.management import MeshAdminServicer, ModelMeshServicer
from mesh.edge.peers import PeerClient
from mesh.edge.server import build_server
from mesh.fleet_calls import FleetCalls
from mesh.fleet_copies import FleetCopies
from mesh.heap import HeapFreezer
from mesh.inference_threads import InferenceThreads
from mesh.instance import InstancePublisher
from mesh.janitor import Janitor
from mesh.management import ModelManager
from mesh.metrics import FleetCollector, FleetNumbers, MeshMetrics
from mesh.model_watch import ModelWatches
from mesh.placement_view import PlacementView
from mesh.records import InstanceRecord, ModelRecord
from mesh.registry import MemoryRegistry, ModelStore, Registry
from mesh.registry.etcd import EtcdRegistry
from mesh.registry.etcd_config import EtcdConnection
from mesh.request_budget import RequestBudget
from mesh.router import Router
from mesh.settings import MeshSettings
from mesh.working_set import WorkingSet
from mesh_common.clock import now_ms
from mesh_common.errors import MeshError
from placement.copies import CopyPolicy
from placement.eviction import EvictionPolicy
from puller import ArtifactCache, FetcherTable, storage_fetchers

log = logging.getLogger(__name__)


class _CacheEvents:
    """Forwards cache events to the manager (registry) and counts them for metrics and status."""

    manager: ModelManager
    """Set once the manager exists (the manager needs the cache, which needs these events)."""

    def __init__(self, metrics: MeshMetrics, heap: HeapFreezer) -> None:
        self.metrics = metrics
        self.heap = heap
        self.counts: Counter[str] = Counter()
        self.on_change: Callable[[], None] = lambda: None

    async def loading(self, model_id: str) -> None:
        await self.manager.loading(model_id)
        self.on_change()

    async def loaded(self, model_id: str, size_bytes: int, load_seconds: float) -> None:
        self.counts["loads"] += 1
        self.metrics.loads.labels("ok").inc()
        self.metrics.load_seconds.observe(load_seconds)
        await self.manager.loaded(model_id, size_bytes, load_seconds)
        self.heap.settle()  # a load may have imported its framework: long-lived from now on
        self.on_change()

    async def failed(self, model_id: str, error: MeshError) -> None:
        self.counts["load_failures"] += 1
        self.metrics.loads.labels("failed").inc()
        await self.manager.failed(model_id, error)
        self.on_change()

    async def refused(self, model_id: str, error: MeshError) -> None:
        await self.manager.refused(model_id, error)
        self.on_change()

    async def unloaded(self, model_id: str, *, evicted: bool, reason: str = "") -> None:
        self.counts["evictions" if evicted else "unloads"] += 1
        (self.metrics.evictions if evicted else self.metrics.unloads).inc()
        await self.manager.unloaded(model_id, evicted=evicted, reason=reason)
        self.on_change()

    def snapshot(self) -> dict[str, int]:
        return {k: self.counts[k] for k in ("loads", "load_failures", "evictions", "unloads")}


class Pod:
    def __init__(
        self,
        settings: MeshSettings,
        *,
        registry: Registry | None = None,
        fetchers: FetcherTable | None = None,
        metrics_registry: CollectorRegistry | None = None,
        gpu_probe: GpuProbe | None = None,
    ) -> None:
        self.settings = settings
        if registry is None:
            registry = _registry(settings)
        self._registry = registry
        self.metrics = MeshMetrics(metrics_registry or CollectorRegistry())
        self.metrics.registry_up.set_function(lambda: 1.0 if registry.reachable else 0.0)
        self.metrics.registry.register(FleetCollector(self._count_fleet, loop=lambda: self._loop))
        self.working_set = WorkingSet(settings.pressure_window_s)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._fetchers = fetchers
        self._gpu_probe = gpu_probe
        self._gpus: tuple[DeviceMemory, ...] = ()
        self._artifacts: ArtifactCache | None = None
        self._load_pool = ThreadPoolExecutor(settings.load_concurrency + 1, thread_name_prefix="load")
        self._infer_pool = ThreadPoolExecutor(settings.infer_threads, thread_name_prefix="infer")
        # Each trial's worker runs the program's main module again (``mesh serve``: mesh_tools.cli),
        # which imports the pod: imported once in the fork server, that costs 5 ms a worker, not 200.
        self.probe = (
            LoadProbe(workers=settings.load_concurrency, preload=("mesh.pod",))
            if settings.probe_loads
            else None
        )
        self._decode_pool = ThreadPoolExecutor(settings.decode_threads, thread_name_prefix="decode")
        self.request_budget = RequestBudget(
            limit_bytes=settings.max_request_bytes_in_flight, wait_s=settings.request_wait_s
        )
        self.metrics.request_bytes_in_flight.set_function(lambda: self.request_budget.in_flight)
        self.metrics.request_bytes_waiting.set_function(lambda: self.request_budget.waiting)
        self.store = ModelStore(self._registry, namespace=settings.namespace)
        self.peers = PeerClient(settings.pod_id, max_message_bytes=settings.max_message_bytes)
        self._events: _CacheEvents | None = None
        self._dataplane: DataPlane | None = None
        self.cache: ModelCache | None = None
        self.manager: ModelManager | None = None
        self.watches: ModelWatches | None = None
        self.router: Router | None = None
        self.copies: FleetCopies | None = None
        self._publisher: InstancePublisher | None = None
        self.janitor: Janitor | None = None
        self._server: Any = None
        self.readiness = PodReadiness()
        self._heap = HeapFreezer(enabled=settings.gc_freeze)
        self._metrics_server: Any = None
        self._background: set[asyncio.Task[Any]] = set()
        self._endpoints: dict[str, str] = {}
        self._started_ms = now_ms()
        self._repair_now = asyncio.Event()
        self._request_rate = 0.0
        self.shutting_down = False
        self.port = 0
        self.metrics_port: int | None = None

    async def start(self) -> None:
        s = self.settings
        self._loop = asyncio.get_running_loop()
        if self._gpu_probe is None:
            self._gpu_probe = await asyncio.to_thread(NvmlProbe)
        await self._read_gpus()
        if self._fetchers is None:
            self._fetchers, self._artifacts = storage_fetchers(
                cache_dir=s.artifact_dir(),
                cache_bytes=s.artifact_bytes(),
                storage_config=s.storage_config,
                pvc_root=s.pvc_root,
                metrics=self.metrics.registry,
                concurrency=s.download_concurrency,
            )
            await self._artifacts.start()
        await self.store.start()
        events = _CacheEvents(self.metrics, self._heap)
        copy_policy = CopyPolicy(
            up_rate=s.copy_up_rate,
            up_queue_ms=s.copy_up_queue_ms,
            down_rate=s.copy_down_rate,
            cooldown_ms=int(s.copy_cooldown_s * 1000),
            default_max=s.max_copies,
        )
        self.cache = ModelCache(
            capacity_bytes=s.capacity_bytes,
            fetchers=self._fetchers,
            executor=self._load_pool,
            listener=events,
            load_concurrency=s.load_concurrency,
            load_timeout_s=s.load_timeout_s,
            eviction_policy=EvictionPolicy(s.eviction_policy),
            admit=self._admit,
            held_elsewhere=lambda ids: self.manager.replicated(ids) if self.manager is not None else set(),
            probe=self.probe,
            working_set=self.working_set,
        )
        self.manager = ModelManager(
            store=self.store,
            cache=self.cache,
            fetchers=self._fetchers,
            pod_id=s.pod_id,
            failure_ttl_s=s.failure_ttl_s,
            copy_policy=copy_policy,
            max_load_crashes=s.max_load_crashes,
            crash_window_s=s.crash_window_s,
            dead_after_s=s.lease_ttl_s,
        )
        events.manager = self.manager
        self.watches = watches = ModelWatches(self.store, self.manager)
        self.metrics.model_watches.set_function(lambda: watches.open_count)
        self._events = events
        in_flight: Counter[str] = Counter()
        placement = PlacementView(
            pod_id=s.pod_id,
            store=self.store,
            describe_self=self.describe,
            in_flight=in_flight,
            failure_ttl_s=s.failure_ttl_s,
        )
        self.router = Router(
            pod_id=s.pod_id,
            store=self.store,
            manager=self.manager,
            cache=self.cache,
            peers=self.peers,
            placement=placement,
            in_flight=in_flight,
            attempts=s.route_attempts,
            suspect_s=s.lease_ttl_s,
        )
        self.copies = FleetCopies(
            pod_id=s.pod_id,
            store=self.store,
            manager=self.manager,
            cache=self.cache,
            peers=self.peers,
            router=self.router,
        )
        self.manager.set_loader(self._load_in_fleet)
        # A pod restarted with the same id holds nothing: drop the copies its last life recorded.
        await self.manager.forget_pod(s.pod_id)
        self._dataplane = dataplane = DataPlane(
            manager=self.manager,
            cache=self.cache,
            threads=InferenceThreads(
                self._infer_pool,
                threads=s.infer_threads,
                fast_threads=s.fast_infer_threads,
                slow_call_s=s.slow_call_s,
            ),
            inline_infer_s=s.inline_infer_s,
            max_batch_rows=s.max_batch_rows,
        )
        self._server = build_server(
            inference=InferenceServicer(
                dataplane,
                self.router,
                self.metrics,
                fleet=FleetCalls(
                    pod_id=s.pod_id,
                    store=self.store,
                    manager=self.manager,
                    cache=self.cache,
                    peers=self.peers,
                ),
                request_timeout_s=s.request_timeout_s,
                budget=self.request_budget,
                decoder=self._decode_pool,
                decode_inline_bytes=s.decode_inline_bytes,
                readiness=self.readiness,
            ),
            modelmesh=ModelMeshServicer(self.manager, self.metrics),
            admin=MeshAdminServicer(
                self.manager, self.cache, self.metrics, self._status_counts, watches=self.watches
            ),
            readiness=self.readiness,
            max_message_bytes=s.max_message_bytes,
        )
        self.port = self._server.add_insecure_port(f"{s.host}:{s.port}")
        self._publisher = InstancePublisher(
            registry=self._registry,
            store=self.store,
            describe=self.describe,
            ttl_s=s.lease_ttl_s,
            min_interval_s=s.publish_interval_s,
            on_rejoin=self._rejoined,
        )
        events.on_change = self._publisher.changed
        await self._publisher.start()
        self._endpoints = {pod: i.endpoint for pod, i in self.store.instances().items()}
        self.store.subscribe(self._on_registry_change)
        await self.readiness.not_yet()
        await self._server.start()
        if s.metrics_port is not None:
            self._metrics_server, _ = start_http_server(
                s.metrics_port, addr=s.host, registry=self.metrics.registry
            )
            self.metrics_port = self._metrics_server.server_port
        self.metrics.capacity_bytes.set(s.capacity_bytes)
        self._spawn(self._update_gauges(), "gauges")
        self._spawn(self._repair_copies(), "registry-repair")
        self.janitor = Janitor(
            pod_id=s.pod_id,
            store=self.store,
            manager=self.manager,
            lease=lambda: self._publisher.lease if self._publisher else 0,
            view=placement.view,
            load=self._preload,
            interval_s=s.janitor_interval_s,
            failure_ttl_s=s.failure_ttl_s,
            preloads_per_round=s.preloads_per_round,
            load_timeout_s=s.load_timeout_s,
            copies=self.copies,
            copy_policy=copy_policy,
            copies_per_round=s.copies_per_round,
            on_round=self.metrics.janitor_rounds.inc,
        )
        self.janitor.start()
        self._heap.settle()
        await self.readiness.serving()
        loop = type(asyncio.get_running_loop()).__module__.partition(".")[0]
        log.info(
            "pod %s serving on %s:%d (capacity %d bytes, event loop %s)",
            s.pod_id,
            s.host,
            self.port,
            s.capacity_bytes,
            loop,
        )

    async def stop(self, grace_s: float | None = None) -> None:
        """Leave the fleet gracefully: mark shutting down and not ready, hand hot models over, drain, release.

        The hand-over takes at most ``handoff_timeout_s`` and the drain ``stop_grace_s`` (both
        ``grace_s`` when given); the rest is registry writes, each bounded by the registry's timeout
        (5 s; after one times out the others fail at once): publish, resign, drop load claims,
        revoke the lease, record the unloads. So a stop takes at most about
        ``handoff_timeout_s + stop_grace_s + 25 s``, plus whatever a model load already running in
        a thread needs to return (a load cannot be interrupted; the process exits after it).
        """
        s = self.settings
        grace = s.stop_grace_s if grace_s is None else grace_s
        handoff_s = s.handoff_timeout_s if grace_s is None else grace_s
        self.shutting_down = True
        await self.readiness.stopping()  # first: new calls go to the pods that stay
        if self._publisher is not None:
            await self._publisher.publish_now()
            if handoff_s > 0:
                try:
                    async with asyncio.timeout(
                        handoff_s
                    ):  # a hard bound: the chart's grace period relies on it
                        await self._hand_over(deadline=time.monotonic() + handoff_s)
                except TimeoutError:
                    log.warning("hand-over cut short after %gs (handoff_timeout_s)", handoff_s)
        if self.watches is not None:
            self.watches.end_all()  # a watch never ends by itself: it would hold the stop for its grace
        if self._server is not None:
            await self._server.stop(grace)
        for task in list(self._background):
            task.cancel()
        if self.janitor is not None:
            await self.janitor.stop()  # resigns: another pod takes the role at its next round
        if self.manager is not None:
            await self.manager.stop()
        if self.cache is not None:
            await self.cache.cancel_loads()  # before the lease goes: a claim left would count as a crash
        if self._publisher is not None:
            await self._publisher.stop()  # revokes the lease: peers stop sending calls here
        if self.cache is not None:
            await self.cache.close()
        if self.probe is not None:
            await asyncio.to_thread(self.probe.stop)
        if self._artifacts is not None and self._fetchers is not None:
            await self._artifacts.close()
            self._fetchers.close()
        await self.store.stop()
        await self.peers.close()
        await self._registry.close()
        if self._gpu_probe is not None:
            self._gpu_probe.close()
        if self._metrics_server is not None:
            self._metrics_server.shutdown()
            self._metrics_server.server_close()
        self._load_pool.shutdown(wait=False, cancel_futures=True)
        self._infer_pool.shutdown(wait=False, cancel_futures=True)
        self._decode_pool.shutdown(wait=False, cancel_futures=True)

    async def wait(self) -> None:
        if self._server is not None:
            await self._server.wait_for_termination()

    def _status_counts(self) -> dict[str, int]:
        assert self._events is not None
        rounds = self.janitor.rounds if self.janitor is not None else 0
        return self._events.snapshot() | {"janitor_rounds": rounds}

    def describe(self) -> InstanceRecord:
        """This pod's instance record as of now."""
        assert self.cache is not None and self.router is not None
        s = self.settings
        idle_age = self.cache.next_victim_age_s()
        return InstanceRecord(
            pod_id=s.pod_id,
            endpoint=f"{s.advertise_host or s.host}:{self.port}",
            capacity_bytes=s.capacity_bytes,
            used_bytes=self.cache.used_bytes,
            models_loaded=sum(1 for m in self.cache.models() if m.loaded),
            loads_in_flight=self.cache.loads_in_flight,
            requests_in_flight=self.router.in_flight[s.pod_id],
            request_rate=round(self._request_rate, 1),
            oldest_used_ms=0 if idle_age is None else now_ms() - int(idle_age * 1000),
            labels=tuple(f"type:{t}" for t in supported_types()),
            version=__version__,
            started_ms=self._started_ms,
            shutting_down=self.shutting_down,
            devices=self._devices(),
            hot=self._dataplane.traffic.hot() if self._dataplane is not None else {},
        )

    async def _admit(self, record: ModelRecord, size_bytes: int) -> None:
        assert self.copies is not None
        deadline = time.monotonic() + self.settings.load_timeout_s
        await self.copies.make_tenant_room(record, size_bytes, deadline=deadline)

    async def _load_in_fleet(self, model_id: str) -> None:
        assert self.router is not None
        await self.router.ensure_loaded(model_id, deadline=time.monotonic() + self.settings.request_timeout_s)

    async def _hand_over(self, *, deadline: float) -> None:
        """Load the most recently used models that only this pod holds on other pods."""
        assert self.cache is not None and self.router is not None and self.manager is not None
        recent = sorted(
            (m for m in self.cache.models() if m.loaded), key=lambda m: m.last_used, reverse=True
        )[: self.settings.handoff_models]
        mine = frozenset({self.settings.pod_id})
        for model in recent:
            if not self._staying_pods():
                log.info("no pod stays in the fleet: nothing to hand over")
                return
            if self.manager.held_elsewhere(model.model_id):
                continue
            try:
                await self.router.ensure_loaded(model.model_id, deadline=deadline, excluded=mine)
                log.info("handed %s over before leaving", model.model_id)
            except MeshError as exc:
                log.warning("could not hand %s over before leaving: %s", model.model_id, exc)
            if time.monotonic() >= deadline:
                return

    def _staying_pods(self) -> list[str]:
        instances = self.store.instances().items()
        return [p for p, i in instances if p != self.settings.pod_id and not i.shutting_down]

    def _on_registry_change(self, kind: str, record_id: str, record: Any) -> None:
        if kind == "models" and record is None:  # unregistered: what the pod kept about it goes
            self.working_set.forget(record_id)
            if self._dataplane is not None:
                self._dataplane.forget(record_id)
            if self.cache is not None and self.cache.loaded(record_id) is not None:
                # Through whichever pod it was unregistered, every copy is unloaded and freed.
                self._spawn(self.cache.unload(record_id, reason="unregistered"), f"unload:{record_id}")
            return
        if kind != "instances":
            return
        if record is not None:
            self._endpoints[record_id] = record.endpoint
            return
        endpoint = self._endpoints.pop(record_id, None)
        if endpoint is not None:
            self._spawn(self.peers.forget(endpoint), f"forget-peer:{record_id}")
        if self.janitor is not None:
            self.janitor.wake()  # its copies are cleaned (and its janitor role taken) at once

    async def _preload(self, model_id: str, deadline: float) -> None:
        assert self.router is not None
        await self.router.ensure_loaded(model_id, deadline=deadline)

    def _spawn(self, coro: Coroutine[Any, Any, Any], name: str) -> None:
        task = asyncio.create_task(coro, name=name)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _update_gauges(self) -> None:
        assert self.cache is not None and self.router is not None and self._publisher is not None
        served = 0
        ticked = time.monotonic()
        while True:
            if self._dataplane is not None:
                now = time.monotonic()
                self._dataplane.traffic.tick(now - ticked)
                ticked = now
            total = self.router.served
            self._request_rate = 0.7 * self._request_rate + 0.3 * (total - served)
            served = total
            self.metrics.used_bytes.set(self.cache.used_bytes)
            self.metrics.models_loaded.set(sum(1 for m in self.cache.models() if m.loaded))
            self.metrics.loads_waiting_for_room.set(self.cache.loads_waiting_for_room)
            self.metrics.cache_pressure.set(
                self.working_set.pressure(
                    self.cache.models(),
                    waiting=self.cache.waiting_for_room,
                    capacity_bytes=self.settings.capacity_bytes,
                    now=time.monotonic(),
                )
            )
            await self._read_gpus()
            self._publisher.changed()
            await asyncio.sleep(1.0)

    def _count_fleet(self) -> FleetNumbers | None:
        """The fleet gauges from the mirror (on the event loop: ``FleetCollector`` brings scrapes here)."""
        if self.manager is None:
            return None
        fleet = self.manager.fleet()
        tenants = tuple((t.tenant, t.models_registered, t.loaded_bytes) for t in self.manager.tenants())
        return FleetNumbers(
            fleet.models_registered, fleet.models_loaded, fleet.copies, len(fleet.pods), tenants
        )

    def _rejoined(self) -> None:
        """The pod rejoined the fleet under a new lease: write its copies back now."""
        assert self.manager is not None
        self.manager.rejoined()
        self._repair_now.set()

    async def _repair_copies(self) -> None:
        """Each second, and at once on rejoining the fleet, write what the registry missed of this
        pod's copies (a no-op unless it missed some). Its own task: the write let through to try a
        silent etcd waits its timeout, and neither keep-alives nor calls wait for it."""
        assert self.manager is not None
        while True:
            self._repair_now.clear()
            await self.manager.repair_copies()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(1.0):
                    await self._repair_now.wait()

    def _devices(self) -> tuple[DeviceMemory, ...]:
        used = self.cache.used_bytes if self.cache is not None else 0
        return (DeviceMemory(HOST, self.settings.capacity_bytes, used), *self._gpus)

    async def _read_gpus(self) -> None:
        """Refresh GPU memory (NVML calls block briefly: off the loop) and its gauges."""
        assert self._gpu_probe is not None
        readings = await asyncio.to_thread(self._gpu_probe.read)
        self._gpus = gpu_devices(readings, fraction=self.settings.gpu_fraction)
        devices = (
            DeviceMemory(HOST, self.settings.capacity_bytes, self.cache.used_bytes if self.cache else 0),
        )
        for device in (*devices, *self._gpus):
            self.metrics.device_capacity_bytes.labels(device.name).set(device.capacity_bytes)
            self.metrics.device_used_bytes.labels(device.name).set(device.used_bytes)


def _registry(settings: MeshSettings) -> Registry:
    """etcd as ``etcd_config`` (ModelMesh's etcd_connection JSON) or ``etcd`` says, else in memory."""
    if settings.etcd_config is not None:
        return EtcdRegistry(EtcdConnection.from_file(settings.etcd_config))
    if settings.etcd:
        return EtcdRegistry(EtcdConnection.from_endpoints(settings.etcd))
    return MemoryRegistry()
