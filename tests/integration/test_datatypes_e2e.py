"""Every v2 datatype through a real pod: tritonclient in, an ONNX graph that echoes each tensor, answers out.

The converter tests check each datatype's encoding on its own; here a tensor of each type
goes the whole way (request, signature check, onnxruntime, answer) in ``raw_input_contents``
and in the typed ``contents`` fields, and comes back in ``raw_output_contents`` unchanged.
"""

from __future__ import annotations

from pathlib import Path

import grpc
import numpy as np
import onnx
import pytest
import tritonclient.grpc as tc
from onnx import TensorProto, helper

from mesh_proto import grpc_service_pb2 as v2
from mesh_proto import grpc_service_pb2_grpc as v2_grpc
from tests.conftest import register

# v2 datatype -> (ONNX element type, two rows of values at the type's edges)
ECHOED: dict[str, tuple[int, np.ndarray]] = {
    "BOOL": (TensorProto.BOOL, np.array([[True, False], [False, True]])),
    "INT8": (TensorProto.INT8, np.array([[-128, 127], [0, -1]], np.int8)),
    "INT16": (TensorProto.INT16, np.array([[-32768, 32767], [0, -1]], np.int16)),
    "INT32": (TensorProto.INT32, np.array([[-(2**31), 2**31 - 1], [0, -1]], np.int32)),
    "INT64": (TensorProto.INT64, np.array([[-(2**63), 2**63 - 1], [0, -1]], np.int64)),
    "UINT8": (TensorProto.UINT8, np.array([[0, 255], [1, 128]], np.uint8)),
    "UINT16": (TensorProto.UINT16, np.array([[0, 65535], [1, 32768]], np.uint16)),
    "UINT32": (TensorProto.UINT32, np.array([[0, 2**32 - 1], [1, 2**31]], np.uint32)),
    "UINT64": (TensorProto.UINT64, np.array([[0, 2**64 - 1], [1, 2**63]], np.uint64)),
    "FP16": (TensorProto.FLOAT16, np.array([[0.5, -65504], [65504, 0]], np.float16)),
    "FP32": (TensorProto.FLOAT, np.array([[0.5, -3.4e38], [3.4e38, 1e-38]], np.float32)),
    "FP64": (TensorProto.DOUBLE, np.array([[0.5, -1e300], [1e300, 5e-324]], np.float64)),
    "BYTES": (  # NULs inside and at the end must come through too
        TensorProto.STRING,
        np.array([[b"a\0b", b""], ["\u00fc\u20ac".encode(), b"x y\0"]], dtype=object),
    ),
}


def echo_model(directory: Path, names: list[str]) -> Path:
    """One graph, one ``Identity`` per datatype: input ``in_<TYPE>`` comes back as ``out_<TYPE>``."""
    graph = helper.make_graph(
        [helper.make_node("Identity", [f"in_{n}"], [f"out_{n}"]) for n in names],
        "echo",
        [helper.make_tensor_value_info(f"in_{n}", ECHOED[n][0], ["batch", 2]) for n in names],
        [helper.make_tensor_value_info(f"out_{n}", ECHOED[n][0], ["batch", 2]) for n in names],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "model.onnx"
    onnx.save(model, path)
    return path


TYPED = sorted(set(ECHOED) - {"FP16"})  # v2 has no typed field for FP16: it travels raw only
# The Open Inference Protocol's typed field for each datatype (InferTensorContents).
TYPED_FIELD = {
    "BOOL": "bool_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}


@pytest.fixture
def echo(mesh_api, tmp_path: Path) -> str:
    path = echo_model(tmp_path / "echo", sorted(ECHOED))
    register(mesh_api, "echo", "onnx", path, load_now=True, sync=True)
    return "echo"


@pytest.fixture
def echo_typed(mesh_api, tmp_path: Path) -> str:
    register(mesh_api, "echo-typed", "onnx", echo_model(tmp_path / "typed", TYPED), load_now=True, sync=True)
    return "echo-typed"


def test_metadata_names_every_datatype(echo: str, triton) -> None:
    metadata = triton.get_model_metadata(echo)
    assert {(t.name, t.datatype) for t in metadata.inputs} == {(f"in_{n}", n) for n in ECHOED}
    assert {(t.name, t.datatype) for t in metadata.outputs} == {(f"out_{n}", n) for n in ECHOED}


def test_raw_contents_come_back_unchanged(echo: str, triton) -> None:
    tensors = []
    for datatype, (_, values) in ECHOED.items():
        tensor = tc.InferInput(f"in_{datatype}", list(values.shape), datatype)
        tensor.set_data_from_numpy(values)
        tensors.append(tensor)

    result = triton.infer(echo, tensors)

    answer = result.get_response()
    assert len(answer.raw_output_contents) == len(ECHOED)  # every answer in raw contents
    assert all(not o.HasField("contents") for o in answer.outputs)
    for datatype, (_, values) in ECHOED.items():
        output = result.get_output(f"out_{datatype}")
        assert (output.datatype, list(output.shape)) == (datatype, list(values.shape)), datatype
        echoed = result.as_numpy(f"out_{datatype}")
        assert echoed.dtype == values.dtype, datatype
        np.testing.assert_array_equal(echoed, values, err_msg=datatype)


def test_typed_contents_come_back_as_raw(echo_typed: str, pod) -> None:
    request = v2.ModelInferRequest(model_name=echo_typed)
    for datatype in TYPED:
        values = ECHOED[datatype][1]
        tensor = request.inputs.add(name=f"in_{datatype}", datatype=datatype, shape=values.shape)
        getattr(tensor.contents, TYPED_FIELD[datatype]).extend(values.ravel().tolist())

    with grpc.insecure_channel(pod.target) as channel:
        answer = v2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request, timeout=30)

    assert len(answer.raw_output_contents) == len(TYPED) == len(answer.outputs)
    for output, raw in zip(answer.outputs, answer.raw_output_contents, strict=True):
        datatype = output.name.removeprefix("out_")
        values = ECHOED[datatype][1]
        assert (output.datatype, list(output.shape)) == (datatype, list(values.shape)), datatype
        assert not output.HasField("contents"), datatype
        np.testing.assert_array_equal(_decode(raw, datatype, values.shape), values, err_msg=datatype)


def _decode(raw: bytes, datatype: str, shape: tuple[int, ...]) -> np.ndarray:
    if datatype != "BYTES":
        return np.frombuffer(raw, ECHOED[datatype][1].dtype).reshape(shape)
    items, offset = [], 0
    while offset < len(raw):
        size = int.from_bytes(raw[offset : offset + 4], "little")
        items.append(raw[offset + 4 : offset + 4 + size])
        offset += 4 + size
    return np.array(items, dtype=object).reshape(shape)


def test_bytes_that_are_not_utf8_are_refused_for_an_onnx_string_input(mesh_api, pod, tmp_path: Path) -> None:
    """onnxruntime takes strings as text only: the pod names the element instead of garbling it."""
    register(mesh_api, "echo-bytes", "onnx", echo_model(tmp_path / "b", ["BYTES"]), load_now=True, sync=True)
    request = v2.ModelInferRequest(model_name="echo-bytes")
    request.inputs.add(name="in_BYTES", datatype="BYTES", shape=[1, 2])
    request.raw_input_contents.append(b"\2\0\0\0ok\1\0\0\0\x80")

    with grpc.insecure_channel(pod.target) as channel, pytest.raises(grpc.RpcError) as info:
        v2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request, timeout=30)

    assert info.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "input 'in_BYTES': element 1 is not UTF-8 text" in info.value.details()
