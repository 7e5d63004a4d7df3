"""Every v2 datatype converts both ways, raw and typed."""

from __future__ import annotations

import numpy as np
import pytest

from adapters.datatypes import V2_TO_NUMPY
from mesh.dataplane import InferenceResponse
from mesh.edge import converters
from mesh.edge.client import build_request, decode_response
from mesh.errors import InvalidInput
from mesh.settings import parse_size
from mesh_proto import grpc_service_pb2 as v2

SAMPLES = {
    "BOOL": np.array([[True, False, True]]),
    "UINT8": np.array([[0, 7, 255]], np.uint8),
    "UINT16": np.array([[0, 7, 65535]], np.uint16),
    "UINT32": np.array([[0, 7, 2**32 - 1]], np.uint32),
    "UINT64": np.array([[0, 7, 2**64 - 1]], np.uint64),
    "INT8": np.array([[-128, 0, 127]], np.int8),
    "INT16": np.array([[-32768, 0, 32767]], np.int16),
    "INT32": np.array([[-(2**31), 0, 2**31 - 1]], np.int32),
    "INT64": np.array([[-(2**63), 0, 2**63 - 1]], np.int64),
    "FP16": np.array([[0.5, -1.25, 65504]], np.float16),
    "FP32": np.array([[0.5, -1.25, 3.4e38]], np.float32),
    "FP64": np.array([[0.5, -1.25, 1e300]], np.float64),
    "BYTES": np.array([[b"a", b"", "ü".encode()]], dtype=object),
}


def test_every_datatype_is_covered() -> None:
    assert set(SAMPLES) == set(V2_TO_NUMPY)


@pytest.mark.parametrize("datatype", sorted(SAMPLES))
def test_raw_round_trip(datatype: str) -> None:
    array = SAMPLES[datatype]
    request = converters.request_from_proto(build_request("m", {"t": array}))
    np.testing.assert_array_equal(request.inputs["t"], array)
    answer = converters.response_to_proto(InferenceResponse("m", "m", "", [("t", array)]))
    assert answer.outputs[0].datatype == datatype
    np.testing.assert_array_equal(decode_response(answer)["t"], array)


@pytest.mark.parametrize("datatype", sorted(set(SAMPLES) - {"FP16"}))
def test_typed_contents(datatype: str) -> None:
    array = SAMPLES[datatype]
    message = v2.ModelInferRequest(model_name="m")
    tensor = message.inputs.add(name="t", datatype=datatype, shape=array.shape)
    getattr(tensor.contents, converters._TYPED_FIELD[datatype]).extend(array.ravel().tolist())
    parsed = converters.request_from_proto(message).inputs["t"]
    assert parsed.dtype == V2_TO_NUMPY[datatype]
    np.testing.assert_array_equal(parsed, array)


@pytest.mark.parametrize(
    ("shape", "datatype", "raw", "reason"),
    [
        ([0, 2**62], "FP64", b"", "shape [0, 4611686018427387904] is too large for any tensor"),
        ([2**31, 2**31, 0], "INT32", b"", "is too large for any tensor"),
        ([2**63 - 1, 3, 0], "BYTES", None, "is too large for any tensor"),
        ([1] * 65, "FP32", b"\0" * 4, "shape has 65 dimensions; at most 64 are allowed"),
    ],
)
def test_shapes_no_array_can_have_are_invalid_input(
    shape: list[int], datatype: str, raw: bytes | None, reason: str
) -> None:
    """Dimensions whose product overflows, with a zero among them so no data can be missing."""
    message = v2.ModelInferRequest(model_name="m")
    message.inputs.add(name="t", datatype=datatype, shape=shape)
    if raw is not None:
        message.raw_input_contents.append(raw)
    with pytest.raises(InvalidInput, match="input 't': ") as info:
        converters.request_from_proto(message)
    assert reason in info.value.message


def test_empty_tensors_keep_their_shape() -> None:
    message = v2.ModelInferRequest(model_name="m")
    message.inputs.add(name="t", datatype="FP32", shape=[0, 2**40])
    message.raw_input_contents.append(b"")
    assert converters.request_from_proto(message).inputs["t"].shape == (0, 2**40)


def test_sizes_parse() -> None:
    assert parse_size("512MiB") == 512 * 2**20
    assert parse_size("2GiB") == 2 * 2**30
    assert parse_size("1000") == 1000
    with pytest.raises(ValueError, match="not a size"):
        parse_size("lots")


def test_statistics_round_trip_and_merge_as_one_server() -> None:
    from mesh.dataplane import ModelStats, merge_statistics
    from mesh.edge.converters import statistics_from_proto, statistics_to_proto

    a = ModelStats(success_count=2, success_ns=20, inference_count=4, execution_count=2, last_inference_ms=5)
    b = ModelStats(success_count=1, success_ns=7, fail_count=1, fail_ns=3, compute_ns=9, last_inference_ms=9)
    assert statistics_from_proto(statistics_to_proto("m", a)) == ("m", a)
    merged = dict(merge_statistics([("m", a)], [("m", b), ("n", a)]))
    assert merged["m"] == ModelStats(
        success_count=3,
        success_ns=27,
        fail_count=1,
        fail_ns=3,
        compute_ns=9,
        inference_count=4,
        execution_count=2,
        last_inference_ms=9,
    )
    assert merged["n"] == a and a.success_count == 2  # the parts are not changed
