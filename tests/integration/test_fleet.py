"""Three pod processes on a real etcd behave like one server: any model through any pod,
one load per model, capacity respected, races resolved, dead pods replaced within their lease."""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import joblib
import numpy as np
import pytest
import tritonclient.grpc as tc
from tritonclient.utils import InferenceServerException

from mesh.edge.client import MeshClient
from mesh_proto import model_mesh_pb2 as mm
from mesh_tools import samples
from mesh_tools.fleet import LocalFleet
from tests.conftest import wait_until

LEASE_TTL_S = 3.0
JANITOR_INTERVAL_S = 0.5
CAPACITY = 6 * 2**20
ENV = {
    "MESH_LEASE_TTL_S": str(LEASE_TTL_S),
    "MESH_PUBLISH_INTERVAL_S": "0.2",
    "MESH_JANITOR_INTERVAL_S": str(JANITOR_INTERVAL_S),
}


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    root = tmp_path_factory.mktemp("fleet-models")
    return [samples.sklearn_classifier(root / f"m{i}", features=4, classes=3, seed=i) for i in range(4)]


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[LocalFleet]:
    with LocalFleet(tmp_path, pods=3, capacity=str(CAPACITY), env=ENV) as running:
        yield running


def rows(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).normal(0, 3, size=(2, 4))


def infer(
    client: tc.InferenceServerClient, model_id: str, data: np.ndarray, timeout_s: float = 30
) -> list[int]:
    tensor = tc.InferInput("input-0", list(data.shape), "FP64")
    tensor.set_data_from_numpy(data)
    result = client.infer(model_id, [tensor], client_timeout=timeout_s)
    return result.as_numpy("predict").tolist()  # type: ignore[no-any-return]


def register_all(fleet: LocalFleet, artifacts: list[Path], count: int) -> dict[str, Path]:
    models = {f"model-{i:03d}": artifacts[i % len(artifacts)] for i in range(count)}
    with MeshClient(fleet.targets[0]) as api:
        for model_id, path in models.items():
            api.register(model_id, "sklearn", str(path))
    return models


def fleet_loads(fleet: LocalFleet) -> dict[str, int]:
    loads = {}
    for index, target in enumerate(fleet.targets):
        with MeshClient(target) as api:
            loads[fleet.pod_id(index)] = api.pod_status().loads
    return loads


def test_any_model_through_any_pod_loads_once(fleet: LocalFleet, artifacts: list[Path]) -> None:
    models = register_all(fleet, artifacts, 24)
    expected = {i: joblib.load(path) for i, path in enumerate(artifacts)}
    clients = [tc.InferenceServerClient(target) for target in fleet.targets]
    for n, (model_id, path) in enumerate(models.items()):
        for client in clients:
            data = rows(n)
            want = expected[artifacts.index(path)].predict(data).tolist()
            assert infer(client, model_id, data) == want, (model_id, client)
    for client in clients:
        client.close()
    loads = fleet_loads(fleet)
    assert sum(loads.values()) == len(models), loads  # every model loaded exactly once in the fleet
    assert sum(1 for n in loads.values() if n) >= 2, loads  # and the loads spread over the pods
    with MeshClient(fleet.targets[1]) as api:
        fleet_view = api.fleet_status()
        assert [p.pod_id for p in fleet_view.pods] == ["pod-0", "pod-1", "pod-2"]
        assert fleet_view.models_loaded == len(models) and fleet_view.copies == len(models)
        for model_id in models:
            copies = [c.location for c in api.status(model_id).modelCopyInfos]
            assert len(copies) == 1, (model_id, copies)


def test_capacity_holds_under_more_models_than_fit(fleet: LocalFleet, tmp_path: Path) -> None:
    # ~1.6 MiB models (200 features x 1000 classes): 3 pods x 6 MiB hold about 9 of 30.
    big = [
        samples.sklearn_classifier(tmp_path / f"big{i}", features=200, classes=1000, seed=i) for i in range(3)
    ]
    models = {f"big-{i:02d}": big[i % 3] for i in range(30)}
    with MeshClient(fleet.targets[0]) as api:
        for model_id, path in models.items():
            api.register(model_id, "sklearn", str(path))
    peak: Counter[str] = Counter()
    stop = threading.Event()

    def watch() -> None:
        while not stop.is_set():
            for index, target in enumerate(fleet.targets):
                with MeshClient(target) as api:
                    used = api.pod_status().used_bytes
                peak[fleet.pod_id(index)] = max(peak[fleet.pod_id(index)], used)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        clients = [tc.InferenceServerClient(t) for t in fleet.targets]
        data = np.random.default_rng(0).normal(size=(1, 200))
        for n, model_id in enumerate(models):
            result = infer(clients[n % 3], model_id, data)
            assert len(result) == 1
        for client in clients:
            client.close()
    finally:
        stop.set()
        watcher.join()
    assert peak and all(0 < used <= CAPACITY for used in peak.values()), peak
    with MeshClient(fleet.targets[2]) as api:
        assert sum(1 for p in api.fleet_status().pods if p.used_bytes > CAPACITY) == 0


