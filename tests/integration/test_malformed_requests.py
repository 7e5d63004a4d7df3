"""Generated requests against a real pod: valid ones are answered, every other one gets a precise refusal.

Hypothesis builds three kinds of ``ModelInferRequest``:

- valid calls to each served model (sklearn, ONNX, TorchScript, and an ONNX echo model per
  datatype), with any values that fit: each must be answered, the echo with its input;
- the same calls with one part spoiled (datatype, shape, a NaN or a value out of range, a
  non-UTF-8 string, the input's name, the raw bytes, an unknown output or model);
- wild ones: any names, datatypes, shapes up to 2**63 - 1, raw bytes of any length, typed
  contents of any field;
- model names that are not registered: non-ASCII, with a newline or NUL, a megabyte long; and
  the model named in routing metadata instead, in UTF-8 or not.

A spoiled or wild request is answered or refused with ``INVALID_ARGUMENT``/``NOT_FOUND`` and
a reason, alone and inside a stream (where the stream goes on), and afterwards every model
still serves. The examples are the same on every run (``derandomize``): a failure is a bug,
not bad luck.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import grpc
import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from mesh_proto import grpc_service_pb2 as v2
from mesh_proto import grpc_service_pb2_grpc as v2_grpc
from mesh_proto import model_mesh_pb2 as mm
from tests.conftest import ModelSet, register
from tests.integration.echo_model import ECHOED, TYPED_FIELD, echo_model

REFUSALS = {grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND}
NUMPY = {name: values.dtype for name, (_, values) in ECHOED.items()}
MODELS = ("sk", "onnx", "pt", "echo")
"""``echo`` stands for one echo model per datatype: ``echo-FP32`` returns its input ``in_FP32``."""
SERVED = ("sk", "onnx", "pt", *(f"echo-{datatype}" for datatype in sorted(ECHOED)))
EXAMPLES = settings(
    max_examples=250,
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

ODD_NAMES = ["模型", "naïve", "a\nb", "nul\x00", "m" * 2**20]
"""Unregistered model names: ``NOT_FOUND`` quoting them cut short, never a fault."""
dims = st.one_of(st.integers(0, 3), st.sampled_from([-1, 2**31, 2**62, 2**63 - 1]))
names = st.one_of(st.sampled_from(["x", "input-0", "in_FP32", "in_BYTES", "in_BOOL"]), st.text(max_size=4))
datatypes = st.one_of(st.sampled_from(sorted(ECHOED)), st.text(max_size=5))
typed_values: dict[str, st.SearchStrategy[Any]] = {
    "bool_contents": st.booleans(),
    "int_contents": st.integers(-(2**31), 2**31 - 1),
    "int64_contents": st.integers(-(2**63), 2**63 - 1),
    "uint_contents": st.integers(0, 2**32 - 1),
    "uint64_contents": st.integers(0, 2**64 - 1),
    "fp32_contents": st.floats(width=32),
    "fp64_contents": st.floats(),
    "bytes_contents": st.binary(max_size=4),
}


def _pack_bytes(items: list[bytes]) -> bytes:
    return b"".join(len(item).to_bytes(4, "little") + item for item in items)


@dataclass
class Call:
    """A call to a served model, kept as parts so that one of them can be spoiled."""

    model: str
    name: str
    datatype: str
    shape: list[int]
    values: list[Any]
    typed: bool
    outputs: list[str]

    def request(self) -> v2.ModelInferRequest:
        request = v2.ModelInferRequest(model_name=self.model)
        tensor = request.inputs.add(name=self.name, datatype=self.datatype, shape=self.shape)
        if self.datatype == "BYTES":  # a spoiled datatype can turn numbers into text
            items = [v if isinstance(v, bytes) else str(v).encode() for v in self.values]
            if self.typed:
                tensor.contents.bytes_contents.extend(items)
            else:
                request.raw_input_contents.append(_pack_bytes(items))
        elif self.typed and self.datatype in TYPED_FIELD:
            getattr(tensor.contents, TYPED_FIELD[self.datatype]).extend(self.array().ravel().tolist())
        else:
            request.raw_input_contents.append(self.array().tobytes())
        for output in self.outputs:
            request.outputs.add(name=output)
        return request

    def array(self) -> np.ndarray:
        dtype = NUMPY.get(self.datatype, np.dtype(np.float32))
        numbers = [len(v) if isinstance(v, bytes) else v for v in self.values]  # text spoiled into numbers
        with np.errstate(all="ignore"):  # a spoiled call's values may not fit: they wrap, as a client's would
            return np.array(numbers, dtype=np.float64).astype(dtype)


OUTPUTS = {"sk": ["predict", "predict_proba"], "onnx": ["scores", "probs"], "pt": []}


@st.composite
def valid_calls(draw: st.DrawFn) -> Call:
    """What each served model takes: the right name, datatype and shape, and values that fit."""
    model = draw(st.sampled_from(MODELS))
    rows = draw(st.integers(1, 4))
    if model == "echo":
        datatype = draw(st.sampled_from(sorted(ECHOED)))
        model, name, shape, outputs = f"echo-{datatype}", f"in_{datatype}", [rows, 2], [f"out_{datatype}"]
    else:
        datatype = "FP64" if model == "sk" else "FP32"
        name, shape, outputs = "x", [rows, 4], OUTPUTS[model]
    count = rows * shape[1]
    dtype = NUMPY[datatype]
    if datatype == "BYTES":  # onnxruntime takes strings as text: any UTF-8, NULs included
        values: st.SearchStrategy[Any] = st.text(max_size=6).map(str.encode)
    elif dtype.kind == "f":
        values = st.floats(-1000, 1000, width=16 if datatype == "FP16" else 32)
    elif dtype.kind == "b":
        values = st.booleans()
    else:
        info = np.iinfo(dtype)
        values = st.integers(max(int(info.min), -(2**52)), min(int(info.max), 2**52))  # exact in a float64
    return Call(
        model,
        name,
        datatype,
        shape,
        draw(st.lists(values, min_size=count, max_size=count)),
        typed=draw(st.booleans()) and datatype != "FP16",  # FP16 has no typed field
        outputs=draw(st.lists(st.sampled_from(outputs), unique=True)) if outputs else [],
    )


@st.composite
def spoiled_calls(draw: st.DrawFn) -> v2.ModelInferRequest:
    """A valid call with one part wrong (or, now and then, still right by chance)."""
    call = draw(valid_calls())
    part = draw(st.sampled_from(["datatype", "shape", "values", "name", "bytes", "output", "model"]))
    if part == "datatype":
        call.datatype = draw(datatypes)
    elif part == "shape":
        call.shape = draw(st.lists(dims, max_size=4))
    elif part == "values" and call.datatype != "BOOL":
        spoil = st.sampled_from([math.nan, math.inf, -math.inf, 1e300, -(2**70)])
        if call.datatype == "BYTES":
            spoil = st.sampled_from([b"\x80", b"\xff\xfe", "\u00fc".encode()[:1]])  # not UTF-8
        call.values[draw(st.integers(0, len(call.values) - 1))] = draw(spoil)
    elif part == "name":
        call.name = draw(names)
    elif part == "output":
        call.outputs.append(draw(st.sampled_from(["zz", "predict", "scores", "out_FP32"])))
    elif part == "model":
        call.model = draw(st.sampled_from(["nope", "", "SK", *ODD_NAMES]))
    request = call.request()
    if part == "bytes" and request.raw_input_contents:
        raw = request.raw_input_contents[0]
        request.raw_input_contents[0] = raw[: draw(st.integers(0, max(len(raw) - 1, 0)))] + draw(
            st.binary(max_size=3)
        )
    return request


@st.composite
def wild(draw: st.DrawFn) -> v2.ModelInferRequest:
    """Anything the message can hold: names, datatypes, shapes and contents that need not agree."""
    request = v2.ModelInferRequest(
        model_name=draw(st.sampled_from([*SERVED[:4], "echo-BYTES", "nope", "", *ODD_NAMES]))
    )
    raw: list[bytes] = []
    for _ in range(draw(st.integers(0, 3))):
        shape = draw(st.lists(dims, max_size=4))
        tensor = request.inputs.add(name=draw(names), datatype=draw(datatypes), shape=shape)
        contents = draw(st.sampled_from(["raw", "typed", "none"]))
        if contents == "raw":
            raw.append(draw(st.one_of(st.just(b""), st.binary(max_size=64))))
        elif contents == "typed":
            field = draw(st.sampled_from(sorted(typed_values)))
            getattr(tensor.contents, field).extend(draw(st.lists(typed_values[field], max_size=8)))
    if draw(st.booleans()):
        request.raw_input_contents.extend(raw)
    for output in draw(st.lists(st.sampled_from(["predict", "scores", "out_FP32", "zz"]), max_size=2)):
        request.outputs.add(name=output)
    return request


requests = st.one_of(spoiled_calls(), wild())
routing = st.sampled_from(
    [
        (),
        (("mm-model-id", "sk"),),
        (("mm-model-id-bin", "模型".encode()),),
        (("mm-model-id-bin", b"\xff\xfe"),),
        (("mm-vmodel-id-bin", b"\xc3"),),
        (("mm-vmodel-id", "nope"),),
    ]
)
"""Routing metadata: a served model, an unknown one, and -bin values that are not UTF-8."""


def _good_request(model_id: str) -> v2.ModelInferRequest:
    datatype, dtype = ("FP64", np.float64) if model_id == "sk" else ("FP32", np.float32)
    request = v2.ModelInferRequest(model_name=model_id, raw_input_contents=[np.ones((2, 4), dtype).tobytes()])
    request.inputs.add(name="x", datatype=datatype, shape=[2, 4])
    return request


def _no_elements_huge_shape() -> v2.ModelInferRequest:
    """Found by these tests once: no elements, but dimensions whose product overflows numpy's size."""
    request = v2.ModelInferRequest(model_name="sk", raw_input_contents=[b""])
    request.inputs.add(name="x", datatype="FP64", shape=[0, 2**62])
    return request


