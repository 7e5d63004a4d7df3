"""The one place that converts between protobuf messages and the core's types.

Tensors: raw (``raw_input_contents``) and typed (``contents``) inputs become numpy
arrays after their datatype, shape and byte length are checked; outputs always go
out as ``raw_output_contents``.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Sequence

import numpy as np
from google.protobuf.message import DecodeError

from adapters.datatypes import V2_TO_NUMPY, numpy_dtype, v2_datatype
from adapters.signature import TensorSpec
from mesh.dataplane import InferenceRequest, InferenceResponse, ModelStats
from mesh.edge.wire import split_field
from mesh.model_status import ModelStatus, VModelStatus
from mesh.model_watch import ModelChange
from mesh.records import ModelInfo
from mesh_common.errors import InvalidInput
from mesh_proto import grpc_service_pb2 as v2
from mesh_proto import mesh_admin_pb2 as admin
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


def request_from_proto(
    message: v2.ModelInferRequest, raw: Sequence[bytes | memoryview] | None = None
) -> InferenceRequest:
    """The request's tensors as numpy arrays. ``raw``, when given, stands for the message's
    ``raw_input_contents`` (views into the bytes it came in: see ``split_infer_request``)."""
    # On every call: each field read of a protobuf message costs about as much as a dict copy,
    # so each one is read once.
    if raw is None:
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


_RAW_INPUT_CONTENTS = v2.ModelInferRequest.DESCRIPTOR.fields_by_name["raw_input_contents"].number


def split_infer_request(data: bytes) -> tuple[v2.ModelInferRequest, list[memoryview]]:
    """A large request parsed without copying its tensors: the message without
    ``raw_input_contents``, and those entries as views into ``data``.

    Raises:
        InvalidInput: the bytes are not a ``ModelInferRequest``.
    """
    try:
        rest, raw = split_field(data, _RAW_INPUT_CONTENTS)
        return v2.ModelInferRequest.FromString(rest), raw
    except (ValueError, DecodeError):  # a form the split does not read (groups): parse it all
        pass
    try:
        message = v2.ModelInferRequest.FromString(data)
    except DecodeError as exc:
        raise InvalidInput(f"the request is not a valid inference.ModelInferRequest: {exc}") from None
    return message, [memoryview(entry) for entry in message.raw_input_contents]


def header_inputs(message: v2.ModelInferRequest) -> dict[str, np.ndarray]:
    """Each input tensor as its header declares it: an array of its datatype and shape that
    holds no data (one element seen through every index), for checking against a signature
    before anything is decoded."""
    inputs: dict[str, np.ndarray] = {}
    for tensor in message.inputs:
        name = tensor.name
        dtype = numpy_dtype(tensor.datatype)
        shape = tuple(tensor.shape[:])
        if shape and min(shape) < 0:
            raise InvalidInput(f"input {name!r}: shape {list(shape)} has a negative dimension")
        if len(shape) > _MAX_DIMS:
            _check_shape_limits(name, shape, dtype)
        inputs[name] = np.broadcast_to(np.empty((), dtype), shape)
    return inputs


def bytes_elements(message: v2.ModelInferRequest, wire_bytes: int) -> int:
    """How many BYTES elements the request's inputs declare, at most what ``wire_bytes`` can hold
    (each element has a 4-byte length prefix; a header that declares more is refused when decoded)."""
    elements = 0
    for tensor in message.inputs:
        if tensor.datatype == "BYTES":
            elements += max(math.prod(tensor.shape), 0)
    return min(elements, wire_bytes // 4)


def _input_array(
    tensor: v2.ModelInferRequest.InferInputTensor, name: str, raw: bytes | memoryview | None
) -> np.ndarray:
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


def unpack_bytes(name: str, raw: bytes | memoryview, count: int) -> np.ndarray:
    """A BYTES tensor's elements (``count`` of them, each a 4-byte little-endian length and its
    bytes) as a 1-D object array of ``bytes``.

    The elements are cut out with numpy: when every element has the length of the first (the
    common case) the length prefixes are checked as one strided view; otherwise only the walk
    from prefix to prefix runs in Python, and the elements are gathered by length.

    Raises:
        InvalidInput: naming the tensor, when a length prefix is truncated or runs past the end
            of the data, or the data holds other than ``count`` elements.
    """
    data = np.frombuffer(raw, np.uint8)
    size = data.size
    if count and size >= 4:
        first = int(data[:4].view(_LENGTH_DTYPE)[0])
        stride = 4 + first
        if stride * count == size:
            rows = data.reshape(count, stride)
            if (rows[:, :4].copy().view(_LENGTH_DTYPE) == first).all():
                return _elements(rows[:, 4:], first, count)
    starts, lengths = _walk(name, raw, size)
    if starts.size != count:
        raise InvalidInput(f"input {name!r}: shape needs {count} BYTES elements, got {starts.size}")
    array = np.empty(count, dtype=object)
    if not count:
        return array
    order = np.argsort(lengths, kind="stable")
    sorted_lengths = lengths[order]
    bounds = np.flatnonzero(np.diff(sorted_lengths)) + 1
    for run in np.split(order, bounds):
        length = int(lengths[run[0]])
        rows = np.lib.stride_tricks.sliding_window_view(data, length)[starts[run]] if length else data[:0]
        array[run] = _elements(rows, length, len(run))
    return array


_LENGTH_DTYPE = np.dtype("<u4")


def _elements(rows: np.ndarray, length: int, count: int) -> np.ndarray:
    """``count`` rows of ``length`` bytes as an object array of ``bytes`` (NULs kept, at the end
    too: a void item keeps every byte, where a numpy bytes item drops trailing NULs)."""
    if length == 0:
        array = np.empty(count, dtype=object)
        array[:] = b""
        return array
    # Rows whose bytes are contiguous (strided apart or not) are viewed, not copied.
    items = rows.view(f"V{length}").reshape(count)
    if count <= _CHUNK:
        return items.astype(object)
    # Made in chunks: one numpy call holds the GIL throughout, and the event loop needs it.
    array = np.empty(count, dtype=object)
    for start in range(0, count, _CHUNK):
        array[start : start + _CHUNK] = items[start : start + _CHUNK].astype(object)
    return array


_CHUNK = 32768
"""Elements made per numpy call: about 2 ms of holding the GIL."""


def _walk(name: str, raw: bytes | memoryview, size: int) -> tuple[np.ndarray, np.ndarray]:
    """The start and length of each element, from prefix to prefix (each depends on the last)."""
    unpack = _LENGTH.unpack_from
    starts: list[int] = []
    append = starts.append
    offset = 0
    try:
        while offset < size:
            append(offset + 4)
            offset += 4 + unpack(raw, offset)[0]
    except struct.error:
        raise InvalidInput(
            f"input {name!r}: BYTES element {len(starts) - 1} has a truncated length prefix"
        ) from None
    if offset > size:
        raise InvalidInput(f"input {name!r}: BYTES element {len(starts) - 1} runs past the end of the data")
    first = np.array(starts, dtype=np.intp)
    lengths = np.empty_like(first)
    lengths[:-1] = first[1:] - first[:-1] - 4
    if first.size:
        lengths[-1] = size - first[-1]
    return first, lengths


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


def model_change_to_proto(change: ModelChange) -> admin.ModelChange:
    message = admin.ModelChange(
        deleted_model_id=change.deleted_model_id,
        deleted_vmodel_id=change.deleted_vmodel_id,
        synced=change.synced,
    )
    if (model := change.model) is not None:
        message.model.CopyFrom(
            admin.ModelState(
                model_id=model.model_id,
                type=model.type,
                tenant=model.tenant,
                status=model.status.value,
                loaded_copies=model.loaded_copies,
                loading_copies=model.loading_copies,
                failed_copies=len(model.failures),
                failures=[
                    admin.LoadFailure(pod_id=f.pod_id, reason=f.reason, time_ms=f.time_ms)
                    for f in model.failures
                ],
                blocked=model.blocked,
                size_bytes=model.size_bytes,
            )
        )
    if (vmodel := change.vmodel) is not None:
        message.vmodel.CopyFrom(
            admin.VModelSummary(
                vmodel_id=vmodel.vmodel_id,
                active_model_id=vmodel.active_model_id,
                target_model_id=vmodel.target_model_id,
                owner=vmodel.owner,
            )
        )
    return message
