"""A pod that begins a graceful stop is not ready by every measure at once (gRPC health,
``ServerReady``, ``ModelReady``) while it is still live and still serves, and stays so while it
hands its models over; the pod that stays is ready throughout.

Two real pods share a real etcd. The model the stopping pod hands over loads on the other pod
behind a gate the test holds, so the hand-over (and with it the stop) stays open while the test
asks both pods.
"""

from __future__ import annotations

from pathlib import Path

import grpc
import numpy as np
import tritonclient.grpc as tc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from mesh.edge.client import MeshClient
from mesh_proto import grpc_service_pb2 as v2
from mesh_proto import grpc_service_pb2_grpc as v2_grpc
from mesh_tools.etcd_process import EtcdProcess
from tests.conftest import PodThread, pod_settings, wait_until
from tests.sleepy import gated_model

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def readiness(target: str, model_id: str) -> tuple[int, bool, bool, bool]:
    """What a load balancer can ask a pod: health of ``""``, ServerReady, ModelReady, ServerLive."""
    with grpc.insecure_channel(target) as channel:
        check = health_pb2.HealthCheckRequest(service="")
        health = health_pb2_grpc.HealthStub(channel).Check(check, timeout=10)
        v2_stub = v2_grpc.GRPCInferenceServiceStub(channel)
        server_ready = v2_stub.ServerReady(v2.ServerReadyRequest(), timeout=10).ready
        model_ready = v2_stub.ModelReady(v2.ModelReadyRequest(name=model_id), timeout=10).ready
        live = v2_stub.ServerLive(v2.ServerLiveRequest(), timeout=10).live
    return health.status, server_ready, model_ready, live


def test_a_stopping_pod_is_not_ready_by_any_measure_while_it_hands_over(
    etcd: EtcdProcess, tmp_path: Path
) -> None:
    gate = tmp_path / "gate"
    path = gated_model(tmp_path / "gated", gate)
    common = {"etcd": etcd.endpoint, "namespace": "readiness", "probe_loads": False, "handoff_timeout_s": 30}
    leaving = PodThread(pod_settings(pod_id="pod-a", cache_dir=tmp_path / "a", **common))
    with leaving:
        with MeshClient(leaving.target) as api:  # the only pod: the model loads there
            api.register("gated", "sklearn", str(path), load_now=True, sync=True)
        assert readiness(leaving.target, "gated") == (SERVING, True, True, True)
        with PodThread(pod_settings(pod_id="pod-b", cache_dir=tmp_path / "b", **common)) as staying:
            with MeshClient(leaving.target) as api:
                wait_until(lambda: len(api.fleet_status().pods) == 2, within_s=10, what="pod-a seeing pod-b")
            gate.touch()  # from now on the model's loads wait
            stop = leaving.begin_stop()
            wait_until(
                lambda: staying.pod.cache is not None and staying.pod.cache.loading("gated"),
                within_s=10,
                what="the hand-over's load on pod-b",
            )

            assert readiness(leaving.target, "gated") == (NOT_SERVING, False, False, True)
            health, server_ready, _, live = readiness(staying.target, "gated")
            assert (health, server_ready, live) == (SERVING, True, True)
            with tc.InferenceServerClient(leaving.target) as client:  # not ready, still serving
                rows = tc.InferInput("input-0", [2, 4], "FP64")
                rows.set_data_from_numpy(np.ones((2, 4)))
                answer = client.infer("gated", [rows], client_timeout=10).as_numpy("predict")
            assert answer.tolist() == [0.0, 0.0]
            assert not stop.done()

            gate.unlink()
            stop.result(60)
            assert staying.pod.cache.loaded("gated") is not None