@pytest.fixture
def served(models: ModelSet, mesh_api, channel: grpc.Channel, tmp_path) -> v2_grpc.GRPCInferenceServiceStub:
    for model_id, model_type, path in [
        ("sk", "sklearn", models.sklearn),
        ("onnx", "onnx", models.onnx),
        ("pt", "pytorch", models.pytorch),
        *((f"echo-{d}", "onnx", echo_model(tmp_path / d, [d])) for d in sorted(ECHOED)),
    ]:
        register(mesh_api, model_id, model_type, path, load_now=True, sync=True)
    return v2_grpc.GRPCInferenceServiceStub(channel)


def _check_answer(answer: v2.ModelInferResponse) -> None:
    """An answer holds one raw entry per output, as many bytes as its datatype and shape need."""
    assert len(answer.raw_output_contents) == len(answer.outputs)
    for tensor, raw in zip(answer.outputs, answer.raw_output_contents, strict=True):
        assert tensor.datatype in NUMPY, tensor
        if tensor.datatype != "BYTES":
            assert len(raw) == math.prod(tensor.shape) * NUMPY[tensor.datatype].itemsize, tensor


def _still_serves(stub: v2_grpc.GRPCInferenceServiceStub, mesh_api) -> None:
    """Every model still answers a good call, and the registry still has each one loaded."""
    for model_id in ("sk", "onnx"):
        assert stub.ModelInfer(_good_request(model_id), timeout=30).outputs
    for model_id in SERVED:
        status = mesh_api.getModelStatus(mm.GetStatusRequest(modelId=model_id), timeout=30)
        assert status.status == mm.ModelStatusInfo.LOADED, (model_id, status)