def test_pods_racing_to_load_one_model_load_it_once(fleet: LocalFleet, artifacts: list[Path]) -> None:
    register_all(fleet, artifacts, 1)
    data = rows(1)
    want = joblib.load(artifacts[0]).predict(data).tolist()
    clients = [tc.InferenceServerClient(t) for t in fleet.targets]
    with ThreadPoolExecutor(24) as pool:
        answers = list(pool.map(lambda i: infer(clients[i % 3], "model-000", data), range(48)))
    assert all(answer == want for answer in answers)
    assert sum(fleet_loads(fleet).values()) == 1
    for client in clients:
        client.close()


def test_unregister_and_vmodel_set_through_two_pods_at_once_never_both_succeed(
    fleet: LocalFleet, artifacts: list[Path]
) -> None:
    """One pod unregisters each model while another sets a vmodel on it: one of the two is refused
    (FAILED_PRECONDITION: in use, or NOT_FOUND: not registered), and afterwards every vmodel that
    exists has its model."""
    models = register_all(fleet, artifacts, 24)

    def unregister(model_id: str) -> str:
        with MeshClient(fleet.targets[1]) as api:
            try:
                api.unregister(model_id)
            except grpc.RpcError as exc:
                return exc.code().name
        return "OK"

    def set_vmodel(model_id: str) -> str:
        with MeshClient(fleet.targets[2]) as api:
            try:
                api.set_vmodel(f"v-{model_id}", model_id)
            except grpc.RpcError as exc:
                return exc.code().name
        return "OK"

    with ThreadPoolExecutor(16) as pool:
        removals, settings = {}, {}
        for model_id in models:
            removals[model_id] = pool.submit(unregister, model_id)
            settings[model_id] = pool.submit(set_vmodel, model_id)
        outcomes = {m: (removals[m].result(), settings[m].result()) for m in models}
    assert set(outcomes.values()) <= {
        ("OK", "NOT_FOUND"),
        ("FAILED_PRECONDITION", "OK"),
        ("FAILED_PRECONDITION", "NOT_FOUND"),  # each saw the other and backed out
    }, outcomes
    with MeshClient(fleet.targets[0]) as api:
        for model_id in models:
            vmodel = api.vmodel_status(f"v-{model_id}")
            model = api.status(model_id)
            if vmodel.status != mm.VModelStatusInfo.NOT_FOUND:
                assert model.status != mm.ModelStatusInfo.NOT_FOUND, (model_id, outcomes[model_id])


def test_unknown_model_type_is_invalid_argument(fleet: LocalFleet) -> None:
    with MeshClient(fleet.targets[1]) as api, pytest.raises(grpc.RpcError) as info:
        api.register("x", "caffe", "/models/x")
    assert info.value.code() is grpc.StatusCode.INVALID_ARGUMENT


