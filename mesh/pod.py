"""A pod: its pieces (built by ``mesh.wiring.build_pod``) started in order, served, and stopped.

pod = await build_pod(settings)
await pod.start()          # pod.port is bound at build; pod.metrics_port once started
...
await pod.stop()           # not ready (health NOT_SERVING), hand over, drain calls, unload, close

``Pod`` owns the order of start and stop and the pod's background tasks (sampling, copy
repair, reacting to registry changes); each piece owns its own job.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc
from prometheus_client import start_http_server

from adapters.probe import LoadProbe
from mesh.cache import ModelCache
from mesh.cache_events import CacheEvents, CopyRepair
from mesh.dataplane import DataPlane
from mesh.devices import GpuProbe
from mesh.edge.health import PodReadiness
from mesh.edge.peers import PeerClient
from mesh.fleet_copies import FleetCopies
from mesh.handover import HandOver
from mesh.heap import HeapFreezer
from mesh.instance import InstancePublisher
from mesh.janitor import Janitor
from mesh.management import ModelManager
from mesh.metrics import FleetCollector, FleetNumbers, MeshMetrics
from mesh.model_watch import ModelWatches
from mesh.registry import ModelStore, Registry
from mesh.request_budget import RequestBudget
from mesh.router import Router
from mesh.sampler import PodSampler
from mesh.settings import MeshSettings
from mesh.working_set import WorkingSet
from puller import ArtifactCache, FetcherTable

log = logging.getLogger(__name__)


class Pools:
    """The pod's thread pools: model loads, inference calls, request decoding."""

    def __init__(self, settings: MeshSettings) -> None:
        self.load = ThreadPoolExecutor(settings.load_concurrency + 1, thread_name_prefix="load")
        self.infer = ThreadPoolExecutor(settings.infer_threads, thread_name_prefix="infer")
        self.decode = ThreadPoolExecutor(settings.decode_threads, thread_name_prefix="decode")

    def shutdown(self) -> None:
        for pool in (self.load, self.infer, self.decode):
            pool.shutdown(wait=False, cancel_futures=True)


class Pod:
    """A built pod (``mesh.wiring.build_pod``): starts and stops its pieces in order."""

    def __init__(
        self,
        settings: MeshSettings,
        *,
        registry: Registry,
        store: ModelStore,
        metrics: MeshMetrics,
        cache: ModelCache,
        manager: ModelManager,
        router: Router,
        copies: FleetCopies,
        watches: ModelWatches,
        dataplane: DataPlane,
        sampler: PodSampler,
        publisher: InstancePublisher,
        janitor: Janitor,
        hand_over: HandOver,
        readiness: PodReadiness,
        request_budget: RequestBudget,
        events: CacheEvents,
        repair: CopyRepair,
        peers: PeerClient,
        heap: HeapFreezer,
        working_set: WorkingSet,
        probe: LoadProbe | None,
        gpu_probe: GpuProbe,
        artifacts: ArtifactCache | None,
        fetchers: FetcherTable,
        pools: Pools,
        server: grpc.aio.Server,
        port: int,
    ) -> None:
        self.settings = settings
        self._registry = registry
        self.store = store
        self.metrics = metrics
        self.cache = cache
        self.manager = manager
        self.router = router
        self.copies = copies
        self.watches = watches
        self._dataplane = dataplane
        self.sampler = sampler
        self._publisher = publisher
        self.janitor = janitor
        self._hand_over = hand_over
        self.readiness = readiness
        self.request_budget = request_budget
        self._events = events
        self._repair = repair
        self.peers = peers
        self._heap = heap
        self.working_set = working_set
        self.probe = probe
        self._gpu_probe = gpu_probe
        self._artifacts = artifacts
        self._fetchers = fetchers
        self._pools = pools
        self._server = server
        self.port = port
        """The bound gRPC port (bound at build: the instance record names it)."""
        self.metrics_port: int | None = None
        self._metrics_server: Any = None
        self._background: set[asyncio.Task[Any]] = set()
        self._endpoints: dict[str, str] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        metrics.registry_up.set_function(lambda: 1.0 if registry.reachable else 0.0)
        metrics.registry.register(FleetCollector(self._count_fleet, loop=lambda: self._loop))
        metrics.request_bytes_in_flight.set_function(lambda: request_budget.in_flight)
        metrics.request_bytes_waiting.set_function(lambda: request_budget.waiting)
        metrics.model_watches.set_function(lambda: watches.open_count)

    @property
    def shutting_down(self) -> bool:
        return self.sampler.shutting_down

    async def start(self) -> None:
        s = self.settings
        self._loop = asyncio.get_running_loop()
        await self.sampler.read_gpus()
        if self._artifacts is not None:
            await self._artifacts.start()
        await self.store.start()
        # A pod restarted with the same id holds nothing: drop the copies its last life recorded.
        await self.manager.forget_pod(s.pod_id)
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
        self._spawn(self.sampler.run(served=self.router, changed=self._publisher.changed), "gauges")
        self._spawn(self._repair.run(), "registry-repair")
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
        self.sampler.shutting_down = True
        await self.readiness.stopping()  # first: new calls go to the pods that stay
        await self._publisher.publish_now()
        await self._hand_over.run(s.handoff_timeout_s if grace_s is None else grace_s)
        self.watches.end_all()  # a watch never ends by itself: it would hold the stop for its grace
        await self._server.stop(grace)
        for task in list(self._background):
            task.cancel()
        await self.janitor.stop()  # resigns: another pod takes the role at its next round
        await self.manager.stop()
        await self.cache.cancel_loads()  # before the lease goes: a claim left would count as a crash
        await self._publisher.stop()  # revokes the lease: peers stop sending calls here
        await self.cache.close()
        await self._release()

    async def _release(self) -> None:
        """Close what holds threads, sockets, files or devices."""
        if self.probe is not None:
            await asyncio.to_thread(self.probe.stop)
        if self._artifacts is not None:
            await self._artifacts.close()
            self._fetchers.close()
        await self.store.stop()
        await self.peers.close()
        await self._registry.close()
        self._gpu_probe.close()
        if self._metrics_server is not None:
            self._metrics_server.shutdown()
            self._metrics_server.server_close()
        self._pools.shutdown()

    async def wait(self) -> None:
        await self._server.wait_for_termination()

    def status_counts(self) -> dict[str, int]:
        """The cache's event counts and the janitor's rounds, for ``mesh status``."""
        return self._events.snapshot() | {"janitor_rounds": self.janitor.rounds}

    def _on_registry_change(self, kind: str, record_id: str, record: Any) -> None:
        if kind == "models" and record is None:  # unregistered: what the pod kept about it goes
            self.working_set.forget(record_id)
            self._dataplane.forget(record_id)
            if self.cache.loaded(record_id) is not None:
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
        self.janitor.wake()  # its copies are cleaned (and its janitor role taken) at once

    def _spawn(self, coro: Coroutine[Any, Any, Any], name: str) -> None:
        task = asyncio.create_task(coro, name=name)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def _count_fleet(self) -> FleetNumbers | None:
        """The fleet gauges from the mirror (on the event loop: ``FleetCollector`` brings scrapes here)."""
        fleet = self.manager.fleet()
        tenants = tuple((t.tenant, t.models_registered, t.loaded_bytes) for t in self.manager.tenants())
        return FleetNumbers(
            fleet.models_registered, fleet.models_loaded, fleet.copies, len(fleet.pods), tenants
        )
