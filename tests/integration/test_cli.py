"""The `mesh` command as scripts use it: serve on a port, register, infer, status, list, vmodels."""

from __future__ import annotations

import contextlib
import json
import queue
import signal
import socket
import subprocess
import sys
import threading
import urllib.request
import uuid
from pathlib import Path

import joblib
import numpy as np
import pytest

from mesh.edge.client import MeshClient
from mesh_tools.launcher import spawn_pod, stop_pod
from tests.conftest import ModelSet, wait_until
from tests.storage_servers import ACCESS_KEY, SECRET_KEY, S3Server


def mesh(*args: str, target: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mesh_tools.cli", *args, "--target", target],
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.fixture(params=["uvloop", "asyncio"])
def served(tmp_path: Path, request: pytest.FixtureRequest):
    """A ``mesh serve`` process on each event loop it offers (MESH_EVENT_LOOP)."""
    log_path = tmp_path / "pod.log"
    with log_path.open("wb") as log:
        process, target = spawn_pod(
            tmp_path,
            "--metrics-port",
            "0",
            "--capacity",
            "64MiB",
            "--pod-id",
            "cli-pod",
            log=log,
            env={"MESH_EVENT_LOOP": request.param},
        )
    assert f"event loop {request.param})" in log_path.read_text()
    yield target, process
    stop_pod(process)


def test_cli_round_trip(models: ModelSet, served) -> None:
    target, process = served
    registered = mesh(
        "register",
        "iris",
        "--type",
        "sklearn",
        "--path",
        str(models.sklearn),
        "--tenant",
        "team-a",
        "--max-copies",
        "2",
        "--load-now",
        "--sync",
        target=target,
    )
    assert registered.returncode == 0, registered.stderr
    assert "iris: LOADED" in registered.stdout

    row = [[5.1, 3.5, 1.4, 0.2]]
    inferred = mesh(
        "infer",
        "iris",
        "--input",
        f"input-0:FP64:1,4:{json.dumps(row)}",
        "--output",
        "predict",
        target=target,
    )
    assert inferred.returncode == 0, inferred.stderr
    expected = joblib.load(models.sklearn).predict(np.array(row)).tolist()
    assert inferred.stdout.strip() == f"predict: {json.dumps(expected)}"

    status = mesh("status", "iris", target=target).stdout
    assert "iris: LOADED  (sklearn, tenant team-a, copies 1..2)" in status, status
    assert "copy on cli-pod: LOADED" in status and "why: placed on cli-pod by cli-pod: score" in status
    assert "cli-pod: loaded in" in status, status  # its recent history
    capped = mesh("tenant", "set", "team-a", "--max-models", "1", "--max-loaded", "1GiB", target=target)
    assert capped.returncode == 0 and "1024.0 MiB" in capped.stdout, capped
    refused = mesh(
        "register",
        "iris2",
        "--type",
        "sklearn",
        "--path",
        str(models.sklearn),
        "--tenant",
        "team-a",
        target=target,
    )
    assert refused.returncode == 1 and "RESOURCE_EXHAUSTED" in refused.stderr
    assert "tenant 'team-a' has 1 registered models; its cap is 1" in refused.stderr
    tenants = mesh("tenant", "list", target=target).stdout.splitlines()
    assert tenants[1].split()[:3] == ["team-a", "1", "1"], tenants
    status = mesh("status", target=target).stdout
    assert "1 models loaded" in status and "janitor rounds completed here" in status
    assert "iris" in mesh("list", target=target).stdout
    vmodel = mesh("vmodel", "set", "prod", "iris", target=target)
    assert "prod: DEFINED active=iris target=iris" in vmodel.stdout

    missing = mesh("infer", "nope", "--input", "x:FP32:1:[1]", target=target)
    assert missing.returncode == 1
    assert "NOT_FOUND" in missing.stderr
    bad = mesh("register", "x", "--type", "caffe", "--path", "/m", target=target)
    assert bad.returncode == 1 and "INVALID_ARGUMENT" in bad.stderr

    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=30) == 0


