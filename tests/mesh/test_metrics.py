"""The per-call request metrics expose exactly what prometheus-client's Counter and Histogram would."""

from __future__ import annotations

import random
import threading

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from mesh.metrics import _LATENCY_BUCKETS, MeshMetrics


def _reference(calls: list[tuple[str, str, float]]) -> CollectorRegistry:
    registry = CollectorRegistry()
    counter = Counter("mesh_requests", "x", ["method", "code"], registry=registry)
    histogram = Histogram(
        "mesh_request_seconds", "x", ["method"], buckets=_LATENCY_BUCKETS, registry=registry
    )
    for method, code, seconds in calls:
        counter.labels(method, code).inc()
        histogram.labels(method).observe(seconds)
    return registry


def test_request_series_match_prometheus_clients_own() -> None:
    rng = random.Random(7)
    calls = [
        (rng.choice(["ModelInfer", "ModelMetadata", "registerModel"]), rng.choice(["OK", "NOT_FOUND"]), s)
        for s in [rng.expovariate(50) for _ in range(2000)] + list(_LATENCY_BUCKETS) + [0.0, 99.0]
    ]
    metrics = MeshMetrics(CollectorRegistry())
    for method, code, seconds in calls:
        metrics.observe_request(method, code, seconds)
    reference = _reference(calls)

    def samples(registry: CollectorRegistry) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        return {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for family in registry.collect()
            if family.name in ("mesh_requests", "mesh_request_seconds")
            for s in family.samples
            if not s.name.endswith("_created")
        }

    ours, theirs = samples(metrics.registry), samples(reference)
    assert ours.keys() == theirs.keys()
    for key, value in theirs.items():
        assert abs(ours[key] - value) < 1e-9, key
    assert (
        metrics.requests.value("ModelInfer", "OK")
        == theirs[("mesh_requests_total", (("code", "OK"), ("method", "ModelInfer")))]
    )

    def types(registry: CollectorRegistry) -> set[str]:
        lines = generate_latest(registry).decode().splitlines()
        return {line for line in lines if line.startswith("# TYPE mesh_request") and "_created" not in line}

    assert types(metrics.registry) == types(reference) != set()


def test_a_scrape_during_updates_sees_consistent_series() -> None:
    """Scrapes run on the metrics server's thread while calls are counted on the loop's."""
    metrics = MeshMetrics(CollectorRegistry())
    stop = threading.Event()
    problems: list[str] = []

    def scrape() -> None:
        while not stop.is_set():
            for family in metrics.registry.collect():
                if family.name != "mesh_request_seconds":
                    continue
                by_method: dict[str, list[float]] = {}
                for s in family.samples:
                    if s.name.endswith("_bucket"):
                        by_method.setdefault(s.labels["method"], []).append(s.value)
                problems.extend(f"{m}: {b}" for m, b in by_method.items() if b != sorted(b))

    scraper = threading.Thread(target=scrape)
    scraper.start()
    try:
        for i in range(20000):
            metrics.observe_request(f"Method{i % 50}", "OK", (i % 100) / 1000)
    finally:
        stop.set()
        scraper.join()
    assert problems == []
    assert sum(metrics.requests.value(f"Method{m}", "OK") for m in range(50)) == 20000
