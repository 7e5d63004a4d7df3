"""A model whose artifact kills the process that loads it does not take the fleet down with it.

Three ``mesh serve`` processes on a real etcd; the poison is a joblib file whose unpickling calls
``os._exit(3)``. The stock tritonclient calls it through every pod, again and again: the pods'
trial loads in worker processes die instead of the pods, the model ends LOADING_FAILED naming the
crash, no pod tries it again, and another model answers through every pod all along.
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import joblib
import numpy as np
import psutil
import pytest
import tritonclient.grpc as tc
from tritonclient.utils import InferenceServerException

from mesh.edge.client import MeshClient
from mesh.records import CopyRecord, ModelRecord, ModelState
from mesh_common.clock import now_ms
from mesh_proto import model_mesh_pb2 as mm
from mesh_tools import samples
from mesh_tools.etcd_process import EtcdProcess
from mesh_tools.fleet import LocalFleet
from mesh_tools.launcher import spawn_pod
from tests.conftest import ModelSet, PodThread, pod_settings, wait_until

FAILURE_TTL_S = 1.0
ENV = {
    "MESH_LEASE_TTL_S": "3",
    "MESH_PUBLISH_INTERVAL_S": "0.2",
    "MESH_JANITOR_INTERVAL_S": "0.5",
    "MESH_FAILURE_TTL_S": str(FAILURE_TTL_S),
}


@pytest.fixture
def fleet(tmp_path: Path, etcd: EtcdProcess) -> Iterator[LocalFleet]:
    env = ENV | {"MESH_NAMESPACE": f"poison-{uuid.uuid4().hex[:8]}"}
    with LocalFleet(tmp_path, pods=3, capacity="64MiB", etcd=etcd.endpoint, env=env) as running:
        yield running


def infer(target: str, model_id: str) -> list[int]:
    with tc.InferenceServerClient(target) as client:
        tensor = tc.InferInput("input-0", [1, 4], "FP64")
        tensor.set_data_from_numpy(np.array([[5.1, 3.5, 1.4, 0.2]]))
        result = client.infer(model_id, [tensor], client_timeout=30)
        return result.as_numpy("predict").tolist()  # type: ignore[no-any-return]


def test_a_poison_pickle_kills_no_pod_and_fails_fleet_wide(fleet: LocalFleet, tmp_path: Path) -> None:
    poison = samples.poison_pickle(tmp_path / "poison", exit_code=3)
    deadly_calls = samples.poison_estimator(tmp_path / "calls", exit_code=5)
    good = samples.sklearn_classifier(tmp_path / "good")
    with MeshClient(fleet.targets[0]) as api:
        api.register("poison", "sklearn", str(poison))
        api.register("deadly-calls", "sklearn", str(deadly_calls))
        api.register("good", "sklearn", str(good))
    expected = infer(fleet.targets[0], "good")

    for round_ in range(3):  # past the failure TTL too: a crash does not expire
        for index, target in enumerate(fleet.targets):
            for model_id, code in (("poison", 3), ("deadly-calls", 5)):
                with pytest.raises(InferenceServerException) as refused:
                    infer(target, model_id)
                where = (round_, index, model_id, refused.value)
                assert refused.value.status() == "StatusCode.FAILED_PRECONDITION", where
                assert f"exit code {code}" in str(refused.value)
            assert infer(target, "good") == expected
        dead = [i for i, p in enumerate(fleet.processes) if p is None or p.poll() is not None]
        assert dead == [], f"pods {dead} died"
        time.sleep(FAILURE_TTL_S)  # the scenario: the failure TTL passes, and the crash still counts

    with MeshClient(fleet.targets[1]) as api:
        status = api.status("poison")
        detail = api.describe("poison")
    assert status.status == mm.ModelStatusInfo.LOADING_FAILED
    assert status.errors[0].startswith("pods died loading it (")
    assert "the loader process died while loading model.joblib: exit code 3" in status.errors[0]
    trials = [e for e in detail.history if "loader process died" in e.what]
    assert 2 <= len(trials) <= 3, [e.what for e in detail.history]  # none after the model was blocked
    with MeshClient(fleet.targets[2]) as api:
        status = api.status("deadly-calls")
    assert status.status == mm.ModelStatusInfo.LOADING_FAILED
    assert "the loader process died while running model.joblib once on zeros: exit code 5" in status.errors[0]


def test_without_trial_loads_two_pods_die_at_most_and_the_model_fails_fleet_wide(
    tmp_path: Path, etcd: EtcdProcess
) -> None:
    """The registry's own defence, for a poison no trial load catches: each pod that dies loading
    the model counts once its lease ends, no other pod loads it while a load of it is in doubt,
    and the second death blocks it."""
    env = ENV | {"MESH_NAMESPACE": f"poison-{uuid.uuid4().hex[:8]}", "MESH_PROBE_LOADS": "false"}
    with LocalFleet(tmp_path, pods=3, capacity="64MiB", etcd=etcd.endpoint, env=env) as fleet:
        poison = samples.poison_pickle(tmp_path / "poison", exit_code=3)
        good = samples.sklearn_classifier(tmp_path / "good")
        with MeshClient(fleet.targets[0]) as api:
            api.register("poison", "sklearn", str(poison))
            api.register("good", "sklearn", str(good))
        expected = infer(fleet.targets[0], "good")

        def alive() -> list[int]:
            return [i for i, p in enumerate(fleet.processes) if p is not None and p.poll() is None]

        codes: list[str] = []
        deadline = time.monotonic() + 30
        while not codes or codes[-1] != "StatusCode.FAILED_PRECONDITION":
            assert time.monotonic() < deadline, f"no FAILED_PRECONDITION within 30 s: {codes}"
            survivors = alive()
            assert len(survivors) >= 1, codes
            with pytest.raises(InferenceServerException) as refused:
                infer(fleet.targets[survivors[len(codes) % len(survivors)]], "poison")
            codes.append(str(refused.value.status()))
            assert codes[-1] in ("StatusCode.UNAVAILABLE", "StatusCode.FAILED_PRECONDITION"), refused.value
            time.sleep(0.1)  # the scenario: a client that retries a retryable answer
        survivors = alive()
        assert len(survivors) >= 1
        for index in survivors:  # however often it is called now, nobody else dies
            assert "pods died loading it" in _refused(fleet.targets[index], "poison")
            assert infer(fleet.targets[index], "good") == expected
        assert alive() == survivors
        with MeshClient(fleet.targets[survivors[0]]) as api:
            status = api.status("poison")
        assert status.status == mm.ModelStatusInfo.LOADING_FAILED
        assert status.errors[0].startswith("pods died loading it (pod-")
        assert status.errors[0].count("died while loading it") == 2


def _claim(pod: PodThread, model_id: str, dead_pod: str) -> None:
    """Record ``dead_pod`` as loading ``model_id``, as a pod that died mid-load leaves it."""

    def change(r: ModelRecord) -> ModelRecord:
        return replace(r, copies={**r.copies, dead_pod: CopyRecord(ModelState.LOADING, now_ms())})

    pod.call(pod.pod.store.update_model(model_id, change))


def _refused(target: str, model_id: str) -> str:
    with pytest.raises(InferenceServerException) as refused:
        infer(target, model_id)
    assert refused.value.status() == "StatusCode.FAILED_PRECONDITION", refused.value
    return str(refused.value)


def test_pods_that_die_loading_a_model_block_it_until_it_is_registered_again(
    etcd: EtcdProcess, models: ModelSet
) -> None:
    settings = pod_settings(
        etcd=etcd.endpoint,
        namespace=f"crash-{uuid.uuid4().hex[:8]}",
        janitor_interval_s=0.2,
        failure_ttl_s=FAILURE_TTL_S,
        max_load_crashes=2,
        lease_ttl_s=3,  # a pod that left a copy LOADING is taken for dead once missing this long
        publish_interval_s=0.5,
    )
    with PodThread(settings) as pod, MeshClient(pod.target) as api:
        api.register("m", "sklearn", str(models.sklearn))
        expected = joblib.load(models.sklearn).predict(np.array([[5.1, 3.5, 1.4, 0.2]])).tolist()
        _claim(pod, "m", "gone-1")  # no live instance: the janitor finds it died loading the model
        wait_until(
            lambda: any("gone-1 died while loading it" in e for e in api.status("m").errors),
            within_s=10,
            what="the first crash recorded",
        )
        assert infer(pod.target, "m") == expected  # one crash: the model still loads
        _claim(pod, "m", "gone-2")
        wait_until(lambda: bool(api.status("m").errors), within_s=10, what="the second crash recorded")
        status = api.status("m")
        assert status.status == mm.ModelStatusInfo.LOADING_FAILED
        assert status.errors[0].startswith("pods died loading it (gone-1: pod gone-1 died while loading it;")
        assert "pods died loading it" in _refused(pod.target, "m")  # even the copy loaded here

        # Failures expire; the block does not, and no pre-load, ensureLoaded or call loads it.
        wait_until(lambda: len(api.status("m").errors) == 1, within_s=10, what="the failures expiring")
        assert api.status("m").status == mm.ModelStatusInfo.LOADING_FAILED
        api.mm.ensureLoaded(mm.EnsureLoadedRequest(modelId="m", sync=True), timeout=30)
        assert "pods died loading it" in _refused(pod.target, "m")

        cleared = subprocess.run(
            [sys.executable, "-m", "mesh_tools.cli", "clear", "m", "--target", pod.target],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert cleared.returncode == 0, cleared.stderr
        forgotten = r"m: blocked, 2 crash\(es\) and [0-2] load failure\(s\) forgotten; it may load again\n"
        assert re.fullmatch(forgotten, cleared.stdout), cleared.stdout
        assert api.status("m").errors == []
        assert infer(pod.target, "m") == expected

        _claim(pod, "m", "gone-3")  # blocked again, and cleared by registering it again
        _claim(pod, "m", "gone-4")
        wait_until(lambda: bool(api.status("m").errors), within_s=10, what="the model blocked again")
        api.unregister("m")
        api.register("m", "sklearn", str(models.sklearn))
        assert infer(pod.target, "m") == expected


def test_a_pod_restarted_with_its_id_counts_the_load_its_last_life_died_in(
    etcd: EtcdProcess, models: ModelSet
) -> None:
    namespace = f"restart-{uuid.uuid4().hex[:8]}"
    with PodThread(pod_settings(etcd=etcd.endpoint, namespace=namespace, pod_id="pod-a")) as pod:
        MeshClient(pod.target).register("m", "sklearn", str(models.sklearn))
        _claim(pod, "m", "pod-b")
    settings = pod_settings(etcd=etcd.endpoint, namespace=namespace, pod_id="pod-b", janitor_interval_s=60)
    with PodThread(settings) as pod, MeshClient(pod.target) as api:
        record = pod.pod.store.model("m")
        assert record is not None and "pod-b" not in record.copies
        assert [c.what for c in record.crashes] == ["pod pod-b died while loading it"]
        assert api.status("m").errors == ["pod-b: pod pod-b died while loading it"]


def test_trial_load_workers_end_with_their_trial_and_the_fork_server_with_its_pod(
    tmp_path: Path, models: ModelSet
) -> None:
    with PodThread(pod_settings()) as pod:
        MeshClient(pod.target).register("m", "sklearn", str(models.sklearn), load_now=True, sync=True)
        assert pod.pod.probe is not None
        assert pod.pod.probe.workers() == []  # the trial's worker ended with it

    process, target = spawn_pod(tmp_path, "--metrics-port", "-1", "--capacity", "64MiB")
    try:
        MeshClient(target).register("m", "sklearn", str(models.sklearn), load_now=True, sync=True)

        def children() -> list[psutil.Process]:
            return psutil.Process(process.pid).children(recursive=True)

        # The fork server, the spare worker for the next trial and multiprocessing's resource
        # tracker; the trial's worker is gone.
        wait_until(lambda: len(children()) == 3, within_s=30, what="the spare worker starting")
        started = children()
        assert len(started) == 3, [c.cmdline() for c in started]
    finally:
        process.kill()  # no goodbye: the fork server and the spare see their pipes close
        process.wait()
    wait_until(
        lambda: not any(c.is_running() and c.status() != psutil.STATUS_ZOMBIE for c in started),
        within_s=10,
        what="the killed pod's fork server and spare worker ending",
    )
