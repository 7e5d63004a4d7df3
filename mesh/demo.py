"""``mesh demo``: hundreds of real models on one small pod, with traffic and a summary table.

Builds sklearn, ONNX and TorchScript models into a temporary directory, starts a
pod (``mesh serve``) whose capacity holds only a fraction of them, registers them
all, sends Zipf-distributed traffic, and prints what happened.
"""

from __future__ import annotations

import subprocess
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
from grpc_health.v1 import health_pb2, health_pb2_grpc

from mesh import samples
from mesh.edge.client import MeshClient, build_request
from mesh.launcher import spawn_pod


@dataclass(frozen=True)
class DemoModel:
    model_id: str
    model_type: str
    path: Path
    input_name: str
    features: int
    datatype: np.dtype


def build_models(root: Path, count: int, rng: np.random.Generator) -> list[DemoModel]:
    built: list[DemoModel] = []
    for i in range(count):
        kind = ("sklearn", "sklearn", "sklearn", "onnx", "pytorch")[i % 5]
        features = int(rng.integers(64, 1024))
        directory = root / f"model-{i:04d}"
        if kind == "sklearn":
            path = samples.sklearn_classifier(directory, features=features * 4, classes=5, seed=i)
            built.append(DemoModel(f"sk-{i:04d}", kind, path, "input-0", features * 4, np.dtype(np.float64)))
        elif kind == "onnx":
            path = samples.onnx_mlp(directory, features=features, hidden=int(rng.integers(128, 640)), seed=i)
            built.append(DemoModel(f"onnx-{i:04d}", kind, path, "x", features, np.dtype(np.float32)))
        else:
            path = samples.torchscript_mlp(
                directory, features=features, hidden=int(rng.integers(128, 640)), seed=i
            )
            built.append(DemoModel(f"pt-{i:04d}", kind, path, "x", features, np.dtype(np.float32)))
        if (i + 1) % 50 == 0 or i + 1 == count:
            print(f"  built {i + 1}/{count} models", flush=True)
    return built


def start_pod(capacity: int, workdir: Path) -> tuple[subprocess.Popen[bytes], str]:
    process, target = spawn_pod(
        workdir,
        "--metrics-port",
        "-1",
        "--capacity",
        str(capacity),
        "--pod-id",
        "demo-pod",
        log=(workdir / "pod.log").open("wb"),
    )
    with grpc.insecure_channel(target) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        answer = health.Check(health_pb2.HealthCheckRequest(), timeout=30, wait_for_ready=True)
        assert answer.status == health_pb2.HealthCheckResponse.SERVING
    return process, target


def run_demo(*, models: int, capacity: int, requests: int, concurrency: int, seed: int) -> int:
    rng = np.random.default_rng(seed)
    with tempfile.TemporaryDirectory(prefix="mesh-demo-") as tmp:
        workdir = Path(tmp)
        print(f"[1/4] building {models} models (sklearn, ONNX, TorchScript) in {workdir}", flush=True)
        built = build_models(workdir / "models", models, rng)
        artifact_bytes = sum(m.path.stat().st_size for m in built)
        print(f"[2/4] starting a pod with {capacity / 2**20:.0f} MiB capacity", flush=True)
        process, target = start_pod(capacity, workdir)
        try:
            with MeshClient(target) as client:
                print(f"[3/4] registering {len(built)} models on {target}", flush=True)
                for model in built:
                    client.register(model.model_id, model.model_type, str(model.path))
                print(
                    f"[4/4] sending {requests} requests from {concurrency} clients (Zipf popularity)",
                    flush=True,
                )
                latencies, failures, seconds = _traffic(client, built, requests, concurrency, rng)
                pod = client.pod_status()
        finally:
            process.terminate()
            process.wait(timeout=30)
    _print_summary(len(built), artifact_bytes, capacity, pod, latencies, failures, seconds)
    return 0 if failures == 0 else 1


def _traffic(
    client: MeshClient, built: list[DemoModel], requests: int, concurrency: int, rng: np.random.Generator
) -> tuple[list[float], int, float]:
    weights = 1.0 / np.arange(1, len(built) + 1) ** 1.1
    order = rng.permutation(len(built))
    picks = order[rng.choice(len(built), size=requests, p=weights / weights.sum())]
    payloads = {
        i: build_request(
            built[i].model_id,
            {built[i].input_name: rng.normal(size=(1, built[i].features)).astype(built[i].datatype)},
        )
        for i in set(picks.tolist())
    }
    latencies: list[float] = []
    failures = 0
    done = 0

    def one(i: int) -> float | None:
        started = time.perf_counter()
        try:
            client.v2.ModelInfer(payloads[i], timeout=120)
        except grpc.RpcError as exc:
            print(f"  {built[i].model_id}: {exc.code().name}: {exc.details()}", flush=True)
            return None
        return time.perf_counter() - started

    started = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as threads:
        for latency in threads.map(one, picks.tolist()):
            done += 1
            if latency is None:
                failures += 1
            else:
                latencies.append(latency)
            if done % max(requests // 5, 1) == 0:
                print(f"  {done}/{requests} requests", flush=True)
    return latencies, failures, time.perf_counter() - started


def _print_summary(
    registered: int,
    artifact_bytes: int,
    capacity: int,
    pod: object,
    latencies: list[float],
    failures: int,
    seconds: float,
) -> None:
    from mesh_proto import mesh_admin_pb2 as admin

    assert isinstance(pod, admin.PodStatusResponse)
    ms = np.array(latencies) * 1000 if latencies else np.array([0.0])
    rows = [
        ("models registered", f"{registered}"),
        ("artifact bytes", f"{artifact_bytes / 2**20:.1f} MiB ({artifact_bytes / capacity:.1f}x capacity)"),
        ("pod capacity / used", f"{capacity / 2**20:.1f} MiB / {pod.used_bytes / 2**20:.1f} MiB"),
        ("models loaded now", f"{len(pod.loaded)}"),
        ("loads / failures", f"{pod.loads} / {pod.load_failures}"),
        ("evictions", f"{pod.evictions}"),
        ("requests ok / failed", f"{len(latencies)} / {failures}"),
        ("throughput", f"{len(latencies) / seconds:.0f} req/s"),
        ("latency p50 / p99", f"{np.percentile(ms, 50):.2f} ms / {np.percentile(ms, 99):.2f} ms"),
    ]
    width = max(len(k) for k, _ in rows)
    print()
    print("mesh demo summary")
    print("-" * (width + 40))
    for key, value in rows:
        print(f"{key:<{width}}  {value}")