def test_metrics_endpoint_counts_calls(models: ModelSet, pod, triton) -> None:
    import grpc
    import tritonclient.grpc as tc
    from tritonclient.utils import InferenceServerException

    from mesh_proto import model_mesh_pb2_grpc as mm_grpc
    from tests.conftest import register

    with grpc.insecure_channel(pod.target) as channel:
        register(mm_grpc.ModelMeshStub(channel), "m", "onnx", models.onnx)
    tensor = tc.InferInput("x", [1, 4], "FP32")
    tensor.set_data_from_numpy(np.ones((1, 4), np.float32))
    triton.infer("m", [tensor])
    with pytest.raises(InferenceServerException, match="absent") as refused:
        triton.infer("absent", [tensor])
    assert refused.value.status() == "StatusCode.NOT_FOUND"
    with MeshClient(pod.target) as api:  # a lone pod leads its own janitor
        wait_until(lambda: api.pod_status().janitor_rounds >= 1, within_s=10, what="a janitor round")
        rounds = api.pod_status().janitor_rounds
    with urllib.request.urlopen(f"http://127.0.0.1:{pod.pod.metrics_port}/metrics", timeout=10) as answer:
        text = answer.read().decode()
    assert 'mesh_requests_total{code="OK",method="ModelInfer"} 1.0' in text
    assert 'mesh_requests_total{code="NOT_FOUND",method="ModelInfer"} 1.0' in text
    assert 'mesh_model_loads_total{result="ok"} 1.0' in text
    assert "mesh_cache_capacity_bytes 2.68435456e+08" in text
    (counted,) = [line for line in text.splitlines() if line.startswith("mesh_janitor_rounds_total ")]
    assert float(counted.split()[1]) >= rounds


def test_demo_serves_its_models_from_an_s3_endpoint(
    s3_server: S3Server, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from mesh_tools.demo import run_demo

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", ACCESS_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
    bucket = f"demo-{uuid.uuid4().hex[:10]}"
    code = run_demo(
        models=5,
        capacity=64 * 2**20,
        requests=30,
        concurrency=3,
        seed=3,
        pods=2,
        s3_endpoint=s3_server.endpoint,
        s3_bucket=bucket,
    )
    out = capsys.readouterr().out
    assert code == 0, out
    assert f"uploading them to s3://{bucket}" in out
    fetched = {name for name in s3_server.gets if name.startswith(f"{bucket}/")}
    assert fetched, "no pod fetched a model from S3"


def free_port_block(count: int) -> int:
    """A base port with ``count`` free consecutive ports after it (``mesh up`` uses BASE+i)."""
    for _ in range(50):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            base = int(probe.getsockname()[1])
        if base + count >= 65535:
            continue
        try:
            with contextlib.ExitStack() as stack:
                for offset in range(count):
                    s = stack.enter_context(socket.socket())
                    s.bind(("127.0.0.1", base + offset))
            return base
        except OSError:
            continue
    raise RuntimeError("no block of free ports")


def test_mesh_up_runs_a_fleet_and_ctrl_c_stops_every_process(models: ModelSet, tmp_path: Path) -> None:
    import psutil
    import tritonclient.grpc as tc

    base = free_port_block(2)
    up_args = ["up", "--pods", "2", "--port", str(base), "--capacity", "32MiB"]
    up = subprocess.Popen(
        # started with SIGINT ignored, as a shell starts a background job: Ctrl-C still stops it
        ["sh", "-c", 'trap "" INT; exec "$@"', "sh", sys.executable, "-m", "mesh_tools.cli", *up_args],
        stdout=subprocess.PIPE,
        stderr=(tmp_path / "up.log").open("wb"),
        text=True,
    )
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in up.stdout or ()], daemon=True).start()
    try:
        printed = []
        while not printed or "Ctrl-C stops the fleet" not in printed[-1]:
            printed.append(lines.get(timeout=120))
        targets = [line.split(" serving on ")[1].strip() for line in printed if " serving on " in line]
        assert targets == [f"127.0.0.1:{base}", f"127.0.0.1:{base + 1}"]
        children = psutil.Process(up.pid).children(recursive=True)
        assert len(children) == 3  # etcd and two pods

        registered = mesh(
            "register", "iris", "--type", "sklearn", "--path", str(models.sklearn), target=targets[0]
        )
        assert registered.returncode == 0, registered.stderr
        client = tc.InferenceServerClient(targets[1])
        row = np.array([[5.1, 3.5, 1.4, 0.2]])
        tensor = tc.InferInput("input-0", [1, 4], "FP64")
        tensor.set_data_from_numpy(row)
        answer = client.infer("iris", [tensor]).as_numpy("predict").tolist()
        client.close()
        assert answer == joblib.load(models.sklearn).predict(row).tolist()
        status = mesh("status", target=targets[1])
        assert "fleet: 2 pods, 1 models registered, 1 loaded, 1 copies" in status.stdout, status.stdout

        up.send_signal(signal.SIGINT)
        assert up.wait(timeout=60) == 0
        _, alive = psutil.wait_procs(children, timeout=10)
        assert not alive, f"left running after Ctrl-C: {alive}"
    finally:
        if up.poll() is None:
            up.kill()
            up.wait()
