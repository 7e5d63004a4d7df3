"""An ONNX graph that echoes one tensor of each v2 datatype, and the datatypes' typed fields:
shared by the datatype and malformed-request tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper

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
