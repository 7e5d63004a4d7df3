"""ONNX graphs on onnxruntime: inputs, outputs and their types come from the graph.

The CUDA execution provider is used only when onnxruntime reports it; otherwise
the CPU provider. Memory arenas are off so a model's footprint stays close to
its weights, which is what high-density serving needs.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from adapters.artifacts import find_artifact
from adapters.base import LoadedModel, ModelAdapter
from adapters.signature import ModelSignature, TensorSpec
from mesh_common.errors import InvalidInput

_ONNX_TO_V2 = {
    "tensor(bool)": "BOOL",
    "tensor(uint8)": "UINT8",
    "tensor(uint16)": "UINT16",
    "tensor(uint32)": "UINT32",
    "tensor(uint64)": "UINT64",
    "tensor(int8)": "INT8",
    "tensor(int16)": "INT16",
    "tensor(int32)": "INT32",
    "tensor(int64)": "INT64",
    "tensor(float16)": "FP16",
    "tensor(float)": "FP32",
    "tensor(double)": "FP64",
    "tensor(string)": "BYTES",
}


def providers(available: Sequence[str] | None = None) -> list[str]:
    """The execution providers to ask for: CUDA first when onnxruntime has it, CPU always.

    Args:
        available: what onnxruntime offers (default: ``ort.get_available_providers()``).
    """
    if available is None:
        available = ort.get_available_providers()
    chosen = [p for p in ("CUDAExecutionProvider",) if p in available]
    return [*chosen, "CPUExecutionProvider"]


class OnnxModel(LoadedModel):
    def __init__(self, session: ort.InferenceSession, size_bytes: int) -> None:
        self._session = session
        self.size_bytes = size_bytes
        # onnxruntime drops a provider it cannot start (no driver): ask the session what it got.
        self.device = "cuda" if session.get_providers()[0] == "CUDAExecutionProvider" else "cpu"
        self.signature = ModelSignature(
            platform="onnxruntime_onnx",
            inputs=tuple(_spec(arg) for arg in session.get_inputs()),
            outputs=tuple(_spec(arg) for arg in session.get_outputs()),
        )

    def infer(self, inputs: Mapping[str, np.ndarray], outputs: Sequence[str]) -> dict[str, np.ndarray]:
        names = list(outputs) or self.signature.output_names()
        feeds = {name: _feed(name, array) for name, array in inputs.items()}
        try:
            values = self._session.run(names, feeds)
        except Exception as exc:  # onnxruntime's errors are untyped: its allocator names itself
            memory = _out_of_memory(exc)
            if memory is None:
                raise
            raise memory from exc
        return {name: np.asarray(value) for name, value in zip(names, values, strict=True)}

    def unload(self) -> None:
        del self._session


class OnnxAdapter(ModelAdapter):
    model_type = "onnx"
    suffixes = (".onnx",)
    size_factor = 1.5
    size_overhead = 512 * 1024

    def load(self, path: Path) -> OnnxModel:
        artifact = find_artifact(path, self.suffixes)
        options = ort.SessionOptions()
        options.enable_cpu_mem_arena = False
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        try:
            session = ort.InferenceSession(str(artifact), sess_options=options, providers=providers())
        except Exception as exc:  # onnxruntime raises its own untyped errors for bad graphs
            raise ValueError(f"onnxruntime cannot load {artifact.name}: {exc}") from exc
        size = int(artifact.stat().st_size * self.size_factor) + self.size_overhead
        return OnnxModel(session, size)


def _out_of_memory(exc: Exception) -> MemoryError | None:
    """On the CPU (arena off) a failed ``new`` only says so; the CUDA provider's arena names the
    size it could not get."""
    text = str(exc)
    match = _ALLOCATION_FAILED.search(text)
    if match is not None:
        return MemoryError(f"onnxruntime could not allocate a buffer of {int(match.group(1)):,} bytes")
    if "std::bad_alloc" in text:
        return MemoryError("onnxruntime could not allocate memory (std::bad_alloc)")
    return None


_ALLOCATION_FAILED = re.compile(r"Failed to allocate memory for requested buffer of size (\d+)")


def _spec(arg: Any) -> TensorSpec:
    shape = tuple(dim if isinstance(dim, int) and dim >= 0 else -1 for dim in arg.shape)
    return TensorSpec(arg.name, _ONNX_TO_V2.get(arg.type, "BYTES"), shape)


def _feed(name: str, array: np.ndarray) -> np.ndarray:
    """onnxruntime takes string tensors as Python ``str`` in an object array (a fixed-width
    numpy string array would cut each value at its first NUL)."""
    if array.dtype != object:
        return array
    text = np.empty(array.size, dtype=object)
    for index, value in enumerate(array.ravel()):
        try:
            text[index] = value.decode() if isinstance(value, bytes) else str(value)
        except UnicodeDecodeError as exc:
            raise InvalidInput(
                f"input {name!r}: element {index} is not UTF-8 text ({exc.reason} at byte {exc.start}), "
                "and onnxruntime takes BYTES tensors as text",
                tensor=name,
            ) from None
    return text.reshape(array.shape)
