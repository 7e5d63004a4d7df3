"""The metrics port follows what a real pod does: loads and their times, a failed load, an
eviction, an unload, the bytes and models in the cache, and calls per method and status,
with no per-model label anywhere."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
import tritonclient.grpc as tc

from mesh_proto import model_mesh_pb2_grpc as mm_grpc
from mesh_tools import samples
from tests.conftest import PodThread, pod_settings, register, wait_until
from tests.integration.scrape import scrape, value

CAPACITY = 800 * 1024  # room for one small ONNX model (predicted at about 525 KiB), not two
LABELS = {"method", "code", "result", "device", "le", "tenant"}  # no per-model label; tenants are few


@pytest.fixture
def small_pod() -> Iterator[PodThread]:
    with PodThread(pod_settings(capacity_bytes=CAPACITY)) as running:
        yield running


def test_metrics_follow_loads_evictions_unloads_and_calls(small_pod: PodThread, tmp_path: Path) -> None:
    first, second = samples.onnx_mlp(tmp_path / "a", seed=1), samples.onnx_mlp(tmp_path / "b", seed=2)
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"not a graph")
    tensor = tc.InferInput("x", [2, 4], "FP32")
    tensor.set_data_from_numpy(np.ones((2, 4), np.float32))
    with grpc.insecure_channel(small_pod.target) as channel:
        api = mm_grpc.ModelMeshStub(channel)
        register(api, "broken", "onnx", broken, load_now=True, sync=True)  # fails with the cache empty
        register(api, "a", "onnx", first, load_now=True, sync=True)
        register(api, "b", "onnx", second, load_now=True, sync=True)  # evicts a: no room for both
    triton = tc.InferenceServerClient(small_pod.target)
    try:
        for _ in range(3):
            triton.infer("b", [tensor])
        with pytest.raises(tc.InferenceServerException):
            triton.infer("nobody", [tensor])

        wait_until(
            lambda: value(scrape(small_pod), "mesh_models_loaded") == 1.0,
            within_s=10,
            what="the loaded-models gauge to show b",
        )
        seen = scrape(small_pod)
        assert value(seen, "mesh_model_loads_total", result="ok") == 2.0
        assert value(seen, "mesh_model_loads_total", result="failed") == 1.0
        assert value(seen, "mesh_model_load_seconds_count") == 2.0
        assert 0 < (value(seen, "mesh_model_load_seconds_sum") or 0) < 60
        assert value(seen, "mesh_model_evictions_total") == 1.0
        assert value(seen, "mesh_model_unloads_total") == 0.0
        assert value(seen, "mesh_cache_capacity_bytes") == CAPACITY
        assert value(seen, "mesh_loads_waiting_for_room") == 0.0  # b's load found an idle model to evict
        assert 0 < (value(seen, "mesh_cache_used_bytes") or 0) <= CAPACITY
        assert value(seen, "mesh_requests_total", method="ModelInfer", code="OK") == 3.0
        assert value(seen, "mesh_requests_total", method="ModelInfer", code="NOT_FOUND") == 1.0
        assert value(seen, "mesh_request_seconds_count", method="ModelInfer") == 4.0
        assert value(seen, "mesh_request_seconds_bucket", method="ModelInfer", le="+Inf") == 4.0
        labelled = {key for (_, labels) in seen for key, _ in labels}
        assert labelled <= LABELS, f"unexpected labels: {labelled - LABELS}"

        triton.unload_model("b")
    finally:
        triton.close()
    wait_until(
        lambda: value(scrape(small_pod), "mesh_cache_used_bytes") == 0.0,
        within_s=10,
        what="the used-bytes gauge to drop to zero after the unload",
    )
    seen = scrape(small_pod)
    assert value(seen, "mesh_model_unloads_total") == 1.0
    assert value(seen, "mesh_model_evictions_total") == 1.0
    assert value(seen, "mesh_models_loaded") == 0.0
