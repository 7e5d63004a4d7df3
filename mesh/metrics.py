"""Prometheus metrics, created against an injected ``CollectorRegistry``.

Per-model labels are deliberately absent: with thousands of models they would
explode the series count; ``ModelStatistics`` answers per-model questions. Tenants
(few: tens) are a label of the fleet's per-tenant gauges.

What the chart's autoscaler, alerts and dashboard read: ``mesh_cache_pressure`` (the scaling
signal, see ``mesh.working_set``), ``mesh_registry_up``, and the fleet gauges
(``mesh_fleet_*``, ``mesh_tenant_*``): every pod exports the same fleet values from its registry
mirror, computed when Prometheus scrapes; dashboards take ``max`` over pods.
"""

from __future__ import annotations

import asyncio
import threading
from bisect import bisect_left
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

_LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
_LOAD_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)


class MeshMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.requests = RequestMetrics(_LATENCY_BUCKETS)
        registry.register(self.requests)
        self.loads = Counter("mesh_model_loads", "Model loads by result", ["result"], registry=registry)
        self.load_seconds = Histogram(
            "mesh_model_load_seconds", "Time to load a model", buckets=_LOAD_BUCKETS, registry=registry
        )
        self.unloads = Counter("mesh_model_unloads", "Models unloaded on request", registry=registry)
        self.evictions = Counter("mesh_model_evictions", "Models evicted to make room", registry=registry)
        self.capacity_bytes = Gauge("mesh_cache_capacity_bytes", "Cache capacity", registry=registry)
        self.used_bytes = Gauge(
            "mesh_cache_used_bytes", "Bytes of loaded models and reservations", registry=registry
        )
        self.models_loaded = Gauge("mesh_models_loaded", "Models loaded on this pod", registry=registry)
        self.loads_waiting_for_room = Gauge(
            "mesh_loads_waiting_for_room",
            "Loads waiting for a model that is serving to go idle so it can be evicted",
            registry=registry,
        )
        self.janitor_rounds = Counter(
            "mesh_janitor_rounds",
            "Housekeeping rounds this pod completed as the fleet's janitor",
            registry=registry,
        )
        self.device_capacity_bytes = Gauge(
            "mesh_device_capacity_bytes", "Memory the pod may use per device", ["device"], registry=registry
        )
        self.device_used_bytes = Gauge(
            "mesh_device_used_bytes", "Memory in use per device", ["device"], registry=registry
        )
        self.model_watches = Gauge(
            "mesh_model_watches", "WatchModels streams this pod is serving", registry=registry
        )
        self.request_bytes_in_flight = Gauge(
            "mesh_inflight_request_bytes",
            "Bytes charged to inference calls being decoded, run or forwarded",
            registry=registry,
        )
        self.request_bytes_waiting = Gauge(
            "mesh_waiting_request_bytes",
            "Bytes charged to inference calls waiting for room",
            registry=registry,
        )

        self.cache_pressure = Gauge(
            "mesh_cache_pressure",
            "Bytes of the distinct models this pod served or was asked to load within the pressure window "
            "(still loaded or evicted since), plus loads waiting for room, over its capacity. Below 1 the "
            "recently used models fit; above 1 the pod evicts models it needs again (thrashing), which more "
            "pods cure. Used/capacity is no signal: a warm cache is always nearly full.",
            registry=registry,
        )
        self.registry_up = Gauge(
            "mesh_registry_up",
            "1 while this pod's registry (etcd) answers; 0 from a call that found it refusing or silent "
            "until it answers again (always 1 on the in-memory registry)",
            registry=registry,
        )

    def observe_request(self, method: str, code: str, seconds: float) -> None:
        self.requests.observe(method, code, seconds)


