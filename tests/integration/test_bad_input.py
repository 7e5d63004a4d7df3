"""Every kind of bad input gets a precise status and reason, and the pod keeps serving."""

from __future__ import annotations

import grpc
import numpy as np
import pytest
import tritonclient.grpc as tc
from tritonclient.utils import InferenceServerException

from mesh_proto import grpc_service_pb2 as v2
from mesh_proto import grpc_service_pb2_grpc as v2_grpc
from mesh_proto import model_mesh_pb2 as mm
from tests.conftest import ModelSet, PodThread, pod_settings, register

X = np.ones((2, 4), dtype=np.float32)


def _code(exc: InferenceServerException) -> str:
    return str(exc.status())


def _x(name: str = "x", array: np.ndarray = X, datatype: str = "FP32") -> tc.InferInput:
    tensor = tc.InferInput(name, list(array.shape), datatype)
    tensor.set_data_from_numpy(array)
    return tensor


@pytest.fixture
def onnx_model(models: ModelSet, mesh_api) -> str:
    register(mesh_api, "m", "onnx", models.onnx)
    return "m"


def test_unknown_model_is_not_found(triton) -> None:
    with pytest.raises(InferenceServerException) as info:
        triton.infer("nope", [_x()])
    assert _code(info.value) == "StatusCode.NOT_FOUND"
    assert "nope" in info.value.message()


@pytest.mark.parametrize(
    ("tensor", "reason"),
    [
        (lambda: _x(name="y"), "unexpected input(s) 'y'"),
        (lambda: _x(array=X.astype(np.float64), datatype="FP64"), "expected datatype FP32, got FP64"),
        (lambda: _x(array=np.ones((2, 5), np.float32)), "expected shape [-1, 4], got [2, 5]"),
    ],
)
def test_wrong_name_dtype_or_shape_is_invalid_argument(onnx_model, triton, tensor, reason) -> None:
    with pytest.raises(InferenceServerException) as info:
        triton.infer(onnx_model, [tensor()])
    assert _code(info.value) == "StatusCode.INVALID_ARGUMENT"
    assert reason in info.value.message()


def test_unknown_output_is_invalid_argument(onnx_model, triton) -> None:
    with pytest.raises(InferenceServerException) as info:
        triton.infer(onnx_model, [_x()], outputs=[tc.InferRequestedOutput("logits")])
    assert _code(info.value) == "StatusCode.INVALID_ARGUMENT"
    assert "'logits'" in info.value.message() and "'scores'" in info.value.message()


def _raw_call(channel: grpc.Channel, request: v2.ModelInferRequest) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        v2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request, timeout=30)
    return info.value


def test_byte_length_mismatch_and_missing_input(onnx_model, channel) -> None:
    short = v2.ModelInferRequest(model_name=onnx_model, raw_input_contents=[b"\0" * 12])
    short.inputs.add(name="x", datatype="FP32", shape=[2, 4])
    error = _raw_call(channel, short)
    assert error.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "needs 32 bytes, got 12" in error.details()

    empty = v2.ModelInferRequest(model_name=onnx_model)
    error = _raw_call(channel, empty)
    assert error.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "missing input(s) 'x'" in error.details()


@pytest.mark.parametrize(
    ("mutate", "reason"),
    [
        (lambda r: r.inputs.add(name="x", datatype="FLOAT", shape=[1, 4]), "unknown datatype 'FLOAT'"),
        (lambda r: r.inputs.add(name="x", datatype="FP32", shape=[-1, 4]), "negative dimension"),
        (lambda r: r.inputs.add(name="x", datatype="FP16", shape=[1, 4]), "FP16 has no typed contents"),
        (
            lambda r: r.inputs.add(name="x", datatype="INT8", shape=[1]).contents.int_contents.append(300),
            "does not fit INT8",
        ),
        (
            lambda r: r.inputs.add(name="x", datatype="FP32", shape=[1, 4]).contents.fp32_contents.extend(
                [1.0]
            ),
            "needs 4 FP32 values, got 1",
        ),
    ],
)
def test_malformed_tensors(onnx_model, channel, mutate, reason) -> None:
    request = v2.ModelInferRequest(model_name=onnx_model)
    mutate(request)
    error = _raw_call(channel, request)
    assert error.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert reason in error.details()


def test_raw_and_typed_together_and_bad_bytes(onnx_model, channel) -> None:
    both = v2.ModelInferRequest(model_name=onnx_model, raw_input_contents=[b"\0" * 16])
    both.inputs.add(name="x", datatype="FP32", shape=[1, 4]).contents.fp32_contents.extend([1, 2, 3, 4])
    assert "not both" in _raw_call(channel, both).details()

    truncated = v2.ModelInferRequest(model_name=onnx_model, raw_input_contents=[b"\x05\0\0\0ab"])
    truncated.inputs.add(name="x", datatype="BYTES", shape=[1])
    error = _raw_call(channel, truncated)
    assert error.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "runs past the end" in error.details()


