"""KServe v2 datatype names and their numpy equivalents."""

from __future__ import annotations

import numpy as np

from mesh_common.errors import InvalidInput

V2_TO_NUMPY: dict[str, np.dtype] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype(np.uint8),
    "UINT16": np.dtype(np.uint16),
    "UINT32": np.dtype(np.uint32),
    "UINT64": np.dtype(np.uint64),
    "INT8": np.dtype(np.int8),
    "INT16": np.dtype(np.int16),
    "INT32": np.dtype(np.int32),
    "INT64": np.dtype(np.int64),
    "FP16": np.dtype(np.float16),
    "FP32": np.dtype(np.float32),
    "FP64": np.dtype(np.float64),
    "BYTES": np.dtype(np.object_),
}

_NUMPY_TO_V2 = {dtype: name for name, dtype in V2_TO_NUMPY.items()}
_SEEN: dict[np.dtype, str] = {}

NUMERIC = frozenset(V2_TO_NUMPY) - {"BOOL", "BYTES"}


def numpy_dtype(datatype: str) -> np.dtype:
    """The numpy dtype of a v2 datatype; ``InvalidInput`` for an unknown name."""
    try:
        return V2_TO_NUMPY[datatype]
    except KeyError:
        raise InvalidInput(
            f"unknown datatype {datatype!r}; expected one of {', '.join(V2_TO_NUMPY)}",
            datatype=datatype,
        ) from None


def v2_datatype(dtype: np.dtype) -> str:
    """The v2 datatype of a numpy dtype; strings and bytes map to ``BYTES``."""
    name = find_v2_datatype(dtype)
    if name is None:
        raise InvalidInput(f"numpy dtype {dtype} has no v2 datatype")
    return name


def find_v2_datatype(dtype: np.dtype) -> str | None:
    """The v2 datatype of a numpy dtype, or None when none can carry it (complex, datetime, ...)."""
    if dtype.kind in ("U", "S", "O"):
        return "BYTES"
    name = _SEEN.get(dtype)  # on every call, twice: skip building the native-order dtype
    if name is None:
        name = _NUMPY_TO_V2.get(dtype.newbyteorder("="))
        if name is not None:
            _SEEN[dtype] = name  # at most two byte orders of each numeric dtype
    return name
