"""``MeshAdmin.WatchModels`` over real gRPC, a real etcd and real pods: the snapshot and ``synced``,
then registrations, loads, failures, unregistrations and vmodels as they happen (a load within a
second), a second pod's copies that stop counting once the pod is killed and its lease expires,
prefix filtering, a 1,000-model snapshot, and a cancelled stream that leaves nothing behind."""

from __future__ import annotations

import asyncio
import queue
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any

import grpc
import pytest

from mesh.edge.client import MeshClient
from mesh.records import ModelInfo, ModelRecord
from mesh.registry import ModelStore
from mesh.registry.etcd import EtcdRegistry
from mesh.settings import MeshSettings
from mesh_proto import etcd_pb2 as pb
from mesh_proto import etcd_pb2_grpc as pb_grpc
from mesh_proto import mesh_admin_pb2 as admin
from mesh_proto import model_mesh_pb2 as mm
from mesh_tools.etcd_process import EtcdProcess
from mesh_tools.launcher import spawn_pod, stop_pod
from tests.conftest import ModelSet, PodThread, pod_settings, wait_until
from tests.storage_servers import TcpRelay

Arrival = tuple[float, admin.ModelChange]
"""A message and when it arrived (``time.monotonic``)."""


class Watch:
    """A ``WatchModels`` stream read by a thread of its own into a queue, each message timed."""

    def __init__(self, target: str, prefix: str = "") -> None:
        self._client = MeshClient(target)
        self._call = self._client.watch_models(prefix)
        self._arrivals: queue.Queue[Arrival | grpc.RpcError] = queue.Queue()
        self.ended = threading.Event()
        """Set when the pod ended the stream with OK."""
        self._reader = threading.Thread(target=self._read, name="watch-reader", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        try:
            for change in self._call:
                self._arrivals.put((time.monotonic(), change))
            self.ended.set()
        except grpc.RpcError as exc:
            self._arrivals.put(exc)

    def next(self, within_s: float = 20.0) -> Arrival:
        try:
            item = self._arrivals.get(timeout=within_s)
        except queue.Empty:
            raise AssertionError(f"no change arrived within {within_s:g}s") from None
        if isinstance(item, grpc.RpcError):
            raise AssertionError(f"the stream ended: {item}")
        return item

    def until(self, wanted: Callable[[admin.ModelChange], bool], *, within_s: float = 20.0) -> Arrival:
        """The first message ``wanted`` accepts (the ones before it are skipped)."""
        deadline = time.monotonic() + within_s
        while True:
            arrival = self.next(within_s=max(0.0, deadline - time.monotonic()))
            if wanted(arrival[1]):
                return arrival

    def snapshot(self) -> list[admin.ModelChange]:
        """The messages before ``synced``."""
        changes = []
        while not (change := self.next()[1]).synced:
            changes.append(change)
        return changes

    def close(self) -> None:
        self._call.cancel()
        self._reader.join(timeout=10)
        self._client.close()

    def __enter__(self) -> Watch:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def load(api: MeshClient, model_id: str) -> None:
    """``ensureLoaded`` with ``sync``: returns once the model is loaded."""
    api.mm.ensureLoaded(mm.EnsureLoadedRequest(modelId=model_id, sync=True), timeout=60)


def model_is(model_id: str, **fields: Any) -> Callable[[admin.ModelChange], bool]:
    def wanted(change: admin.ModelChange) -> bool:
        model = change.model
        return (
            change.HasField("model")
            and model.model_id == model_id
            and all(getattr(model, k) == v for k, v in fields.items())
        )

    return wanted


@pytest.fixture
def settings(etcd: EtcdProcess) -> MeshSettings:
    """A pod on the shared etcd, in a namespace of its own, whose janitor stays out of the way."""
    namespace = f"watch-{uuid.uuid4().hex[:8]}"
    return pod_settings(
        etcd=etcd.endpoint,
        namespace=namespace,
        lease_ttl_s=3,
        publish_interval_s=0.2,
        janitor_interval_s=600,
        failure_ttl_s=600,
    )


@pytest.fixture
def pod(settings: MeshSettings) -> Iterator[PodThread]:
    with PodThread(settings) as running:
        yield running


def test_a_watch_follows_registrations_loads_failures_and_vmodels(
    pod: PodThread, models: ModelSet, tmp_path: Path
) -> None:
    api = MeshClient(pod.target)
    api.register("before", "sklearn", str(models.sklearn))
    with Watch(pod.target) as watch:
        (first,) = watch.snapshot()
        assert (first.model.model_id, first.model.status, first.model.type) == (
            "before",
            "NOT_LOADED",
            "sklearn",
        )
        assert first.model.tenant == "default" and first.model.loaded_copies == 0

        api.register("iris", "sklearn", str(models.sklearn))
        _, registered = watch.until(model_is("iris"))
        assert registered.model.status == "NOT_LOADED"

        load(api, "iris")
        loaded_at = time.monotonic()
        arrived, loaded = watch.until(model_is("iris", status="LOADED"))
        print(f"LOADED arrived {arrived - loaded_at:+.3f}s after ensureLoaded(sync) returned")
        assert arrived - loaded_at < 1.0
        assert (loaded.model.loaded_copies, loaded.model.loading_copies) == (1, 0)
        assert loaded.model.size_bytes > 0
        assert api.status("iris").status == api.status("iris").LOADED

        missing = tmp_path / "missing.joblib"
        api.register("bad", "sklearn", str(missing), load_now=True, sync=True)
        _, failed = watch.until(model_is("bad", status="LOADING_FAILED"))
        assert failed.model.failed_copies == 1 and not failed.model.blocked
        (failure,) = failed.model.failures
        assert failure.pod_id == "pod-a" and failure.reason and failure.time_ms > 0
        assert any(failure.reason in error for error in api.describe("bad").errors)

        api.unregister("before")
        _, deleted = watch.until(lambda c: bool(c.deleted_model_id))
        assert deleted.deleted_model_id == "before"

        api.set_vmodel("v", "iris")
        _, vmodel = watch.until(lambda c: c.HasField("vmodel"))
        assert (vmodel.vmodel.vmodel_id, vmodel.vmodel.active_model_id) == ("v", "iris")
        api.delete_vmodel("v")
        _, gone = watch.until(lambda c: bool(c.deleted_vmodel_id))
        assert gone.deleted_vmodel_id == "v"
    api.close()


def test_a_prefix_limits_the_watch(pod: PodThread, models: ModelSet) -> None:
    with MeshClient(pod.target) as api:
        api.register("team-a.one", "sklearn", str(models.sklearn))
        api.register("team-b.one", "sklearn", str(models.sklearn))
        api.set_vmodel("team-b.v", "team-b.one")
        with Watch(pod.target, prefix="team-a.") as watch:
            assert [c.model.model_id for c in watch.snapshot()] == ["team-a.one"]
            api.register("team-b.two", "sklearn", str(models.sklearn))
            api.register("team-a.two", "sklearn", str(models.sklearn))
            _, change = watch.next()
            assert change.model.model_id == "team-a.two"  # nothing of team-b came before it


def test_copies_on_a_killed_pod_stop_counting_when_its_lease_expires(
    settings: MeshSettings, models: ModelSet, tmp_path: Path
) -> None:
    """The model's record still names the dead pod's copy: only the pod's lease going changes it.
    The other pod loads the model before the watched pod starts, so the copy can only be there."""
    env = {
        "MESH_ETCD": str(settings.etcd),
        "MESH_NAMESPACE": settings.namespace,
        "MESH_POD_ID": "pod-b",
        "MESH_LEASE_TTL_S": "2",
        "MESH_PUBLISH_INTERVAL_S": "0.2",
        "MESH_JANITOR_INTERVAL_S": "600",
        "MESH_METRICS_PORT": "-1",
    }
    process, target = spawn_pod(tmp_path, env=env)
    try:
        with MeshClient(target) as api_b:
            api_b.register("iris", "sklearn", str(models.sklearn))
            load(api_b, "iris")
        with PodThread(settings) as pod, Watch(pod.target) as watch:
            (held,) = watch.snapshot()
            assert (held.model.model_id, held.model.status, held.model.loaded_copies) == ("iris", "LOADED", 1)

            process.send_signal(signal.SIGKILL)
            process.wait(timeout=10)
            killed_at = time.monotonic()
            arrived, dropped = watch.until(model_is("iris", loaded_copies=0), within_s=20)
            print(f"loaded_copies dropped {arrived - killed_at:.2f}s after SIGKILL (lease 2s)")
            assert dropped.model.model_id == "iris" and dropped.model.status == "NOT_LOADED"
            assert (dropped.model.loaded_copies, dropped.model.loading_copies) == (0, 0)
            assert pod.pod.store.model("iris").copies.keys() == {"pod-b"}  # type: ignore[union-attr]
    finally:
        stop_pod(process)


def test_after_a_partition_and_a_compaction_the_resync_sends_what_changed(
    tmp_path: Path, models: ModelSet
) -> None:
    """The watched pod misses the registry's events (cut off from etcd, whose history is then
    compacted): its mirror resyncs with a full read, and the stream tells what vanished meanwhile."""
    etcd = EtcdProcess(tmp_path / "etcd")
    etcd.start()
    relay = TcpRelay(etcd.endpoint)
    try:
        with PodThread(pod_settings(etcd=relay.endpoint, janitor_interval_s=600)) as pod:
            with MeshClient(pod.target) as api:
                for model_id in ("gone", "stays"):
                    api.register(model_id, "sklearn", str(models.sklearn))
                api.set_vmodel("v-gone", "stays")
            with Watch(pod.target) as watch:
                assert len(watch.snapshot()) == 3
                relay.partition()
                wait_until(lambda: not pod.pod.store.connected, within_s=10, what="the pod losing etcd")
                asyncio.run(_change_behind_its_back(etcd.endpoint, pod.pod.store.prefix))
                relay.heal()
                seen = [watch.next()[1] for _ in range(4)]
                assert pod.pod.store.connected
    finally:
        relay.cut()
        etcd.stop()
    assert {c.deleted_model_id for c in seen} - {""} == {"gone"}
    assert {c.deleted_vmodel_id for c in seen} - {""} == {"v-gone"}
    changed = {c.model.model_id: c.model for c in seen if c.HasField("model")}
    assert changed.keys() == {"new", "stays"} and changed["stays"].size_bytes == 123


async def _change_behind_its_back(endpoint: str, prefix: str) -> None:
    """Deletes model ``gone`` and vmodel ``v-gone``, registers ``new``, changes ``stays``, then
    compacts etcd's history past all of it."""
    registry = EtcdRegistry(endpoint)
    store = ModelStore(registry, namespace=prefix.strip("/").split("/")[-1])
    await store.start()
    await store.delete_model("gone")
    await store.update_vmodel("v-gone", lambda _: None)
    await store.create_model(ModelRecord("new", ModelInfo("sklearn", "/m.joblib")))
    await store.update_model("stays", lambda r: replace(r, size_bytes=123))
    revision = await registry.put(f"{prefix}unrelated", b"x")
    await store.stop()
    await registry.close()
    with grpc.insecure_channel(endpoint) as channel:
        pb_grpc.KVStub(channel).Compact(pb.CompactionRequest(revision=revision, physical=True), timeout=5)


def test_a_thousand_models_snapshot_then_a_change_within_a_second(
    pod: PodThread, settings: MeshSettings, models: ModelSet
) -> None:
    count = 1000
    ids = [f"m{i:04d}" for i in range(count)]
    with MeshClient(pod.target) as api, ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda m: api.register(m, "sklearn", str(models.sklearn)), ids))
        started = time.monotonic()
        with Watch(pod.target) as watch:
            snapshot = watch.snapshot()
            synced_s = time.monotonic() - started
            assert [c.model.model_id for c in snapshot] == ids
            assert {c.model.status for c in snapshot} == {"NOT_LOADED"}
            load(api, "m0500")
            loaded_at = time.monotonic()
            arrived, _ = watch.until(model_is("m0500", status="LOADED", loaded_copies=1))
            changed_s = arrived - loaded_at
            api.unregister("m0999")
            unregistered_at = time.monotonic()
            arrived, _ = watch.until(lambda c: c.deleted_model_id == "m0999")
            deleted_s = arrived - unregistered_at
            writing_at = asyncio.run(_resize(str(settings.etcd), settings.namespace, "m0001", 4242))
            arrived, _ = watch.until(model_is("m0001", size_bytes=4242))
            elsewhere_s = arrived - writing_at
    print(
        f"{count} models: snapshot and synced in {synced_s:.3f}s; LOADED arrived {changed_s:+.3f}s after "
        f"ensureLoaded(sync) returned; deletion arrived {deleted_s:+.3f}s after unregister returned; "
        f"a change another registry client wrote arrived {elsewhere_s:.3f}s after its write began"
    )
    assert synced_s < 5.0 and changed_s < 1.0 and deleted_s < 1.0 and elsewhere_s < 1.0


