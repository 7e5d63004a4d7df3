"""Placement on a real fleet (etcd and 3 pod processes): copies follow traffic, and a tenant over
its loaded-bytes cap pays with its own models, never another tenant's."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
import tritonclient.grpc as tc

from mesh.edge.client import MeshClient
from mesh_tools import samples
from mesh_tools.fleet import LocalFleet
from tests.conftest import wait_until

CAPACITY = 6 * 2**20
ENV = {
    "MESH_LEASE_TTL_S": "3",
    "MESH_PUBLISH_INTERVAL_S": "0.2",
    "MESH_JANITOR_INTERVAL_S": "0.5",
    "MESH_COPY_UP_RATE": "15",
    "MESH_COPY_DOWN_RATE": "3",
    "MESH_COPY_COOLDOWN_S": "1",
    "MESH_PRELOADS_PER_ROUND": "0",  # nothing loads behind the tests' backs
}


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[LocalFleet]:
    with LocalFleet(tmp_path, pods=3, capacity=str(CAPACITY), env=ENV) as running:
        yield running


@pytest.fixture
def slow_records(tmp_path: Path) -> Iterator[LocalFleet]:
    """A fleet whose pods republish their records at most every 1.5 s: what each pod's record says
    about its room lags well behind the loads placed on it."""
    env = ENV | {"MESH_PUBLISH_INTERVAL_S": "1.5", "MESH_LEASE_TTL_S": "10"}
    with LocalFleet(tmp_path, pods=3, capacity=str(CAPACITY), env=env) as running:
        yield running


def call(client: tc.InferenceServerClient, model_id: str, features: int) -> None:
    tensor = tc.InferInput("input-0", [1, features], "FP64")
    tensor.set_data_from_numpy(np.zeros((1, features)))
    result = client.infer(model_id, [tensor], client_timeout=30)
    assert result.as_numpy("predict").shape == (1,)


def janitor_rounds(fleet: LocalFleet) -> int:
    """Housekeeping rounds completed by the fleet's janitors, all pods together."""
    total = 0
    for target in fleet.targets:
        with MeshClient(target) as pod:
            total += pod.pod_status().janitor_rounds
    return total


def loaded_on(api: MeshClient, model_id: str) -> set[str]:
    return {c.pod_id for c in api.describe(model_id).copies if c.state == "LOADED"}


def test_a_hot_model_gains_a_copy_under_load_and_loses_it_when_traffic_stops(
    fleet: LocalFleet, tmp_path: Path
) -> None:
    path = samples.sklearn_classifier(tmp_path / "hot", features=4, classes=3)
    api = MeshClient(fleet.targets[1])
    api.register("hot", "sklearn", str(path), key=json.dumps({"max_copies": 2}), load_now=True, sync=True)
    assert len(loaded_on(api, "hot")) == 1
    stop = threading.Event()
    errors: list[BaseException] = []

    def traffic() -> None:  # about 60 calls/s through pod-0: above 15 per copy on one or two copies
        client = tc.InferenceServerClient(fleet.targets[0])
        try:
            while not stop.is_set():
                call(client, "hot", 4)
                stop.wait(1 / 30)
        except BaseException as exc:
            errors.append(exc)
        finally:
            client.close()

    senders = [threading.Thread(target=traffic) for _ in range(2)]
    for sender in senders:
        sender.start()
    try:
        wait_until(lambda: len(loaded_on(api, "hot")) == 2, within_s=20, what="a second copy under load")
        # max_copies 2 holds although each copy still serves more than 15 calls/s: the janitor plans
        # copies every round, and two whole rounds with both copies busy add none (not even loading).
        start = janitor_rounds(fleet)
        wait_until(lambda: janitor_rounds(fleet) >= start + 3, within_s=20, what="two more janitor rounds")
        assert len(api.describe("hot").copies) == 2
    finally:
        stop.set()
        for sender in senders:
            sender.join()
    assert not errors, errors
    detail = api.describe("hot")
    added = [c for c in detail.copies if c.why.startswith("added by the janitor")]
    assert len(added) == 1 and "req/s per copy" in added[0].why, [c.why for c in detail.copies]
    wait_until(lambda: len(loaded_on(api, "hot")) == 1, within_s=25, what="the extra copy dropped when idle")
    # The pod that dropped its copy records the janitor's reason with the unload, as one event.
    (dropped,) = [e for e in api.describe("hot").history if e.what.startswith("unloaded")]
    assert dropped.what.startswith("unloaded: copy dropped by the janitor: ") and "req/s" in dropped.what
    api.close()


def test_a_tenant_over_its_loaded_bytes_cap_evicts_its_own_models_not_another_tenants(
    slow_records: LocalFleet, tmp_path: Path
) -> None:
    fleet = slow_records
    # ~1.6 MiB models: 3 pods x 6 MiB hold 9. Quiet's 4 plus noisy's 10 would not fit, and
    # noisy's newer loads would push quiet's models out; noisy's cap keeps it to 3 loaded.
    big = [
        samples.sklearn_classifier(tmp_path / f"big{i}", features=200, classes=1000, seed=i) for i in range(3)
    ]
    api = MeshClient(fleet.targets[0])
    clients = [tc.InferenceServerClient(t) for t in fleet.targets]
    quiet = [f"quiet-{i}" for i in range(4)]
    noisy = [f"noisy-{i:02d}" for i in range(10)]
    for n, model_id in enumerate(quiet):
        api.register(model_id, "sklearn", str(big[n % 3]), key=json.dumps({"tenant": "quiet"}))
        call(clients[n % 3], model_id, 200)
    size = api.describe("quiet-0").size_bytes
    assert size > 2**20
    cap = int(3.5 * size)
    status = api.set_tenant("noisy", max_models=10, max_loaded_bytes=cap)
    assert (status.max_models, status.max_loaded_bytes) == (10, cap)
    placed = {model_id: loaded_on(api, model_id) for model_id in quiet}
    assert all(len(pods) == 1 for pods in placed.values()), placed
    # Calls enter at every pod in turn, back to back: each entry pod must see the loads the
    # others just placed (before their pods republish their records) or a pod that just filled
    # looks roomy, gets the next load, and evicts a quiet model by plain GDSF.
    for n, model_id in enumerate(noisy):
        api.register(model_id, "sklearn", str(big[n % 3]), key=json.dumps({"tenant": "noisy"}))
        call(clients[n % 3], model_id, 200)

    tenants = {t.tenant: t for t in api.tenants().tenants}
    assert tenants["noisy"].models_registered == 10
    assert 0 < tenants["noisy"].loaded_bytes <= cap, tenants["noisy"]
    assert {model_id: loaded_on(api, model_id) for model_id in quiet} == placed  # none evicted, none moved
    unloaded = [e.what for m in noisy for e in api.describe(m).history if "loaded-bytes cap" in e.what]
    assert len(unloaded) >= 6, unloaded
    with pytest.raises(grpc.RpcError) as refused:
        api.register("noisy-10", "sklearn", str(big[0]), key=json.dumps({"tenant": "noisy"}))
    assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    details = refused.value.details() or ""
    assert "tenant 'noisy'" in details and "cap is 10" in details, details
    for client in clients:
        client.close()
    api.close()
