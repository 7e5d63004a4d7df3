"""Every v2 datatype through a real pod: tritonclient in, an ONNX graph that echoes each tensor, answers out.

The converter tests check each datatype's encoding on its own; here a tensor of each type
goes the whole way (request, signature check, onnxruntime, answer) in ``raw_input_contents``
and in the typed ``contents`` fields, and comes back in ``raw_output_contents`` unchanged.
"""

from __future__ import annotations

from pathlib import Path

import grpc
import numpy as np
import pytest
import tritonclient.grpc as tc

from mesh_proto import grpc_service_pb2 as v2
from mesh_proto import grpc_service_pb2_grpc as v2_grpc
from tests.conftest import register
from tests.integration.echo_model import ECHOED, TYPED_FIELD, echo_model

TYPED = sorted(set(ECHOED) - {"FP16"})  # v2 has no typed field for FP16: it travels raw only


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