class RequestMetrics(Collector):
    """``mesh_requests_total{method,code}`` and ``mesh_request_seconds{method}``, counted on every call.

    prometheus-client's labelled ``Counter`` and ``Histogram`` take a lock and walk the buckets in
    Python on each update: about 15,000 instructions a call, several per cent of what the pod
    spends on a call to a small model. Here an update is a bisect and two additions, and the
    series are built when Prometheus scrapes. Updates come from the event loop's thread only;
    a scrape (on the metrics server's thread) reads copies taken while it holds the GIL.
    """

    def __init__(self, buckets: tuple[float, ...]) -> None:
        self._bounds = list(buckets)
        self._labels: list[str] = [floatToGoString(b) for b in (*buckets, float("inf"))]  # type: ignore[no-untyped-call]
        self._calls: dict[tuple[str, str], int] = {}
        self._latency: dict[str, list[float]] = {}
        """Per method: calls per bucket (the last one above every bound), then the sum of seconds."""

    def observe(self, method: str, code: str, seconds: float) -> None:
        key = (method, code)
        self._calls[key] = self._calls.get(key, 0) + 1
        latency = self._latency.get(method)
        if latency is None:
            latency = self._latency[method] = [0.0] * (len(self._bounds) + 2)
        latency[bisect_left(self._bounds, seconds)] += 1
        latency[-1] += seconds

    def value(self, method: str, code: str) -> int:
        """Calls counted for ``method`` that ended with ``code`` (a status name such as ``OK``)."""
        return self._calls.get((method, code), 0)

    def collect(self) -> Iterator[Metric]:
        calls = CounterMetricFamily(
            "mesh_requests", "gRPC calls by method and status code", labels=["method", "code"]
        )
        for (method, code), count in sorted(list(self._calls.items())):
            calls.add_metric([method, code], count)
        yield calls
        seconds = HistogramMetricFamily(
            "mesh_request_seconds", "gRPC call latency by method", labels=["method"]
        )
        for method, latency in sorted(list(self._latency.items())):
            counts = list(latency)  # one copy: buckets and sum from the same moment
            total = 0.0
            buckets: list[tuple[str, float]] = []
            for label, in_bucket in zip(self._labels, counts, strict=False):
                total += in_bucket
                buckets.append((label, total))
            seconds.add_metric([method], buckets, sum_value=counts[-1])
        yield seconds


@dataclass(frozen=True)
class FleetNumbers:
    """The fleet as this pod's registry mirror shows it (copies on live pods only)."""

    models_registered: int
    models_loaded: int
    """Models with at least one loaded copy."""
    copies: int
    """Loaded copies, all models together."""
    pods: int
    tenants: tuple[tuple[str, int, int], ...]
    """Per tenant: (name, registered models, bytes of its copies loaded or loading)."""


class FleetCollector(Collector):
    """``mesh_fleet_*`` and ``mesh_tenant_*``, counted by ``count`` when Prometheus scrapes (a walk of
    the mirror per scrape, rather than bookkeeping on every registry change). The scrape arrives on
    the metrics server's thread; ``count`` runs on the pod's event loop (``loop()``), where the
    mirror changes, so it sees one consistent mirror. No series while ``count`` cannot say (the
    pod is not started) or the loop does not answer within ``wait_s``; then the count asked for is
    called off, so a loop stuck across many scrapes does not walk the mirror once per scrape when it
    frees."""

    def __init__(
        self,
        count: Callable[[], FleetNumbers | None],
        *,
        loop: Callable[[], asyncio.AbstractEventLoop | None],
        wait_s: float = 5.0,
    ) -> None:
        self._count = count
        self._loop = loop
        self._wait_s = wait_s

    def describe(self) -> Iterator[Metric]:
        return iter(())  # the series are only known at scrape time; nothing to check at register

    def collect(self) -> Iterator[Metric]:
        numbers = self._count_on_loop()
        if numbers is None:
            return
        for name, text, value in (
            ("mesh_fleet_models_registered", "Models registered in the fleet", numbers.models_registered),
            ("mesh_fleet_models_loaded", "Models with at least one loaded copy", numbers.models_loaded),
            ("mesh_fleet_copies", "Loaded copies in the fleet, all models together", numbers.copies),
            ("mesh_fleet_pods", "Live pods in the fleet", numbers.pods),
        ):
            yield GaugeMetricFamily(name, f"{text} (every pod reports the fleet's value)", value=value)
        models = GaugeMetricFamily(
            "mesh_tenant_models", "Models registered per tenant (fleet-wide)", labels=["tenant"]
        )
        loaded = GaugeMetricFamily(
            "mesh_tenant_loaded_bytes",
            "Bytes of a tenant's copies loaded or loading across the fleet (what its quota counts)",
            labels=["tenant"],
        )
        for tenant, registered, loaded_bytes in numbers.tenants:
            models.add_metric([tenant], registered)
            loaded.add_metric([tenant], loaded_bytes)
        yield models
        yield loaded

    def _count_on_loop(self) -> FleetNumbers | None:
        loop = self._loop()
        if loop is None or loop.is_closed():
            return None
        try:
            if asyncio.get_running_loop() is loop:
                return self._count()
        except RuntimeError:
            pass  # no loop in this thread: the metrics server's

        given_up = threading.Event()

        async def count() -> FleetNumbers | None:
            return None if given_up.is_set() else self._count()

        try:
            return asyncio.run_coroutine_threadsafe(count(), loop).result(timeout=self._wait_s)
        except (RuntimeError, TimeoutError):  # the loop stopped, or is too busy to answer a scrape
            given_up.set()  # its count, when the loop gets to it, walks nothing
            return None
