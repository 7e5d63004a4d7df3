"""Reading a real pod's Prometheus endpoint in tests: every sample by name and labels."""

from __future__ import annotations

import urllib.request

from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import PodThread


def scrape(pod: PodThread) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    url = f"http://127.0.0.1:{pod.pod.metrics_port}/metrics"
    with urllib.request.urlopen(url, timeout=10) as answer:
        text = answer.read().decode()
    samples_seen = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples_seen[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples_seen


def value(seen: dict, name: str, **labels: str) -> float | None:
    return seen.get((name, frozenset(labels.items())))
