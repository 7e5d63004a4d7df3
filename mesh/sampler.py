"""What this pod tells the fleet about itself: its instance record, sampled once a second.

The sampler owns the pod's request rate (calls served per second, smoothed), its device
readings (host memory and GPUs) and the gauges they feed; ``describe`` builds the instance
record the publisher writes (and placement reads for this pod) from them and the cache.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable
from typing import Protocol

from adapters import supported_types
from mesh import __version__
from mesh.cache import ModelCache
from mesh.dataplane import DataPlane
from mesh.devices import HOST, DeviceMemory, GpuProbe, gpu_devices
from mesh.metrics import MeshMetrics
from mesh.records import InstanceRecord
from mesh.settings import MeshSettings
from mesh.working_set import WorkingSet
from mesh_common.clock import now_ms


class Served(Protocol):
    """Counts the calls this pod has served (the router)."""

    @property
    def served(self) -> int: ...


class PodSampler:
    """Samples the pod each second into gauges and the instance record ``describe`` returns.

    ``endpoint`` is the address peers call (the bound port); ``in_flight`` the calls in flight
    per pod, shared with the router and placement. ``shutting_down`` turns true once, on stop.
    """

    def __init__(
        self,
        *,
        settings: MeshSettings,
        endpoint: str,
        cache: ModelCache,
        dataplane: DataPlane,
        working_set: WorkingSet,
        metrics: MeshMetrics,
        gpu_probe: GpuProbe,
        in_flight: Counter[str],
    ) -> None:
        self._settings = settings
        self.endpoint = endpoint
        self._cache = cache
        self._dataplane = dataplane
        self._working_set = working_set
        self._metrics = metrics
        self._gpu_probe = gpu_probe
        self._in_flight = in_flight
        self._gpus: tuple[DeviceMemory, ...] = ()
        self._request_rate = 0.0
        """Calls served per second, smoothed over the last few seconds."""
        self._started_ms = now_ms()
        self.shutting_down = False

    def describe(self) -> InstanceRecord:
        """This pod's instance record as of now."""
        s = self._settings
        idle_age = self._cache.next_victim_age_s()
        return InstanceRecord(
            pod_id=s.pod_id,
            endpoint=self.endpoint,
            capacity_bytes=s.capacity_bytes,
            used_bytes=self._cache.used_bytes,
            models_loaded=sum(1 for m in self._cache.models() if m.loaded),
            loads_in_flight=self._cache.loads_in_flight,
            requests_in_flight=self._in_flight[s.pod_id],
            request_rate=round(self._request_rate, 1),
            oldest_used_ms=0 if idle_age is None else now_ms() - int(idle_age * 1000),
            labels=tuple(f"type:{t}" for t in supported_types()),
            version=__version__,
            started_ms=self._started_ms,
            shutting_down=self.shutting_down,
            devices=self._devices(),
            hot=self._dataplane.traffic.hot(),
        )

    async def run(self, *, served: Served, changed: Callable[[], None]) -> None:
        """Each second: tick the traffic, update the gauges and rate, read the GPUs, then
        ``changed()`` (the publisher writes the record when it differs enough)."""
        done = 0
        ticked = time.monotonic()
        while True:
            now = time.monotonic()
            self._dataplane.traffic.tick(now - ticked)
            ticked = now
            total = served.served
            self._request_rate = 0.7 * self._request_rate + 0.3 * (total - done)
            done = total
            self._sample_cache()
            await self.read_gpus()
            changed()
            await asyncio.sleep(1.0)

    def _sample_cache(self) -> None:
        cache, metrics = self._cache, self._metrics
        metrics.used_bytes.set(cache.used_bytes)
        metrics.models_loaded.set(sum(1 for m in cache.models() if m.loaded))
        metrics.loads_waiting_for_room.set(cache.loads_waiting_for_room)
        metrics.cache_pressure.set(
            self._working_set.pressure(
                cache.models(),
                waiting=cache.waiting_for_room,
                capacity_bytes=self._settings.capacity_bytes,
                now=time.monotonic(),
            )
        )

    def _devices(self) -> tuple[DeviceMemory, ...]:
        return (DeviceMemory(HOST, self._settings.capacity_bytes, self._cache.used_bytes), *self._gpus)

    async def read_gpus(self) -> None:
        """Refresh GPU memory (NVML calls block briefly: off the loop) and the device gauges."""
        readings = await asyncio.to_thread(self._gpu_probe.read)
        self._gpus = gpu_devices(readings, fraction=self._settings.gpu_fraction)
        for device in self._devices():
            self._metrics.device_capacity_bytes.labels(device.name).set(device.capacity_bytes)
            self._metrics.device_used_bytes.labels(device.name).set(device.used_bytes)
