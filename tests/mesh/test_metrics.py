"""The per-call request metrics expose exactly what prometheus-client's Counter and Histogram would."""

from __future__ import annotations

import asyncio
import random
import threading
import time

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from mesh.metrics import _LATENCY_BUCKETS, FleetCollector, FleetNumbers, MeshMetrics


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


def test_a_scrape_gives_up_on_a_stuck_loop_and_its_count_never_runs_later() -> None:
    """The fleet gauges come from the pod's loop: a scrape while the loop is stuck ends after
    ``wait_s`` with no fleet series, and the count it asked for does not run once the loop frees."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    counted: list[str] = []
    unstuck = threading.Event()

    def count() -> FleetNumbers:
        counted.append(threading.current_thread().name)
        return FleetNumbers(3, 1, 1, 2, (("team-x", 3, 100),))

    collector = FleetCollector(count, loop=lambda: loop, wait_s=0.2)
    try:
        names = {m.name for m in collector.collect()}
        assert "mesh_fleet_models_registered" in names and counted == [thread.name]

        loop.call_soon_threadsafe(unstuck.wait, 30)  # the loop is stuck in a blocking call
        started = time.monotonic()
        assert list(collector.collect()) == []
        assert time.monotonic() - started < 10
        unstuck.set()
        done = asyncio.run_coroutine_threadsafe(asyncio.sleep(0), loop)
        done.result(timeout=10)  # the loop ran everything queued before this
        assert counted == [thread.name]
    finally:
        unstuck.set()
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)
        loop.close()
