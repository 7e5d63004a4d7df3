"""Per-format model runtimes: load, size, infer and unload, following ModelMesh's runtime SPI.

``ADAPTERS`` maps a registration's ``modelInfo.type`` to the adapter class; classes
are imported on first use so a pod that never loads a TorchScript model never
imports torch.
"""

from __future__ import annotations

import importlib
from functools import cache

from adapters.base import LoadedModel, ModelAdapter

ADAPTERS: dict[str, str] = {
    "sklearn": "adapters.sklearn:SklearnAdapter",
    "onnx": "adapters.onnx:OnnxAdapter",
    "pytorch": "adapters.pytorch:TorchScriptAdapter",
}


def supported_types() -> list[str]:
    return sorted(ADAPTERS)


@cache
def adapter_for(model_type: str) -> ModelAdapter:
    """The adapter for a model type. Raises ``KeyError`` for an unknown type."""
    module_name, _, class_name = ADAPTERS[model_type].partition(":")
    adapter_class = getattr(importlib.import_module(module_name), class_name)
    adapter: ModelAdapter = adapter_class()
    return adapter


__all__ = ["ADAPTERS", "LoadedModel", "ModelAdapter", "adapter_for", "supported_types"]