def test_killed_pod_calls_retry_elsewhere_and_its_models_come_back(
    fleet: LocalFleet, artifacts: list[Path]
) -> None:
    models = list(register_all(fleet, artifacts, 210))
    predictors = [joblib.load(path) for path in artifacts]
    clients = [tc.InferenceServerClient(t) for t in fleet.targets[:2]]  # callers enter at the survivors
    for n, model_id in enumerate(models):  # load everything, spread over the three pods
        infer(clients[n % 2], model_id, rows(0))
    on_victim = [m for m in models if _holder(fleet, m) == "pod-2"]
    assert on_victim, "placement put nothing on pod-2"

    failures: list[str] = []
    served = Counter[str]()
    stop = threading.Event()

    def traffic(worker: int) -> None:
        rng = np.random.default_rng(worker)
        while not stop.is_set():
            n = int(rng.integers(len(models)))
            data = rows(n)
            try:
                answer = infer(clients[worker % 2], models[n], data, timeout_s=10)
            except InferenceServerException as exc:
                failures.append(f"{models[n]}: {exc}")
                continue
            if answer != predictors[n % len(artifacts)].predict(data).tolist():
                failures.append(f"{models[n]}: wrong answer {answer}")
            served[models[n]] += 1

    workers = [threading.Thread(target=traffic, args=(w,)) for w in range(6)]
    for worker in workers:
        worker.start()
    wait_until(lambda: sum(served.values()) >= 50, within_s=30, what="steady traffic before the kill")
    killed_at = time.monotonic()
    fleet.kill(2)
    # Every call of the dead pod's models has a 10 s deadline: ample for a retry and a load.
    deadline = killed_at + LEASE_TTL_S + 10
    back = {m: False for m in on_victim}
    while not all(back.values()) and time.monotonic() < deadline:
        for model_id in [m for m, ok in back.items() if not ok]:
            n = models.index(model_id)
            back[model_id] = infer(clients[0], model_id, rows(n), timeout_s=10) == (
                predictors[n % len(artifacts)].predict(rows(n)).tolist()
            )
    recovered_s = time.monotonic() - killed_at
    with MeshClient(fleet.targets[0]) as api:  # traffic goes on until the dead pod's lease expires
        wait_until(
            lambda: [p.pod_id for p in api.fleet_status().pods] == ["pod-0", "pod-1"],
            within_s=LEASE_TTL_S + 10,
            what="the dead pod's lease expiry",
        )
    stop.set()
    for worker in workers:
        worker.join()
    for client in clients:
        client.close()
    assert not failures, failures[:5]
    assert all(back.values()), [m for m, ok in back.items() if not ok]
    assert recovered_s < LEASE_TTL_S + 10
    assert sum(served.values()) > 100
    # The dead pod's lease expired: no record names it any more.
    with MeshClient(fleet.targets[0]) as api:
        assert [p.pod_id for p in api.fleet_status().pods] == ["pod-0", "pod-1"]
        stale = [m for m in on_victim if "pod-2" in [c.location for c in api.status(m).modelCopyInfos]]
        assert not stale


def test_restarted_pod_does_not_inherit_phantom_copies(fleet: LocalFleet, artifacts: list[Path]) -> None:
    models = list(register_all(fleet, artifacts, 12))
    with tc.InferenceServerClient(fleet.targets[0]) as client:
        for n, model_id in enumerate(models):
            infer(client, model_id, rows(n))
    held = [m for m in models if _holder(fleet, m) == "pod-1"]
    assert held
    fleet.kill(1)
    fleet.restart(1)  # same id, well within the old lease's TTL
    with MeshClient(fleet.targets[1]) as api:
        assert api.pod_status().loads == 0
        for model_id in held:
            assert "pod-1" not in [c.location for c in api.status(model_id).modelCopyInfos]
    with tc.InferenceServerClient(fleet.targets[1]) as client:
        for model_id in held:
            n = models.index(model_id)
            want = joblib.load(artifacts[n % len(artifacts)]).predict(rows(n)).tolist()
            assert infer(client, model_id, rows(n)) == want


def _holder(fleet: LocalFleet, model_id: str) -> str:
    with MeshClient(fleet.targets[0]) as api:
        copies = [c.location for c in api.status(model_id).modelCopyInfos]
    return copies[0] if copies else ""


def test_graceful_stop_hands_recent_models_to_other_pods(fleet: LocalFleet, artifacts: list[Path]) -> None:
    models = list(register_all(fleet, artifacts, 12))
    with tc.InferenceServerClient(fleet.targets[0]) as client:
        for n, model_id in enumerate(models):
            infer(client, model_id, rows(n))
    leaving = [m for m in models if _holder(fleet, m) == "pod-2"]
    assert leaving
    assert fleet.terminate(2) == 0
    for model_id in leaving:  # already loaded elsewhere: no call had to wait for a load
        assert _holder(fleet, model_id) in ("pod-0", "pod-1"), model_id
    with MeshClient(fleet.targets[0]) as api:
        assert [p.pod_id for p in api.fleet_status().pods] == ["pod-0", "pod-1"]


