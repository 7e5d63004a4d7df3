"""Fakes for unit tests of the pod's core: a model adapter whose sizes come from the artifact,
the in-memory registry counting its reads, a model held as a call holds it (``serving``), and
peers that answer as told (``FakePeers``, the fake of ``mesh.edge.hop.Peers``)."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator, Callable
from concurrent.futures import Executor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from adapters.base import LoadedModel, ModelAdapter
from adapters.signature import ModelSignature
from mesh.cache import CacheListener, ModelCache
from mesh.edge.hop import Hop, Metadata, Route
from mesh.records import ModelRecord
from mesh.registry import MemoryRegistry, ModelStore
from mesh.registry.base import Entry
from mesh_common.errors import MeshError
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


@dataclass
class Sent:
    """One call a ``FakePeers`` received."""

    endpoint: str
    method: str
    payload: bytes
    hop: Hop
    timeout_s: float
    metadata: tuple[tuple[str, str | bytes], ...]

    @property
    def model_id(self) -> str:
        return self.hop.model_id

    @property
    def route(self) -> Route:
        return self.hop.route


@dataclass
class FakePeers:
    """``Peers`` that answer per endpoint: bytes, an exception to raise, or ``hang`` (wait until
    cancelled). Every call is kept in ``sent``; loads and unloads arrive as the repository methods."""

    answers: dict[str, bytes | BaseException | str] = field(default_factory=dict)
    sent: list[Sent] = field(default_factory=list)
    cancelled: list[str] = field(default_factory=list)
    started: asyncio.Event = field(default_factory=asyncio.Event)

    async def forward(
        self,
        endpoint: str,
        method: str,
        payload: bytes,
        *,
        hop: Hop,
        timeout_s: float,
        metadata: Metadata = (),
    ) -> bytes:
        self.sent.append(Sent(endpoint, method, payload, hop, timeout_s, tuple(metadata)))
        self.started.set()
        answer = self.answers.get(endpoint, b"answer from " + endpoint.encode())
        if answer == "hang":
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                self.cancelled.append(endpoint)
                raise
        if isinstance(answer, BaseException):
            raise answer
        assert isinstance(answer, bytes)
        return answer

    async def load(self, endpoint: str, *, hop: Hop, timeout_s: float) -> None:
        await self.forward(endpoint, "RepositoryModelLoad", b"", hop=hop, timeout_s=timeout_s)

    async def unload(self, endpoint: str, *, model_id: str, timeout_s: float, why: str = "") -> None:
        hop = Hop(model_id, Route.UNLOAD, why=why)
        await self.forward(endpoint, "RepositoryModelUnload", b"", hop=hop, timeout_s=timeout_s)

    def routes(self) -> list[tuple[str, str]]:
        return [(s.endpoint, s.route) for s in self.sent]


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


class Events:
    """A cache listener that logs what the cache reports, in order."""

    def __init__(self) -> None:
        self.log: list[tuple[str, str]] = []

    async def loading(self, model_id):
        self.log.append(("loading", model_id))

    async def loaded(self, model_id, size_bytes, load_seconds):
        self.log.append(("loaded", model_id))

    async def failed(self, model_id, error: MeshError):
        self.log.append(("failed", model_id))

    async def refused(self, model_id, error: MeshError):
        self.log.append(("refused", model_id))

    async def unloaded(self, model_id, *, evicted, reason=""):
        self.log.append(("evicted" if evicted else "unloaded", model_id))


async def turns_until(condition: Callable[[], bool], what: str) -> None:
    """Let the loop turn until ``condition()`` holds; the bound only catches a hang."""
    try:
        async with asyncio.timeout(5):
            while not condition():  # noqa: ASYNC110 - counters, with no event to wait on
                await asyncio.sleep(0)
    except TimeoutError:
        raise AssertionError(f"no sign of {what} in 5 s") from None


async def until(store: ModelStore, condition: Callable[[], bool]) -> None:
    """Wait until ``store``'s mirror (its watch runs on this loop) makes ``condition`` true."""
    changed = asyncio.Event()
    store.subscribe(lambda *_: changed.set())
    async with asyncio.timeout(5):
        while not condition():
            await changed.wait()
            changed.clear()
