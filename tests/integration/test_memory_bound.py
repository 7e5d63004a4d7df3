"""A pod that keeps evicting keeps its memory: an evicted model is freed, whatever served it."""

from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import psutil
import pytest
import tritonclient.grpc as tc

from mesh.edge.client import MeshClient
from mesh_tools import samples
from mesh_tools.launcher import spawn_pod, stop_pod

FEATURES = 2500
"""80 KB of weights a model: a leak of every evicted model is hundreds of MiB over the run."""
MODELS = 200
CALLS = 2000


@pytest.fixture
def evicting_pod(tmp_path: Path) -> Iterator[tuple[str, int]]:
    """A ``mesh serve`` process with room for about a dozen of the models, batching on."""
    process, target = spawn_pod(
        tmp_path,
        "--metrics-port",
        "0",
        "--capacity",
        "2MiB",
        "--pod-id",
        "evicting",
        env={"MESH_MAX_BATCH_ROWS": "64", "MESH_PRELOADS_PER_ROUND": "0"},
    )
    try:
        yield target, process.pid
    finally:
        stop_pod(process)


def test_rss_stays_flat_over_thousands_of_load_evict_cycles(
    tmp_path: Path, evicting_pod: tuple[str, int]
) -> None:
    target, pid = evicting_pod
    path = samples.sklearn_classifier(tmp_path / "wide", features=FEATURES, classes=4)
    with MeshClient(target) as admin:
        for i in range(MODELS):
            admin.register(f"wide-{i}", "sklearn", str(path))
    rows = np.random.default_rng(0).normal(size=(1, FEATURES))
    order = random.Random(0)
    client = tc.InferenceServerClient(target)
    pod = psutil.Process(pid)
    rss: dict[int, int] = {}
    try:
        for call in range(1, CALLS + 1):
            tensor = tc.InferInput("input-0", list(rows.shape), "FP64")
            tensor.set_data_from_numpy(rows)
            # With batching on, every call to a sklearn model goes through the model's batcher.
            model = f"wide-{order.randrange(MODELS)}"
            answer = client.infer(model, [tensor])
            assert answer.as_numpy("predict").shape == (1,)
            if call in (200, CALLS):
                rss[call] = pod.memory_info().rss
    finally:
        client.close()
    with MeshClient(target) as admin:
        status = admin.pod_status()
    assert status.loads >= CALLS * 0.8, f"the models should mostly load anew: {status.loads} loads"
    grown = (rss[CALLS] - rss[200]) / 2**20
    # Leaking every evicted model costs about 130 KiB a load: 200+ MiB here.
    assert grown < 40, f"RSS grew {grown:.0f} MiB from call 200 to call {CALLS}"
