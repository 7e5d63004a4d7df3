"""The memory devices a pod sizes models against: host RAM and each GPU NVML reports.

Host capacity is the pod's ``--capacity``; its use is the model cache's accounting. A
GPU's capacity is ``gpu_fraction`` of its total memory and its use is what NVML
reports as used, whoever uses it (other processes included), so the record never
promises memory another tenant of the card already holds.

No GPU, no driver, or no NVML library: ``NvmlProbe`` reports no GPUs (logged once)
and the pod runs on host memory only. The probe is the seam the tests use.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Protocol

log = logging.getLogger(__name__)

HOST = "host"


@dataclass(frozen=True)
class DeviceMemory:
    """One device's memory as the fleet sees it (``host``, ``gpu0``, ``gpu1``, ...)."""

    name: str
    capacity_bytes: int
    used_bytes: int = 0
    model: str = ""
    """The hardware's name (GPUs), for ``mesh status``."""

    @property
    def free_bytes(self) -> int:
        return max(self.capacity_bytes - self.used_bytes, 0)


@dataclass(frozen=True)
class GpuReading:
    index: int
    name: str
    total_bytes: int
    used_bytes: int


class GpuProbe(Protocol):
    def read(self) -> list[GpuReading]:
        """Every GPU's memory now; an empty list when there is none."""
        ...

    def close(self) -> None: ...


class NvmlProbe:
    """GPUs through NVML (``nvidia-ml-py``). ``nvml`` is the pynvml module (tests pass a fake)."""

    def __init__(self, nvml: Any = None) -> None:
        if nvml is None:
            import pynvml

            nvml = pynvml
        self._nvml: Any = nvml
        self._ready = False
        try:
            nvml.nvmlInit()
            self._ready = True
        except nvml.NVMLError as exc:
            log.info("no GPU found through NVML (%s): sizing against host memory only", exc)

    def read(self) -> list[GpuReading]:
        if not self._ready:
            return []
        nvml = self._nvml
        try:
            readings = []
            for index in range(nvml.nvmlDeviceGetCount()):
                handle = nvml.nvmlDeviceGetHandleByIndex(index)
                memory = nvml.nvmlDeviceGetMemoryInfo(handle)
                name = nvml.nvmlDeviceGetName(handle)
                name = name.decode() if isinstance(name, bytes) else str(name)
                readings.append(GpuReading(index, name, int(memory.total), int(memory.used)))
            return readings
        except nvml.NVMLError as exc:  # a GPU fell off the bus, the driver was reloaded, ...
            log.warning("reading GPU memory through NVML failed: %s", exc)
            return []

    def close(self) -> None:
        if self._ready:
            self._ready = False
            try:
                self._nvml.nvmlShutdown()
            except self._nvml.NVMLError as exc:
                log.debug("NVML shutdown: %s", exc)


def gpu_devices(readings: list[GpuReading], *, fraction: float) -> tuple[DeviceMemory, ...]:
    """GPU devices from NVML readings; the pod may use ``fraction`` of each card."""
    return tuple(
        DeviceMemory(f"gpu{r.index}", int(r.total_bytes * fraction), r.used_bytes, r.name) for r in readings
    )
