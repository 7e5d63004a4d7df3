"""A 3-pod fleet on a real etcd: the forwarding hop, registrations into etcd, and mirror delay.

    python bench/fleet.py [--pods 3] [--concurrency 16] [--seconds 4] [--rounds 2]
                          [--models 10000] [--writers 64] [--samples 200]

Every figure has its baseline measured in the same run (these machines are shared and noisy):

1. **Forwarding overhead.** One small sklearn model is loaded on one pod. The same client
   (``tritonclient.grpc.aio``, same concurrency) calls it through the pod that holds it
   (the baseline) and through a pod that must forward the raw bytes there, in alternating
   runs, with one client (the hop's latency) and with ``--concurrency`` clients (every pod
   shares the same cores here, so a forwarded call costs CPU twice). Prints p50/p99 and
   throughput of both and the ratio (the issue aims at <= 1.3x p50).
2. **Registrations per second into etcd.** ``--models`` ``registerModel`` calls spread over
   every pod, ``--writers`` in flight, against the baseline of the same number of bare
   etcd create-if-absent transactions of a same-sized JSON value through our etcd client
   at the same concurrency. A registration also waits until the writing pod's mirror has
   it, and every pod's mirror parses every record: on a 2-core machine that runs etcd,
   all pods and this client, the gap is mostly that fan-out competing for the same cores.
3. **Registry write -> every pod's mirror.** ``--samples`` registrations one at a time
   through pod 0 while every pod is polled with ``getModelStatus`` (which reads only the
   pod's mirror) until it knows the model. Prints p50/p99 of the delay from the write's
   start until the last pod sees it, against the write's own round trip.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

import grpc
import numpy as np
from single_pod import Run, drive

from mesh.edge.client import MeshClient
from mesh.records import ModelInfo, ModelRecord
from mesh.registry.base import MUST_NOT_EXIST
from mesh.registry.etcd import EtcdRegistry
from mesh_proto import model_mesh_pb2 as mm
from mesh_proto import model_mesh_pb2_grpc as mm_grpc
from mesh_tools import samples
from mesh_tools.fleet import LocalFleet

ENV = {"MESH_PUBLISH_INTERVAL_S": "0.2"}


def holder_index(fleet: LocalFleet, model_id: str) -> int:
    for index, target in enumerate(fleet.targets):
        with MeshClient(target) as api:
            if any(m.model_id == model_id for m in api.pod_status().loaded):
                return index
    raise RuntimeError(f"{model_id} is loaded nowhere")


def forwarding(fleet: LocalFleet, model_path: Path, args: argparse.Namespace) -> None:
    with MeshClient(fleet.targets[0]) as api:
        api.register("iris", "sklearn", str(model_path), load_now=True, sync=True)
    holder = holder_index(fleet, "iris")
    other = (holder + 1) % fleet.size
    for concurrency in sorted({1, args.concurrency}):
        direct: list[Run] = []
        forwarded: list[Run] = []
        for round_index in range(args.rounds):
            for runs, index, label in ((direct, holder, "enters the holder"), (forwarded, other, "forwards")):
                name = f"{label} #{round_index + 1}"
                target = fleet.targets[index]
                call = drive(name, target, "iris", "input-0", concurrency, args.seconds, "tritonclient")
                run = asyncio.run(call)
                print(run.line(), flush=True)
                runs.append(run)
        best_direct = max(direct, key=lambda r: r.rps)
        best_forwarded = max(forwarded, key=lambda r: r.rps)
        print()
        print(
            f"forwarding, small sklearn model, {concurrency} concurrent client(s), {args.seconds:g}s per run"
        )
        print(best_direct.line())
        print(best_forwarded.line())
        print(
            f"forwarded / direct: p50 {best_forwarded.pct(50) / best_direct.pct(50):.2f}x (aim <= 1.3x), "
            f"p99 {best_forwarded.pct(99) / best_direct.pct(99):.2f}x, "
            f"throughput {best_forwarded.rps / best_direct.rps:.2f}x"
        )
        print()


async def _bounded(count: int, writers: int, write: object) -> float:
    """Run ``write(i)`` for i < count with ``writers`` in flight; returns the seconds taken."""
    assert callable(write)
    queue = iter(range(count))

    async def writer() -> None:
        for i in queue:
            await write(i)

    started = time.perf_counter()
    await asyncio.gather(*(writer() for _ in range(writers)))
    return time.perf_counter() - started


async def registrations(fleet: LocalFleet, model_path: Path, args: argparse.Namespace) -> None:
    channels = [grpc.aio.insecure_channel(t) for t in fleet.targets]
    stubs = [mm_grpc.ModelMeshStub(c) for c in channels]
    info = mm.ModelInfo(type="sklearn", path=str(model_path))

    async def register(i: int) -> None:
        request = mm.RegisterModelRequest(modelId=f"reg-{i:06d}", modelInfo=info)
        await stubs[i % len(stubs)].registerModel(request, timeout=30)

    registry = EtcdRegistry(fleet.etcd_endpoint)
    value = ModelRecord("reg-000000", ModelInfo("sklearn", str(model_path)), registered_ms=1).to_json()

    async def put(i: int) -> None:  # the same create-if-absent compare-and-swap a registration does
        await registry.put(f"/bench/raw/{i:06d}", value, expected_revision=MUST_NOT_EXIST)

    try:
        raw_s = await _bounded(args.models, args.writers, put)
        mesh_s = await _bounded(args.models, args.writers, register)
    finally:
        await registry.close()
        for channel in channels:
            await channel.close()
    raw_rate, mesh_rate = args.models / raw_s, args.models / mesh_s
    print()
    print(f"registrations into etcd, {args.models} models, {args.writers} in flight over {fleet.size} pods")
    print(f"bare etcd creates (our client): {raw_rate:7.0f}/s  ({raw_s:.2f} s)")
    print(f"registerModel through the pods: {mesh_rate:7.0f}/s  ({mesh_s:.2f} s)")
    print(f"registerModel / bare create rate: {mesh_rate / raw_rate:.2f}x")


async def mirror_delay(fleet: LocalFleet, model_path: Path, args: argparse.Namespace) -> None:
    channels = [grpc.aio.insecure_channel(t) for t in fleet.targets]
    stubs = [mm_grpc.ModelMeshStub(c) for c in channels]
    info = mm.ModelInfo(type="sklearn", path=str(model_path))

    async def seen(stub: mm_grpc.ModelMeshStub, model_id: str, deadline: float) -> float:
        request = mm.GetStatusRequest(modelId=model_id)
        while time.perf_counter() < deadline:
            status = await stub.getModelStatus(request, timeout=10)
            if status.status != mm.ModelStatusInfo.NOT_FOUND:
                return time.perf_counter()
        raise RuntimeError(f"{model_id} did not reach every mirror within 10 s")

    delays: list[float] = []
    writes: list[float] = []
    try:
        for i in range(args.samples):
            model_id = f"mirror-{i:05d}"
            started = time.perf_counter()
            deadline = started + 10
            watchers = [asyncio.create_task(seen(stub, model_id, deadline)) for stub in stubs]
            await stubs[0].registerModel(
                mm.RegisterModelRequest(modelId=model_id, modelInfo=info), timeout=10
            )
            writes.append((time.perf_counter() - started) * 1000)
            delays.append((max(await asyncio.gather(*watchers)) - started) * 1000)
    finally:
        for channel in channels:
            await channel.close()
    delay, write = np.array(delays), np.array(writes)
    print()
    print(f"registry write -> every pod's mirror ({fleet.size} pods, {args.samples} writes one at a time)")
    for label, values in (
        ("write round trip (registerModel):", write),
        ("until every mirror has it:", delay),
    ):
        print(
            f"{label:<34} p50 {np.percentile(values, 50):6.2f} ms   p99 {np.percentile(values, 99):6.2f} ms"
        )
    print(
        f"mirror delay / write round trip:   p99 {np.percentile(delay, 99) / np.percentile(write, 99):.2f}x"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pods", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--models", type=int, default=10_000)
    parser.add_argument("--writers", type=int, default=64)
    parser.add_argument("--samples", type=int, default=200)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="mesh-bench-fleet-") as tmp:
        workdir = Path(tmp)
        model_path = samples.sklearn_classifier(workdir / "iris")
        print(f"starting etcd and {args.pods} pods ...", flush=True)
        with LocalFleet(workdir, pods=args.pods, capacity="512MiB", env=ENV) as fleet:
            forwarding(fleet, model_path, args)
            asyncio.run(registrations(fleet, model_path, args))
            asyncio.run(mirror_delay(fleet, model_path, args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
