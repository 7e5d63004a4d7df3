"""Every v2 datatype converts both ways, raw and typed."""

from __future__ import annotations

import struct
import time
from collections.abc import Callable

import numpy as np
import pytest

from adapters.datatypes import V2_TO_NUMPY
from mesh.dataplane import InferenceResponse
from mesh.edge import converters
from mesh.edge.client import build_request, decode_response
from mesh_common.errors import InvalidInput
from mesh_common.units import parse_size
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


def _pack(items: list[bytes]) -> bytes:
    return b"".join(struct.pack("<I", len(item)) + item for item in items)


@pytest.mark.parametrize(
    "items",
    [
        [b"abc", b"def", b"gh\0"],  # one length: the strided path; a NUL at the end stays
        [b"\0\0", b"\0\0"],
        [b"", b""],
        [b"a", b"", b"\0\0x\0", b"zz", b"a", b"long" * 40],  # lengths differ: the walk
        [b"", b"xy", b""],
        [b"only"],
        [],
    ],
)
def test_unpack_bytes_keeps_every_byte(items: list[bytes]) -> None:
    raw = _pack(items)
    for data in (raw, memoryview(raw)):
        array = converters.unpack_bytes("t", data, len(items))
        assert array.dtype == object and array.shape == (len(items),)
        assert list(array) == items
        assert all(type(item) is bytes for item in array)


def test_unpack_bytes_of_many_elements_in_chunks() -> None:
    rng = np.random.default_rng(0)
    same = [bytes(row) for row in rng.integers(0, 256, size=(100_000, 7), dtype=np.uint8)]
    varied = [b"z" * int(n) for n in rng.integers(0, 40, size=100_000)]
    for items in (same, varied):
        assert list(converters.unpack_bytes("t", _pack(items), len(items))) == items


@pytest.mark.parametrize(
    ("raw", "count", "reason"),
    [
        (_pack([b"ab"])[:-1], 1, "BYTES element 0 runs past the end of the data"),
        (_pack([b"ab", b"cd"]) + b"\1\0", 3, "BYTES element 2 has a truncated length prefix"),
        (b"\xff\xff\xff\xff" + b"a" * 8, 2, "BYTES element 0 runs past the end of the data"),
        (_pack([b"ab", b"c"])[:-3], 2, "BYTES element 1 has a truncated length prefix"),
        (_pack([b"ab", b"cd"]), 3, "shape needs 3 BYTES elements, got 2"),
        (_pack([b"ab", b"cd", b"ef"]), 2, "shape needs 2 BYTES elements, got 3"),
        (b"\0\0", 1, "BYTES element 0 has a truncated length prefix"),
    ],
)
def test_malformed_length_prefixes_name_the_tensor(raw: bytes, count: int, reason: str) -> None:
    with pytest.raises(InvalidInput) as info:
        converters.unpack_bytes("words", raw, count)
    assert info.value.message == f"input 'words': {reason}"


def test_a_split_request_matches_the_parsed_one() -> None:
    message = build_request("m", {"a": SAMPLES["FP32"], "b": SAMPLES["BYTES"], "c": SAMPLES["INT64"]})
    message.id = "call-7"
    message.outputs.add(name="out")
    message.parameters["p"].int64_param = 3
    data = message.SerializeToString()

    header, raw = converters.split_infer_request(data)

    assert not header.raw_input_contents
    assert [bytes(entry) for entry in raw] == list(message.raw_input_contents)
    assert all(entry.obj is data for entry in raw)  # views into the bytes, not copies
    header.raw_input_contents.extend(bytes(entry) for entry in raw)
    assert header == message
    split = converters.request_from_proto(*converters.split_infer_request(data))
    whole = converters.request_from_proto(message)
    assert (split.id, list(split.outputs)) == (whole.id, list(whole.outputs))
    for name, array in whole.inputs.items():
        np.testing.assert_array_equal(split.inputs[name], array)


@pytest.mark.parametrize("data", [b"\x0a\x05ab", b"\x3a\x80", b"\xff" * 12, b"\x0a\x01m\x0b"])
def test_a_request_that_does_not_split_or_parse_is_invalid_input(data: bytes) -> None:
    with pytest.raises(InvalidInput, match=r"not a valid inference\.ModelInferRequest"):
        converters.split_infer_request(data)


def test_header_inputs_hold_no_data() -> None:
    message = v2.ModelInferRequest(model_name="m")
    message.inputs.add(name="t", datatype="BYTES", shape=[1_000_000, 50])
    message.inputs.add(name="u", datatype="FP64", shape=[3])
    inputs = converters.header_inputs(message)
    assert inputs["t"].shape == (1_000_000, 50) and inputs["t"].dtype == object
    assert inputs["t"].strides == (0, 0)
    assert inputs["u"].dtype == np.float64
    message.inputs.add(name="v", datatype="FP64", shape=[-1])
    with pytest.raises(InvalidInput, match="input 'v': shape \\[-1\\] has a negative dimension"):
        converters.header_inputs(message)


def test_a_request_with_a_group_is_parsed_whole() -> None:
    """Groups (long deprecated) are the one form the split leaves to the parser."""
    message = v2.ModelInferRequest(model_name="m", raw_input_contents=[b"\0" * 8])
    data = message.SerializeToString() + b"\x0b\x0c"  # an empty group of field 1: unknown, kept
    header, raw = converters.split_infer_request(data)
    assert header.model_name == "m" and [bytes(entry) for entry in raw] == [b"\0" * 8]


def test_unpacking_elements_of_one_length_reads_no_prefix_in_python() -> None:
    """Against reading each element's prefix in Python, measured in the same run (best of 3)."""
    items = [b"%07d" % i for i in range(200_000)]
    raw = _pack(items)

    def in_python() -> list[bytes]:
        out, offset, unpack = [], 0, struct.Struct("<I").unpack_from
        while offset < len(raw):
            (length,) = unpack(raw, offset)
            out.append(raw[offset + 4 : offset + 4 + length])
            offset += 4 + length
        return out

    def best(work: Callable[[], object]) -> float:
        times = []
        for _ in range(3):
            started = time.perf_counter()
            work()
            times.append(time.perf_counter() - started)
        return min(times)

    assert list(converters.unpack_bytes("t", raw, len(items))) == in_python() == items
    vectorised, python = best(lambda: converters.unpack_bytes("t", raw, len(items))), best(in_python)
    assert vectorised * 3 < python, f"unpacking took {vectorised:.3f}s, a Python loop {python:.3f}s"
