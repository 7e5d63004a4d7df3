"""The inference core: resolve the model, hold it loaded for the call, check inputs, run it.

Transport-free: the gRPC edge converts protobuf to ``InferenceRequest`` and back.
Inference runs on the event loop for models whose measured average is below
``inline_infer_s`` (thread hand-off would cost more than the call), otherwise on the
pod's inference threads, shared fairly between models (``mesh.inference_threads``).
"""

from __future__ import annotations

import functools
import time
import weakref
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from adapters import LoadedModel
from adapters.datatypes import find_v2_datatype
from adapters.signature import ModelSignature, check_inputs, select_outputs
from mesh.batching import Batcher
from mesh.cache import ModelCache
from mesh.inference_threads import InferenceThreads
from mesh.management import ModelManager
from mesh.records import HOT_MODELS, ModelState, ModelTraffic
from mesh_common.clock import now_ms
from mesh_common.errors import InvalidInput, MeshError, OutOfMemory, Unavailable, UnservableOutput

_EWMA = 0.2
INLINE_MAX_BYTES = 256 * 1024
"""Inputs larger than this run on an inference thread even for a model fast enough for the loop."""
_TRAFFIC_EWMA = 0.3
_COLD_RATE = 0.05
"""Requests/s below which a model drops out of the traffic meter."""


# Not frozen: a frozen dataclass sets each field through object.__setattr__, which costs more
# than the rest of building a call's request; nothing changes these after they are built.
@dataclass(slots=True)
class InferenceRequest:
    inputs: dict[str, np.ndarray]
    outputs: Sequence[str] = ()
    id: str = ""


@dataclass(slots=True)
class InferenceResponse:
    model_name: str
    model_id: str
    id: str
    outputs: list[tuple[str, np.ndarray]]


@dataclass
class ModelStats:
    """Cumulative counters in Triton's ``ModelStatistics`` terms (nanoseconds)."""

    success_count: int = 0
    success_ns: int = 0
    fail_count: int = 0
    fail_ns: int = 0
    compute_ns: int = 0
    inference_count: int = 0
    execution_count: int = 0
    last_inference_ms: int = 0
    average_s: float | None = field(default=None, repr=False)


def merge_statistics(*parts: list[tuple[str, ModelStats]]) -> list[tuple[str, ModelStats]]:
    """Several pods' statistics as one server's: counts and times add up, the last inference wins."""
    merged: dict[str, ModelStats] = {}
    for part in parts:
        for name, stats in part:
            total = merged.setdefault(name, ModelStats())
            total.success_count += stats.success_count
            total.success_ns += stats.success_ns
            total.fail_count += stats.fail_count
            total.fail_ns += stats.fail_ns
            total.compute_ns += stats.compute_ns
            total.inference_count += stats.inference_count
            total.execution_count += stats.execution_count
            total.last_inference_ms = max(total.last_inference_ms, stats.last_inference_ms)
    return sorted(merged.items())


class TrafficMeter:
    """Requests/s and queueing delay per model served on this pod, as recent averages.

    Queueing delay is a call's time from holding the loaded model to its answer, less
    the model's average execution time: the wait for a batch, a thread or the loop.
    ``tick`` folds the calls seen since the last tick into the averages (once a second).
    """

    def __init__(self, *, keep: int = HOT_MODELS) -> None:
        self._keep = keep
        self._calls: dict[str, int] = {}
        self._queue_s: dict[str, float] = {}
        self._traffic: dict[str, ModelTraffic] = {}

    def observe(self, model_id: str, queue_s: float) -> None:
        self._calls[model_id] = self._calls.get(model_id, 0) + 1
        self._queue_s[model_id] = self._queue_s.get(model_id, 0.0) + queue_s

    def tick(self, elapsed_s: float) -> None:
        a = _TRAFFIC_EWMA
        traffic = {}
        for model_id in self._traffic.keys() | self._calls.keys():
            old = self._traffic.get(model_id, ModelTraffic(0.0, 0.0))
            calls = self._calls.get(model_id, 0)
            rate = (1 - a) * old.rate + a * calls / max(elapsed_s, 1e-3)
            queue_ms = 1000 * self._queue_s[model_id] / calls if calls else 0.0
            queue_ms = (1 - a) * old.queue_ms + a * queue_ms
            if rate >= _COLD_RATE:
                traffic[model_id] = ModelTraffic(rate, queue_ms)
        self._traffic = traffic
        self._calls.clear()
        self._queue_s.clear()

    def hot(self) -> dict[str, ModelTraffic]:
        """The busiest models (at most ``keep``), rounded for publication."""
        top = sorted(self._traffic.items(), key=lambda item: item[1].rate, reverse=True)[: self._keep]
        return {m: ModelTraffic(round(t.rate, 2), round(t.queue_ms, 2)) for m, t in top}


