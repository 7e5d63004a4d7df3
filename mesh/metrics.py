"""Prometheus metrics, created against an injected ``CollectorRegistry``.

Per-model labels are deliberately absent: with thousands of models they would
explode the series count; ``ModelStatistics`` answers per-model questions.
"""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

_LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
_LOAD_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)


class MeshMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.requests = Counter(
            "mesh_requests", "gRPC calls by method and status code", ["method", "code"], registry=registry
        )
        self.request_seconds = Histogram(
            "mesh_request_seconds",
            "gRPC call latency by method",
            ["method"],
            buckets=_LATENCY_BUCKETS,
            registry=registry,
        )
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

        self._children: dict[tuple[str, str], tuple[Any, Any]] = {}

    def observe_request(self, method: str, code: str, seconds: float) -> None:
        children = self._children.get((method, code))
        if children is None:  # labels() costs a lock and a lookup: resolve each pair once
            children = (self.requests.labels(method, code), self.request_seconds.labels(method))
            self._children[(method, code)] = children
        children[0].inc()
        children[1].observe(seconds)
