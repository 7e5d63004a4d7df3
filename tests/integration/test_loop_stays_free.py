"""Loads and heavy inference never block the event loop: while a slow load or a slow call runs,
the same pod keeps answering other calls at once.

Each test times the longest wait for a ``ServerLive`` answer while the slow work is in
flight. A pod that ran the work on its event loop would answer nothing until the work ended.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path

import grpc
import numpy as np
import onnx
import tritonclient.grpc as tc
from onnx import TensorProto, helper, numpy_helper

from mesh_proto import grpc_service_pb2 as v2
from mesh_proto import grpc_service_pb2_grpc as v2_grpc
from tests.conftest import register

WIDTH = 512


def _save(directory: Path, nodes: list, initializers: list, width: int, last: str) -> Path:
    nodes = [*nodes, helper.make_node("Identity", [last], ["y"])]
    graph = helper.make_graph(
        nodes,
        directory.name,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", width])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", width])],
        initializer=initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    directory.mkdir(parents=True)
    onnx.save(model, directory / "model.onnx")
    return directory


def slow_to_run(directory: Path, steps: int = 32) -> Path:
    """``x @ W`` ``steps`` times: about half a second for 2,000 rows on one core here."""
    weights = (np.random.default_rng(0).normal(size=(WIDTH, WIDTH)) / np.sqrt(WIDTH)).astype(np.float32)
    chain = ["x", *(f"h{i}" for i in range(steps))]
    nodes = [helper.make_node("MatMul", [chain[i], "W"], [chain[i + 1]]) for i in range(steps)]
    return _save(directory, nodes, [numpy_helper.from_array(weights, "W")], WIDTH, f"h{steps - 1}")


def slow_to_load(directory: Path, steps: int = 3000) -> Path:
    """``steps`` additions of small constants: a graph onnxruntime takes about 0.4 s to set up here."""
    chain = ["x", *(f"a{i}" for i in range(steps))]
    nodes = [helper.make_node("Add", [chain[i], f"b{i}"], [chain[i + 1]]) for i in range(steps)]
    constants = [numpy_helper.from_array(np.full((4,), i % 7, np.float32), f"b{i}") for i in range(steps)]
    return _save(directory, nodes, constants, 4, f"a{steps - 1}")


def stall_while(target: str, work: Callable[[], object]) -> tuple[float, float, int]:
    """Run ``work`` in a thread and call ``ServerLive`` back to back until it ends.

    Returns how long the work took, the longest wait for one answer, and how many answers came.
    """
    took: list[float] = []
    failed: list[BaseException] = []

    def run() -> None:
        started = time.perf_counter()
        try:
            work()
        except BaseException as exc:  # reported by the test thread
            failed.append(exc)
        took.append(time.perf_counter() - started)

    with grpc.insecure_channel(target) as channel:
        live = v2_grpc.GRPCInferenceServiceStub(channel).ServerLive
        live(v2.ServerLiveRequest(), timeout=10)  # connected before the clock starts
        worker = threading.Thread(target=run)
        worker.start()
        longest, answers = 0.0, 0
        while worker.is_alive():
            started = time.perf_counter()
            assert live(v2.ServerLiveRequest(), timeout=30).live
            longest = max(longest, time.perf_counter() - started)
            answers += 1
        worker.join()
    if failed:
        raise failed[0]
    return took[0], longest, answers


def test_a_slow_call_does_not_stop_other_calls(pod, mesh_api, triton, tmp_path: Path) -> None:
    register(mesh_api, "slow-run", "onnx", slow_to_run(tmp_path / "slow-run"), load_now=True, sync=True)
    rows = np.random.default_rng(1).normal(size=(2000, WIDTH)).astype(np.float32)
    tensor = tc.InferInput("x", list(rows.shape), "FP32")
    tensor.set_data_from_numpy(rows)

    # The first call has no timing yet; the second is known to be slow. Neither may run on the loop.
    for attempt in ("first", "second"):
        took, longest, answers = stall_while(pod.target, lambda: triton.infer("slow-run", [tensor]))
        assert took > 0.1, f"the {attempt} call took {took:.3f}s: too fast to show anything"
        assert longest < took / 4, f"{attempt} call: a health answer waited {longest:.3f}s of {took:.3f}s"
        assert answers >= 5, f"{attempt} call: only {answers} health answers in {took:.3f}s"


def test_a_slow_load_does_not_stop_other_calls(pod, mesh_api, tmp_path: Path) -> None:
    path = slow_to_load(tmp_path / "slow-load")

    took, longest, answers = stall_while(
        pod.target, lambda: register(mesh_api, "slow-load", "onnx", path, load_now=True, sync=True)
    )

    assert took > 0.1, f"the load took {took:.3f}s: too fast to show anything"
    assert longest < took / 4, f"a health answer waited {longest:.3f}s during a {took:.3f}s load"
    assert answers >= 5, f"only {answers} health answers during a {took:.3f}s load"
