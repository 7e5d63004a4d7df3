"""The adapters put a model on a GPU only when the framework has one: the choice through its seam,
and the real frameworks on this GPU-less host."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from adapters.onnx import OnnxAdapter, providers
from adapters.pytorch import TorchScriptAdapter, device
from adapters.sklearn import SklearnAdapter
from mesh_tools import samples

ROWS = np.array([[5.1, 3.5, 1.4, 0.2], [6.2, 2.9, 4.3, 1.3]], dtype=np.float32)


def test_onnx_asks_for_cuda_first_only_when_onnxruntime_offers_it() -> None:
    with_gpu = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    assert providers(with_gpu) == ["CUDAExecutionProvider", "CPUExecutionProvider"]
    assert providers(["CPUExecutionProvider"]) == ["CPUExecutionProvider"]
    assert providers(["AzureExecutionProvider", "CPUExecutionProvider"]) == ["CPUExecutionProvider"]
    assert providers([]) == ["CPUExecutionProvider"]  # CPU is always the fallback
    assert providers() == providers(ort.get_available_providers())


def test_torch_loads_onto_cuda_only_when_torch_sees_it() -> None:
    assert device(cuda_available=True) == torch.device("cuda")
    assert device(cuda_available=False) == torch.device("cpu")
    assert device() == device(torch.cuda.is_available())


def test_onnx_model_runs_where_its_session_does(tmp_path: Path) -> None:
    model = OnnxAdapter().load(samples.onnx_mlp(tmp_path))
    expected = "cuda" if providers()[0] == "CUDAExecutionProvider" else "cpu"
    assert model.device == expected  # on this GPU-less host: cpu
    session = ort.InferenceSession(str(tmp_path / "model.onnx"), providers=["CPUExecutionProvider"])
    (scores,) = session.run(["scores"], {"x": ROWS})
    np.testing.assert_allclose(model.infer({"x": ROWS}, ["scores"])["scores"], scores, rtol=1e-6)


def test_torchscript_model_runs_where_torch_puts_it(tmp_path: Path) -> None:
    model = TorchScriptAdapter().load(samples.torchscript_mlp(tmp_path))
    assert model.device == device().type
    outputs = model.infer({"x": ROWS}, [])
    assert outputs["output__0"].shape[0] == len(ROWS)
    assert isinstance(outputs["output__0"], np.ndarray)  # answers come back to host memory


def test_sklearn_models_run_on_the_cpu(tmp_path: Path) -> None:
    assert SklearnAdapter().load(samples.sklearn_classifier(tmp_path)).device == "cpu"