async def _resize(endpoint: str, namespace: str, model_id: str, size_bytes: int) -> float:
    """Changes a model's size through a registry client of its own; returns when the write began
    (``time.monotonic``)."""
    registry = EtcdRegistry(endpoint)
    store = ModelStore(registry, namespace=namespace)
    await store.start()
    writing_at = time.monotonic()
    await store.update_model(model_id, lambda r: replace(r, size_bytes=size_bytes))
    await store.stop()
    await registry.close()
    return writing_at


def test_a_cancelled_watch_leaves_no_task_or_listener(pod: PodThread, models: ModelSet) -> None:
    subscribers = pod.pod.store.subscribers
    tasks = pod.call(_tasks())
    with MeshClient(pod.target) as api:
        api.register("iris", "sklearn", str(models.sklearn))
    for _ in range(3):
        with Watch(pod.target) as watch:
            assert len(watch.snapshot()) == 1
            assert pod.pod.store.subscribers == subscribers + 1
            assert pod.pod.metrics.registry.get_sample_value("mesh_model_watches") == 1
    wait_until(lambda: pod.pod.store.subscribers == subscribers, within_s=10, what="the watch unsubscribing")
    wait_until(lambda: pod.call(_tasks()) <= tasks, within_s=10, what="the watch's tasks ending")
    assert pod.pod.metrics.registry.get_sample_value("mesh_model_watches") == 0