def test_statistics_and_unload_through_any_pod_cover_the_whole_fleet(
    fleet: LocalFleet, artifacts: list[Path]
) -> None:
    (model_id,) = register_all(fleet, artifacts, 1)
    for target in fleet.targets:  # calls enter at every pod; one pod serves them all
        with tc.InferenceServerClient(target) as client:
            expected = infer(client, model_id, rows(1))
    holder = _holder(fleet, model_id)
    entry = next(i for i in range(fleet.size) if fleet.pod_id(i) != holder)
    with tc.InferenceServerClient(fleet.targets[entry]) as client:
        (stats,) = client.get_inference_statistics(model_id).model_stats
        # Triton's terms: one success per call, one inference per row (2 rows a call).
        assert (stats.inference_stats.success.count, stats.inference_count) == (fleet.size, 2 * fleet.size)
        everything = client.get_inference_statistics().model_stats
        assert [(s.name, s.execution_count) for s in everything] == [(model_id, fleet.size)]
        client.unload_model(model_id)
    holder_index = int(holder.removeprefix("pod-"))
    with MeshClient(fleet.targets[holder_index]) as api:
        assert model_id not in [m.model_id for m in api.pod_status().loaded]
    wait_until(lambda: _holder(fleet, model_id) == "", within_s=5, what="the copy leaving the registry")
    with tc.InferenceServerClient(fleet.targets[entry]) as client:
        assert infer(client, model_id, rows(1)) == expected  # loads again on demand
        with pytest.raises(InferenceServerException, match=r"no-such-model"):
            client.unload_model("no-such-model")


def test_a_model_failing_everywhere_reports_each_pod(fleet: LocalFleet, tmp_path: Path) -> None:
    broken = tmp_path / "broken" / "model.joblib"
    broken.parent.mkdir()
    broken.write_bytes(b"this is not a pickle")
    with MeshClient(fleet.targets[0]) as api:
        api.register("broken", "sklearn", str(broken))
    with (
        tc.InferenceServerClient(fleet.targets[1]) as client,
        pytest.raises(InferenceServerException) as info,
    ):
        infer(client, "broken", rows(0))
    assert "FAILED_PRECONDITION" in str(info.value.status())
    with MeshClient(fleet.targets[2]) as api:
        status = api.status("broken")
    assert status.status == status.LOADING_FAILED
    failed_on = {error.split(":")[0] for error in status.errors}
    assert failed_on == {"pod-0", "pod-1", "pod-2"}, status.errors


def test_killing_the_janitor_pod_hands_the_role_to_another_within_the_lease(fleet: LocalFleet) -> None:
    def janitor(via: int) -> str:
        with MeshClient(fleet.targets[via]) as api:
            return api.fleet_status().janitor

    def rounds(index: int) -> int:
        with MeshClient(fleet.targets[index]) as api:
            return api.pod_status().janitor_rounds

    wait_until(lambda: janitor(0) != "", within_s=10, what="a janitor being elected")
    leader = janitor(0)
    index = int(leader.removeprefix("pod-"))
    survivor = (index + 1) % fleet.size
    # Only the leader does housekeeping, and its pod status counts the rounds it completes.
    done = rounds(index)
    wait_until(lambda: rounds(index) >= done + 2, within_s=10, what="the janitor completing rounds")
    assert rounds(survivor) == 0
    killed_at = time.monotonic()
    fleet.kill(index)
    bound = LEASE_TTL_S + JANITOR_INTERVAL_S + 1.0
    wait_until(
        lambda: janitor(survivor) not in ("", leader), within_s=bound, what="another pod taking the janitor"
    )
    assert time.monotonic() - killed_at <= bound
    successor = janitor(survivor)
    assert successor in {fleet.pod_id(i) for i in range(fleet.size) if i != index}
    wait_until(
        lambda: rounds(int(successor.removeprefix("pod-"))) >= 1, within_s=10, what="the new janitor's rounds"
    )


def test_unregistering_through_any_pod_unloads_every_copy(fleet: LocalFleet, artifacts: list[Path]) -> None:
    """A model unregistered through one pod is not left loaded (and counted) on the pods that held it."""
    with MeshClient(fleet.targets[0]) as api:
        api.register("leaving", "sklearn", str(artifacts[0]))
    for target in fleet.targets:  # a copy wherever the calls land, and at least one
        with tc.InferenceServerClient(target) as client:
            infer(client, "leaving", rows(0))

    def holders() -> list[int]:
        held = []
        for index, target in enumerate(fleet.targets):
            with MeshClient(target) as api:
                if any(m.model_id == "leaving" for m in api.pod_status().loaded):
                    held.append(index)
        return held

    before = holders()
    assert before, "the model was loaded nowhere"
    through = next(i for i in range(len(fleet.targets)) if i != before[0])
    with MeshClient(fleet.targets[through]) as api:
        api.unregister("leaving")
    wait_until(lambda: not holders(), within_s=10, what="every copy of the unregistered model unloading")