@dataclass(frozen=True)
class ModelIndexEntry:
    model_id: str
    state: ModelState
    reason: str


class DataPlane:
    def __init__(
        self,
        *,
        manager: ModelManager,
        cache: ModelCache,
        threads: InferenceThreads,
        inline_infer_s: float,
        max_batch_rows: int = 0,
    ) -> None:
        self._manager = manager
        self._cache = cache
        self._threads = threads
        self._inline_infer_s = inline_infer_s
        self._max_batch_rows = max_batch_rows
        self._stats: dict[str, ModelStats] = {}
        self.traffic = TrafficMeter()
        # One batcher per loaded model object: a reload after eviction starts afresh. A batcher
        # holds its model only weakly (``_execute_ref``), so an evicted model is freed with it.
        self._batchers: weakref.WeakKeyDictionary[LoadedModel, Batcher] = weakref.WeakKeyDictionary()

    async def infer(
        self, name: str, request: InferenceRequest, *, vmodel: bool | None = None
    ) -> InferenceResponse:
        record = self._manager.resolve(name, vmodel=vmodel)
        stats = self._stats.get(record.model_id)
        if stats is None:
            stats = self._stats[record.model_id] = ModelStats()
        started = time.perf_counter()
        try:
            # A loaded model is held without a coroutine (every call's path); else wait for its load.
            entry = self._cache.hold_loaded(record.model_id) or await self._cache.hold(record)
            try:
                holding = time.perf_counter()
                assert entry.model is not None
                outputs = await self._run(record.model_id, entry.model, request, stats)
            finally:
                self._cache.let_go(entry)
        except MeshError:
            stats.fail_count += 1
            stats.fail_ns += int((time.perf_counter() - started) * 1e9)
            raise
        ended = time.perf_counter()
        self.traffic.observe(record.model_id, max(ended - holding - (stats.average_s or 0.0), 0.0))
        stats.success_count += 1
        stats.success_ns += int((ended - started) * 1e9)
        stats.inference_count += _batch_size(request)
        stats.last_inference_ms = now_ms()
        return InferenceResponse(name, record.model_id, request.id, outputs)

    async def _run(
        self, model_id: str, model: LoadedModel, request: InferenceRequest, stats: ModelStats
    ) -> list[tuple[str, np.ndarray]]:
        inputs = check_inputs(model.signature, request.inputs)
        wanted = select_outputs(model.signature, request.outputs, default=())
        if model.row_independent and self._max_batch_rows:
            batcher = self._batchers.get(model)
            if batcher is None:
                batcher = Batcher(
                    functools.partial(self._execute_ref, model_id, weakref.ref(model), stats),
                    max_rows=self._max_batch_rows,
                    overlap=functools.partial(self._may_overlap, model_id, stats),
                )
                self._batchers[model] = batcher
            results = await batcher.infer(inputs, wanted)
        else:
            results = await self._execute(model_id, model, stats, inputs, wanted)
        return list(results.items())

    def _may_overlap(self, model_id: str, stats: ModelStats) -> bool:
        """Whether a slow model's next batch round may start while one runs: it may have a thread."""
        slow = self._threads.is_slow(stats.average_s)
        return slow and self._threads.has_room(model_id, slow)

    async def _execute_ref(
        self,
        model_id: str,
        model_ref: weakref.ref[LoadedModel],
        stats: ModelStats,
        inputs: dict[str, np.ndarray],
        wanted: list[str],
    ) -> dict[str, np.ndarray]:
        """``_execute`` for a batcher: the model is alive while a call that holds it waits."""
        model = model_ref()
        if model is None:
            raise Unavailable("the model was unloaded before its batch ran; retry")
        return await self._execute(model_id, model, stats, inputs, wanted)

    async def _execute(
        self,
        model_id: str,
        model: LoadedModel,
        stats: ModelStats,
        inputs: dict[str, np.ndarray],
        wanted: list[str],
    ) -> dict[str, np.ndarray]:
        """One framework call: on the loop for fast models' usual calls, else on an inference thread
        (a call far larger than a fast model's usual ones would hold the loop for its whole run)."""
        average_s = stats.average_s
        if (
            average_s is not None
            and average_s < self._inline_infer_s
            and sum(a.nbytes for a in inputs.values()) <= INLINE_MAX_BYTES
        ):
            results, elapsed = _timed_call(model, inputs, wanted)
        else:  # timed on its thread: the wait for one is queueing, not the model's own time
            slow = self._threads.is_slow(average_s)
            results, elapsed = await self._threads.run(model_id, slow, _timed_call, model, inputs, wanted)
        stats.execution_count += 1
        stats.compute_ns += int(elapsed * 1e9)
        stats.average_s = (
            elapsed if stats.average_s is None else (1 - _EWMA) * stats.average_s + _EWMA * elapsed
        )
        return results

    def forget(self, model_id: str) -> None:
        """Drop what this pod counted for a model that is no longer registered."""
        self._stats.pop(model_id, None)

    async def metadata(self, name: str, *, vmodel: bool | None = None) -> tuple[str, ModelSignature]:
        """The model's signature (loading it if needed, as a call would)."""
        record = self._manager.resolve(name, vmodel=vmodel)
        model = await self._cache.ensure_loaded(record)
        return record.model_id, model.signature

    def check_header(self, model_id: str, inputs: dict[str, np.ndarray]) -> None:
        """Refuse a large call's inputs, as its header declares them, when they cannot match the
        model loaded on this pod (a no-op when it is not loaded here: this never loads it).

        Raises:
            InvalidInput: a datatype or shape the model's signature does not take.
        """
        model = self._cache.loaded(model_id)
        if model is not None:
            check_inputs(model.signature, inputs)

    async def ready(self, name: str, *, vmodel: bool | None = None) -> bool:
        """Whether a call for ``name`` would find the model loaded (here or on a live peer)."""
        try:
            record = await self._manager.lookup_fresh(name, vmodel=vmodel)
        except MeshError:
            return False
        return self._cache.loaded(record.model_id) is not None or self._manager.loaded_anywhere(
            record.model_id
        )

    async def statistics(self, name: str) -> list[tuple[str, ModelStats]]:
        if name:
            record = await self._manager.lookup_fresh(name)
            return [(name, self._stats.get(record.model_id, ModelStats()))]
        return sorted(self._stats.items())

    def index(self, *, ready_only: bool) -> list[ModelIndexEntry]:
        entries = []
        for record in self._manager.registered():
            status = self._manager.status(record.model_id)
            if ready_only and self._cache.loaded(record.model_id) is None:
                continue
            entries.append(ModelIndexEntry(record.model_id, status.state, "; ".join(status.errors)))
        return entries

    async def load_here(self, model_id: str) -> None:
        await self._manager.load_here(model_id)

    async def unload_here(self, model_id: str, *, reason: str = "") -> None:
        """Unload a model from this pod only (a no-op when it is not loaded here)."""
        await self._cache.unload(model_id, reason=reason)


def _timed_call(
    model: LoadedModel, inputs: dict[str, np.ndarray], outputs: list[str]
) -> tuple[dict[str, np.ndarray], float]:
    started = time.perf_counter()
    results = _call(model, inputs, outputs)
    return results, time.perf_counter() - started


def _call(model: LoadedModel, inputs: dict[str, np.ndarray], outputs: list[str]) -> dict[str, np.ndarray]:
    try:
        results = model.infer(inputs, outputs)
    except MeshError:
        raise
    except MemoryError as exc:  # numpy's own, or an adapter's for its framework's
        raise OutOfMemory(str(exc) or type(exc).__name__) from exc
    except Exception as exc:  # the framework refused the values: inputs already matched the signature
        raise InvalidInput(f"the model rejected the input: {type(exc).__name__}: {exc}") from exc
    for name, array in results.items():
        if find_v2_datatype(array.dtype) is None:
            raise UnservableOutput(output=name, dtype=str(array.dtype))
    return results


def _batch_size(request: InferenceRequest) -> int:
    first = next(iter(request.inputs.values()), None)
    return int(first.shape[0]) if first is not None and first.ndim > 0 else 1
