"""Fakes for unit tests of the pod's core: a model adapter whose sizes come from the artifact, and
the in-memory registry counting its reads, and a model held as a call holds it."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import AsyncIterator
from concurrent.futures import Executor
from pathlib import Path
from typing import Any

import numpy as np

from adapters.base import LoadedModel, ModelAdapter
from adapters.signature import ModelSignature
from mesh.cache import CacheListener, ModelCache
from mesh.records import ModelRecord
from mesh.registry import MemoryRegistry
from mesh.registry.base import Entry
from puller import default_fetchers


class FakeModel(LoadedModel):
    def __init__(self, size: int) -> None:
        self.size_bytes = size
        self.signature = ModelSignature("fake", (), ())
        self.unloaded = False

    def infer(self, inputs, outputs):
        return {"y": np.zeros(1)}

    def unload(self) -> None:
        self.unloaded = True


class FakeAdapter(ModelAdapter):
    """Sizes come from the file's content (an integer); ``block`` holds loads until set."""

    model_type = "fake"
    suffixes = (".txt",)
    size_factor = 1.0
    size_overhead = 0

    def __init__(self) -> None:
        self.loads = 0
        self.block = threading.Event()
        self.block.set()

    def predict_size(self, path: Path) -> int:
        return int(path.read_text())

    def load(self, path: Path) -> FakeModel:
        self.loads += 1
        self.block.wait(10)
        if path.name.startswith("broken"):
            raise RuntimeError("bad weights")
        return FakeModel(int(path.read_text()) + (50 if path.name.startswith("grows") else 0))


def fake_cache(
    *, capacity_bytes: int, executor: Executor, listener: CacheListener, **options: Any
) -> ModelCache:
    """A real cache over local files whose every model loads through a fresh ``FakeAdapter``."""
    return ModelCache(
        capacity_bytes=capacity_bytes,
        fetchers=default_fetchers(),
        executor=executor,
        listener=listener,
        adapters=lambda _: FakeAdapter(),
        **options,
    )


class CountingRegistry(MemoryRegistry):
    """The in-memory registry, counting its single-key reads."""

    def __init__(self) -> None:
        super().__init__()
        self.gets = 0

    async def read(self, key: str) -> tuple[Entry | None, int]:
        self.gets += 1
        return await super().read(key)


@contextlib.asynccontextmanager
async def serving(cache: ModelCache, record: ModelRecord) -> AsyncIterator[LoadedModel]:
    """Hold the model as a call does (``hold`` ... ``let_go``): loaded first if needed, and not
    evictable inside the block."""
    entry = await cache.hold(record)
    try:
        assert entry.model is not None
        yield entry.model
    finally:
        cache.let_go(entry)