def test_a_stopping_pod_ends_its_watches(settings: MeshSettings) -> None:
    """With OK: not cancelled by the server once its grace has run out."""
    with PodThread(settings) as pod:
        watch = Watch(pod.target)
        assert watch.snapshot() == []
    assert watch.ended.wait(timeout=10)
    watch.close()


def test_mesh_watch_prints_a_line_per_change_until_ctrl_c(pod: PodThread, models: ModelSet) -> None:
    with MeshClient(pod.target) as api:
        api.register("other", "sklearn", str(models.sklearn))
        api.register("iris", "sklearn", str(models.sklearn))
        watcher = subprocess.Popen(
            [sys.executable, "-m", "mesh_tools.cli", "watch", "--prefix", "ir", "--target", pod.target],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            assert watcher.stdout is not None
            assert watcher.stdout.readline().startswith("model iris NOT_LOADED loaded=0 loading=0 failed=0")
            assert watcher.stdout.readline().startswith("synced")
            api.set_vmodel("iris-prod", "iris")
            assert watcher.stdout.readline().strip() == "vmodel iris-prod -> active iris, target iris"
            watcher.send_signal(signal.SIGINT)
            assert watcher.wait(timeout=20) == 0, watcher.stderr.read() if watcher.stderr else ""
        finally:
            if watcher.poll() is None:
                watcher.kill()
                watcher.wait()


async def _tasks() -> int:
    return len([t for t in asyncio.all_tasks() if t is not asyncio.current_task() and not t.done()])
