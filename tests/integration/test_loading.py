"""Single-flight loads, explicit load/unload, statistics, streaming and the repository index."""

from __future__ import annotations

import asyncio
import queue
from concurrent.futures import ThreadPoolExecutor

import grpc
import numpy as np
import tritonclient.grpc as tc

from mesh.edge.peers import PeerClient
from mesh_proto import mesh_admin_pb2 as admin
from mesh_proto import mesh_admin_pb2_grpc as admin_grpc
from mesh_proto import model_mesh_pb2 as mm
from tests.conftest import ModelSet, register, wait_until

X = np.ones((1, 4), dtype=np.float32)


def _x() -> tc.InferInput:
    tensor = tc.InferInput("x", [1, 4], "FP32")
    tensor.set_data_from_numpy(X)
    return tensor


def test_hundred_concurrent_calls_cause_one_load(models: ModelSet, mesh_api, pod, channel) -> None:
    register(mesh_api, "cold", "pytorch", models.pytorch)

    def call(_: int) -> np.ndarray:
        client = tc.InferenceServerClient(pod.target)
        try:
            return client.infer("cold", [_x()]).as_numpy("output__0")
        finally:
            client.close()

    with ThreadPoolExecutor(100) as threads:
        results = list(threads.map(call, range(100)))

    assert all(np.array_equal(r, results[0]) for r in results)
    status = admin_grpc.MeshAdminStub(channel).PodStatus(admin.PodStatusRequest())
    assert status.loads == 1


def test_ensure_loaded_unload_and_status(models: ModelSet, mesh_api, triton) -> None:
    register(mesh_api, "m", "onnx", models.onnx)
    assert not triton.is_model_ready("m")
    loaded = mesh_api.ensureLoaded(mm.EnsureLoadedRequest(modelId="m", sync=True))
    assert loaded.status == mm.ModelStatusInfo.LOADED
    assert [c.location for c in loaded.modelCopyInfos] == ["pod-a"]
    assert triton.is_model_ready("m")

    triton.unload_model("m")
    assert not triton.is_model_ready("m")
    assert mesh_api.getModelStatus(mm.GetStatusRequest(modelId="m")).status == mm.ModelStatusInfo.NOT_LOADED
    triton.load_model("m")
    assert triton.is_model_ready("m")

    with_index = {m.name: m.state for m in triton.get_model_repository_index().models}
    assert with_index == {"m": "READY"}
    with __import__("pytest").raises(grpc.RpcError) as info:
        mesh_api.ensureLoaded(mm.EnsureLoadedRequest(modelId="unknown"))
    assert info.value.code() is grpc.StatusCode.NOT_FOUND

    mesh_api.unregisterModel(mm.UnregisterModelRequest(modelId="m"))
    assert mesh_api.getModelStatus(mm.GetStatusRequest(modelId="m")).status == mm.ModelStatusInfo.NOT_FOUND
    assert not triton.is_model_ready("m")


def test_a_peer_dropping_this_pods_copy_says_why_in_the_same_history_event(
    models: ModelSet, mesh_api, pod, channel
) -> None:
    register(mesh_api, "m", "onnx", models.onnx, load_now=True, sync=True)
    why = "copy dropped by the janitor: 0.0 req/s on 'modèle'"  # not ASCII: sent as UTF-8 bytes

    async def drop() -> None:
        peers = PeerClient("pod-z", max_message_bytes=1 << 20)
        try:
            await peers.unload(pod.target, model_id="m", timeout_s=10, why=why)
        finally:
            await peers.close()

    asyncio.run(drop())
    detail = admin_grpc.MeshAdminStub(channel).DescribeModel(admin.DescribeModelRequest(model_id="m"))
    assert not detail.copies
    assert [e.what for e in detail.history][-1] == f"unloaded: {why}"


def test_statistics_count_calls(models: ModelSet, mesh_api, triton) -> None:
    register(mesh_api, "m", "onnx", models.onnx)
    for _ in range(3):
        triton.infer("m", [_x()])
    stats = triton.get_inference_statistics("m").model_stats[0]
    assert stats.name == "m"
    assert stats.inference_stats.success.count == 3
    assert stats.execution_count == 3 and stats.last_inference > 0


def test_an_unregistered_model_leaves_no_statistics_behind(models: ModelSet, mesh_api, triton) -> None:
    """A pod keeps counts for the models registered, not for every model it ever served."""
    for model_id in ("kept", "gone"):
        register(mesh_api, model_id, "onnx", models.onnx)
        triton.infer(model_id, [_x()])
    assert {s.name for s in triton.get_inference_statistics().model_stats} == {"kept", "gone"}
    mesh_api.unregisterModel(mm.UnregisterModelRequest(modelId="gone"), timeout=30)
    wait_until(
        lambda: {s.name for s in triton.get_inference_statistics().model_stats} == {"kept"},
        within_s=10,
        what="the unregistered model's statistics going",
    )


def test_stream_infer_answers_and_reports_errors(models: ModelSet, mesh_api, triton) -> None:
    register(mesh_api, "m", "onnx", models.onnx)
    answers: queue.Queue = queue.Queue()
    triton.start_stream(callback=lambda result, error: answers.put((result, error)))
    triton.async_stream_infer("m", [_x()])
    triton.async_stream_infer("absent", [_x()])
    first = answers.get(timeout=30)
    second = answers.get(timeout=30)
    triton.stop_stream()
    results = sorted([first, second], key=lambda r: r[1] is not None)
    assert results[0][0].as_numpy("scores").shape == (1, 3)
    assert "absent" in str(results[1][1])


def test_routing_metadata_wins_over_model_name(models: ModelSet, mesh_api, triton) -> None:
    register(mesh_api, "real", "onnx", models.onnx)
    result = triton.infer("ignored", [_x()], headers={"mm-model-id": "real"})
    assert result.as_numpy("scores").shape == (1, 3)


def test_concurrent_calls_to_one_model_each_get_their_own_answer(models: ModelSet, mesh_api, pod) -> None:
    import joblib

    register(mesh_api, "iris", "sklearn", models.sklearn, load_now=True, sync=True)
    estimator = joblib.load(models.sklearn)
    rows = [np.random.default_rng(i).normal(0, 3, size=(1 + i % 3, 4)) for i in range(64)]

    def call(x: np.ndarray) -> np.ndarray:
        tensor = tc.InferInput("input-0", list(x.shape), "FP64")
        tensor.set_data_from_numpy(x)
        client = tc.InferenceServerClient(pod.target)
        try:
            return client.infer(
                "iris", [tensor], outputs=[tc.InferRequestedOutput("predict_proba")]
            ).as_numpy("predict_proba")
        finally:
            client.close()

    with ThreadPoolExecutor(32) as threads:
        answers = list(threads.map(call, rows))
    for x, answer in zip(rows, answers, strict=True):
        np.testing.assert_allclose(answer, estimator.predict_proba(x))
