"""A model that fails on a call is reported for what happened, and the pod and the model serve on.

The models are real and misbehave for real: an ONNX graph and a TorchScript module that
allocate a tensor whose shape the caller sends (a shape no machine can hold gets the
framework's own allocation failure), and a TorchScript module that answers complex numbers,
which no v2 datatype carries.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import tritonclient.grpc as tc
from tritonclient.utils import InferenceServerException

from mesh_proto import model_mesh_pb2 as mm
from tests.conftest import register

HUGE = np.array([10**7, 10**7], dtype=np.int64)
"""10^14 elements: more memory than any machine has, so the allocation fails at once."""


def _onnx_allocator(directory: Path) -> Path:
    """``zeros = ConstantOfShape(shape)``: the output's shape is the input's values."""
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("ConstantOfShape", ["shape"], ["zeros"])],
        "allocate",
        [helper.make_tensor_value_info("shape", TensorProto.INT64, [2])],
        [helper.make_tensor_value_info("zeros", TensorProto.FLOAT, None)],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    directory.mkdir(parents=True)
    path = directory / "model.onnx"
    onnx.save(model, str(path))
    return path


class _Allocator(torch.nn.Module):
    def forward(self, shape: torch.Tensor) -> torch.Tensor:
        return torch.zeros([int(shape[0]), int(shape[1])])


class _Complex(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.complex(x, x)


def _torchscript(directory: Path, module: torch.nn.Module) -> Path:
    directory.mkdir(parents=True)
    path = directory / "model.pt"
    torch.jit.save(torch.jit.script(module), str(path))
    return path


def _torch_allocator(directory: Path) -> Path:
    return _torchscript(directory, _Allocator())


def _call(triton, model: str, name: str, array: np.ndarray, datatype: str) -> np.ndarray:
    tensor = tc.InferInput(name, list(array.shape), datatype)
    tensor.set_data_from_numpy(array)
    result = triton.infer(model, [tensor])
    (output,) = result.get_response().outputs
    return result.as_numpy(output.name)


def _refused(triton, model: str, name: str, array: np.ndarray, datatype: str) -> InferenceServerException:
    with pytest.raises(InferenceServerException) as info:
        _call(triton, model, name, array, datatype)
    return info.value


@pytest.mark.parametrize(
    ("model_type", "build", "shape", "reason"),
    [
        ("onnx", _onnx_allocator, HUGE, "onnxruntime could not allocate memory (std::bad_alloc)"),
        ("pytorch", _torch_allocator, HUGE, "torch could not allocate 400,000,000,000,000 bytes"),
    ],
)
def test_out_of_memory_is_resource_exhausted_and_the_model_serves_on(
    model_type, build, shape, reason, tmp_path, mesh_api, triton
) -> None:
    register(mesh_api, "allocator", model_type, build(tmp_path / "allocator"), load_now=True, sync=True)
    small = np.array([2, 3], dtype=np.int64)
    assert np.array_equal(_call(triton, "allocator", "shape", small, "INT64"), np.zeros((2, 3)))

    error = _refused(triton, "allocator", "shape", shape, "INT64")
    assert str(error.status()) == "StatusCode.RESOURCE_EXHAUSTED"
    assert error.message() == f"the model ran out of memory on this request: {reason}"

    assert np.array_equal(_call(triton, "allocator", "shape", small, "INT64"), np.zeros((2, 3)))
    status = mesh_api.getModelStatus(mm.GetStatusRequest(modelId="allocator"), timeout=30)
    assert status.status == mm.ModelStatusInfo.LOADED


def test_an_output_no_v2_datatype_carries_is_the_model_at_fault(tmp_path, mesh_api, triton) -> None:
    register(mesh_api, "complex", "pytorch", _torchscript(tmp_path / "complex", _Complex()), load_now=True)
    x = np.ones((2, 3), dtype=np.float32)

    error = _refused(triton, "complex", "x", x, "FP32")
    assert str(error.status()) == "StatusCode.FAILED_PRECONDITION"
    assert error.message() == (
        "the model's output 'output__0' is numpy complex64, which no v2 datatype can carry; "
        "the model cannot be served as it is"
    )
    status = mesh_api.getModelStatus(mm.GetStatusRequest(modelId="complex"), timeout=30)
    assert status.status == mm.ModelStatusInfo.LOADED
