"""``mesh demo``: hundreds of real models on a small local fleet, with traffic and a summary.

Builds sklearn, ONNX and TorchScript models into a temporary directory, starts a
local fleet (an etcd and ``--pods`` pods, as ``mesh up`` does) whose capacity holds
only a fraction of them, registers them all through one pod, sends Zipf-distributed
traffic through every pod, and prints what each pod holds and what happened.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np

from mesh.edge.client import MeshClient, build_request
from mesh_tools import samples
from mesh_tools.fleet import LocalFleet


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


def run_demo(
    *,
    models: int,
    capacity: int,
    requests: int,
    concurrency: int,
    seed: int,
    pods: int = 3,
    s3_endpoint: str | None = None,
    s3_bucket: str = "mesh-demo",
) -> int:
    rng = np.random.default_rng(seed)
    with tempfile.TemporaryDirectory(prefix="mesh-demo-") as tmp:
        workdir = Path(tmp)
        print(f"[1/4] building {models} models (sklearn, ONNX, TorchScript) in {workdir}", flush=True)
        built = build_models(workdir / "models", models, rng)
        artifact_bytes = sum(m.path.stat().st_size for m in built)
        locations = {m.model_id: (str(m.path), "") for m in built}
        extra_args: tuple[str, ...] = ()
        if s3_endpoint:
            print(f"      uploading them to s3://{s3_bucket} at {s3_endpoint}", flush=True)
            config = upload_to_s3(built, workdir, s3_endpoint, s3_bucket)
            locations = {m.model_id: (_s3_uri(s3_bucket, m), '{"storage_key": "demo"}') for m in built}
            extra_args = ("--storage-config", str(config))
        print(
            f"[2/4] starting etcd and {pods} pods with {capacity / 2**20:.0f} MiB capacity each", flush=True
        )
        with LocalFleet(
            workdir,
            pods=pods,
            capacity=str(capacity),
            log=(workdir / "fleet.log").open("wb"),
            extra_args=extra_args,
        ) as fleet:
            clients = [MeshClient(target) for target in fleet.targets]
            try:
                print(f"[3/4] registering {len(built)} models through {fleet.targets[0]}", flush=True)
                for model in built:
                    path, key = locations[model.model_id]
                    clients[0].register(model.model_id, model.model_type, path, key=key)
                print(
                    f"[4/4] sending {requests} requests from {concurrency} clients through all {pods} pods "
                    "(Zipf popularity)",
                    flush=True,
                )
                latencies, failures, seconds = _traffic(clients, built, requests, concurrency, rng)
                statuses = [client.pod_status() for client in clients]
                summary = clients[0].fleet_status()
            finally:
                for client in clients:
                    client.close()
    _print_summary(len(built), artifact_bytes, capacity, statuses, summary, latencies, failures, seconds)
    return 0 if failures == 0 else 1


def _s3_uri(bucket: str, model: DemoModel) -> str:
    return f"s3://{bucket}/{model.path.parent.name}/{model.path.name}"


def upload_to_s3(built: Sequence[DemoModel], workdir: Path, endpoint: str, bucket: str) -> Path:
    """Put every model into ``bucket``; the storage-config file the pods read to fetch them."""
    import json
    import os

    import boto3
    from botocore.config import Config

    entry = {
        "type": "s3",
        "endpoint_url": endpoint,
        "region": os.environ.get("AWS_DEFAULT_REGION", "us-east-1"),
        "access_key_id": os.environ.get("AWS_ACCESS_KEY_ID", ""),
        "secret_access_key": os.environ.get("AWS_SECRET_ACCESS_KEY", ""),
    }
    s3 = boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name=entry["region"],
        aws_access_key_id=entry["access_key_id"] or None,
        aws_secret_access_key=entry["secret_access_key"] or None,
        config=Config(s3={"addressing_style": "path"}),
    )
    existing = {b["Name"] for b in s3.list_buckets().get("Buckets", [])}
    if bucket not in existing:
        s3.create_bucket(Bucket=bucket)
    for model in built:
        s3.upload_file(str(model.path), bucket, f"{model.path.parent.name}/{model.path.name}")
    config = workdir / "storage-config.json"
    fd = os.open(config, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        json.dump({"demo": entry}, handle)
    return config


def _traffic(
    clients: Sequence[MeshClient],
    built: list[DemoModel],
    requests: int,
    concurrency: int,
    rng: np.random.Generator,
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

    def one(call: tuple[int, int]) -> float | None:
        n, i = call
        started = time.perf_counter()
        try:
            clients[n % len(clients)].v2.ModelInfer(payloads[i], timeout=120)
        except grpc.RpcError as exc:
            print(f"  {built[i].model_id}: {exc.code().name}: {exc.details()}", flush=True)
            return None
        return time.perf_counter() - started

    started = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as threads:
        for latency in threads.map(one, enumerate(picks.tolist())):
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
    statuses: Sequence[object],
    fleet: object,
    latencies: list[float],
    failures: int,
    seconds: float,
) -> None:
    from mesh_proto import mesh_admin_pb2 as admin

    pods = [s for s in statuses if isinstance(s, admin.PodStatusResponse)]
    assert isinstance(fleet, admin.FleetStatusResponse)
    ms = np.array(latencies) * 1000 if latencies else np.array([0.0])
    total = capacity * len(pods)
    print()
    print(f"{'pod':10s} {'capacity':>10s} {'used':>10s} {'models':>7s} {'loads':>6s} {'evictions':>9s}")
    for pod in pods:
        print(
            f"{pod.pod_id:10s} {capacity / 2**20:>6.1f} MiB {pod.used_bytes / 2**20:>6.1f} MiB "
            f"{len(pod.loaded):>7d} {pod.loads:>6d} {pod.evictions:>9d}"
        )
    rows = [
        ("models registered", f"{registered}"),
        (
            "artifact bytes",
            f"{artifact_bytes / 2**20:.1f} MiB ({artifact_bytes / total:.1f}x fleet capacity)",
        ),
        ("models loaded now", f"{fleet.models_loaded} ({fleet.copies} copies)"),
        ("loads / failures", f"{sum(p.loads for p in pods)} / {sum(p.load_failures for p in pods)}"),
        ("evictions", f"{sum(p.evictions for p in pods)}"),
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
