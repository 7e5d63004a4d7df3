"""End to end: stock tritonclient against a real pod; answers equal the frameworks' own."""

from __future__ import annotations

import joblib
import numpy as np
import onnxruntime as ort
import pytest
import torch
import tritonclient.grpc as tc

from tests.conftest import ModelSet, register

ROWS = np.array([[5.1, 3.5, 1.4, 0.2], [6.2, 2.9, 4.3, 1.3], [-1.0, 0.5, 2.0, -3.0]])


def _infer(
    triton: tc.InferenceServerClient,
    model: str,
    name: str,
    array: np.ndarray,
    datatype: str,
    outputs: list[str] | None = None,
    typed: bool = False,
) -> tc.InferResult:
    tensor = tc.InferInput(name, list(array.shape), datatype)
    if typed:
        tensor._input.contents.fp32_contents.extend(
            array.ravel().tolist()
        ) if datatype == "FP32" else tensor._input.contents.fp64_contents.extend(array.ravel().tolist())
    else:
        tensor.set_data_from_numpy(array)
    requested = [tc.InferRequestedOutput(o) for o in outputs] if outputs else None
    return triton.infer(model, [tensor], outputs=requested)


def _tensor(name: str, array: np.ndarray, datatype: str) -> tc.InferInput:
    tensor = tc.InferInput(name, list(array.shape), datatype)
    tensor.set_data_from_numpy(array)
    return tensor


def test_sklearn_predict_and_proba_match_in_process(models: ModelSet, mesh_api, triton) -> None:
    register(mesh_api, "iris", "sklearn", models.sklearn)
    estimator = joblib.load(models.sklearn)

    result = _infer(triton, "iris", "input-0", ROWS, "FP64", outputs=["predict", "predict_proba"])

    np.testing.assert_array_equal(result.as_numpy("predict"), estimator.predict(ROWS))
    np.testing.assert_allclose(result.as_numpy("predict_proba"), estimator.predict_proba(ROWS))
    default = _infer(triton, "iris", "anything", ROWS.astype(np.float32), "FP32")
    assert default.get_response().outputs[0].name == "predict"
    versioned = triton.infer("iris", [_tensor("x", ROWS, "FP64")], model_version="1", request_id="r-7")
    answer = versioned.get_response()  # the answer echoes the name, version and id the caller sent
    assert (answer.model_name, answer.model_version, answer.id) == ("iris", "1", "r-7")
    np.testing.assert_array_equal(default.as_numpy("predict"), estimator.predict(ROWS.astype(np.float32)))


def test_onnx_matches_onnxruntime(models: ModelSet, mesh_api, triton) -> None:
    register(mesh_api, "mlp-onnx", "onnx", models.onnx)
    session = ort.InferenceSession(str(models.onnx))
    data = ROWS.astype(np.float32)
    scores, probs = session.run(["scores", "probs"], {"x": data})

    result = _infer(triton, "mlp-onnx", "x", data, "FP32")

    np.testing.assert_allclose(result.as_numpy("scores"), scores, rtol=1e-6)
    np.testing.assert_allclose(result.as_numpy("probs"), probs, rtol=1e-6)
    metadata = triton.get_model_metadata("mlp-onnx")
    assert [(t.name, t.datatype, list(t.shape)) for t in metadata.inputs] == [("x", "FP32", [-1, 4])]


def test_onnx_typed_contents_match_raw(models: ModelSet, mesh_api, triton) -> None:
    register(mesh_api, "mlp-onnx", "onnx", models.onnx)
    data = ROWS.astype(np.float32)
    raw = _infer(triton, "mlp-onnx", "x", data, "FP32").as_numpy("scores")
    typed = _infer(triton, "mlp-onnx", "x", data, "FP32", typed=True).as_numpy("scores")
    np.testing.assert_array_equal(raw, typed)


def test_torchscript_matches_torch(models: ModelSet, mesh_api, triton) -> None:
    register(mesh_api, "mlp-pt", "pytorch", models.pytorch)
    module = torch.jit.load(str(models.pytorch))
    data = ROWS.astype(np.float32)
    with torch.no_grad():
        expected = module(torch.from_numpy(data)).numpy()

    result = _infer(triton, "mlp-pt", "x", data, "FP32")

    np.testing.assert_allclose(result.as_numpy("output__0"), expected, rtol=1e-6)


@pytest.mark.parametrize("model_type", ["sklearn", "onnx", "pytorch"])
def test_triton_repository_layout_is_found(models: ModelSet, mesh_api, triton, tmp_path, model_type) -> None:
    source = {"sklearn": models.sklearn, "onnx": models.onnx, "pytorch": models.pytorch}[model_type]
    for version in ("1", "3"):
        target = tmp_path / "repo" / "m" / version / f"model{source.suffix}"
        target.parent.mkdir(parents=True)
        target.write_bytes(source.read_bytes())
    register(mesh_api, f"layout-{model_type}", model_type, tmp_path / "repo", load_now=True, sync=True)
    assert triton.is_model_ready(f"layout-{model_type}")
