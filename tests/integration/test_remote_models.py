"""End to end: models stored in S3 (moto) and GCS (emulator), registered with URIs or ModelMesh's
storage keys, served through a real pod to tritonclient; reloads come from the artifact cache."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import grpc
import joblib
import numpy as np
import onnxruntime as ort
import pytest
import torch
import tritonclient.grpc as tc

from mesh_proto import model_mesh_pb2 as mm
from mesh_proto import model_mesh_pb2_grpc as mm_grpc
from tests.conftest import ModelSet, PodThread, pod_settings, register
from tests.storage_servers import SECRET_KEY, GcsServer, S3Server

ROWS = np.array([[5.1, 3.5, 1.4, 0.2], [6.2, 2.9, 4.3, 1.3], [-1.0, 0.5, 2.0, -3.0]])


def _infer(
    client: tc.InferenceServerClient, model: str, name: str, array: np.ndarray, dtype: str
) -> tc.InferResult:
    tensor = tc.InferInput(name, list(array.shape), dtype)
    tensor.set_data_from_numpy(array)
    return client.infer(model, [tensor])


@pytest.fixture
def stores(s3_server: S3Server, gcs_server: GcsServer, models: ModelSet, tmp_path: Path) -> dict[str, str]:
    """A bucket in each store holding the session's models, and a storage-config Secret directory."""
    s3_bucket, gcs_bucket = f"s3-{uuid.uuid4().hex[:10]}", f"gcs-{uuid.uuid4().hex[:10]}"
    s3 = s3_server.client()
    s3.create_bucket(Bucket=s3_bucket)
    s3.upload_file(str(models.sklearn), s3_bucket, "sklearn/iris/model.joblib")
    s3.upload_file(str(models.pytorch), s3_bucket, "torch/mlp/model.pt")
    gcs_server.client().create_bucket(gcs_bucket).blob("onnx/mlp/1/model.onnx").upload_from_filename(
        str(models.onnx)
    )
    secret = tmp_path / "storage-config"
    secret.mkdir()
    (secret / "minio").write_text(json.dumps(s3_server.storage_entry(bucket=s3_bucket)))
    wrong = {
        **s3_server.storage_entry(),
        "access_key_id": "not-our-key",
        "secret_access_key": "wrong-secret-1",
    }
    (secret / "wrong").write_text(json.dumps(wrong))
    return {"s3": s3_bucket, "gcs": gcs_bucket, "config": str(secret)}


def test_models_in_s3_and_gcs_serve_and_reload_without_downloading_again(
    stores: dict[str, str], models: ModelSet, s3_server: S3Server, tmp_path: Path
) -> None:
    settings = pod_settings(
        storage_config=stores["config"], cache_dir=tmp_path / "artifacts", cache_size="1GiB"
    )
    minio = json.dumps({"storage_key": "minio"})
    with PodThread(settings) as pod, grpc.insecure_channel(pod.target) as channel:
        api = mm_grpc.ModelMeshStub(channel)
        register(api, "iris", "sklearn", f"s3://{stores['s3']}/sklearn/iris/model.joblib", key=minio)
        register(api, "mlp-onnx", "onnx", f"gs://{stores['gcs']}/onnx/mlp")
        register(api, "mlp-torch", "pytorch", "torch/mlp/model.pt", key=minio)  # ModelMesh's form
        client = tc.InferenceServerClient(pod.target)
        try:
            answers = {
                "iris": _infer(client, "iris", "input-0", ROWS, "FP64").as_numpy("predict"),
                "onnx": _infer(client, "mlp-onnx", "x", ROWS.astype(np.float32), "FP32").as_numpy("probs"),
                "torch": _infer(client, "mlp-torch", "x", ROWS.astype(np.float32), "FP32").as_numpy(
                    "output__0"
                ),
            }
            for model in ("iris", "mlp-onnx", "mlp-torch"):
                client.unload_model(model)
            reloaded = _infer(client, "iris", "input-0", ROWS, "FP64").as_numpy("predict")
            _infer(client, "mlp-torch", "x", ROWS.astype(np.float32), "FP32")
            _infer(client, "mlp-onnx", "x", ROWS.astype(np.float32), "FP32")
        finally:
            client.close()
        metrics = pod.pod.metrics.registry
    np.testing.assert_array_equal(answers["iris"], joblib.load(models.sklearn).predict(ROWS))
    np.testing.assert_array_equal(reloaded, answers["iris"])
    probs = ort.InferenceSession(str(models.onnx)).run(["probs"], {"x": ROWS.astype(np.float32)})[0]
    np.testing.assert_allclose(answers["onnx"], probs, rtol=1e-6)
    with torch.no_grad():
        expected = torch.jit.load(str(models.pytorch))(torch.from_numpy(ROWS.astype(np.float32))).numpy()
    np.testing.assert_allclose(answers["torch"], expected, rtol=1e-5)
    assert s3_server.gets[f"{stores['s3']}/sklearn/iris/model.joblib"] == 1  # counted at the server
    assert s3_server.gets[f"{stores['s3']}/torch/mlp/model.pt"] == 1
    assert metrics.get_sample_value("mesh_artifact_downloads_total", {"result": "ok"}) == 3
    assert metrics.get_sample_value("mesh_artifact_cache_hits_total") == 3


def test_storage_failures_are_loading_failed_with_reason_and_no_credentials(
    stores: dict[str, str], tmp_path: Path
) -> None:
    settings = pod_settings(storage_config=stores["config"], cache_dir=tmp_path / "artifacts")
    with PodThread(settings) as pod, grpc.insecure_channel(pod.target) as channel:
        api = mm_grpc.ModelMeshStub(channel)
        absent = f"s3://{stores['s3']}/sklearn/absent.joblib"
        missing = register(
            api, "absent", "sklearn", absent, key='{"storage_key": "minio"}', load_now=True, sync=True
        )
        denied_uri = f"s3://{stores['s3']}/sklearn/iris/model.joblib"
        denied = register(
            api, "denied", "sklearn", denied_uri, key='{"storage_key": "wrong"}', load_now=True, sync=True
        )
        unknown = register(
            api, "nokey", "sklearn", denied_uri, key='{"storage_key": "nope"}', load_now=True, sync=True
        )
        with pytest.raises(grpc.RpcError) as leaked:
            register(
                api,
                "leak",
                "sklearn",
                denied_uri,
                key=json.dumps({"storage_params": {"secret_access_key": "x"}}),
            )
        client = tc.InferenceServerClient(pod.target)
        try:
            with pytest.raises(tc.InferenceServerException) as infer_error:
                _infer(client, "absent", "input-0", ROWS, "FP64")
        finally:
            client.close()
        assert (
            api.getModelStatus(mm.GetStatusRequest(modelId="absent")).status
            == mm.ModelStatusInfo.LOADING_FAILED
        )
    assert missing.status == mm.ModelStatusInfo.LOADING_FAILED
    assert "not found" in missing.errors[0] and absent in missing.errors[0]
    assert denied.status == mm.ModelStatusInfo.LOADING_FAILED
    assert "permission denied" in denied.errors[0] and "wrong-secret-1" not in denied.errors[0]
    assert "not-our-key" not in denied.errors[0]
    assert "'nope' is not in the storage config" in unknown.errors[0]
    assert leaked.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "credentials" in leaked.value.details()
    assert "not found" in infer_error.value.message() and SECRET_KEY not in infer_error.value.message()