def test_garbage_bytes_do_not_crash_the_pod(onnx_model, channel, triton) -> None:
    call = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")
    with pytest.raises(grpc.RpcError) as info:
        call(b"\xff\xfe\xfd garbage that is not protobuf", timeout=10)
    assert info.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "not a valid inference.ModelInferRequest" in info.value.details()
    assert triton.infer(onnx_model, [_x()]).as_numpy("scores").shape == (2, 3)


def test_corrupt_and_missing_artifacts_fail_to_load_and_the_pod_serves_on(
    models: ModelSet, mesh_api, triton, tmp_path
) -> None:
    corrupt = tmp_path / "corrupt.onnx"
    corrupt.write_bytes(b"this is not an onnx graph")
    status = register(mesh_api, "corrupt", "onnx", corrupt, load_now=True, sync=True)
    assert status.status == mm.ModelStatusInfo.LOADING_FAILED
    assert "corrupt.onnx" in status.errors[0]

    register(mesh_api, "missing", "sklearn", tmp_path / "gone.joblib")
    register(mesh_api, "good", "onnx", models.onnx)
    for model_id, text in (("corrupt", "onnxruntime cannot load"), ("missing", "artifact not found")):
        with pytest.raises(InferenceServerException) as info:
            triton.infer(model_id, [_x()])
        assert _code(info.value) == "StatusCode.FAILED_PRECONDITION", info.value.message()
        assert text in info.value.message()
        after = mesh_api.getModelStatus(mm.GetStatusRequest(modelId=model_id))
        assert after.status == mm.ModelStatusInfo.LOADING_FAILED
        assert text in after.errors[0]
    assert triton.infer("good", [_x()]).as_numpy("probs").shape == (2, 3)


def test_model_larger_than_capacity_is_resource_exhausted(models: ModelSet, tmp_path) -> None:
    big = tmp_path / "big.onnx"
    from mesh_tools import samples

    samples.onnx_mlp(tmp_path, features=4, hidden=40_000, name="big.onnx")
    size = big.stat().st_size
    with PodThread(pod_settings(capacity_bytes=size // 2)) as pod, grpc.insecure_channel(pod.target) as ch:
        from mesh_proto import model_mesh_pb2_grpc as mm_grpc

        register(mm_grpc.ModelMeshStub(ch), "big", "onnx", big)
        client = tc.InferenceServerClient(pod.target)
        with pytest.raises(InferenceServerException) as info:
            client.infer("big", [_x()])
        client.close()
    assert _code(info.value) == "StatusCode.RESOURCE_EXHAUSTED"
    assert str(size) in info.value.message() and str(size // 2) in info.value.message()


def test_oversized_message_is_resource_exhausted(models: ModelSet) -> None:
    with PodThread(pod_settings(max_message_bytes=1024)) as pod, grpc.insecure_channel(pod.target) as ch:
        request = v2.ModelInferRequest(model_name="m", raw_input_contents=[b"\0" * 4096])
        request.inputs.add(name="x", datatype="FP32", shape=[1, 1024])
        error = _raw_call(ch, request)
    assert error.code() is grpc.StatusCode.RESOURCE_EXHAUSTED


def test_registration_errors(models: ModelSet, mesh_api) -> None:
    register(mesh_api, "a", "onnx", models.onnx)
    same = register(mesh_api, "a", "onnx", models.onnx)
    assert same.status == mm.ModelStatusInfo.NOT_LOADED

    cases = [
        (("a", "onnx", models.pytorch), grpc.StatusCode.ALREADY_EXISTS, "already registered"),
        (
            ("b", "tensorflow", models.onnx),
            grpc.StatusCode.INVALID_ARGUMENT,
            "unknown model type 'tensorflow'",
        ),
        (("c", "onnx", "ftp://host/m.onnx"), grpc.StatusCode.INVALID_ARGUMENT, "unsupported storage scheme"),
        (("", "onnx", models.onnx), grpc.StatusCode.INVALID_ARGUMENT, "must not be empty"),
    ]
    for args, code, reason in cases:
        with pytest.raises(grpc.RpcError) as info:
            register(mesh_api, *args)
        assert info.value.code() is code
        assert reason in info.value.details()
    with pytest.raises(grpc.RpcError) as info:
        register(mesh_api, "d", "onnx", models.onnx, key="{not json")
    assert info.value.code() is grpc.StatusCode.INVALID_ARGUMENT
