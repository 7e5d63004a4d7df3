"""The one place that converts between protobuf messages and the core's types.

Tensors: raw (``raw_input_contents``) and typed (``contents``) inputs become numpy
arrays after their datatype, shape and byte length are checked; outputs always go
out as ``raw_output_contents``.
"""

from __future__ import annotations

import math
import struct

import numpy as np

from adapters.datatypes import V2_TO_NUMPY, numpy_dtype, v2_datatype
from adapters.signature import TensorSpec
from mesh.dataplane import InferenceRequest, InferenceResponse, ModelStats
from mesh.errors import InvalidInput
from mesh.management import ModelStatus, VModelStatus
from mesh.records import ModelInfo
from mesh_proto import grpc_service_pb2 as v2
from mesh_proto import model_mesh_pb2 as mm

_TYPED_FIELD = {
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
_LENGTH = struct.Struct("<I")
# The wire's byte order is little-endian whatever the host's.
_WIRE_DTYPES = {name: dtype.newbyteorder("<") for name, dtype in V2_TO_NUMPY.items() if name != "BYTES"}


# tensors


def request_from_proto(message: v2.ModelInferRequest) -> InferenceRequest:
    # On every call: each field read of a protobuf message costs about as much as a dict copy,
    # so each one is read once.
    raw = message.raw_input_contents
    tensors = message.inputs
    if raw and len(raw) != len(tensors):
        raise InvalidInput(
            f"raw_input_contents has {len(raw)} entries for {len(tensors)} inputs; "
            "send one entry per input, in order"
        )
    inputs: dict[str, np.ndarray] = {}
    for index, tensor in enumerate(tensors):
        name = tensor.name
        if name in inputs:
            raise InvalidInput(f"input {name!r} appears twice")
        if raw:
            if tensor.HasField("contents"):
                raise InvalidInput(f"input {name!r}: send raw_input_contents or contents, not both")
            inputs[name] = _input_array(tensor, name, raw[index])
        else:
            inputs[name] = _input_array(tensor, name, None)
    outputs = message.outputs
    return InferenceRequest(inputs, [output.name for output in outputs] if outputs else [], message.id)


def _input_array(tensor: v2.ModelInferRequest.InferInputTensor, name: str, raw: bytes | None) -> np.ndarray:
    datatype = tensor.datatype
    dtype = numpy_dtype(datatype)
    shape = tuple(tensor.shape[:])  # a slice is one copy; tuple() of the field iterates it in Python
    if shape and min(shape) < 0:
        raise InvalidInput(f"input {name!r}: shape {list(shape)} has a negative dimension")
    count = math.prod(shape)
    if count == 0 or len(shape) > _MAX_DIMS:
        _check_shape_limits(name, shape, dtype)
    if raw is not None:
        if datatype == "BYTES":
            return unpack_bytes(name, raw, count).reshape(shape)
        expected = count * dtype.itemsize
        if len(raw) != expected:
            raise InvalidInput(
                f"input {name!r}: shape {list(shape)} of {datatype} needs {expected} bytes, got {len(raw)}"
            )
        return np.frombuffer(raw, dtype=_WIRE_DTYPES[datatype]).reshape(shape)
    if datatype == "FP16":
        raise InvalidInput(f"input {name!r}: FP16 has no typed contents; send it in raw_input_contents")
    values = getattr(tensor.contents, _TYPED_FIELD[datatype])
    if len(values) != count:
        raise InvalidInput(
            f"input {name!r}: shape {list(shape)} needs {count} {datatype} values, got {len(values)}"
        )
    if datatype == "BYTES":
        return np.array(list(values), dtype=object).reshape(shape)
    try:
        return np.array(values, dtype=dtype).reshape(shape)
    except OverflowError as exc:
        raise InvalidInput(f"input {name!r}: a value does not fit {datatype}: {exc}") from None


_MAX_DIMS = 64
"""Dimensions a tensor may have: numpy's limit."""
_MAX_BYTES = np.iinfo(np.intp).max


def _check_shape_limits(name: str, shape: tuple[int, ...], dtype: np.dtype) -> None:
    """Shapes that no data can contradict: too many dimensions, or no elements but dimensions
    whose product would overflow an array's size (numpy refuses both)."""
    if len(shape) > _MAX_DIMS:
        raise InvalidInput(
            f"input {name!r}: shape has {len(shape)} dimensions; at most {_MAX_DIMS} are allowed"
        )
    if math.prod(d for d in shape if d) * dtype.itemsize > _MAX_BYTES:
        raise InvalidInput(f"input {name!r}: shape {list(shape)} is too large for any tensor")


def unpack_bytes(name: str, raw: bytes, count: int) -> np.ndarray:
    items: list[bytes] = []
    offset = 0
    view = memoryview(raw)
    while offset < len(raw):
        if offset + 4 > len(raw):
            raise InvalidInput(f"input {name!r}: BYTES element {len(items)} has a truncated length prefix")
        (length,) = _LENGTH.unpack_from(raw, offset)
        offset += 4
        if offset + length > len(raw):
            raise InvalidInput(f"input {name!r}: BYTES element {len(items)} runs past the end of the data")
        items.append(bytes(view[offset : offset + length]))
        offset += length
    if len(items) != count:
        raise InvalidInput(f"input {name!r}: shape needs {count} BYTES elements, got {len(items)}")
    array = np.empty(count, dtype=object)
    array[:] = items
    return array


def response_to_proto(response: InferenceResponse, *, version: str = "") -> v2.ModelInferResponse:
    message = v2.ModelInferResponse(model_name=response.model_name, model_version=version, id=response.id)
    tensors = message.outputs
    contents = message.raw_output_contents
    for name, array in response.outputs:
        datatype = v2_datatype(array.dtype)
        tensors.add(name=name, datatype=datatype, shape=array.shape)
        contents.append(raw_bytes(array, datatype))
    return message


def raw_bytes(array: np.ndarray, datatype: str) -> bytes:
    if datatype != "BYTES":
        if array.dtype.byteorder == ">":
            array = array.astype(array.dtype.newbyteorder("<"))
        return array.tobytes()
    chunks = []
    for item in array.ravel():
        data = item if isinstance(item, bytes) else str(item).encode()
        chunks.append(_LENGTH.pack(len(data)))
        chunks.append(data)
    return b"".join(chunks)


def metadata_to_proto(
    name: str, platform: str, inputs: tuple[TensorSpec, ...], outputs: tuple[TensorSpec, ...]
) -> v2.ModelMetadataResponse:
    message = v2.ModelMetadataResponse(name=name, versions=["1"], platform=platform)
    for spec in inputs:
        message.inputs.add(name=spec.name, datatype=spec.datatype, shape=spec.shape or [])
    for spec in outputs:
        message.outputs.add(name=spec.name, datatype=spec.datatype, shape=spec.shape or [])
    return message


def statistics_to_proto(name: str, stats: ModelStats) -> v2.ModelStatistics:
    infer = v2.InferStatistics(
        success=v2.StatisticDuration(count=stats.success_count, ns=stats.success_ns),
        fail=v2.StatisticDuration(count=stats.fail_count, ns=stats.fail_ns),
        compute_infer=v2.StatisticDuration(count=stats.execution_count, ns=stats.compute_ns),
    )
    return v2.ModelStatistics(
        name=name,
        version="1",
        last_inference=stats.last_inference_ms,
        inference_count=stats.inference_count,
        execution_count=stats.execution_count,
        inference_stats=infer,
    )


def statistics_from_proto(message: v2.ModelStatistics) -> tuple[str, ModelStats]:
    infer = message.inference_stats
    return message.name, ModelStats(
        success_count=infer.success.count,
        success_ns=infer.success.ns,
        fail_count=infer.fail.count,
        fail_ns=infer.fail.ns,
        compute_ns=infer.compute_infer.ns,
        inference_count=message.inference_count,
        execution_count=message.execution_count,
        last_inference_ms=message.last_inference,
    )


# management


def model_info_from_proto(info: mm.ModelInfo) -> ModelInfo:
    return ModelInfo(type=info.type, path=info.path, key=info.key)


def status_to_proto(status: ModelStatus) -> mm.ModelStatusInfo:
    message = mm.ModelStatusInfo(status=status.state.value, errors=status.errors)
    for copy in status.copies:
        message.modelCopyInfos.add(location=copy.pod_id, copyStatus=copy.state.value, time=copy.time_ms)
    return message


def vmodel_status_to_proto(status: VModelStatus) -> mm.VModelStatusInfo:
    message = mm.VModelStatusInfo(
        status=status.status,
        activeModelId=status.active_model_id,
        targetModelId=status.target_model_id,
        owner=status.owner,
    )
    if status.active_model_id:
        message.activeModelStatus.CopyFrom(status_to_proto(status.active))
    if status.target is not None:
        message.targetModelStatus.CopyFrom(status_to_proto(status.target))
    return message
