"""The inference core on its real seams: the manager over an in-memory registry, the real cache
and inference threads, and models whose behaviour their artifact names (the one fake: the
framework). What it answers, where each call runs, what it counts, how it reports a model's faults.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from adapters.base import LoadedModel, ModelAdapter
from adapters.signature import ModelSignature, TensorSpec
from mesh.cache import ModelCache
from mesh.dataplane import (
    INLINE_MAX_BYTES,
    DataPlane,
    InferenceRequest,
    ModelStats,
    TrafficMeter,
    merge_statistics,
)
from mesh.inference_threads import InferenceThreads
from mesh.management import ModelManager
from mesh.records import ModelInfo, ModelState, ModelTraffic
from mesh.registry import MemoryRegistry, ModelStore
from mesh_common.errors import InvalidInput, MeshError, ModelNotFound, OutOfMemory, UnservableOutput
from puller import default_fetchers

SIGNATURE = ModelSignature("scripted", (TensorSpec("x", "FP32", (-1, 2)),), (TensorSpec("y", "FP32", (-1,)),))


class ScriptedModel(LoadedModel):
    """Sums each row of ``x``, noting the thread of each call; a name starting ``oom``, ``refuses``
    or ``objects`` makes it fail as a framework would."""

    row_independent = True

    def __init__(self, behaviour: str) -> None:
        self.behaviour = behaviour
        self.signature = SIGNATURE
        self.size_bytes = 10
        self.threads: list[str] = []
        self.batches: list[int] = []

    def infer(self, inputs: Mapping[str, np.ndarray], outputs: Sequence[str]) -> dict[str, np.ndarray]:
        self.threads.append(threading.current_thread().name)
        self.batches.append(len(inputs["x"]))
        if self.behaviour.startswith("oom"):
            raise MemoryError("cannot allocate 1 TiB")
        if self.behaviour.startswith("refuses"):
            raise ValueError("negative values")
        if self.behaviour.startswith("objects"):
            return {"y": np.zeros(len(inputs["x"]), np.complex64)}
        return {"y": inputs["x"].sum(axis=1)}


class ScriptedAdapter(ModelAdapter):
    model_type = "sklearn"
    suffixes = (".txt",)

    def __init__(self) -> None:
        self.models: dict[str, ScriptedModel] = {}

    def predict_size(self, path: Path) -> int:
        return 10

    def load(self, path: Path) -> ScriptedModel:
        model = self.models[path.stem] = ScriptedModel(path.stem)
        return model


class Listener:
    """The cache's events to the manager, which records this pod's copies, as a pod wires them."""

    manager: ModelManager

    async def loading(self, model_id: str) -> None:
        await self.manager.loading(model_id)

    async def loaded(self, model_id: str, size_bytes: int, load_seconds: float) -> None:
        await self.manager.loaded(model_id, size_bytes, load_seconds)

    async def failed(self, model_id: str, error: MeshError) -> None:
        await self.manager.failed(model_id, error)

    async def refused(self, model_id: str, error: MeshError) -> None:
        await self.manager.refused(model_id, error)

    async def unloaded(self, model_id: str, *, evicted: bool, reason: str = "") -> None:
        await self.manager.unloaded(model_id, evicted=evicted, reason=reason)


@dataclass
class Core:
    plane: DataPlane
    manager: ModelManager
    cache: ModelCache
    adapter: ScriptedAdapter
    artifacts: Path

    async def register(self, model_id: str) -> None:
        path = self.artifacts / f"{model_id}.txt"
        path.write_text("10")
        await self.manager.register(model_id, ModelInfo("sklearn", str(path)), load_now=False, sync=False)

    def model(self, model_id: str) -> ScriptedModel:
        return self.adapter.models[model_id]


def rows(*values: list[float]) -> InferenceRequest:
    return InferenceRequest({"x": np.array(values, dtype=np.float32)}, id="call-1")


async def build(tmp_path: Path, *, max_batch_rows: int = 0) -> tuple[Core, ThreadPoolExecutor, ModelStore]:
    store = ModelStore(MemoryRegistry())
    await store.start()
    pool = ThreadPoolExecutor(4, thread_name_prefix="infer")
    adapter = ScriptedAdapter()
    listener = Listener()
    cache = ModelCache(
        capacity_bytes=1000,
        fetchers=default_fetchers(),
        executor=pool,
        listener=listener,
        adapters=lambda _: adapter,
    )
    manager = ModelManager(
        store=store, cache=cache, fetchers=default_fetchers(), pod_id="pod-a", failure_ttl_s=30
    )
    listener.manager = manager
    plane = DataPlane(
        manager=manager,
        cache=cache,
        threads=InferenceThreads(pool, threads=4, fast_threads=1, slow_call_s=1.0),
        inline_infer_s=0.5,
        max_batch_rows=max_batch_rows,
    )
    return Core(plane, manager, cache, adapter, tmp_path), pool, store


@pytest.fixture
async def core(tmp_path: Path) -> AsyncIterator[Core]:
    built, pool, store = await build(tmp_path)
    yield built
    await built.manager.stop()
    await built.cache.close()
    await store.stop()
    pool.shutdown()


async def test_a_call_loads_the_model_runs_it_and_answers_in_the_callers_names(core: Core) -> None:
    await core.register("sum")
    answer = await core.plane.infer("sum", rows([1, 2], [3, 4]))
    assert (answer.model_name, answer.model_id, answer.id) == ("sum", "sum", "call-1")
    [(name, values)] = answer.outputs
    assert (name, values.tolist()) == ("y", [3.0, 7.0])
    assert core.cache.loaded("sum") is core.model("sum")


async def test_a_fast_model_runs_on_the_loop_once_timed_and_large_inputs_never_do(core: Core) -> None:
    await core.register("fast")
    await core.plane.infer("fast", rows([1, 2]))  # untimed: on a thread
    await core.plane.infer("fast", rows([1, 2]))  # timed far below inline_infer_s: on the loop
    large = np.ones((INLINE_MAX_BYTES // 8 + 1, 2), np.float32)  # one row over the inline limit
    await core.plane.infer("fast", InferenceRequest({"x": large}))
    loop_thread = threading.current_thread().name
    first, second, third = core.model("fast").threads
    assert (first.startswith("infer"), second, third.startswith("infer")) == (True, loop_thread, True)


async def test_statistics_count_calls_rows_and_failures_per_model(core: Core) -> None:
    await core.register("sum")
    await core.plane.infer("sum", rows([1, 2], [3, 4], [5, 6]))
    await core.plane.infer("sum", rows([1, 2]))
    with pytest.raises(InvalidInput):
        await core.plane.infer("sum", InferenceRequest({"wrong": np.ones((1, 2), np.float32)}))
    [(name, stats)] = await core.plane.statistics("sum")
    counted = (stats.success_count, stats.inference_count, stats.execution_count, stats.fail_count)
    assert (name, counted) == ("sum", (2, 4, 2, 1))
    assert stats.last_inference_ms > 0 and stats.compute_ns > 0
    core.plane.forget("sum")
    assert await core.plane.statistics("") == []


@pytest.mark.parametrize(
    ("model_id", "error", "message"),
    [
        ("oom", OutOfMemory, "cannot allocate 1 TiB"),
        ("refuses", InvalidInput, "the model rejected the input: ValueError: negative values"),
        ("objects", UnservableOutput, "output 'y' is numpy complex64, which no v2 datatype can carry"),
    ],
)
async def test_a_models_faults_become_the_mesh_errors_that_say_what_happened(
    core: Core, model_id: str, error: type[MeshError], message: str
) -> None:
    await core.register(model_id)
    with pytest.raises(error, match=message):
        await core.plane.infer(model_id, rows([1, 2]))
    [(_, stats)] = await core.plane.statistics(model_id)
    assert (stats.success_count, stats.fail_count) == (0, 1)


async def test_metadata_loads_the_model_and_header_checks_only_a_loaded_one(core: Core) -> None:
    await core.register("sum")
    wrong = {"x": np.ones((1, 3), np.float32)}
    core.plane.check_header("sum", wrong)  # not loaded here: nothing to check against, no load
    assert core.cache.loaded("sum") is None
    assert await core.plane.metadata("sum") == ("sum", SIGNATURE)
    with pytest.raises(InvalidInput, match="x"):
        core.plane.check_header("sum", wrong)


async def test_readiness_and_index_follow_what_is_loaded_here(core: Core) -> None:
    await core.register("loaded")
    await core.register("idle")
    await core.plane.infer("loaded", rows([1, 2]))
    assert [await core.plane.ready(m) for m in ("loaded", "idle", "never-registered")] == [True, False, False]
    everything = {(e.model_id, e.state) for e in core.plane.index(ready_only=False)}
    assert everything == {("loaded", ModelState.LOADED), ("idle", ModelState.NOT_LOADED)}
    assert [e.model_id for e in core.plane.index(ready_only=True)] == ["loaded"]
    await core.plane.unload_here("loaded")
    assert core.cache.loaded("loaded") is None
    with pytest.raises(ModelNotFound):
        await core.plane.infer("never-registered", rows([1, 2]))


async def test_concurrent_calls_of_a_row_independent_model_run_as_one_batch(tmp_path: Path) -> None:
    core, pool, store = await build(tmp_path, max_batch_rows=64)
    try:
        await core.register("sum")
        await core.plane.infer("sum", rows([0, 0]))  # loaded and timed: later calls run on the loop
        answers = await asyncio.gather(*(core.plane.infer("sum", rows([i, i])) for i in range(1, 4)))
        assert [a.outputs[0][1].tolist() for a in answers] == [[2.0], [4.0], [6.0]]
        # A burst handed over in a few turns of the loop is gathered into one round of 3 rows.
        assert core.model("sum").batches == [1, 3]
    finally:
        await core.manager.stop()
        await core.cache.close()
        await store.stop()
        pool.shutdown()


def test_merged_statistics_add_every_pods_counts_and_keep_the_last_inference() -> None:
    a = [("m", ModelStats(success_count=2, success_ns=20, inference_count=4, last_inference_ms=5))]
    b = [
        ("m", ModelStats(success_count=1, success_ns=10, fail_count=1, last_inference_ms=9)),
        ("n", ModelStats(execution_count=3)),
    ]
    merged = dict(merge_statistics(a, b))
    assert list(merged) == ["m", "n"]
    m = merged["m"]
    assert (m.success_count, m.success_ns, m.fail_count, m.inference_count, m.last_inference_ms) == (
        3,
        30,
        1,
        4,
        9,
    )
    assert merged["n"].execution_count == 3


def test_the_traffic_meter_averages_rates_drops_cold_models_and_publishes_the_busiest() -> None:
    meter = TrafficMeter(keep=1)
    for _ in range(10):
        meter.observe("busy", 0.002)
    meter.observe("quiet", 0.0)
    meter.tick(1.0)
    # One tick folds 30% of the second's rate in: 10 calls -> 3/s, 1 call -> 0.3/s.
    assert meter.hot() == {"busy": ModelTraffic(3.0, 0.6)}
    for _ in range(12):  # no calls: the averages decay until both drop under 0.05/s
        meter.tick(1.0)
    assert meter.hot() == {}