def _check_valid_answer(call: Call, answer: v2.ModelInferResponse) -> None:
    """A valid call's answer: every output has a row per input row; the echo model returns its input."""
    _check_answer(answer)
    assert answer.model_name == call.model and answer.outputs
    assert all(tensor.shape[0] == call.shape[0] for tensor in answer.outputs), answer.outputs
    if call.model.startswith("echo-"):
        (raw,) = answer.raw_output_contents
        if call.datatype == "BYTES":
            assert raw == _pack_bytes(call.values)
        else:
            np.testing.assert_array_equal(np.frombuffer(raw, NUMPY[call.datatype]), call.array())


def test_valid_calls_are_answered(served, mesh_api) -> None:
    @EXAMPLES
    @given(valid_calls())
    def one_call(call: Call) -> None:
        _check_valid_answer(call, served.ModelInfer(call.request(), timeout=30))

    one_call()


def test_spoiled_and_wild_calls_are_answered_or_refused_with_a_reason(served, mesh_api) -> None:
    @EXAMPLES
    @given(requests, routing)
    @example(_no_elements_huge_shape(), ())
    @example(v2.ModelInferRequest(model_name="m" * 2**20), ())
    @example(_good_request("sk"), (("mm-model-id-bin", b"\xff\xfe"),))
    def one_call(request: v2.ModelInferRequest, metadata: tuple[tuple[str, str | bytes], ...]) -> None:
        try:
            answer = served.ModelInfer(request, metadata=metadata, timeout=30)
        except grpc.RpcError as error:
            assert error.code() in REFUSALS, (error.code(), error.details()[:300], str(request)[:300])
            assert error.details(), request
            assert "Stream removed" not in error.details(), error.details()[:300]
            return
        _check_answer(answer)

    one_call()
    _still_serves(served, mesh_api)


def test_a_stream_answers_every_generated_request_in_turn(served, mesh_api) -> None:
    entries = st.one_of(valid_calls(), requests)

    @EXAMPLES
    @given(st.lists(entries, min_size=1, max_size=5))
    @example([_no_elements_huge_shape(), _good_request("sk")])  # the stream goes on after a refusal
    def one_stream(batch: list[Call | v2.ModelInferRequest]) -> None:
        sent = [entry.request() if isinstance(entry, Call) else entry for entry in batch]
        answers = list(served.ModelStreamInfer(iter(sent), timeout=30))
        assert len(answers) == len(batch)
        for entry, request, answer in zip(batch, sent, answers, strict=True):
            if isinstance(entry, Call):
                assert not answer.error_message, (answer.error_message, request)
                _check_valid_answer(entry, answer.infer_response)
            elif answer.error_message:  # a refusal names what was wrong, as a unary call's would
                assert not answer.error_message.startswith("internal error"), (answer.error_message, request)
            else:
                _check_answer(answer.infer_response)
                assert answer.infer_response.model_name == request.model_name

    one_stream()
    _still_serves(served, mesh_api)
