"""Per-format model runtimes: load, size, infer and unload, following ModelMesh's runtime SPI.

``ADAPTERS`` maps a registration's ``modelInfo.type`` to the adapter class; classes
are imported on first use so a pod that never loads a TorchScript model never
imports torch. That first use imports the framework (torch: about 1.4 s): the pod
makes it on a load thread (``adapters.native`` keeps the import from holding the
GIL through its native libraries' loading), and counts it in no model's load time.
"""

from __future__ import annotations

import importlib
from functools import cache

from adapters import native
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
    """The adapter for a model type. Raises ``KeyError`` for an unknown type.

    Blocking on a type's first use (it imports the framework): call it off the event loop.
    """
    module_name, _, class_name = ADAPTERS[model_type].partition(":")
    native.preload(model_type)
    adapter_class = getattr(importlib.import_module(module_name), class_name)
    adapter: ModelAdapter = adapter_class()
    return adapter


__all__ = ["ADAPTERS", "LoadedModel", "ModelAdapter", "adapter_for", "supported_types"]
