"""A real fleet for the controller's tests: pods (``PodThread``) on the session's real etcd, each test
under its own registry namespace, and the controller's core following one pod's APIs."""

from __future__ import annotations

import asyncio
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import ExitStack, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from adapters import supported_types
from mesh.edge.client import MeshClient
from mesh.k8s.meshapi import Change, GrpcMeshApi, MeshApi
from mesh.k8s.reconciler import Reconciler
from mesh.k8s.resources import IdScheme, Registration
from mesh.k8s.statuswriter import RecordingStatusWriter
from mesh_tools.etcd_process import EtcdProcess, etcd_binary
from tests.conftest import PodThread, pod_settings

ENDPOINT = "grpc://mesh.serving.svc:8033"


async def until(condition: Callable[[], bool], *, within_s: float, what: str) -> float:
    """``tests.conftest.wait_until`` for async tests (the state lives in another thread or process,
    with no event to wait on); returns the seconds it took."""
    started = time.monotonic()
    while not condition():
        assert time.monotonic() - started < within_s, f"{what} did not happen within {within_s:g}s"
        await asyncio.sleep(0.05)
    return time.monotonic() - started


@dataclass
class Fleet:
    pods: list[PodThread]
    etcd: EtcdProcess
    namespace: str  # the registry's, not Kubernetes'

    @property
    def target(self) -> str:
        return self.pods[0].target

    def client(self) -> MeshClient:
        return MeshClient(self.target, timeout_s=10)

    def lose_registrations(self) -> None:
        """etcd loses the mesh's models and vmodels (as after a restore from an old or empty backup)."""
        for kind in ("models", "vmodels"):
            subprocess.run(
                [str(Path(etcd_binary()).with_name("etcdctl")), "--endpoints", self.etcd.endpoint, "del",
                 "--prefix", f"/mesh/{self.namespace}/{kind}/"],
                check=True, capture_output=True, timeout=30,
            )  # fmt: skip


@asynccontextmanager
async def fleet_of(etcd: EtcdProcess, tmp_path: Path, pods: int = 1) -> AsyncIterator[Fleet]:
    namespace = f"k8s-{uuid.uuid4().hex[:8]}"
    with ExitStack() as stack:
        started = []
        for i in range(pods):
            settings = pod_settings(
                etcd=etcd.endpoint, namespace=namespace, pod_id=f"pod-{i}", cache_dir=tmp_path / f"cache-{i}"
            )
            started.append(await asyncio.to_thread(stack.enter_context, PodThread(settings)))
        yield Fleet(started, etcd, namespace)
        await asyncio.to_thread(stack.close)


class CountingMeshApi:
    """A real ``GrpcMeshApi`` that counts the watch streams opened (how often the controller retried)
    and the registrations made."""

    def __init__(self, inner: MeshApi) -> None:
        self.inner = inner
        self.watches: list[float] = []
        self.registrations = 0

    async def set_vmodel(self, registration: Registration, *, load_now: bool) -> None:
        await self.inner.set_vmodel(registration, load_now=load_now)
        self.registrations += 1

    async def delete_vmodel(self, vmodel_id: str, *, owner: str) -> None:
        await self.inner.delete_vmodel(vmodel_id, owner=owner)

    def watch(self, prefix: str) -> AsyncIterator[Change]:
        self.watches.append(asyncio.get_running_loop().time())
        return self.inner.watch(prefix)

    async def close(self) -> None:
        await self.inner.close()


@dataclass
class Controller:
    reconciler: Reconciler
    writer: RecordingStatusWriter
    mesh: CountingMeshApi


@asynccontextmanager
async def controller_for(target: str, **options: Any) -> AsyncIterator[Controller]:
    mesh = CountingMeshApi(GrpcMeshApi(target, timeout_s=5))
    writer = RecordingStatusWriter()
    options.setdefault("ids", IdScheme())
    reconciler = Reconciler(mesh, writer, supported=supported_types(), grpc_endpoint=ENDPOINT, **options)
    try:
        async with reconciler:
            yield Controller(reconciler, writer, mesh)
    finally:
        await mesh.close()


def infer(target: str, name: str) -> np.ndarray:
    """One v2 call through the stock client (blocking: run it in a thread)."""
    import tritonclient.grpc as tc

    with closing_client(target) as client:
        tensor = tc.InferInput("x", [1, 4], "FP32")
        tensor.set_data_from_numpy(np.ones((1, 4), dtype=np.float32))
        result: np.ndarray = client.infer(name, [tensor]).as_numpy("predict")
        return result


def closing_client(target: str) -> Any:
    import contextlib

    import tritonclient.grpc as tc

    return contextlib.closing(tc.InferenceServerClient(target))
