"""The puller's Prometheus metrics, created against the pod's ``CollectorRegistry``."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

_SECONDS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)


class PullerMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.downloads = Counter(
            "mesh_artifact_downloads", "Artifact downloads by result", ["result"], registry=registry
        )
        self.download_bytes = Counter(
            "mesh_artifact_download_bytes", "Bytes written by artifact downloads", registry=registry
        )
        self.download_seconds = Histogram(
            "mesh_artifact_download_seconds",
            "Time to download an artifact",
            buckets=_SECONDS,
            registry=registry,
        )
        self.download_rate = Gauge(
            "mesh_artifact_download_bytes_per_second",
            "Throughput of the last completed artifact download",
            registry=registry,
        )
        self.hits = Counter(
            "mesh_artifact_cache_hits", "Fetches served from the on-disk artifact cache", registry=registry
        )
        self.evictions = Counter(
            "mesh_artifact_cache_evictions", "Artifacts removed from disk to make room", registry=registry
        )
        self.used_bytes = Gauge(
            "mesh_artifact_cache_used_bytes",
            "Bytes of artifacts on disk and downloads in flight",
            registry=registry,
        )
        self.capacity_bytes = Gauge(
            "mesh_artifact_cache_capacity_bytes",
            "Size bound of the on-disk artifact cache",
            registry=registry,
        )
