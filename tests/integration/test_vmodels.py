"""VModels behave as in ModelMesh: the active model serves until the target is loaded."""

from __future__ import annotations

import grpc
import numpy as np
import pytest
import tritonclient.grpc as tc

from mesh_proto import model_mesh_pb2 as mm
from mesh_tools import samples
from tests.conftest import ModelSet, register

X = np.ones((1, 4), dtype=np.float32)
V = mm.VModelStatusInfo


def _scores(triton, name: str, **kw) -> np.ndarray:
    tensor = tc.InferInput("x", [1, 4], "FP32")
    tensor.set_data_from_numpy(X)
    return triton.infer(name, [tensor], **kw).as_numpy("scores")


def test_vmodel_switches_to_target_once_loaded(models: ModelSet, mesh_api, triton, tmp_path) -> None:
    other = samples.onnx_mlp(tmp_path, seed=99)
    register(mesh_api, "v1", "onnx", models.onnx)
    register(mesh_api, "v2", "onnx", other)
    created = mesh_api.setVModel(mm.SetVModelRequest(vModelId="prod", targetModelId="v1", owner="team-a"))
    assert created.status == V.DEFINED and created.activeModelId == "v1"
    first = _scores(triton, "prod")
    np.testing.assert_array_equal(first, _scores(triton, "v1"))

    moved = mesh_api.setVModel(mm.SetVModelRequest(vModelId="prod", targetModelId="v2", sync=True))
    assert moved.status == V.DEFINED and moved.activeModelId == "v2"
    np.testing.assert_array_equal(_scores(triton, "prod"), _scores(triton, "v2"))
    assert not np.array_equal(_scores(triton, "prod"), first)
    np.testing.assert_array_equal(
        _scores(triton, "x", headers={"mm-vmodel-id": "prod"}), _scores(triton, "v2")
    )


def test_failed_target_keeps_active_serving(models: ModelSet, mesh_api, triton, tmp_path) -> None:
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"nope")
    register(mesh_api, "good", "onnx", models.onnx)
    mesh_api.setVModel(mm.SetVModelRequest(vModelId="svc", targetModelId="good"))
    status = mesh_api.setVModel(
        mm.SetVModelRequest(
            vModelId="svc",
            targetModelId="bad",
            sync=True,
            modelInfo=mm.ModelInfo(type="onnx", path=str(broken)),
        )
    )
    assert status.status == V.TRANSITION_FAILED
    assert status.activeModelId == "good" and status.targetModelId == "bad"
    assert _scores(triton, "svc").shape == (1, 3)


def test_vmodel_rules(models: ModelSet, mesh_api) -> None:
    register(mesh_api, "m1", "onnx", models.onnx)
    mesh_api.setVModel(mm.SetVModelRequest(vModelId="v", targetModelId="m1", owner="alice"))

    with pytest.raises(grpc.RpcError) as info:
        mesh_api.unregisterModel(mm.UnregisterModelRequest(modelId="m1"))
    assert info.value.code() is grpc.StatusCode.FAILED_PRECONDITION
    with pytest.raises(grpc.RpcError) as info:
        mesh_api.setVModel(mm.SetVModelRequest(vModelId="v", targetModelId="m1", owner="bob"))
    assert info.value.code() is grpc.StatusCode.ALREADY_EXISTS
    with pytest.raises(grpc.RpcError) as info:
        mesh_api.setVModel(mm.SetVModelRequest(vModelId="new", targetModelId="m1", updateOnly=True))
    assert info.value.code() is grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.RpcError) as info:
        mesh_api.setVModel(mm.SetVModelRequest(vModelId="v", targetModelId="absent"))
    assert info.value.code() is grpc.StatusCode.NOT_FOUND

    assert mesh_api.getVModelStatus(mm.GetVModelStatusRequest(vModelId="zzz")).status == V.NOT_FOUND
    mesh_api.deleteVModel(mm.DeleteVModelRequest(vModelId="v"))
    assert mesh_api.getVModelStatus(mm.GetVModelStatusRequest(vModelId="v")).status == V.NOT_FOUND
    mesh_api.unregisterModel(mm.UnregisterModelRequest(modelId="m1"))


def test_auto_delete_target_goes_with_its_vmodel(models: ModelSet, mesh_api) -> None:
    mesh_api.setVModel(
        mm.SetVModelRequest(
            vModelId="v",
            targetModelId="owned",
            autoDeleteTargetModel=True,
            modelInfo=mm.ModelInfo(type="onnx", path=str(models.onnx)),
        )
    )
    assert (
        mesh_api.getModelStatus(mm.GetStatusRequest(modelId="owned")).status != mm.ModelStatusInfo.NOT_FOUND
    )
    mesh_api.deleteVModel(mm.DeleteVModelRequest(vModelId="v"))
    assert (
        mesh_api.getModelStatus(mm.GetStatusRequest(modelId="owned")).status == mm.ModelStatusInfo.NOT_FOUND
    )
