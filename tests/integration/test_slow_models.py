"""Slow models share the inference threads: fast models keep answering, late calls do not wait a round."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import tritonclient.grpc as tc

from tests.conftest import register
from tests.sleepy import ThreadNoting, sleepy_model, thread_noting_model

ROW = np.array([[0.1, 0.2, 0.3, 0.4]])


def _call(client: tc.InferenceServerClient, model: str) -> float:
    tensor = tc.InferInput("input-0", list(ROW.shape), "FP64")
    tensor.set_data_from_numpy(ROW)
    started = time.perf_counter()
    answer = client.infer(model, [tensor], client_timeout=60)
    assert answer.as_numpy("predict").shape == (1,)
    return time.perf_counter() - started


def test_a_fast_model_keeps_answering_while_slow_models_fill_their_threads(
    tmp_path: Path, pod, mesh_api
) -> None:
    """Four models that take a second a call, three callers each, against a 5 ms model: before the
    threads were shared, the slow calls held all four threads and the fast model waited seconds."""
    register(mesh_api, "fast", "sklearn", sleepy_model(tmp_path / "fast", 0.005), load_now=True, sync=True)
    for i in range(4):
        register(
            mesh_api,
            f"slow-{i}",
            "sklearn",
            sleepy_model(tmp_path / f"slow-{i}", 1.0),
            load_now=True,
            sync=True,
        )
    client = tc.InferenceServerClient(pod.target)
    for _ in range(5):  # measured as fast before the slow traffic starts
        _call(client, "fast")
    stop = threading.Event()

    def keep_calling(model: str) -> int:
        with tc.InferenceServerClient(pod.target) as own:
            calls = 0
            while not stop.is_set():
                _call(own, model)
                calls += 1
            return calls

    with ThreadPoolExecutor(12) as callers:
        slow = [callers.submit(keep_calling, f"slow-{i % 4}") for i in range(12)]
        time.sleep(0.5)  # the slow calls are in: every thread they may take is taken
        latencies = sorted(_call(client, "fast") for _ in range(100))
        stop.set()
        slow_calls = sum(f.result(timeout=30) for f in slow)
    client.close()
    p99 = latencies[98]
    assert p99 < 0.1, f"the fast model's p99 was {p99 * 1000:.0f} ms while slow models ran"
    assert slow_calls >= 4, f"the slow models answered only {slow_calls} calls"


def test_calls_that_reach_a_busy_slow_model_do_not_wait_for_its_round_to_end(
    tmp_path: Path, pod, mesh_api
) -> None:
    """A call arriving while a two-second batch round runs starts a round of its own at once (the
    model has threads to spare) instead of waiting for the running round and then its own."""
    register(mesh_api, "slow", "sklearn", sleepy_model(tmp_path / "slow", 2.0), load_now=True, sync=True)
    with tc.InferenceServerClient(pod.target) as client:
        _call(client, "slow")  # measured: a slow model
    with ThreadPoolExecutor(4) as callers:

        def call_alone() -> float:
            with tc.InferenceServerClient(pod.target) as own:
                return _call(own, "slow")

        first = callers.submit(call_alone)
        time.sleep(0.3)  # the first call's round is running
        # Two: with the first, three rounds, what slow models may hold of the four threads.
        late = [callers.submit(call_alone) for _ in range(2)]
        late_latencies = [f.result(timeout=30) for f in late]
        assert first.result(timeout=30) < 2.8
    # Waiting for the running round would take about 3.7 s; a round of their own takes 2 s.
    assert max(late_latencies) < 2.8, f"late calls took {late_latencies}"


def test_a_large_call_to_a_fast_model_runs_off_the_event_loop(tmp_path: Path, pod, mesh_api) -> None:
    """A model fast enough to run on the loop runs its usual small calls there, but a call far larger
    than those on a thread: on the loop it would hold every other call for its whole run."""
    register(
        mesh_api, "noting", "sklearn", thread_noting_model(tmp_path / "noting"), load_now=True, sync=True
    )
    with tc.InferenceServerClient(pod.target) as client:
        for _ in range(5):
            _call(client, "noting")
        assert ThreadNoting.THREADS[-1] == "pod-loop", ThreadNoting.THREADS
        rows = np.zeros((100_000, 4))  # 3 MiB
        tensor = tc.InferInput("input-0", list(rows.shape), "FP64")
        tensor.set_data_from_numpy(rows)
        assert client.infer("noting", [tensor], client_timeout=60).as_numpy("predict").shape == (100_000,)
    assert ThreadNoting.THREADS[-1].startswith("infer"), ThreadNoting.THREADS
