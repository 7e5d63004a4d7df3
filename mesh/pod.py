"""A pod: settings in, a running gRPC server, cache, registry and metrics out.

pod = Pod(settings)
await pod.start()          # binds; pod.port / pod.metrics_port are the real ports
...
await pod.stop()           # health NOT_SERVING, drain calls, unload, close
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from grpc_health.v1 import health, health_pb2
from prometheus_client import CollectorRegistry, start_http_server

from mesh.cache import ModelCache
from mesh.dataplane import DataPlane
from mesh.edge.inference import InferenceServicer
from mesh.edge.management import MeshAdminServicer, ModelMeshServicer
from mesh.edge.server import build_server
from mesh.errors import MeshError, Unimplemented
from mesh.management import ModelManager
from mesh.metrics import MeshMetrics
from mesh.registry import MemoryRegistry, ModelStore, Registry
from mesh.settings import MeshSettings
from puller import FetcherTable, default_fetchers

log = logging.getLogger(__name__)


class _CacheEvents:
    """Forwards cache events to the manager (registry) and counts them for metrics and status."""

    manager: ModelManager
    """Set once the manager exists (the manager needs the cache, which needs these events)."""

    def __init__(self, metrics: MeshMetrics) -> None:
        self.metrics = metrics
        self.counts: Counter[str] = Counter()

    async def loading(self, model_id: str) -> None:
        await self.manager.loading(model_id)

    async def loaded(self, model_id: str, size_bytes: int, load_seconds: float) -> None:
        self.counts["loads"] += 1
        self.metrics.loads.labels("ok").inc()
        self.metrics.load_seconds.observe(load_seconds)
        await self.manager.loaded(model_id, size_bytes, load_seconds)

    async def failed(self, model_id: str, error: MeshError) -> None:
        self.counts["load_failures"] += 1
        self.metrics.loads.labels("failed").inc()
        await self.manager.failed(model_id, error)

    async def unloaded(self, model_id: str, *, evicted: bool) -> None:
        self.counts["evictions" if evicted else "unloads"] += 1
        (self.metrics.evictions if evicted else self.metrics.unloads).inc()
        await self.manager.unloaded(model_id, evicted=evicted)

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
    ) -> None:
        if settings.etcd and registry is None:
            raise Unimplemented("the etcd registry is not available yet; run without --etcd")
        self.settings = settings
        self._registry = registry or MemoryRegistry()
        self.metrics = MeshMetrics(metrics_registry or CollectorRegistry())
        self._fetchers = fetchers or default_fetchers()
        self._load_pool = ThreadPoolExecutor(settings.load_concurrency + 1, thread_name_prefix="load")
        self._infer_pool = ThreadPoolExecutor(settings.infer_threads, thread_name_prefix="infer")
        self.store = ModelStore(self._registry, namespace=settings.namespace)
        self._events: _CacheEvents | None = None
        self.cache: ModelCache | None = None
        self.manager: ModelManager | None = None
        self._server: Any = None
        self._health = health.aio.HealthServicer()
        self._metrics_server: Any = None
        self._gauges_task: asyncio.Task[None] | None = None
        self.port = 0
        self.metrics_port: int | None = None

    async def start(self) -> None:
        s = self.settings
        await self.store.start()
        events = _CacheEvents(self.metrics)
        self.cache = ModelCache(
            capacity_bytes=s.capacity_bytes,
            fetchers=self._fetchers,
            executor=self._load_pool,
            listener=events,
            load_concurrency=s.load_concurrency,
            load_timeout_s=s.load_timeout_s,
        )
        self.manager = ModelManager(
            store=self.store,
            cache=self.cache,
            fetchers=self._fetchers,
            pod_id=s.pod_id,
            failure_ttl_s=s.failure_ttl_s,
        )
        events.manager = self.manager
        self._events = events
        dataplane = DataPlane(
            manager=self.manager,
            cache=self.cache,
            executor=self._infer_pool,
            inline_infer_s=s.inline_infer_s,
            max_batch_rows=s.max_batch_rows,
        )
        self._server = build_server(
            inference=InferenceServicer(dataplane, self.metrics),
            modelmesh=ModelMeshServicer(self.manager, self.metrics),
            admin=MeshAdminServicer(self.manager, self.cache, self.metrics, events.snapshot),
            health_servicer=self._health,
            max_message_bytes=s.max_message_bytes,
        )
        self.port = self._server.add_insecure_port(f"{s.host}:{s.port}")
        await self._server.start()
        if s.metrics_port is not None:
            self._metrics_server, _ = start_http_server(
                s.metrics_port, addr=s.host, registry=self.metrics.registry
            )
            self.metrics_port = self._metrics_server.server_port
        self.metrics.capacity_bytes.set(s.capacity_bytes)
        self._gauges_task = asyncio.create_task(self._update_gauges(), name="gauges")
        await self._health.set("", health_pb2.HealthCheckResponse.SERVING)
        log.info("pod %s serving on %s:%d (capacity %d bytes)", s.pod_id, s.host, self.port, s.capacity_bytes)

    async def stop(self, grace_s: float | None = None) -> None:
        grace = self.settings.stop_grace_s if grace_s is None else grace_s
        await self._health.enter_graceful_shutdown()
        if self._server is not None:
            await self._server.stop(grace)
        if self._gauges_task is not None:
            self._gauges_task.cancel()
        if self.manager is not None:
            await self.manager.stop()
        if self.cache is not None:
            await self.cache.close()
        await self.store.stop()
        await self._registry.close()
        if self._metrics_server is not None:
            self._metrics_server.shutdown()
            self._metrics_server.server_close()
        self._load_pool.shutdown(wait=False, cancel_futures=True)
        self._infer_pool.shutdown(wait=False, cancel_futures=True)

    async def wait(self) -> None:
        if self._server is not None:
            await self._server.wait_for_termination()

    async def _update_gauges(self) -> None:
        assert self.cache is not None
        while True:
            self.metrics.used_bytes.set(self.cache.used_bytes)
            self.metrics.models_loaded.set(sum(1 for m in self.cache.models() if m.loaded))
            await asyncio.sleep(1.0)
