"""An artifact that one pod cannot read (its claim holds other files there) is a failed load on
that pod, whichever pod the call entered: the next try goes to a pod that can read it, and the
model is ``LOADING_FAILED`` only once every try failed, with each pod's reason. Two real pods on
a real etcd, each with a PVC mount root of its own."""

from __future__ import annotations

import shutil
from pathlib import Path

import grpc
import numpy as np
import pytest

from mesh.edge.client import MeshClient
from mesh.settings import MeshSettings
from mesh_proto import model_mesh_pb2 as mm
from mesh_tools import samples
from mesh_tools.etcd_process import EtcdProcess
from tests.conftest import PodThread, pod_settings, wait_until

SMALL = 512 * 1024
"""pod-b's capacity: a model there leaves it less room than the empty pod-a, so placement
chooses pod-a, the pod that entered the call, first."""


def test_an_artifact_the_entry_pod_cannot_read_loads_on_a_pod_that_can(
    etcd: EtcdProcess, tmp_path: Path
) -> None:
    model = samples.sklearn_classifier(tmp_path / "source")
    roots = {pod: tmp_path / f"pvc-{pod}" for pod in ("pod-a", "pod-b")}
    for root in roots.values():
        (root / "models").mkdir(parents=True)
    for name in ("m.joblib", "filler.joblib"):  # only pod-b's mount of the claim holds them
        shutil.copy(model, roots["pod-b"] / "models" / name)

    def settings(pod_id: str, capacity_bytes: int) -> MeshSettings:
        return pod_settings(
            etcd=etcd.endpoint,
            namespace="artifact-per-pod",
            pod_id=pod_id,
            pvc_root=roots[pod_id],
            capacity_bytes=capacity_bytes,
            preloads_per_round=0,
        )

    with PodThread(settings("pod-b", SMALL)) as b:
        with MeshClient(b.target) as through_b:  # pod-b is alone: the filler loads there
            filler = through_b.register(
                "filler", "sklearn", "pvc://models/filler.joblib", load_now=True, sync=True
            )
            assert filler.status == mm.ModelStatusInfo.LOADED
        with PodThread(settings("pod-a", 256 * 2**20)) as a, MeshClient(a.target) as api:
            wait_until(
                lambda: {c.pod_id for c in api.describe("filler").copies} == {"pod-b"},
                within_s=10,
                what="pod-a seeing the filler loaded on pod-b",
            )
            api.register("m", "sklearn", "pvc://models/m.joblib")
            scores = api.infer("m", {"input-0": np.zeros((2, 4))})["predict"]
            assert scores.shape == (2,)
            detail = api.describe("m")
            # Served from pod-b; pod-a's failure is on record, with its reason.
            assert {(c.pod_id, c.state) for c in detail.copies} == {
                ("pod-b", "LOADED"),
                ("pod-a", "LOADING_FAILED"),
            }
            events = [(e.pod_id, e.what) for e in detail.history]
            # pod-a was tried first and could not read it; pod-b loaded it.
            assert events[0][0] == "pod-a" and events[0][1].startswith("load failed: artifact not found"), (
                events
            )
            assert events[-1][0] == "pod-b" and events[-1][1].startswith("loaded in"), events
            assert api.status("m").status == mm.ModelStatusInfo.LOADED

            api.register("nowhere", "sklearn", "pvc://models/nowhere.joblib")
            with pytest.raises(grpc.RpcError) as failed:
                api.infer("nowhere", {"input-0": np.zeros((2, 4))})
            assert failed.value.code() is grpc.StatusCode.FAILED_PRECONDITION
            message = failed.value.details()
            assert "model 'nowhere' failed to load: " in message, message
            for pod in ("pod-a", "pod-b"):
                assert f"{pod}: artifact not found: pvc://models/nowhere.joblib" in message, message
            status = api.status("nowhere")
            assert status.status == mm.ModelStatusInfo.LOADING_FAILED
            assert len(status.errors) == 2 and all("artifact not found" in e for e in status.errors), status
