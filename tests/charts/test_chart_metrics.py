"""The dashboard, the alerts and the autoscaler read only metrics a real pod exports: a pod on a
real etcd loads a model (and fails one), answers calls, and its /metrics is scraped; every metric
name in every dashboard query, alert and the HorizontalPodAutoscaler must be among the scraped
series, and every label value an expression expects (``result="failed"``) among theirs."""

from __future__ import annotations

import json
import re
import urllib.request
import uuid
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from mesh.edge.client import MeshClient
from mesh_tools import samples
from mesh_tools.etcd_process import EtcdProcess
from tests.charts.conftest import Rendered
from tests.charts.helm import CHART, objects, one
from tests.charts.promql import equality_matchers, metric_names
from tests.conftest import PodThread, pod_settings, wait_until

TARGET_LABELS = {"namespace", "pod", "job", "instance", "service", "container", "endpoint"}
"""Labels Prometheus adds to every scraped series: expressions may match them, pods do not export them."""

_LABEL_VALUES = re.compile(r"^label_values\((.*),\s*\w+\)$")

Series = dict[str, list[dict[str, str]]]
"""Scraped sample names -> the label sets seen with each."""


@pytest.fixture(scope="module")
def monitoring(rendered: Rendered) -> list[dict[str, Any]]:
    return rendered["monitoring-autoscaling"]


def _scrape(pod: PodThread) -> Series:
    with urllib.request.urlopen(f"http://127.0.0.1:{pod.pod.metrics_port}/metrics", timeout=10) as answer:
        text = answer.read().decode()
    series: Series = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            series.setdefault(sample.name, []).append(dict(sample.labels))
    return series


@pytest.fixture(scope="module")
def exported(etcd: EtcdProcess, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Series]:
    """What a pod of a fleet exports after a load, a failed load and calls."""
    root = tmp_path_factory.mktemp("chart-metrics")
    model = samples.sklearn_classifier(root / "model")
    broken = root / "broken.joblib"
    broken.write_bytes(b"not a pickle")
    settings = pod_settings(
        etcd=etcd.endpoint, namespace=f"chart-{uuid.uuid4().hex[:8]}", cache_dir=root / "cache"
    )
    with PodThread(settings) as pod, MeshClient(pod.target) as client:
        client.register("broken", "sklearn", str(broken), load_now=True, sync=True)
        client.register("iris", "sklearn", str(model), load_now=True, sync=True)
        client.infer("iris", {"input-0": np.ones((1, 4), np.float32)})
        # The fleet's gauges come from the pod's registry mirror, which follows etcd's watch.
        wait_until(
            lambda: any(s.get("tenant") == "default" for s in _scrape(pod).get("mesh_tenant_models", ())),
            within_s=10,
            what="the pod's mirror to show the registered models",
        )
        yield _scrape(pod)


def _dashboard_expressions() -> list[str]:
    dashboard = json.loads((CHART / "dashboards" / "mesh.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", ())]
    for variable in dashboard["templating"]["list"]:
        query = variable.get("query")
        if variable["type"] == "query":
            text = query["query"] if isinstance(query, dict) else query
            # label_values(SELECTOR, LABEL) reads SELECTOR; LABEL is a label name, not a metric.
            exprs.append(_LABEL_VALUES.sub(r"\1", text))
    return exprs


def _check(exprs: list[str], exported: Series, where: str) -> None:
    assert exprs, f"no expressions found in {where}"
    for expr in exprs:
        names = metric_names(expr)
        assert names, f"{where}: no metric name found in {expr!r}"
        missing = names - exported.keys()
        assert not missing, f"{where}: {expr!r} reads {sorted(missing)}, which the pods do not export"
        for metric, label, value in equality_matchers(expr):
            labelled = [labels for labels in exported.get(metric, ()) if label in labels]
            if not labelled:
                assert label in TARGET_LABELS, f"{where}: {metric} has no label {label!r} ({expr!r})"
                continue
            assert any(labels[label] == value for labels in labelled), (
                f"{where}: {metric} never has {label}={value!r} ({expr!r})"
            )


def test_the_promql_reader_finds_metric_names() -> None:
    expr = (
        'histogram_quantile(0.99, sum by (le, method) (rate(mesh_request_seconds_bucket{namespace="$ns",'
        ' method=~"Model.*"}[$__rate_interval]))) / on (pod) group_left mesh_cache_capacity_bytes > 0.5'
    )
    assert metric_names(expr) == {"mesh_request_seconds_bucket", "mesh_cache_capacity_bytes"}
    assert metric_names('label_values(mesh_models_loaded{namespace="$namespace"}, pod)') == {
        "mesh_models_loaded",
        "pod",
    }
    assert equality_matchers('rate(mesh_model_loads_total{result="failed",pod=~".+"}[5m])') == {
        ("mesh_model_loads_total", "result", "failed")
    }


def test_dashboard_reads_only_exported_metrics(exported: Series) -> None:
    _check(_dashboard_expressions(), exported, "dashboards/mesh.json")


def test_dashboard_shows_what_operators_asked_for() -> None:
    read = set().union(*(metric_names(e) for e in _dashboard_expressions()))
    for metric in (
        "mesh_requests_total",
        "mesh_request_seconds_bucket",
        "mesh_model_loads_total",
        "mesh_model_load_seconds_bucket",
        "mesh_model_evictions_total",
        "mesh_cache_used_bytes",
        "mesh_cache_capacity_bytes",
        "mesh_cache_pressure",
        "mesh_models_loaded",
        "mesh_fleet_copies",
        "mesh_fleet_models_registered",
        "mesh_tenant_models",
        "mesh_tenant_loaded_bytes",
        "mesh_registry_up",
    ):
        assert metric in read, f"the dashboard has no panel on {metric}"


def test_alerts_read_only_exported_metrics(monitoring: list[dict[str, Any]], exported: Series) -> None:
    rules = [r for g in one(monitoring, "PrometheusRule")["spec"]["groups"] for r in g["rules"]]
    _check([r["expr"] for r in rules], exported, "the PrometheusRule")


def test_autoscaler_reads_an_exported_metric(monitoring: list[dict[str, Any]], exported: Series) -> None:
    (hpa,) = objects(monitoring, "HorizontalPodAutoscaler")
    names = [m["pods"]["metric"]["name"] for m in hpa["spec"]["metrics"]]
    assert names == ["mesh_cache_pressure"]
    missing = set(names) - exported.keys()
    assert not missing, (
        f"the HorizontalPodAutoscaler scales on {sorted(missing)}, which the pods do not export"
    )
