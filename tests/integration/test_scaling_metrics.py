"""What the chart's autoscaler, alerts and dashboard read from a real pod's /metrics: the cache
pressure, whether the registry answers, and the fleet's gauges."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import grpc
import pytest

from mesh.registry.etcd import EtcdRegistry
from mesh.settings import MeshSettings
from mesh_proto import model_mesh_pb2 as mm
from mesh_proto import model_mesh_pb2_grpc as mm_grpc
from mesh_tools import samples
from mesh_tools.etcd_process import EtcdProcess
from tests.conftest import ModelSet, PodThread, pod_settings, register, wait_until
from tests.integration.scrape import scrape, value

MODEL_BYTES = 80_000  # about what a pod measures for one of these sklearn models
CAPACITY = 2 * MODEL_BYTES + MODEL_BYTES // 2  # room for two at a time


def pressure(pod: PodThread) -> float:
    found = value(scrape(pod), "mesh_cache_pressure")
    assert found is not None, "mesh_cache_pressure is not exported"
    return found


@pytest.mark.parametrize(("used", "above_one"), [(6, True), (1, False)])
def test_cache_pressure_exceeds_one_when_recent_models_do_not_fit(
    tmp_path: Path, used: int, above_one: bool
) -> None:
    paths = [
        samples.sklearn_classifier(tmp_path / f"m{i}", features=400, classes=4, seed=i) for i in range(used)
    ]
    settings = pod_settings(capacity_bytes=CAPACITY, probe_loads=False, preloads_per_round=0)
    with PodThread(settings) as pod, grpc.insecure_channel(pod.target) as channel:
        api = mm_grpc.ModelMeshStub(channel)
        for round_ in range(2):  # the second round loads again what the first evicted (if any)
            for i, path in enumerate(paths):
                if round_ == 0:
                    register(api, f"m{i}", "sklearn", path)
                api.ensureLoaded(mm.EnsureLoadedRequest(modelId=f"m{i}", sync=True), timeout=60)
        if above_one:
            wait_until(lambda: pressure(pod) > 1.0, within_s=10, what="pressure above 1 while thrashing")
            assert pressure(pod) > 2.0  # six models' worth over room for two and a half
        else:
            wait_until(lambda: 0 < pressure(pod) < 1.0, within_s=10, what="pressure between 0 and 1")


def test_registry_up_follows_an_etcd_that_stops_answering(tmp_path: Path) -> None:
    with EtcdProcess(tmp_path / "etcd") as etcd:
        assert etcd.process is not None
        registry = EtcdRegistry(etcd.endpoint, timeout_s=1.0)
        settings = pod_settings(namespace="up", lease_ttl_s=3.0, publish_interval_s=0.5)
        with PodThread(settings, registry=registry) as pod:
            assert value(scrape(pod), "mesh_registry_up") == 1.0
            os.kill(etcd.process.pid, signal.SIGSTOP)  # etcd hangs: calls time out, none is refused
            try:
                wait_until(
                    lambda: value(scrape(pod), "mesh_registry_up") == 0.0,
                    within_s=15,
                    what="mesh_registry_up dropping to 0",
                )
            finally:
                os.kill(etcd.process.pid, signal.SIGCONT)
            wait_until(
                lambda: value(scrape(pod), "mesh_registry_up") == 1.0,
                within_s=20,
                what="mesh_registry_up back at 1",
            )


def test_in_memory_registry_is_always_up(pod: PodThread) -> None:
    assert value(scrape(pod), "mesh_registry_up") == 1.0


def test_every_pod_exports_the_fleet_and_its_tenants(etcd: EtcdProcess, models: ModelSet) -> None:
    def settings(pod_id: str) -> MeshSettings:
        return pod_settings(etcd=etcd.endpoint, namespace="fleet-gauges", pod_id=pod_id, preloads_per_round=0)

    with PodThread(settings("pod-a")) as a, PodThread(settings("pod-b")) as b:
        with grpc.insecure_channel(a.target) as channel:
            api = mm_grpc.ModelMeshStub(channel)
            for model_id, tenant in (("x1", "team-x"), ("x2", "team-x"), ("y1", "team-y")):
                key = json.dumps({"tenant": tenant})
                register(
                    api, model_id, "sklearn", models.sklearn, key=key, load_now=model_id == "x1", sync=True
                )
        expected = {
            ("mesh_fleet_models_registered", ()): 3.0,
            ("mesh_fleet_models_loaded", ()): 1.0,
            ("mesh_fleet_copies", ()): 1.0,
            ("mesh_fleet_pods", ()): 2.0,
            ("mesh_tenant_models", (("tenant", "team-x"),)): 2.0,
            ("mesh_tenant_models", (("tenant", "team-y"),)): 1.0,
            ("mesh_tenant_loaded_bytes", (("tenant", "team-y"),)): 0.0,
        }

        def shows_fleet(pod: PodThread) -> bool:
            seen = scrape(pod)
            return all(value(seen, name, **dict(labels)) == want for (name, labels), want in expected.items())

        for pod in (a, b):  # every pod reports the same fleet from its own mirror
            wait_until(
                lambda pod=pod: shows_fleet(pod),
                within_s=10,
                what=f"{pod.pod.settings.pod_id}'s fleet gauges",
            )
            loaded = value(scrape(pod), "mesh_tenant_loaded_bytes", tenant="team-x")
            assert loaded is not None and loaded > 0
