"""TorchScript models (``torch.jit.save`` files: ``.pt``, ``.pth``, ``.torchscript``).

TorchScript carries argument names but not dtypes or shapes, so input names come
from ``forward``'s schema and any numeric datatype is accepted. A
``signature.json`` beside the file can declare exact inputs and outputs:
``{"inputs": [{"name", "datatype", "shape"}], "outputs": [...]}``. Outputs are
``output__0``, ``output__1``, ... (Triton's naming) or a returned dict's keys.
Runs on CUDA when torch sees one, else on the CPU with one thread per call.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from adapters.artifacts import find_artifact
from adapters.base import LoadedModel, ModelAdapter
from adapters.datatypes import NUMERIC
from adapters.signature import ModelSignature, TensorSpec
from mesh_common.errors import InvalidInput

SIGNATURE_FILE = "signature.json"


def device(cuda_available: bool | None = None) -> torch.device:
    """The device models load onto: the current GPU when torch sees one, else the CPU.

    Args:
        cuda_available: whether CUDA is usable (default: ``torch.cuda.is_available()``).
    """
    if cuda_available is None:
        cuda_available = torch.cuda.is_available()
    return torch.device("cuda" if cuda_available else "cpu")


class TorchScriptModel(LoadedModel):
    def __init__(self, module: torch.jit.ScriptModule, signature: ModelSignature, size_bytes: int) -> None:
        self._module = module
        self.signature = signature
        self.size_bytes = size_bytes
        self._device = device()
        self.device = self._device.type

    def infer(self, inputs: Mapping[str, np.ndarray], outputs: Sequence[str]) -> dict[str, np.ndarray]:
        args = [
            torch.from_numpy(np.array(inputs[spec.name])).to(self._device) for spec in self.signature.inputs
        ]
        try:
            with torch.inference_mode():
                result = self._module(*args)
        except RuntimeError as exc:  # torch.OutOfMemoryError (CUDA) is one too
            memory = _out_of_memory(exc)
            if memory is None:
                raise
            raise memory from exc
        named = _name_outputs(result)
        wanted = list(outputs) or list(named)
        unknown = [name for name in wanted if name not in named]
        if unknown:
            raise InvalidInput(
                f"unknown output(s) {', '.join(map(repr, unknown))}; the model returned "
                f"{', '.join(map(repr, named))}"
            )
        return {name: named[name] for name in wanted}

    def unload(self) -> None:
        del self._module


class TorchScriptAdapter(ModelAdapter):
    model_type = "pytorch"
    suffixes = (".pt", ".pth", ".torchscript")
    size_factor = 1.2
    size_overhead = 256 * 1024

    def load(self, path: Path) -> TorchScriptModel:
        torch.set_num_threads(1)
        artifact = find_artifact(path, self.suffixes)
        try:
            module = torch.jit.load(str(artifact), map_location=device())
        except Exception as exc:  # torch raises RuntimeError/ValueError/zip errors for bad files
            raise ValueError(f"torch cannot load {artifact.name} as TorchScript: {exc}") from exc
        module.eval()
        tensors = [*module.parameters(), *module.buffers()]
        size = sum(t.numel() * t.element_size() for t in tensors) + self.size_overhead
        return TorchScriptModel(module, _signature(module, artifact.parent / SIGNATURE_FILE), size)


def _signature(module: torch.jit.ScriptModule, declared: Path) -> ModelSignature:
    if declared.is_file():
        spec = json.loads(declared.read_text())
        return ModelSignature(
            platform="pytorch_libtorch",
            inputs=tuple(_declared(t) for t in spec["inputs"]),
            outputs=tuple(_declared(t) for t in spec.get("outputs", [])),
        )
    arguments = getattr(module.forward, "schema").arguments[1:]  # noqa: B009 - TorchScript-only attribute; drop self
    inputs = tuple(TensorSpec(arg.name, "FP32", None, accepts=NUMERIC | {"BOOL"}) for arg in arguments)
    return ModelSignature(platform="pytorch_libtorch", inputs=inputs, outputs=())


def _out_of_memory(exc: RuntimeError) -> MemoryError | None:
    """The allocator's failure, whether raised directly or wrapped by the TorchScript interpreter."""
    text = str(exc)
    match = _CPU_ALLOCATION_FAILED.search(text)
    if match is not None:
        return MemoryError(f"torch could not allocate {int(match.group(1)):,} bytes")
    match = _GPU_ALLOCATION_FAILED.search(text)
    if isinstance(exc, torch.OutOfMemoryError) or match is not None:
        detail = match.group(0) if match is not None else text.splitlines()[0]
        return MemoryError(f"torch ran out of GPU memory: {detail}")
    return None


_CPU_ALLOCATION_FAILED = re.compile(r"can't allocate memory: you tried to allocate (\d+) bytes")
_GPU_ALLOCATION_FAILED = re.compile(r"CUDA out of memory\. Tried to allocate [\d.]+ [KMGTP]?i?B")


def _declared(tensor: dict[str, Any]) -> TensorSpec:
    return TensorSpec(tensor["name"], tensor["datatype"], tuple(tensor["shape"]))


def _name_outputs(result: Any) -> dict[str, np.ndarray]:
    if isinstance(result, torch.Tensor):
        return {"output__0": result.detach().cpu().numpy()}
    if isinstance(result, dict):
        return {str(k): v.detach().cpu().numpy() for k, v in result.items()}
    if isinstance(result, (tuple, list)):
        return {f"output__{i}": v.detach().cpu().numpy() for i, v in enumerate(result)}
    raise ValueError(f"TorchScript model returned {type(result).__name__}, not tensors")
