"""GPU discovery through its seam (a fake NVML module), the real NVML on this GPU-less host,
and the per-device memory a live pod publishes and reports."""

from __future__ import annotations

import logging
from types import SimpleNamespace
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from mesh.devices import DeviceMemory, GpuReading, NvmlProbe, gpu_devices
from mesh.edge.client import MeshClient
from mesh.records import InstanceRecord
from tests.conftest import PodThread, pod_settings

GiB = 2**30


class NVMLError(Exception):
    pass


def fake_nvml(cards: list[tuple[str, int, int]], *, init_fails: bool = False) -> Any:
    """A stand-in for the pynvml module with ``cards`` as (name, total, used)."""
    calls: list[str] = []

    def init() -> None:
        calls.append("init")
        if init_fails:
            raise NVMLError("NVML Shared Library Not Found")

    def memory(handle: int) -> Any:
        if handle >= len(cards):
            raise NVMLError("GPU is lost")
        return SimpleNamespace(total=cards[handle][1], used=cards[handle][2], free=0)

    return SimpleNamespace(
        NVMLError=NVMLError,
        nvmlInit=init,
        nvmlShutdown=lambda: calls.append("shutdown"),
        nvmlDeviceGetCount=lambda: len(cards),
        nvmlDeviceGetHandleByIndex=lambda i: i,
        nvmlDeviceGetMemoryInfo=memory,
        nvmlDeviceGetName=lambda i: cards[i][0].encode(),
        calls=calls,
    )


def test_gpus_are_read_and_sized_by_the_fraction() -> None:
    nvml = fake_nvml([("NVIDIA A10G", 24 * GiB, 1 * GiB), ("NVIDIA L4", 22 * GiB, 0)])
    probe = NvmlProbe(nvml)
    readings = probe.read()
    assert readings == [
        GpuReading(0, "NVIDIA A10G", 24 * GiB, 1 * GiB),
        GpuReading(1, "NVIDIA L4", 22 * GiB, 0),
    ]
    devices = gpu_devices(readings, fraction=0.5)
    assert devices == (
        DeviceMemory("gpu0", 12 * GiB, 1 * GiB, "NVIDIA A10G"),
        DeviceMemory("gpu1", 11 * GiB, 0, "NVIDIA L4"),
    )
    assert devices[0].free_bytes == 11 * GiB
    probe.close()
    assert nvml.calls == ["init", "shutdown"]


def test_no_nvml_library_means_host_memory_only(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="mesh.devices"):
        probe = NvmlProbe(fake_nvml([("x", GiB, 0)], init_fails=True))
    assert probe.read() == []
    assert "host memory only" in caplog.text
    probe.close()  # nothing to shut down, no error


def test_a_gpu_failing_mid_read_is_reported_as_none(caplog: pytest.LogCaptureFixture) -> None:
    nvml = fake_nvml([("A", GiB, 0)])
    nvml.nvmlDeviceGetCount = lambda: 2  # a card the driver lists but cannot read
    assert NvmlProbe(nvml).read() == []
    assert "GPU is lost" in caplog.text


def test_the_real_nvml_on_this_host() -> None:
    """With a GPU every card has memory; without one (these machines) the probe finds none."""
    probe = NvmlProbe()
    readings = probe.read()
    assert all(r.total_bytes > 0 and r.name for r in readings)
    probe.close()


def test_devices_round_trip_through_the_instance_record() -> None:
    record = InstanceRecord(
        "pod-a",
        "127.0.0.1:1",
        100,
        devices=(DeviceMemory("host", 100, 10), DeviceMemory("gpu0", 8 * GiB, GiB, "NVIDIA T4")),
    )
    assert InstanceRecord.from_json(record.to_json()) == record
    old = b'{"pod_id": "pod-a", "endpoint": "e", "capacity_bytes": 5}'  # a record from before devices
    assert InstanceRecord.from_json(old).devices == ()


class FakeProbe:
    def __init__(self) -> None:
        self.used = GiB
        self.closed = False

    def read(self) -> list[GpuReading]:
        return [GpuReading(0, "NVIDIA T4", 16 * GiB, self.used)]

    def close(self) -> None:
        self.closed = True


def test_a_pod_publishes_and_reports_each_device() -> None:
    probe = FakeProbe()
    metrics = CollectorRegistry()
    with PodThread(pod_settings(gpu_fraction=0.75), gpu_probe=probe, metrics_registry=metrics) as pod:
        with MeshClient(pod.target) as api:
            (summary,) = api.fleet_status().pods
        devices = {d.name: d for d in summary.devices}
        assert devices["host"].capacity_bytes == 256 * 2**20
        assert (devices["gpu0"].capacity_bytes, devices["gpu0"].used_bytes) == (12 * GiB, GiB)
        assert devices["gpu0"].model == "NVIDIA T4"
        assert metrics.get_sample_value("mesh_device_capacity_bytes", {"device": "gpu0"}) == 12 * GiB
        assert metrics.get_sample_value("mesh_device_used_bytes", {"device": "gpu0"}) == GiB
    assert probe.closed
