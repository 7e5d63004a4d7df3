"""Far more registered models than fit: every call succeeds and the cache never exceeds capacity."""

from __future__ import annotations

import asyncio
import random
from concurrent.futures import ThreadPoolExecutor

import grpc
import joblib
import numpy as np
import tritonclient.grpc as tc

from mesh_proto import mesh_admin_pb2 as admin
from mesh_proto import mesh_admin_pb2_grpc as admin_grpc
from mesh_proto import model_mesh_pb2_grpc as mm_grpc
from mesh_tools import samples
from tests.conftest import PodThread, pod_settings, register

CAPACITY = 800_000


async def _watch_peak(pod: PodThread, peak: list[int], stop: asyncio.Event) -> None:
    cache = pod.pod.cache
    assert cache is not None
    while not stop.is_set():
        peak[0] = max(peak[0], cache.used_bytes)
        await asyncio.sleep(0.0005)


def test_many_models_over_capacity_all_answer_within_capacity(tmp_path) -> None:
    paths = [
        samples.sklearn_classifier(tmp_path / f"m{i}", features=400 + 40 * i, classes=4, seed=i)
        for i in range(54)
    ]
    total = sum(p.stat().st_size for p in paths)
    assert total >= 3 * CAPACITY, f"models sum to {total} bytes"

    with PodThread(pod_settings(capacity_bytes=CAPACITY)) as pod, grpc.insecure_channel(pod.target) as ch:
        api = mm_grpc.ModelMeshStub(ch)
        for i, path in enumerate(paths):
            register(api, f"m{i}", "sklearn", path)
        calls = [i for i in range(len(paths)) for _ in range(3)]
        random.Random(5).shuffle(calls)
        stop = asyncio.Event()
        peak = [0]
        watcher = asyncio.run_coroutine_threadsafe(_watch_peak(pod, peak, stop), pod.loop)

        def call(i: int) -> tuple[int, np.ndarray]:
            rows = np.random.default_rng(i).normal(size=(2, 400 + 40 * i))
            tensor = tc.InferInput("input-0", list(rows.shape), "FP64")
            tensor.set_data_from_numpy(rows)
            client = tc.InferenceServerClient(pod.target)
            try:
                return i, client.infer(f"m{i}", [tensor]).as_numpy("predict")
            finally:
                client.close()

        with ThreadPoolExecutor(8) as threads:
            results = list(threads.map(call, calls))
        pod.loop.call_soon_threadsafe(stop.set)
        watcher.result(10)
        status = admin_grpc.MeshAdminStub(ch).PodStatus(admin.PodStatusRequest())

    for i, predicted in results:
        rows = np.random.default_rng(i).normal(size=(2, 400 + 40 * i))
        np.testing.assert_array_equal(predicted, joblib.load(paths[i]).predict(rows))
    assert 0 < peak[0] <= CAPACITY
    assert status.used_bytes <= CAPACITY
    assert status.evictions > 0
    assert status.loads >= len(paths)
    assert status.load_failures == 0
