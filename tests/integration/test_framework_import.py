"""The first TorchScript load imports torch (over a second here) without stopping calls to other
models, and the import counts in no model's load time.

The pod is its own process (``spawn_pod``), so torch is not imported there until its first
TorchScript load, whatever this test process imported before. The import's own time is measured
in a fresh interpreter right before, on the same machine and the same warm files, to set the
bound (or the load's own time, when the machine is slower than that measure).
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import tritonclient.grpc as tc

from mesh.edge.client import MeshClient
from mesh_tools import samples
from mesh_tools.launcher import spawn_pod, stop_pod
from tests.conftest import ModelSet

TORCH_LIBRARY = "libtorch_cpu"


def import_seconds(module: str) -> float:
    """The quicker of two imports of ``module`` in fresh interpreters."""
    code = f"import time; t = time.perf_counter(); import {module}; print(time.perf_counter() - t)"
    command = [sys.executable, "-c", code]
    runs = [subprocess.run(command, capture_output=True, check=True, timeout=120) for _ in "ab"]
    return min(float(run.stdout) for run in runs)


def mapped(pid: int, library: str) -> bool:
    return library in Path(f"/proc/{pid}/maps").read_text()


def test_the_first_torchscript_load_does_not_stall_calls_to_other_models(
    models: ModelSet, tmp_path: Path
) -> None:
    imported_s = import_seconds("torch")
    sklearn_path = samples.sklearn_classifier(tmp_path / "sk")
    with (tmp_path / "pod.log").open("wb") as log:
        process, target = spawn_pod(tmp_path, log=log)
    try:
        with MeshClient(target) as api, tc.InferenceServerClient(target) as client:
            api.register("small", "sklearn", str(sklearn_path), load_now=True, sync=True)
            rows = tc.InferInput("input-0", [1, 4], "FP64")
            rows.set_data_from_numpy(np.ones((1, 4)))
            client.infer("small", [rows], client_timeout=30)  # warm: the call's path is set up
            assert not mapped(process.pid, TORCH_LIBRARY), "torch was imported before the first load"

            waits: list[float] = []
            loaded = threading.Event()

            def call_small() -> None:
                while not loaded.is_set():
                    started = time.perf_counter()
                    client.infer("small", [rows], client_timeout=30)
                    waits.append(time.perf_counter() - started)

            caller = threading.Thread(target=call_small)
            caller.start()
            started = time.perf_counter()
            try:
                api.register("torch", "pytorch", str(models.pytorch), load_now=True, sync=True)
            finally:
                took = time.perf_counter() - started
                loaded.set()
                caller.join(60)
            load_ms = api.describe("torch").load_ms
            assert mapped(process.pid, TORCH_LIBRARY), "the first TorchScript load did not import torch"
    finally:
        stop_pod(process)

    # The import's time, as measured alone or as the load that made it took, whichever is less.
    import_s = min(imported_s, took)
    assert max(waits) < import_s / 4, (
        f"a call to the sklearn model waited {max(waits):.3f}s while torch loaded "
        f"({imported_s:.3f}s to import alone, the load took {took:.3f}s)"
    )
    assert len(waits) >= 5, f"only {len(waits)} calls to the sklearn model during a {took:.3f}s load"
    assert load_ms < 1000 * import_s / 4, f"the load recorded {load_ms} ms: the import counted in it"
