"""Fetching model artifacts to local disk, one module per URI scheme, chosen by a table.

``s3://`` and ``gs://`` and ``http(s)://`` go through the on-disk artifact cache;
``pvc://``, ``file://`` and plain paths are used where they are.
"""

from __future__ import annotations

from pathlib import Path

from prometheus_client import CollectorRegistry

from puller.base import Artifact, ArtifactFetcher, FetcherTable, UnsupportedScheme
from puller.cache import ArtifactCache
from puller.config import StorageConfig
from puller.local import LocalFetcher
from puller.metrics import PullerMetrics
from puller.pvc import PvcFetcher

__all__ = [
    "Artifact",
    "ArtifactCache",
    "ArtifactFetcher",
    "FetcherTable",
    "LocalFetcher",
    "StorageConfig",
    "UnsupportedScheme",
    "default_fetchers",
    "storage_fetchers",
]


def default_fetchers() -> FetcherTable:
    """Local paths and ``file://`` URIs only (no remote storage, no artifact cache)."""
    local = LocalFetcher()
    return FetcherTable({"": local, "file": local})


def storage_fetchers(
    *,
    cache_dir: Path,
    cache_bytes: int,
    storage_config: Path | None,
    pvc_root: Path,
    metrics: CollectorRegistry,
    concurrency: int = 8,
    attempts: int = 4,
    backoff_s: float = 0.25,
) -> tuple[FetcherTable, ArtifactCache]:
    """Every scheme, remote ones through one artifact cache (``start()`` it, ``close()`` it)."""
    from puller.gcs import GcsStore
    from puller.http import HttpStore
    from puller.remote import RemoteFetcher
    from puller.s3 import S3Store

    config = StorageConfig(storage_config)
    cache = ArtifactCache(
        cache_dir,
        cache_bytes,
        metrics=PullerMetrics(metrics),
        concurrency=concurrency,
        attempts=attempts,
        backoff_s=backoff_s,
    )
    certs = cache_dir / ".tmp" / "certs"
    local = LocalFetcher()
    s3 = RemoteFetcher(S3Store(certs_dir=certs, concurrency=concurrency), cache, config)
    gcs = RemoteFetcher(GcsStore(concurrency=concurrency), cache, config)
    http = RemoteFetcher(HttpStore(certs_dir=certs), cache, config)
    table = FetcherTable(
        {
            "": local,
            "file": local,
            "pvc": PvcFetcher(pvc_root),
            "s3": s3,
            "gs": gcs,
            "gcs": gcs,
            "http": http,
            "https": http,
        },
        config=config,
    )
    return table, cache
